"""The repository's top-level kernels/ folder (installed as pydiffgen.kernels) must not
shadow the PyPI package `kernels`, which transformers and diffusers import, when Python
runs from the repository root."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FIND_INSTALLED = (
    "import importlib.machinery, os, sys\n"
    "path = [p for p in sys.path if os.path.abspath(p or '.') != os.getcwd()]\n"
    "print(importlib.machinery.PathFinder.find_spec('kernels', path) is not None)\n"
)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_pydiffgen_kernels_imports_from_the_repository_root():
    assert _run("import pydiffgen.kernels as k; print(k.cuda_why_not() is None or True)") == "True"


def test_an_installed_kernels_package_wins_from_the_repository_root():
    if _run(FIND_INSTALLED) != "True":
        pytest.skip("the PyPI package `kernels` is not installed (transformers >= 5 brings it)")
    where = _run("import kernels, pydiffgen.kernels; print(kernels.__file__)")
    assert not Path(where).is_relative_to(ROOT), where
    # what broke before: diffusers' loaders import names of the installed package
    _run("from diffusers import UNet2DConditionModel")
