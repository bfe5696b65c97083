import argparse
from dataclasses import dataclass, field

import pytest

from pydiffgen import config as cfgmod
from pydiffgen.errors import ConfigError


@dataclass(frozen=True)
class Toy:
    name: str = "toy"
    steps: int = 10
    lr: float = 1e-3
    ema: float | None = None
    sizes: tuple[int, ...] = (1, 2)
    center: bool = False
    data_options: tuple = ()
    extra: str = field(default="x", metadata={"help": "an extra"})


def parse(argv, base=None):
    p = argparse.ArgumentParser()
    cfgmod.add_arguments(p, Toy)
    return cfgmod.from_arguments(Toy, p.parse_args(argv), base)


def test_flags_map_one_to_one_to_fields():
    c = parse(["--steps", "1e4", "--lr", "0.5", "--sizes", "3,30,300", "--center",
               "--ema", "0.99", "--data-option", "size=16", "--data-option", "gray=true",
               "--data-option", "path=a/b.npy"])
    assert c == Toy(steps=10000, lr=0.5, sizes=(3, 30, 300), center=True, ema=0.99,
                    data_options=(("size", 16), ("gray", True), ("path", "a/b.npy")))


def test_unset_flags_keep_the_preset():
    base = Toy(steps=77, sizes=(5,))
    assert parse(["--lr", "0.1"], base) == Toy(steps=77, sizes=(5,), lr=0.1)
    assert parse(["--no-center"], Toy(center=True)).center is False
    assert parse(["--ema", "none"], Toy(ema=0.9)).ema is None


def test_dict_round_trip():
    c = Toy(sizes=(1, 8), data_options=(("size", 16),), ema=0.5)
    d = cfgmod.to_dict(c)
    assert d["sizes"] == [1, 8] and d["data_options"] == {"size": 16}
    assert cfgmod.from_dict(Toy, d) == c


@pytest.mark.parametrize("argv, match", [
    (["--steps", "ten"], "--steps"),
    (["--steps", "1.5"], "not an integer"),
    (["--data-option", "novalue"], "KEY=VALUE"),
    (["--sizes", "1,x"], "--sizes"),
])
def test_bad_flags(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(argv)


def test_unknown_fields_are_named():
    with pytest.raises(ConfigError, match="bogus"):
        cfgmod.replace(Toy(), bogus=1)
    with pytest.raises(ConfigError, match="bogus"):
        cfgmod.from_dict(Toy, {"bogus": 1})
