"""Compile every Triton kernel of pydiffgen.kernels for real GPU targets on a machine
without a GPU, at each configuration its launcher picks, and print the resources used.

    python tools/compile_triton.py --arch 90 --arch 80 [--json FILE] [--markdown]

How: Triton's active driver is replaced by an offline one that names the target
(``GPUTarget("cuda", 90, 32)``), every ``@triton.jit`` kernel's launch is turned into a
warm-up (compile, never run), and the real launchers are called on small CPU tensors, so
the constexprs, dtypes and launch options compiled are the ones the launchers choose on a
GPU (block sizes, num_warps, num_stages; every config of an autotuner). The resources come
from the cubin (``cuobjdump --dump-resource-usage``): registers, the stack frame (a Triton
kernel has no local arrays, so stack bytes are spilled registers) and shared memory.

Needs TRITON_INTERPRET unset (interpreted kernels are not JITFunctions); compiled kernels
land in Triton's cache (TRITON_CACHE_DIR), so a second run only re-reads them.
Exit status 1 when a kernel fails to compile, uses more shared memory than the target
has, spills in a hot kernel, or has no case below.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# Largest dynamic shared memory one block may opt in to (CUDA C Programming Guide,
# compute capabilities table): sm_90 228 KB less 1 KB reserved, sm_80 164 KB less 1 KB.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# Spills are errors except in these kernels (and at float64, the dtype of checks such as
# gradcheck, not of speed): the rest stream the data once per tile and must not spill.
COLD = {
    "_stats_finalize_kernel": "once per (sample, group) on a few hundred partial sums",
    "_bwd_finalize_kernel": "once per (sample, group) on a few hundred partial sums",
}


class OfflineDriver:
    """Just enough of a Triton driver to compile for ``target`` with no device present."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


# --------------------------------------------------------------------- launcher cases
# One function per kernels module: it calls the module's launchers the way pydiffgen.ops
# does, at the dtypes, layouts and sizes that select each configuration.


def case_empirical(mod):
    """pydiffgen::empirical_denoiser_triton: float32 rows (the fast pass) and float64 rows
    (the exact dense pass); D = 3072 (CIFAR-10 rows, 16-aligned strides) and D = 2 (toy
    data, unaligned)."""
    for dtype in (torch.float32, torch.float64):
        for d in (3072, 2):
            x = torch.randn(256, d, dtype=dtype)
            mod.empirical_denoiser(torch.randn(8, d, dtype=dtype), x, x.mean(0),
                                   torch.ones(8))


def case_knn_bound_tile(mod):
    """pydiffgen::knn_bound_tile as pydiffgen.ops.knn_certified.candidates calls it: bf16
    tiles for l2 / ip / cosine on float rows, int8 tiles for l2 / ip on uint8 images.
    The bound's constants are constexprs that depend on D: D = 3072 here."""
    from pydiffgen.ops import knn_certified

    def score_fn(qg, xg, a, p, dx, A, B, w, cg, ca, eta, safety):
        return mod.bound_tile(qg, xg, a, p, dx, A, B, w=w, cg=cg, ca=ca, eta=eta,
                              safety=safety)

    d = 3072
    for metric, rows in (("l2", "float"), ("ip", "float"), ("cosine", "float"),
                         ("l2", "uint8"), ("ip", "uint8")):
        if rows == "uint8":
            q = torch.randint(0, 256, (4, d), dtype=torch.uint8)
            x = torch.randint(0, 256, (64, d), dtype=torch.uint8)
            centre, gemm = torch.full((d,), 128.0), torch.int8
        else:
            q, x = torch.randn(4, d), torch.randn(64, d)
            if metric == "cosine":
                q, x = q / q.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True)
            centre = x.mean(0) if metric == "l2" else x.new_zeros(0)
            gemm = torch.bfloat16
        keys = knn_certified.prepare_keys(x, centre, metric, gemm)
        knn_certified.candidates(q, keys, 2, metric, 1 << 16, 16, gemm, score_fn, centre)


def case_groupnorm_film_silu(mod):
    """pydiffgen::groupnorm_film_silu_triton_fwd / _bwd at every dtype the op accepts
    (parameters in the compute dtype, as the op passes them), NCHW (tiles long in L) and
    channels-last (wide in C), at the UNet's widths (C = 64, G = 32) and the largest
    tiles the launchers pick (BLOCK_L = 256 at L ≥ 256, BLOCK_C = 32 at C ≥ 32)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for fmt, hw in ((torch.contiguous_format, 16), (torch.channels_last, 8)):
            x = torch.randn(2, 64, hw, hw).to(dtype).contiguous(memory_format=fmt)
            w, b = torch.ones(64, dtype=acc), torch.zeros(64, dtype=acc)
            s, t = torch.zeros(2, 64, dtype=acc), torch.zeros(2, 64, dtype=acc)
            _, mean, rstd = mod.forward(x, 32, w, b, s, t, 1e-5)
            mod.backward(torch.ones_like(x), x, mean, rstd, 32, w, b, s, t)


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


# ----------------------------------------------------------------------------- compiling


def kernel_modules():
    """{short name: module} for every module of pydiffgen.kernels."""
    import pydiffgen.kernels as pkg

    return {info.name: importlib.import_module(f"{pkg.__name__}.{info.name}")
            for info in pkgutil.iter_modules(pkg.__path__)}


def jitted(mod):
    """{name: JITFunction or Autotuner} defined in ``mod``."""
    return {name: obj for name, obj in vars(mod).items()
            if isinstance(obj, (JITFunction, Autotuner))
            and getattr(obj, "fn", obj).__module__ == mod.__name__}


def compile_only(kernel, record):
    """Turn launches of ``kernel`` into warm-ups that call ``record(compiled)``; an
    autotuner compiles every one of its configs."""
    if isinstance(kernel, Autotuner):
        inner = kernel.fn

        def run_all_configs(*args, grid, warmup=False, **kwargs):
            for config in kernel.configs:
                record(inner.run(*args, grid=grid, warmup=True,
                                 **{**kwargs, **config.all_kwargs()}))

        kernel.run = run_all_configs
        return
    run = kernel.run

    def warm(*args, grid, warmup, **kwargs):
        compiled = run(*args, grid=grid, warmup=True, **kwargs)
        record(compiled)
        return compiled

    kernel.run = warm


def cuobjdump():
    """Triton's bundled cuobjdump (the toolkit's when Triton ships none)."""
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "cuobjdump")
    return bundled if os.path.exists(bundled) else "cuobjdump"


def resources(cubin: bytes, tmpdir: str) -> dict:
    """{regs, stack} of the cubin's one function, from cuobjdump --dump-resource-usage."""
    path = os.path.join(tmpdir, "kernel.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    out = subprocess.run([cuobjdump(), "--dump-resource-usage", path], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return {"regs": int(m[1]), "stack": int(m[2]) + int(m[4])}


def describe(compiled) -> str:
    """The constexprs (floats to 3 digits), pointer dtypes and 16-divisible integer
    arguments that tell one compiled variant from another."""
    src = compiled.src
    names = src.fn.arg_names
    parts = []
    for key, v in src.constants.items():
        i = key[0] if isinstance(key, tuple) else key
        if not isinstance(i, int) or not names[i].isupper():
            continue  # integer arguments equal to 1 that Triton specialised
        if isinstance(v, bool):
            parts += [names[i]] if v else []
        elif isinstance(v, float):
            parts.append(f"{names[i]}={v:.3g}")
        else:
            parts.append(f"{names[i]}={getattr(v, 'name', v)}")
    sig = src.signature
    ptrs = sorted({t[1:] for t in sig.values() if isinstance(t, str) and t.startswith("*")})
    div16 = sum(1 for key, attr in src.attrs.items() if "divisibility" in str(attr)
                and not str(sig.get(names[key[0]], "*")).startswith("*"))
    return " ".join(parts + ["/".join(ptrs), f"div16 ints={div16}"])


def compile_arch(cc: int, tmpdir: str) -> tuple[list[dict], list[str]]:
    """(rows of the resource table, errors) for compute capability ``cc``."""
    driver.set_active(OfflineDriver(GPUTarget("cuda", cc, 32)))
    rows, errors, seen = [], [], set()
    modules = kernel_modules()
    reached = set()
    for mod_name, mod in modules.items():
        kernels = jitted(mod)
        if not kernels:
            continue
        case = CASES.get(mod_name)
        if case is None:
            errors.append(f"kernels/{mod_name}.py has Triton kernels but no case in "
                          f"tools/compile_triton.py")
            continue
        compiled_here = []
        for kernel in kernels.values():
            compile_only(kernel, compiled_here.append)
        t0 = time.perf_counter()
        try:
            case(mod)
        except Exception as err:  # noqa: BLE001 - report any compiler failure
            cause = f"\n  caused by {err.__cause__!r}" if err.__cause__ else ""
            errors.append(f"sm_{cc} {mod_name}: {type(err).__name__}: {err}{cause}")
            continue
        for c in compiled_here:
            name = c.metadata.name
            reached.add(name)
            reached.update(n for n, k in kernels.items()
                           if re.search(rf"\b{n}\(", c.src.fn.src))
            if c.hash in seen:
                continue
            seen.add(c.hash)
            row = {"arch": f"sm_{cc}", "module": mod_name, "kernel": name,
                   "config": describe(c), "warps": c.metadata.num_warps,
                   "stages": c.metadata.num_stages, "shared": c.metadata.shared,
                   **resources(c.asm["cubin"], tmpdir)}
            rows.append(row)
            if row["shared"] > SHARED_LIMIT[cc]:
                errors.append(f"sm_{cc} {name} [{row['config']}]: {row['shared']} B shared "
                              f"memory > {SHARED_LIMIT[cc]} B")
            if row["stack"] and name not in COLD and "ACC=fp64" not in row["config"]:
                errors.append(f"sm_{cc} {name} [{row['config']}]: {row['stack']} B of "
                              f"spilled registers ({row['regs']} registers)")
        print(f"sm_{cc} {mod_name}: {len(compiled_here)} launches in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        errors += [f"{mod_name}.{n} is never compiled (no launch in its case reaches it)"
                   for n in kernels if n not in reached]
    return rows, errors


def markdown(rows) -> str:
    head = ("| arch | kernel | config | warps | stages | registers | spills (B) | shared (B) |\n"
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
    return head + "".join(
        f"| {r['arch']} | {r['kernel']} | {r['config']} | {r['warps']} | {r['stages']} | "
        f"{r['regs']} | {r['stack']} | {r['shared']} |\n" for r in rows)


def one_arch(cc: int) -> dict:
    """{rows, errors} for compute capability ``cc`` (one per process: a JITFunction keeps
    the target it first compiled for)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmpdir:
        rows, errors = compile_arch(cc, tmpdir)
    return {"rows": rows, "errors": errors}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT),
                    help="compute capability (repeatable; default 90 and 80)")
    ap.add_argument("--json", help="write {triton, torch, rows, errors} here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # worker: JSON to stdout
    args = ap.parse_args(argv)
    if args.one:
        json.dump(one_arch(args.one), sys.stdout)
        return 0
    # one worker process per target, in parallel
    workers = [subprocess.Popen([sys.executable, __file__, "--one", str(cc)],
                                stdout=subprocess.PIPE, text=True)
               for cc in args.arch or [90, 80]]
    rows, errors = [], []
    for w in workers:
        out, _ = w.communicate()
        if w.returncode:
            errors.append(f"{' '.join(w.args)} exited with {w.returncode}")
            continue
        part = json.loads(out)
        rows += part["rows"]
        errors += part["errors"]
    print(f"Triton {triton.__version__}, torch {torch.__version__}\n")
    print(markdown(rows))
    for e in errors:
        print("ERROR", e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "torch": torch.__version__, "rows": rows,
                       "errors": errors}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
