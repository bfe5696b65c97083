import math

import pytest
import torch

from pydiffgen.analysis import EmpiricalDenoiser
from pydiffgen.analysis.toy2d import (
    BlurredOptimum,
    Toy2DConfig,
    circle_split,
    fit_delta,
    flow_field,
    toy2d_experiment,
)
from pydiffgen.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_circle_split_alternates_points():
    tr, ho = circle_split(8)
    assert tr.shape == ho.shape == (4, 2)
    assert torch.allclose(tr.norm(dim=1), torch.ones(4))
    angles = torch.atan2(torch.cat([tr, ho])[:, 1], torch.cat([tr, ho])[:, 0])
    assert torch.allclose(angles[4], torch.tensor(math.pi / 4))  # held-out between train
    with pytest.raises(InputError, match="even"):
        circle_split(9)


def test_blurred_optimum_is_the_posterior_mean_of_smeared_points():
    tr, _ = circle_split(12)
    y = torch.tensor([[0.3, 0.9], [-1.2, 0.1], [0.0, 0.0]], dtype=torch.float64)
    t, delta = 0.4, 0.25
    # E[z | y] for z = y_i + δε, y = z + t n: Σ_i w_i (y_i + δ²/(δ² + t²)(y − y_i)),
    # w_i ∝ exp(−‖y − y_i‖²/(2(t² + δ²)))
    Y = tr.double()
    logits = -((y[:, None] - Y[None]) ** 2).sum(-1) / (2 * (t**2 + delta**2))
    w = logits.softmax(1)
    k = delta**2 / (delta**2 + t**2)
    expected = (w[:, :, None] * (Y[None] + k * (y[:, None] - Y[None]))).sum(1)
    got = BlurredOptimum(tr.double(), delta)(y, t)
    assert torch.allclose(got, expected, atol=1e-10)
    # δ = 0 is the optimum itself
    yf = y.float()
    assert torch.allclose(BlurredOptimum(tr, 0.0)(yf, t), EmpiricalDenoiser(tr)(yf, t))
    with pytest.raises(InputError, match="delta"):
        BlurredOptimum(tr, -0.1)


def test_flow_field_of_the_optimum_points_at_training_points():
    tr, _ = circle_split(16)
    grid, disp = flow_field(EmpiricalDenoiser(tr), 0.01, extent=1.2, resolution=9)
    assert grid.shape == disp.shape == (81, 2)
    target = grid + disp
    d, idx = torch.cdist(grid, tr).topk(2, largest=False)
    clear = (d[:, 1] - d[:, 0]) > 0.05  # not (nearly) equidistant from two points
    assert int(clear.sum()) > 60
    # small σ: every clear grid point snaps to its nearest training point
    assert torch.allclose(target[clear], tr[idx[clear, 0]], atol=1e-4)


def test_toy_runs_in_seconds_and_separates_the_three_denoisers():
    cfg = Toy2DConfig(n_points=16, steps=200, hidden=64, depth=2, n_gap_sigmas=12,
                      noise_draws=16, n_samples=128, sampler_steps=16, grid=7,
                      flow_sigmas=(0.1, 1.0))
    r = toy2d_experiment(cfg)
    assert r["seconds"] < 60
    opt, mlp, blur = (r["denoisers"][k] for k in ("optimum", "mlp", "blurred"))
    assert opt["memorized_fraction"] == 1.0 and opt["nearer_heldout_fraction"] == 0.0
    assert opt["gap"]["gap"][0] == math.inf  # the optimum returns training points exactly
    assert blur["gap"]["peak_gap"] < math.inf
    assert blur["memorized_fraction"] < 1.0  # the blur lets samples leave training points
    for d in (opt, mlp, blur):
        assert set(d["flow"]) == {0.1, 1.0}
        assert d["samples"].shape == (128, 2)
        assert len(d["gap"]["gap"]) == 12
    assert len(r["losses"]) == 200
    assert r["fit_delta"]["delta"] in r["fit_delta"]["deltas"]


def test_fit_delta_recovers_a_known_blur():
    tr, _ = circle_split(16)
    fit = fit_delta(BlurredOptimum(tr, 0.2), tr, [0.05, 0.2, 0.5], deltas=[0.0, 0.1, 0.2, 0.3])
    assert fit["delta"] == 0.2 and fit["rmse"] < 1e-5
