"""Fused denoiser blocks: correctness, then forward+backward time against eager and compile.

    python benchmarks/bench_blocks.py [--device cpu|cuda|auto] [--quick]

Ours: ``pydiffgen.ops.groupnorm_film_silu`` (cpp on CPU, triton on CUDA) and
``pydiffgen.ops.bf_batchnorm_relu`` (cpp on CPU). Peers, measured in the same run on the
same inputs: the eager PyTorch chain (``group_norm → ·(1 + scale) + shift → silu``; BF-BN
in training mode → relu) and ``torch.compile`` of that chain (every case on CUDA; on CPU,
where compiling takes minutes, only the first case of each op and not in ``--quick``).
Each timed call is a forward and the full backward (every input gradient). GB/s counts
the minimum traffic of a fused implementation (forward: read x, write y; backward: read
x and dy, write dx) against the machine's measured copy ceiling.

Also measures whether fusing the EDM preconditioning and weighted loss can pay: the
eager elementwise arithmetic around the network (c_skip/c_out/c_in, λ(σ)-weighted MSE,
forward + backward) against one whole training step of the default UNet.
Rows go to <results>/bench_blocks.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench,
    ceilings,
    metadata,
    parse_args,
    print_table,
    ratio_rows,
    write_json,
)

from pydiffgen.ops import bf_batchnorm_relu, groupnorm_film_silu, reference  # noqa: E402


def _gfs_inputs(B, C, H, device, channels_last=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, H, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (1 + 0.1 * torch.randn(C, generator=g)).to(device)
    b = (0.1 * torch.randn(C, generator=g)).to(device)
    s = (0.1 * torch.randn(B, C, generator=g)).to(device, dtype)
    t = (0.1 * torch.randn(B, C, generator=g)).to(device, dtype)
    dy = torch.randn(x.shape, generator=g).to(device, dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    return [x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), s.requires_grad_(),
            t.requires_grad_()], dy


def _fwd_bwd(fn, inputs, dy):
    def run():
        y = fn(*inputs)
        return torch.autograd.grad(y, inputs, dy)

    return run


def gfs_case(B, C, H, G, device, rows, ratios, ceil, compile_peer, channels_last=False):
    inputs, dy = _gfs_inputs(B, C, H, device, channels_last)
    ours = lambda x, w, b, s, t: groupnorm_film_silu(x, G, w, b, s, t)
    eager = lambda x, w, b, s, t: reference.groupnorm_film_silu(x, G, w, b, s, t)
    # correctness first: forward and every gradient against the eager chain in float64
    d64 = [v.detach().double().requires_grad_() for v in inputs]
    want = _fwd_bwd(eager, d64, dy.double())()
    got = _fwd_bwd(ours, inputs, dy)()
    with torch.no_grad():
        y_err = float((ours(*inputs).double() - eager(*d64)).abs().max())
    for a, e in zip(got, want):
        rel = float((a.double() - e).abs().max()) / max(1.0, float(e.abs().max()))
        assert rel < 1e-3, f"groupnorm_film_silu gradient differs from eager by {rel:.2e}"
    assert y_err < 1e-4, f"groupnorm_film_silu differs from eager by {y_err:.2e}"

    layout = "channels_last" if channels_last else "nchw"
    case = f"gfs B={B} C={C} {H}x{H} G={G} {layout}"
    times = {"fused": bench(_fwd_bwd(ours, inputs, dy), device),
             "eager": bench(_fwd_bwd(eager, inputs, dy), device)}
    if compile_peer:
        torch._dynamo.reset()
        compiled = torch.compile(eager, dynamic=False)
        times["torch_compile"] = bench(_fwd_bwd(compiled, inputs, dy), device)
    nbytes = 5 * inputs[0].numel() * inputs[0].element_size()
    for impl, t in times.items():
        rows.append({"kind": "time", "op": "groupnorm_film_silu", "case": case, "impl": impl,
                     "time_s": t, "gbs": nbytes / t / 1e9,
                     "of_copy_ceiling": nbytes / t / 1e9 / ceil["copy_gbs"],
                     "max_abs_err": y_err if impl == "fused" else None})
    ratios += ratio_rows(case, times, "fused")
    print(case + ": " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items())
          + f" (x{times['eager'] / times['fused']:.2f} vs eager)", flush=True)


def bn_case(B, C, H, device, rows, ratios, ceil, compile_peer):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, H, H, generator=g).to(device).requires_grad_()
    gain = (torch.rand(C, generator=g) + 0.5).to(device).requires_grad_()
    dy = torch.randn(x.shape, generator=g).to(device)
    ours = lambda x, gain: bf_batchnorm_relu(x, gain)[0]
    eager = lambda x, gain: reference.bf_batchnorm_relu(x, gain)[0]
    d64 = [x.detach().double().requires_grad_(), gain.detach().double().requires_grad_()]
    want = _fwd_bwd(eager, d64, dy.double())()
    got = _fwd_bwd(ours, [x, gain], dy)()
    for a, e in zip(got, want):
        rel = float((a.double() - e).abs().max()) / max(1.0, float(e.abs().max()))
        assert rel < 1e-3, f"bf_batchnorm_relu gradient differs from eager by {rel:.2e}"
    case = f"bf_bn_relu B={B} C={C} {H}x{H}"
    times = {"fused": bench(_fwd_bwd(ours, [x, gain], dy), device),
             "eager": bench(_fwd_bwd(eager, [x, gain], dy), device)}
    if compile_peer:
        torch._dynamo.reset()
        compiled = torch.compile(eager, dynamic=False)
        times["torch_compile"] = bench(_fwd_bwd(compiled, [x, gain], dy), device)
    nbytes = 5 * x.numel() * x.element_size()
    for impl, t in times.items():
        rows.append({"kind": "time", "op": "bf_batchnorm_relu", "case": case, "impl": impl,
                     "time_s": t, "gbs": nbytes / t / 1e9,
                     "of_copy_ceiling": nbytes / t / 1e9 / ceil["copy_gbs"]})
    ratios += ratio_rows(case, times, "fused")
    print(case + ": " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in times.items())
          + f" (x{times['eager'] / times['fused']:.2f} vs eager)", flush=True)


def precond_loss_share(B, H, device, rows):
    """Time of the EDM preconditioning + weighted-loss arithmetic (forward + backward, the
    part a fused op would replace) vs one training step of the default UNet."""
    from pydiffgen.diffusion.losses import edm_weight
    from pydiffgen.models import build
    from pydiffgen.models.blocks import EDMPrecond

    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 1, H, H, generator=g).to(device)
    n = torch.randn(B, 1, H, H, generator=g).to(device)
    sigma = torch.exp(torch.randn(B, generator=g) * 1.2 - 1.2).to(device)
    F_x = torch.randn(B, 1, H, H, generator=g).to(device).requires_grad_()

    def arithmetic():
        # what surrounds F in one step: y = x + σn, c_in·y, D = c_skip·y + c_out·F, λ-MSE
        y = x + sigma.view(-1, 1, 1, 1) * n
        c_skip, c_out, c_in, _ = EDMPrecond.coefficients(sigma, 0.5)
        _ = c_in.view(-1, 1, 1, 1) * y
        D = c_skip.view(-1, 1, 1, 1) * y + c_out.view(-1, 1, 1, 1) * F_x
        loss = (edm_weight(sigma) * (D - x).square().flatten(1).mean(1)).mean()
        return torch.autograd.grad(loss, F_x)

    model = build("unet").to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        y = x + sigma.view(-1, 1, 1, 1) * n
        loss = (edm_weight(sigma) * (model(y, sigma) - x).square().flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_arith = bench(arithmetic, device)
    t_step = bench(step, device, min_run_time=1.0)
    rows.append({"kind": "time", "op": "edm_precond_loss", "case": f"B={B} {H}x{H}",
                 "impl": "eager arithmetic", "time_s": t_arith, "step_s": t_step,
                 "share_of_step": t_arith / t_step})
    print(f"EDM preconditioning + loss arithmetic B={B} {H}x{H}: {t_arith * 1e3:.3f} ms of a "
          f"{t_step * 1e3:.1f} ms UNet training step ({100 * t_arith / t_step:.2f}%)",
          flush=True)


def main():
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    meta = metadata(device)
    ceil = ceilings(device)
    rows, ratios = [], []
    compile_peer = device == "cuda" or not args.quick
    if args.quick:
        gfs_cases = [(16, 64, 16, 32, False), (1, 32, 32, 32, False)]
        bn_cases = [(16, 64, 16)]
        precond = [(16, 16)]
    elif device == "cuda":
        # the default UNet's chains (widths 32/64/128 at 32/16/8) and a 64×64 level, at
        # batch 1 and 256, NCHW and channels-last
        gfs_cases = [(B, C, H, 32, cl) for B in (1, 256)
                     for C, H in ((32, 32), (64, 16), (128, 8), (128, 64)) for cl in (False, True)]
        bn_cases = [(1, 64, 64), (256, 64, 32), (256, 128, 16)]
        precond = [(256, 32)]
    else:
        gfs_cases = [(B, C, H, 32, False) for B in (64, 1)
                     for C, H in ((64, 16), (32, 32), (128, 8))] + [(64, 64, 16, 32, True)]
        bn_cases = [(64, 64, 16), (64, 32, 32), (64, 128, 8)]
        precond = [(64, 16), (64, 32)]
    for i, (B, C, H, G, cl) in enumerate(gfs_cases):
        gfs_case(B, C, H, G, device, rows, ratios, ceil,
                 compile_peer and (device == "cuda" or i == 0), channels_last=cl)
    for i, (B, C, H) in enumerate(bn_cases):
        bn_case(B, C, H, device, rows, ratios, ceil,
                compile_peer and (device == "cuda" or i == 0))
    for B, H in precond:
        precond_loss_share(B, H, device, rows)
    print_table([r for r in rows if r["op"] != "edm_precond_loss"],
                ["case", "impl", "time_s", "gbs", "of_copy_ceiling"])
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    path = write_json("bench_blocks", rows + ratios, {**meta, "ceilings": ceil})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
