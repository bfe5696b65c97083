"""Compile every csrc/cuda/*.cu to a cubin for sm_90a (H100/H200) and sm_80 (A100) with
``nvcc -cubin -Xptxas -v`` (no GPU needed) and print each kernel's resources.

    python tools/compile_cuda.py [--json FILE]

The .cu files take raw pointers and need no torch headers; eigh.cu needs cuSOLVER's
(the toolkit's include folder, or the pip wheels' site-packages/nvidia/*/include).
Exit status 1 when a source fails to compile or a kernel spills registers.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import site
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("sm_90a", "sm_80")
NVCC = shutil.which("nvcc")


def cuda_include() -> Path | None:
    """The toolkit's include folder (the one holding cuda_runtime.h), or None."""
    candidates = [Path(NVCC).resolve().parents[1]] if NVCC else []
    candidates += [Path("/usr/local/cuda")]
    for root in candidates:
        if (root / "include" / "cuda_runtime.h").exists():
            return root / "include"
    return None


def library_includes(header: str) -> list[str]:
    """-I flags for a CUDA library header (cusolverDn.h ...): the toolkit's include folder
    or the pip CUDA wheels' (site-packages/nvidia/*/include)."""
    roots = [cuda_include()] + [p for sp in site.getsitepackages()
                                for p in Path(sp).glob("nvidia/*/include")]
    return [f"-I{r}" for r in roots if r is not None and (Path(r) / header).exists()]


def missing_headers(source: Path) -> str | None:
    """Why ``source`` cannot be compiled here (a library header not found), else None."""
    if "<cusolverDn.h>" in source.read_text() and not library_includes("cusolverDn.h"):
        return ("cuSOLVER headers not found (a full CUDA toolkit, or "
                "pip install --no-deps nvidia-cusolver nvidia-cublas)")
    return None


def readable(mangled: str) -> str:
    """topk_merge_kernel<float, true> for _ZN9pydiffgen4cuda12_GLOBAL__N_117topk_merge_kernel
    IfLb1EEEv...: enough to tell the instantiations of this project's kernels apart."""
    m = re.match(r"_ZN?((?:\d+\w+?)+?)(I.*|E.*|v.*)$", mangled)
    if not m:
        return mangled
    pos, name, rest = 0, "", m[1] + m[2]
    while (n := re.match(r"\d+", rest[pos:])):
        name = rest[pos + n.end():pos + n.end() + int(n[0])]
        pos += n.end() + int(n[0])
    if not rest[pos:].startswith("I"):
        return name
    kinds = {"f": "float", "d": "double", "i": "int", "l": "long"}
    args = re.findall(r"Lb([01])E|([fdil])", rest[pos + 1:rest.index("E", pos)] + "E")
    return name + "<" + ", ".join(("true" if b == "1" else "false") if b else kinds[t]
                                  for b, t in args) + ">"


def compile_one(source: Path, arch: str) -> tuple[list[dict], str | None]:
    """(one row per kernel, error) of ``nvcc -cubin -Xptxas -v`` for one source and arch."""
    extra = library_includes("cusolverDn.h") if "<cusolverDn.h>" in source.read_text() else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [NVCC, "-cubin", "-std=c++17", "-O3", f"-arch={arch}", "-Xptxas", "-v",
               f"-I{source.parent}", *extra, str(source), "-o", f"{tmp}/{source.stem}.cubin"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    if res.returncode:
        return [], f"{' '.join(cmd)}\n{log[-4000:]}"
    rows = []
    for block in re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]:
        fn = re.match(r"'([^']+)'", block)[1]
        spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads", block)
        used = re.search(r"Used (\d+) registers", block)
        smem = re.search(r"(\d+) bytes smem", block)
        rows.append({"arch": arch, "source": source.name, "kernel": readable(fn),
                     "regs": int(used[1]), "stack": int(spill[1]),
                     "spill_stores": int(spill[2]), "spill_loads": int(spill[3]),
                     "static_shared": int(smem[1]) if smem else 0})
    return rows, None


def compile_all(sources=SOURCES) -> dict:
    """{rows, errors, skipped} over every source × arch, compiled in parallel."""
    todo = [(s, a) for s in sources if not missing_headers(s) for a in ARCHS]
    skipped = {s.name: missing_headers(s) for s in sources if missing_headers(s)}
    rows, errors = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for r, e in pool.map(lambda sa: compile_one(*sa), todo):
            rows += r
            errors += [e] if e else []
    errors += [f"{r['arch']} {r['kernel']}: {r['spill_stores']} B spill stores, "
               f"{r['spill_loads']} B spill loads ({r['regs']} registers)"
               for r in rows if r["spill_stores"] or r["spill_loads"]]
    return {"rows": rows, "errors": errors, "skipped": skipped}


def markdown(rows) -> str:
    head = ("| arch | source | kernel | registers | spill stores / loads (B) | stack (B) "
            "| static shared (B) |\n| --- | --- | --- | ---: | ---: | ---: | ---: |\n")
    return head + "".join(
        f"| {r['arch']} | {r['source']} | {r['kernel']} | {r['regs']} | "
        f"{r['spill_stores']} / {r['spill_loads']} | {r['stack']} | {r['static_shared']} |\n"
        for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write {nvcc, rows, errors, skipped} here")
    args = ap.parse_args(argv)
    if NVCC is None:
        print("nvcc is not on PATH")
        return 1
    out = compile_all()
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    out["nvcc"] = version.strip().splitlines()[-1]
    print(out["nvcc"], "\n")
    print(markdown(out["rows"]))
    for name, why in out["skipped"].items():
        print("SKIPPED", name, why)
    for e in out["errors"]:
        print("ERROR", e)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
