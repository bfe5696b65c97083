"""Builds only the native extension ``pydiffgen._C``; metadata lives in pyproject.toml.

PYDIFFGEN_BUILD_EXT=auto (default) builds the CPU C++ part where a compiler exists and
adds the CUDA part when torch has CUDA and CUDA_HOME is set; a failed optional build
warns and leaves a working pure-Python/Triton package. =1 makes failure fatal, =0 skips.
"""

import glob
import os
import shutil
import sys
import warnings

from setuptools import setup

MODE = os.environ.get("PYDIFFGEN_BUILD_EXT", "auto").strip().lower()
if MODE not in {"auto", "0", "1"}:
    sys.exit(f"PYDIFFGEN_BUILD_EXT must be auto, 0 or 1, got {MODE!r}")


def _native_extension():
    """Return (ext_modules, cmdclass) for pydiffgen._C, or ([], {}) when skipped."""
    if MODE == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if MODE == "1":
            raise
        warnings.warn("torch is not importable at build time: pydiffgen._C is not built",
                      stacklevel=2)
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        if MODE == "1":
            sys.exit("PYDIFFGEN_BUILD_EXT=1 but no C++ compiler was found")
        warnings.warn("no C++ compiler: pydiffgen._C is not built", stacklevel=2)
        return [], {}

    sources = ["csrc/pydiffgen_C.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # No -std flag: torch.utils.cpp_extension adds the standard its headers need (C++20
    # since torch 2.10); forcing c++17 breaks the build against those headers.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if with_cuda and os.environ.get("PYDIFFGEN_BUILD_CUDA", "1") != "0":
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
        # csrc/cuda/*.cu: raw-pointer kernels (nvcc-compilable without torch);
        # csrc/cuda/*.cpp: their torch bindings, which need a CUDA build of torch.
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        ext = cpp_extension.CUDAExtension(
            "pydiffgen._C",
            sources,
            define_macros=[("WITH_CUDA", None)],
            # no --use_fast_math: its flush-to-zero would make distinct denormal scores
            # compare equal in the selection kernels, which must order exactly
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags + ["-lcusolver", "-lcublas"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "pydiffgen._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """BuildExtension that turns a failure into a warning in auto mode."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any compiler failure
                if MODE == "1":
                    raise
                warnings.warn(f"pydiffgen._C failed to build ({err}); using Python backends",
                              stacklevel=2)

    return [ext], {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
