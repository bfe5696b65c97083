"""Frozen-dataclass configs: named presets, JSON round trips and CLI flags mapped 1:1.

A field ``steps`` becomes ``--steps``; tuples take comma lists (``--sizes 1,10,100``);
bools take ``--flag`` / ``--no-flag``; ``*_options`` fields (tuples of key/value pairs)
take repeated ``--dataset-option size=16``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

from .errors import ConfigError


def _base_type(tp):
    """Strip Optional[...] and return (base type, allows None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _parse_scalar(tp, text: str):
    if tp is bool:
        low = text.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if tp is int:
        # accept 1e4 as well as 10000
        value = float(text)
        if value != int(value):
            raise ValueError(f"not an integer: {text!r}")
        return int(value)
    return tp(text)


def parse_option_value(text: str):
    """Values of ``key=value`` options: JSON when it parses (numbers, bools), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items) -> dict:
    """``["size=16", "grayscale=true"]`` -> ``{"size": 16, "grayscale": True}``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_option_value(value.strip())
    return out


def add_arguments(parser: argparse.ArgumentParser, cls, defaults=None) -> None:
    """Add one flag per field of dataclass ``cls``; defaults stay unset (None) so that
    ``from_arguments`` sees what was given. ``defaults`` (an instance) is what the command
    starts from when it is not ``cls()``: its values are the ones the help shows."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _base_type(hints[f.name])
        help_text = field_help(f, getattr(defaults, f.name, dataclasses.MISSING))
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif f.name.endswith("_options"):
            parser.add_argument("--" + f.name[: -len("_options")].replace("_", "-") + "-option",
                                dest=f.name, action="append", default=None, metavar="KEY=VALUE",
                                help=help_text)
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, dest=f.name, default=None, metavar="A,B,...",
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


# what the fields many configs share mean, for those without their own help
_COMMON_HELP = {
    "steps": "training steps", "batch_size": "images per training step",
    "lr": "Adam learning rate", "lr_halve_every": "halve the learning rate every K steps",
    "ema": "EMA decay of the weights (none: no EMA)", "seed": "seed",
    "sigma_max": "largest training noise level σ", "sigma_min": "smallest noise level σ",
    "device": "cpu, cuda or cuda:K", "levels": "UNet levels",
    "sample_seed": "seed of the samples' initial and injected noise",
    "sampler_steps": "sampler steps",
}


def field_help(f: dataclasses.Field, default=dataclasses.MISSING) -> str:
    """A config field's flag help: its own ``help`` metadata (or the shared meaning of its
    name) and, unless the text states it, its default (``default``, else the field's)."""
    if f.name.endswith("_options"):
        return f.metadata.get("help") or f"{f.name[:-8]} option (KEY=VALUE, repeatable)"
    text = f.metadata.get("help") or _COMMON_HELP.get(f.name) or f.name.replace("_", " ")
    if "default" in text:
        return text
    if default is dataclasses.MISSING:
        default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or "none"
    return f"{text} (default: {'none' if default is None else default})"


def from_arguments(cls, args: argparse.Namespace, base=None):
    """Build ``cls`` from parsed flags, starting from ``base`` (a preset) or the defaults."""
    hints = typing.get_type_hints(cls)
    changes = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        changes[f.name] = _convert(f.name, hints[f.name], raw)
    base = base if base is not None else cls()
    return replace(base, **changes)


def _convert(name, hint, raw):
    tp, optional = _base_type(hint)
    try:
        if name.endswith("_options"):
            return tuple(parse_options(raw).items())
        if isinstance(raw, bool) or tp is bool:
            return raw if isinstance(raw, bool) else _parse_scalar(bool, raw)
        if optional and str(raw).strip().lower() in {"none", "null"}:
            return None
        if typing.get_origin(tp) is tuple:
            item_tp = typing.get_args(tp)[0]
            return tuple(_parse_scalar(item_tp, p) for p in str(raw).split(",") if p.strip())
        return _parse_scalar(tp, str(raw))
    except ValueError as err:
        raise ConfigError(f"--{name.replace('_', '-')}: {err}") from None


def check_positive_ints(config, names) -> None:
    """ConfigError unless each field of ``config`` in ``names`` is an integer >= 1 (the
    sizes and counts of a config; a bool is not a count)."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


def replace(config, **changes):
    """dataclasses.replace that names the unknown field instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(
            f"unknown {type(config).__name__} field(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **changes)


def to_dict(config) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name.endswith("_options"):
            v = dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def from_dict(cls, data: dict):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) in file: {', '.join(unknown)}")
    kwargs = {}
    for name, v in data.items():
        tp, _ = _base_type(hints[name])
        if name.endswith("_options"):
            v = tuple(sorted(dict(v).items()))
        elif typing.get_origin(tp) is tuple and v is not None:
            v = tuple(v)
        kwargs[name] = v
    return cls(**kwargs)
