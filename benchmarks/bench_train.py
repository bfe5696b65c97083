"""Training throughput (images/s) of pydiffgen.train for the default UNet and a bias-free UNet.

Correctness first: a short run must lower the denoising error on held-out noise. Then,
per (model, resolution): warm-up, then ``--repeats`` timed runs of ``--steps`` training
steps through ``pydiffgen.train`` (the real loop: batch sampling, loss, backward, Adam,
EMA, clipping); the median images/s is reported. For reference the same run also times a
bare PyTorch step (forward + backward + Adam on a fixed batch, ``torch.utils.benchmark``
``blocked_autorange`` median), so ``overhead`` = bare / train shows what the loop adds.

    python benchmarks/bench_train.py            # 16×16 and 32×32, batch 64, CPU
    python benchmarks/bench_train.py --quick    # fewer steps and repeats

Fast-training variants of the default UNet, timed interleaved in the same run (so machine
load hits them alike): eager blocks (``fused=False``), fused blocks (the default),
fused + channels-last, fused + bf16 autocast (on CPU: ``autocast_cpu``), and (not in
``--quick``) ``torch.compile``; images/s ratios against eager go to "ratio" rows. The
bf16 run's loss curve is compared with float32 on a fixed seed (same batches and noise).

Writes JSON rows (device, threads, load average, torch version, git sha) to
benchmarks/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydiffgen.io import write_json  # noqa: E402
from pydiffgen.models.base import build  # noqa: E402
from pydiffgen.training import TrainConfig, train  # noqa: E402

MODELS = [
    ("unet", {}, "edm"),  # the default σ-conditioned UNet, EDM training
    ("bf_unet", {"width": 32, "levels": 2}, "kadkhodaie"),  # blind, Kadkhodaie training
]


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-pass filtered noise, [n, 1, size, size]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False)
    return (x / x.abs().amax(dim=(1, 2, 3), keepdim=True)).contiguous()


def heldout_mse(model, data, sigma=0.5) -> float:
    g = torch.Generator().manual_seed(99)
    x = data[:64]
    y = x + sigma * torch.randn(x.shape, generator=g)
    model.eval()
    with torch.no_grad():
        return (model(y, torch.full((x.shape[0],), sigma)) - x).square().mean().item()


def check_correctness(device: str) -> dict:
    """A short run must lower the held-out denoising error of both models."""
    data = images(256, 16)
    out = {}
    for name, kw, dist in MODELS:
        torch.manual_seed(0)
        model = build(name, **kw)
        before = heldout_mse(model, data)
        res = train(model, data, TrainConfig(steps=60, batch_size=32, sigma_dist=dist, ema=None,
                                             device=device), progress=False)
        after = heldout_mse(res.model.cpu(), data)
        ok = after < 0.8 * before
        print(f"correctness {name:8s}: held-out MSE at σ=0.5 {before:.4f} -> {after:.4f} "
              f"({'ok' if ok else 'FAILED'})")
        if not ok:
            raise SystemExit(f"{name}: training did not lower the denoising error")
        out[name] = {"mse_before": before, "mse_after": after}
    return out


def bare_step_rate(model, data, batch: int, device: str) -> float:
    """images/s of a bare forward + backward + Adam step (no sampling, EMA, clipping)."""
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = data[:batch].to(device)
    sigma = torch.full((batch,), 0.5, device=device)
    y = x + sigma.view(-1, 1, 1, 1) * torch.randn_like(x)

    def step():
        loss = (model(y, sigma) - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    m = tbench.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    m = m.blocked_autorange(min_run_time=2.0)
    return batch / m.median


def bench(name, kw, dist, size, batch, steps, repeats, device) -> dict:
    data = images(max(1024, batch), size)
    torch.manual_seed(0)
    model = build(name, **kw)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = dict(batch_size=batch, sigma_dist=dist, device=device, log_every=10**9)
    train(model, data, TrainConfig(steps=3, **cfg), progress=False)  # warm-up
    rates = []
    for r in range(repeats):
        res = train(model, data, TrainConfig(steps=steps, seed=r, **cfg), progress=False)
        rates.append(res.images_per_s)
    bare = bare_step_rate(model, data, batch, device)
    med = statistics.median(rates)
    return {
        "bench": "train",
        "model": name,
        "model_kwargs": kw,
        "n_params": n_params,
        "sigma_dist": dist,
        "resolution": size,
        "batch_size": batch,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "images_per_s": med,
        "images_per_s_all": rates,
        "ms_per_step": 1e3 * batch / med,
        "bare_step_images_per_s": bare,
        "overhead": bare / med,
    }


def _variants(device: str, quick: bool):
    """(label, model kwargs, TrainConfig options) of the fast-training comparison."""
    bf16 = {"autocast": True} if device.startswith("cuda") else {"autocast_cpu": True}
    out = [("eager", {"fused": False}, {"autocast": False}),
           ("fused", {}, {"autocast": False}),
           ("fused+channels_last", {}, {"autocast": False, "channels_last": True}),
           ("fused+bf16", {}, bf16)]
    if not quick:
        out.append(("fused+compile", {}, {"autocast": False, "compile": True}))
    return out


def bench_variants(size, batch, steps, repeats, device, quick) -> list[dict]:
    """images/s of the default UNet under each variant; repeats interleaved."""
    data = images(max(1024, batch), size)
    variants = _variants(device, quick)
    models, rates = {}, {}
    for label, mkw, opts in variants:
        torch.manual_seed(0)
        models[label] = build("unet", **mkw)
        cfg = TrainConfig(steps=3, batch_size=batch, sigma_dist="edm", device=device,
                          log_every=10**9, **opts)
        train(models[label], data, cfg, progress=False)  # warm-up (and compilation)
        rates[label] = []
    for r in range(repeats):
        for label, _, opts in variants:
            cfg = TrainConfig(steps=steps, batch_size=batch, sigma_dist="edm", device=device,
                              seed=r, log_every=10**9, **opts)
            rates[label].append(train(models[label], data, cfg, progress=False).images_per_s)
    rows = []
    for label, _, opts in variants:
        med = statistics.median(rates[label])
        rows.append({"bench": "train_variant", "kind": "time", "model": "unet",
                     "case": f"unet {size}x{size} batch {batch}", "impl": label,
                     "options": opts, "images_per_s": med, "images_per_s_all": rates[label],
                     "time_s": batch / med})
    eager = rows[0]["time_s"]
    for row in rows[1:]:
        rows.append({"kind": "ratio", "case": row["case"], "ours": row["impl"],
                     "peer": "eager", "ours_s": row["time_s"], "peer_s": eager,
                     "speedup": eager / row["time_s"]})
    return rows


def bf16_loss_curve(size, batch, steps, device) -> dict:
    """Losses of the default UNet, float32 vs bf16 autocast, same seed (batches, noise)."""
    data = images(1024, size)
    opts = {"autocast": True} if device.startswith("cuda") else {"autocast_cpu": True}
    curves = {}
    for label, o in (("fp32", {"autocast": False}), ("bf16", opts)):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=steps, batch_size=batch, sigma_dist="edm", device=device,
                          ema=None, log_every=10**9, **o)
        curves[label] = train(build("unet"), data, cfg, progress=False).losses
    a, b = torch.tensor(curves["fp32"]), torch.tensor(curves["bf16"])
    tail = max(1, steps // 4)
    # noise level of the curve itself: step-to-step spread of the float32 losses at the end
    spread = float(a[-tail:].std())
    return {"bench": "train_bf16_loss", "kind": "loss_curve", "steps": steps,
            "resolution": size, "batch_size": batch,
            "fp32_tail_mean": float(a[-tail:].mean()), "bf16_tail_mean": float(b[-tail:].mean()),
            "fp32_tail_std": spread,
            "median_rel_diff_per_step": float(((b - a).abs() / a).median()),
            "losses_fp32": curves["fp32"], "losses_bf16": curves["bf16"]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="16,32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="steps=3, repeats=3")
    p.add_argument("--variants-only", action="store_true",
                   help="only the fast-training comparison of the default UNet")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick or os.environ.get("PYDIFFGEN_BENCH_QUICK") == "1":
        args.quick = True
        args.steps, args.repeats = 3, 3

    env = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if args.device.startswith("cuda"):
        env["device"] = torch.cuda.get_device_name(torch.device(args.device))
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()})"
    print(f"device {env['device']}, {env['threads']} threads, torch {env['torch']}, "
          f"git {env['git_sha']}, load average {env['loadavg_start']}")
    correctness = check_correctness(args.device)

    rows = []
    size0 = int(args.sizes.split(",")[0])
    print(f"\nfast-training variants, default UNet, {size0}x{size0}, batch {args.batch}")
    for row in bench_variants(size0, args.batch, args.steps, args.repeats, args.device,
                              args.quick):
        row.update(env)
        rows.append(row)
        if row["kind"] == "time":
            print(f"  {row['impl']:22s} {row['images_per_s']:9.1f} img/s")
        else:
            print(f"  {row['ours']:22s} x{row['speedup']:.2f} vs eager")
    curve = bf16_loss_curve(size0, args.batch if not args.quick else 32,
                            40 if args.quick else 300, args.device)
    curve.update(env)
    rows.append(curve)
    print(f"  bf16 vs fp32 loss ({curve['steps']} steps, same seed): tail mean "
          f"{curve['bf16_tail_mean']:.4f} vs {curve['fp32_tail_mean']:.4f} (fp32 step-to-step "
          f"std {curve['fp32_tail_std']:.4f}); median per-step relative difference "
          f"{curve['median_rel_diff_per_step']:.3f}")
    if args.variants_only:
        write_json(args.out, rows)
        print(f"\nwrote {len(rows)} rows to {args.out}")
        return rows
    print(f"\n{'model':26s} {'res':>5s} {'batch':>5s} {'params':>9s} {'img/s':>9s} "
          f"{'ms/step':>9s} {'bare img/s':>10s} {'overhead':>8s}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for name, kw, dist in MODELS:
            row = bench(name, kw, dist, size, args.batch, args.steps, args.repeats, args.device)
            row.update(env, correctness=correctness[name],
                       loadavg_end=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
            rows.append(row)
            label = name + (f"({','.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")
            print(f"{label:26s} {size:>3d}^2 {args.batch:>5d} {row['n_params']/1e6:>8.2f}M "
                  f"{row['images_per_s']:>9.1f} {row['ms_per_step']:>9.1f} "
                  f"{row['bare_step_images_per_s']:>10.1f} {row['overhead']:>8.2f}")
    write_json(args.out, rows)
    print(f"\nwrote {len(rows)} rows to {args.out}")
    return rows


if __name__ == "__main__":
    main()
