"""Synthetic data sets: known structure, determinism, ranges."""

import math

import pytest
import torch

from pydiffgen.data import gaussian_params, load, toy2d
from pydiffgen.errors import InputError


@pytest.mark.parametrize("exponent,channels,rho", [(2.0, 1, 0.0), (1.0, 2, 0.5)])
def test_gaussian_matches_exact_params(exponent, channels, rho):
    size, n = 6, 40_000
    x = load("gaussian", n=n, size=size, channels=channels, exponent=exponent,
             channel_corr=rho, seed=3)
    assert tuple(x.shape) == (n, channels, size, size) and x.dtype == torch.float32
    mean, cov = gaussian_params(size, channels, exponent, channel_corr=rho)
    d = channels * size * size
    assert mean.shape == (d,) and cov.shape == (d, d) and cov.dtype == torch.float64
    flat = x.reshape(n, -1).double()
    emp_mean = flat.mean(0)
    emp_cov = torch.cov(flat.T)
    # sampling error: std of a covariance entry ≈ std²·sqrt(2/n) ≈ 3e-4 at std = 0.2
    assert float((emp_mean - mean).abs().max()) < 6 * 0.2 / math.sqrt(n)
    assert float((emp_cov - cov).abs().max()) < 2.5e-3
    assert torch.allclose(cov.diagonal(), torch.full((d,), 0.04, dtype=torch.float64))


def test_gaussian_params_structure():
    _, cov = gaussian_params(8, 1, 2.0)
    assert torch.allclose(cov, cov.T)
    assert float(torch.linalg.eigvalsh(cov).min()) > 0
    # stationary and periodic: shifting both pixels by one column keeps the covariance
    assert torch.isclose(cov[0, 3], cov[1, 4]) and torch.isclose(cov[0, 1], cov[0, 7])
    # a red spectrum: correlation falls with distance (up to half the period)
    assert cov[0, 0] > cov[0, 1] > cov[0, 2] > cov[0, 3] > cov[0, 4]
    _, white = gaussian_params(4, 1, spectrum="white", std=0.5)
    assert torch.allclose(white, 0.25 * torch.eye(16, dtype=torch.float64))
    with pytest.raises(InputError, match="spectrum"):
        gaussian_params(4, spectrum="pink")
    with pytest.raises(InputError, match="channel_corr"):
        gaussian_params(4, 3, channel_corr=-0.9)


def test_gaussian_seed_determinism():
    a = load("gaussian", n=10, seed=5)
    assert torch.equal(a, load("gaussian", n=10, seed=5))
    assert not torch.equal(a, load("gaussian", n=10, seed=6))


@pytest.mark.parametrize("name", ["disks", "calpha"])
def test_image_manifolds_shape_range_determinism(name):
    x, info = load(name, n=20, size=24, seed=1, return_info=True)
    assert tuple(x.shape) == (20, 1, 24, 24) and x.dtype == torch.float32 and x.is_contiguous()
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x, load(name, n=20, size=24, seed=1))
    assert not torch.equal(x, load(name, n=20, size=24, seed=2))
    # every image has structure (two distinct regions), none is flat
    assert bool((x.reshape(20, -1).std(1) > 1e-3).all())
    assert info["groups"] is None


def test_disks_params_describe_the_image():
    x, info = load("disks", n=50, size=32, seed=0, return_info=True)
    cx, cy, r, fg, bg = info["params"].double().T
    assert bool(((r >= 4) & (r <= 8)).all())
    assert bool(((cx - r >= 0) & (cx + r <= 31) & (cy - r >= 0) & (cy + r <= 31)).all())
    unit = (x[:, 0].double() + 1) / 2
    i = torch.arange(50)
    centre = unit[i, cy.round().long(), cx.round().long()]
    assert torch.allclose(centre, fg, atol=1e-5)
    assert torch.allclose(unit[:, 0, 0], bg, atol=1e-5)
    # the antialiased edge: the foreground area equals πr² up to a fraction of the rim
    area = ((unit - bg[:, None, None]) / (fg - bg)[:, None, None]).sum((1, 2))
    keep = (fg - bg).abs() > 0.1
    assert torch.allclose(area[keep], math.pi * r[keep] ** 2, rtol=0.05)


def test_calpha_intensity_jumps_at_the_contour():
    x, info = load("calpha", n=100, size=32, alpha=3.0, seed=4, return_info=True)
    rows = info["contours"]
    assert rows.shape == (100, 32) and rows.dtype == torch.int64
    assert abs(float(rows.double().mean()) - 16) < 1.5  # contours centred vertically
    unit = (x[:, 0].double() + 1) / 2
    # steps of 3 rows across the blurred contour vs 3-row steps anywhere: the two smooth
    # backgrounds ([u, 1] and [0, u']) differ by much more than either varies
    n_idx, col = torch.meshgrid(torch.arange(100), torch.arange(32), indexing="ij")
    inside = (rows >= 2) & (rows <= 30)
    r = rows[inside]
    jump = (unit[n_idx[inside], r + 1, col[inside]] - unit[n_idx[inside], r - 2, col[inside]])
    anywhere = (unit[:, 3:] - unit[:, :-3]).abs().mean()
    assert float(jump.abs().mean()) > 3 * float(anywhere)


def test_calpha_smoother_contours_for_larger_alpha():
    rough = load("calpha", n=200, alpha=1.0, return_info=True)[1]["contours"].double()
    smooth = load("calpha", n=200, alpha=4.0, return_info=True)[1]["contours"].double()
    tv = lambda c: c.diff(dim=1).abs().mean()
    assert tv(smooth) < tv(rough)


def test_toy2d_circle_and_mog():
    pts = toy2d("circle", n=12)
    assert pts.shape == (12, 2) and pts.dtype == torch.float32
    assert torch.allclose(pts.norm(dim=1), torch.ones(12), atol=1e-6)
    assert torch.allclose(pts[3], torch.tensor([0.0, 1.0]), atol=1e-6)  # angle 2π·3/12
    jittered = toy2d("circle", n=12, jitter=0.1, seed=1)
    assert torch.allclose(jittered.norm(dim=1), torch.ones(12), atol=1e-6)
    assert not torch.allclose(jittered, pts)
    mog = toy2d("mog", n=4000, k=4, radius=2.0, std=0.1, seed=2)
    assert mog.shape == (4000, 2)
    assert torch.equal(mog, toy2d("mog", n=4000, k=4, radius=2.0, std=0.1, seed=2))
    centers = torch.tensor([[2.0, 0], [0, 2.0], [-2.0, 0], [0, -2.0]])
    nearest = torch.cdist(mog, centers).argmin(1)
    for j in range(4):
        members = mog[nearest == j]
        assert abs(len(members) / 4000 - 0.25) < 0.04
        assert torch.allclose(members.mean(0), centers[j], atol=0.02)
        assert abs(float(members.std(0).mean()) - 0.1) < 0.01
    only_first = toy2d("mog", n=100, centers=centers, weights=[1, 0, 0, 0])
    assert torch.cdist(only_first, centers).argmin(1).eq(0).all()
    with pytest.raises(InputError, match="valid options: jitter"):
        toy2d("circle", n=5, std=0.1)
    with pytest.raises(InputError, match="kind"):
        toy2d("spiral")
