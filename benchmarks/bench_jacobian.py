"""Denoiser Jacobians and their spectra: pydiffgen.analysis vs what a user would write.

Cases (correctness checked first in each, on the same inputs):

- ``full``: full Jacobians of a bias-free UNet (Kadkhodaie et al. 2024; 3 levels,
  ``--width``) on a batch of grayscale images. Ours: ``analysis.jacobian`` (method "auto"
  = "frozen" for this model: the identity basis through the network with the ReLU masks
  of y frozen, BF-BN folded, channels-last). Peers: ``torch.func.vmap(torch.func.jacrev(f,
  chunk_size=256))`` over the batch, and the per-pixel autograd loop of Kadkhodaie et
  al.'s code (one ``autograd.grad`` per output pixel), timed on a subset of pixels and
  scaled linearly to all B·d rows (the output says so). Also our "func" path.
- ``topk``: top-k eigenpairs of the symmetrised Jacobian at a larger size. Ours:
  ``jacobian_spectrum(k=...)`` (matrix-free block Krylov on JVP/VJP products). Peer: full
  Jacobian (our fastest) + ``torch.linalg.eigh``. Reports the largest relative eigenvalue
  error against the dense result.
- ``eigh`` (GPU only): ``ops.eigh`` (cuSOLVER batched) vs ``torch.linalg.eigh``, float32.

The UNet is randomly initialised and then, unless ``--no-adapt``, trained briefly on
synthetic disk images (``data.load("disks")``) so its Jacobian has a denoiser-like
spectrum (eigenvalues spread between 0 and 1) rather than the near-identity of a random
init. Writes benchmarks/results/bench_jacobian.json.

    python benchmarks/bench_jacobian.py            # 32×32 (d = 1024) B = 4; top-32 at 64×64
    python benchmarks/bench_jacobian.py --quick    # 16×16 B = 2; top-8 at 24×24
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (  # noqa: E402
    bench,
    metadata,
    parse_args,
    print_table,
    ratio_rows,
    sync,
    write_json,
)


def timed(fn, device, repeats: int = 1):
    """(fastest of ``repeats`` wall times, last result): for calls of seconds and more."""
    best, out = math.inf, None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def adapted_unet(width: int, device: str, steps: int, size: int):
    """A bias-free UNet, briefly trained to denoise disks (σ ~ U² as in Kadkhodaie et al.)."""
    from pydiffgen import data, models

    torch.manual_seed(0)
    model = models.build("bf_unet", levels=3, width=width).to(device)
    if steps:
        x = data.load("disks", n=512, size=size, seed=0).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator(device="cpu").manual_seed(0)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (16,), generator=gen)
            clean = x[idx]
            sigma = torch.rand(16, 1, 1, 1, generator=gen).square().to(device)
            noisy = clean + sigma * torch.randn(clean.shape, generator=gen).to(device)
            loss = (model(noisy, None) - clean).square().sum() / 16
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def per_pixel_rows(model, y, pixels):
    """Kadkhodaie et al.'s loop: one autograd.grad per output pixel of each image."""
    rows = []
    for b in range(len(y)):
        x = y[b : b + 1].detach().requires_grad_(True)
        out = model(x, None).reshape(-1)
        for i in pixels:
            (g,) = torch.autograd.grad(out[i], x, retain_graph=True)
            rows.append(g.reshape(-1))
        del out
    return torch.stack(rows).reshape(len(y), len(pixels), -1)


def jacrev_vmap(model, y):
    def f(x):  # one image [C, H, W] -> [d]
        return model(x[None], None)[0].reshape(-1)

    J = torch.func.vmap(torch.func.jacrev(f, chunk_size=256))(y)  # [B, d, C, H, W]
    return J.reshape(len(y), J.shape[1], -1)


def case_full(model, size, batch, device, n_pixels, rows):
    from pydiffgen.analysis import jacobian

    d = size * size
    gen = torch.Generator().manual_seed(1)
    y = (0.5 + 0.3 * torch.randn(batch, 1, size, size, generator=gen)).to(device)
    t_ours, J = timed(lambda: jacobian(model, y, 0.3), device, repeats=2)
    t_func, J_func = timed(lambda: jacobian(model, y, 0.3, method="func"), device, repeats=2)
    t_jr, J_jr = timed(lambda: jacrev_vmap(model, y).detach(), device, repeats=2)
    pixels = torch.linspace(0, d - 1, n_pixels).long().tolist()
    t_sub, J_loop = timed(lambda: per_pixel_rows(model, y, pixels), device, repeats=2)
    t_loop = t_sub * d / n_pixels  # scaled linearly from n_pixels rows per image
    scale = J_jr.abs().max()
    err = {"func": (J_func - J_jr).abs().max() / scale, "frozen": (J - J_jr).abs().max() / scale,
           "loop": (J[:, pixels] - J_loop).abs().max() / scale}
    print(f"full: d = {d}, B = {batch}: max |ΔJ|/max|J| vs jacrev: frozen {err['frozen']:.1e}, "
          f"func {err['func']:.1e}; loop rows {err['loop']:.1e}; per-pixel loop timed on "
          f"{n_pixels} of {d} pixels per image and scaled ×{d / n_pixels:.0f}")
    assert max(float(e) for e in err.values()) < 1e-4, err
    case = f"jacobian bf_unet {size}x{size} B={batch}"
    times = {"frozen": t_ours, "func": t_func, "jacrev_vmap": t_jr, "per_pixel_loop": t_loop}
    for name, t in times.items():
        rows.append({"kind": "time", "case": case, "impl": name, "seconds": t,
                     "rows_per_s": batch * d / t,
                     "note": f"scaled from {n_pixels} pixels/image" if name == "per_pixel_loop"
                     else ""})
    rows += ratio_rows(case, times, "frozen")


def case_topk(model, size, k, device, rows, tol):
    from pydiffgen.analysis import jacobian, jacobian_spectrum

    d = size * size
    gen = torch.Generator().manual_seed(2)
    y = (0.5 + 0.3 * torch.randn(1, 1, size, size, generator=gen)).to(device)

    def dense():
        J = jacobian(model, y, 0.3)
        return torch.linalg.eigvalsh((J + J.transpose(1, 2)) / 2).flip(-1)

    t_dense, w_dense = timed(dense, device)
    t_mf, spec = timed(lambda: jacobian_spectrum(model, y, 0.3, k=k, tol=tol, probes=0), device,
                       repeats=2)
    rel = ((spec.eigenvalues - w_dense[:, :k]).abs() / w_dense[:, :k].abs()).max()
    print(f"topk: d = {d}, k = {k}: top eigenvalues {w_dense[0, :4].tolist()} ... "
          f"{float(w_dense[0, k - 1]):.4f}; max relative error {float(rel):.1e} (tol {tol:g})")
    assert float(rel) < 1e-3, float(rel)
    case = f"top-{k} spectrum bf_unet {size}x{size}"
    times = {"matrix_free": t_mf, "dense_jacobian_eigh": t_dense}
    for name, t in times.items():
        rows.append({"kind": "time", "case": case, "impl": name, "seconds": t,
                     "max_rel_eig_err": float(rel)})
    rows += ratio_rows(case, times, "matrix_free")


def case_eigh_gpu(batch, n, rows):
    from pydiffgen import ops

    A = torch.randn(batch, n, n, device="cuda")
    A = (A + A.transpose(1, 2)) / 2
    w, V = ops.eigh(A)
    w_ref = torch.linalg.eigvalsh(A.double())
    err = float(((w.double() - w_ref).abs().amax(-1) / w_ref.abs().amax(-1)).max())
    assert err < 1e-4, err
    times = {"ops.eigh": bench(lambda: ops.eigh(A), "cuda"),
             "torch.linalg.eigh": bench(lambda: torch.linalg.eigh(A), "cuda")}
    case = f"eigh {batch}x({n}x{n}) float32"
    for name, t in times.items():
        rows.append({"kind": "time", "case": case, "impl": name, "seconds": t,
                     "max_rel_eig_err": err})
    rows += ratio_rows(case, times, "ops.eigh")


def main():
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    rows: list[dict] = []
    quick = args.quick
    if device == "cuda":
        for batch, n in ([(16, 64), (4, 256)] if quick else [(256, 256), (32, 1024)]):
            case_eigh_gpu(batch, n, rows)
    width = 16 if quick else 32
    size_full, batch = (16, 2) if quick else (32, 4)
    size_top, k = (24, 8) if quick else (64, 32)
    steps = 20 if quick else 200
    model = adapted_unet(width, device, steps, 32 if not quick else 16)
    case_full(model, size_full, batch, device, 8 if quick else 32, rows)
    case_topk(model, size_top, k, device, rows, tol=1e-3)
    if device == "cuda" and not quick:
        # Kadkhodaie et al.'s setting: the 80×80 UNet (3 levels, width 64), d = 6400
        big = adapted_unet(64, device, 0, 80)
        y = torch.randn(1, 1, 80, 80, device=device)
        from pydiffgen.analysis import jacobian

        t, _ = timed(lambda: jacobian(big, y, 0.3), device, repeats=2)
        rows.append({"kind": "time", "case": "jacobian bf_unet 80x80 width 64 B=1",
                     "impl": "frozen", "seconds": t, "rows_per_s": 6400 / t})
    meta = metadata(device) | {"threads": torch.get_num_threads(), "width": width,
                               "adapt_steps": steps}
    path = write_json("bench_jacobian", rows, meta)
    print_table([r for r in rows if r["kind"] == "time"], ["case", "impl", "seconds"])
    print_table([r for r in rows if r["kind"] == "ratio"], ["case", "ours", "peer", "speedup"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
