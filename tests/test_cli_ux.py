"""The command's first impression: --version, global flags anywhere, help with defaults,
a --dry-run that checks the data and estimates the time."""

import pytest

from pydiffgen import __version__
from pydiffgen.cli import main

TINY = ["--dataset", "digits", "--model", "bf_unet", "--model-option", "levels=1",
        "--model-option", "width=8", "--steps", "10", "--batch-size", "8"]


def test_version_and_description(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"pydiffgen {__version__}")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "memorize" in out and "--threads" in out


def test_help_shows_defaults_and_formats(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    out = capsys.readouterr().out
    assert ".safetensors" in out and "FILE:KEY" in out and "(default: runs/audit)" in out
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000)" in out and "(default: bf_unet)" in out


def test_global_flags_before_or_after_the_subcommand(capsys):
    for argv in (["--quiet", "--threads", "1", "sweep"], ["sweep", "--quiet", "--threads", "1"]):
        assert main([*argv, *TINY, "--sizes", "2,4", "--dry-run"]) == 0
        assert "estimated training time" in capsys.readouterr().out
    assert main(["sweep", "--threads", "0", "--dry-run"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_dry_run_refuses_what_the_data_cannot_supply(capsys):
    assert main(["sweep", *TINY, "--sizes", "2,1000", "--dry-run"]) == 1
    assert "lower --sizes" in capsys.readouterr().err
    assert main(["sweep", *TINY, "--dataset", "nope", "--dry-run"]) == 1
    assert "unknown dataset" in capsys.readouterr().err
