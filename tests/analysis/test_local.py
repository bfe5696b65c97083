"""Local / patch closed-form denoisers (LS, ELS, PSPC) against dense float64 references
written here, and their known answers: whole-image patches give the empirical optimum,
1×1 patches the per-pixel posterior of pixel values."""

import pytest
import torch

from pydiffgen.analysis import (
    EmpiricalDenoiser,
    LocalEmpiricalDenoiser,
    PatchPosteriorDenoiser,
    calibrate_patch_size,
    image_patches,
    r_squared,
)
from pydiffgen.errors import InputError

SIGMAS = (0.01, 0.1, 1.0, 10.0)


def _dense_patches(x, s):
    """[B, H, W, C·s·s] by explicit loops over a zero-padded copy (independent of unfold)."""
    B, C, H, W = x.shape
    r = s // 2
    pad = torch.zeros(B, C, H + 2 * r, W + 2 * r, dtype=torch.float64)
    pad[:, :, r:r + H, r:r + W] = x.double()
    out = torch.empty(B, H, W, C * s * s, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            out[:, i, j] = pad[:, :, i:i + s, j:j + s].reshape(B, -1)
    return out


def _softmax_mean(q, keys, values, sigma):
    """Σ softmax(−‖q − k‖²/2σ²) v, float64 dense: q [P], keys [K, P], values [K, V]."""
    w = torch.softmax(-((keys - q) ** 2).sum(1) / (2 * sigma**2), 0)
    return w @ values


def _dense_local(y, train, s, sigma, equivariant):
    B, C, H, W = y.shape
    Q, K = _dense_patches(y, s), _dense_patches(train, s)  # [B, H, W, P], [N, H, W, P]
    c = torch.arange(C) * s * s + (s // 2) * s + s // 2
    out = torch.empty(B, C, H, W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            keys = K.reshape(-1, K.shape[-1]) if equivariant else K[:, i, j]
            for b in range(B):
                out[b, :, i, j] = _softmax_mean(Q[b, i, j], keys, keys[:, c], sigma)
    return out


def _dense_pspc(y, train, s, sigma, equivariant):
    B, C, H, W = y.shape
    r = s // 2
    Q, K = _dense_patches(y, s), _dense_patches(train, s)
    total = torch.zeros(B, C, H + 2 * r, W + 2 * r, dtype=torch.float64)
    count = torch.zeros(H + 2 * r, W + 2 * r, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            keys = K.reshape(-1, K.shape[-1]) if equivariant else K[:, i, j]
            for b in range(B):
                est = _softmax_mean(Q[b, i, j], keys, keys, sigma)
                total[b, :, i:i + s, j:j + s] += est.reshape(C, s, s)
            count[i:i + s, j:j + s] += 1
    return (total / count)[:, :, r:r + H, r:r + W]


@pytest.fixture(scope="module")
def odd():
    gen = torch.Generator().manual_seed(3)
    train = torch.rand(11, 3, 5, 7, generator=gen, dtype=torch.float64) * 2 - 1
    y = train[:4] + 0.3 * torch.randn(4, 3, 5, 7, generator=gen, dtype=torch.float64)
    return train, y


@pytest.fixture(scope="module")
def digits():
    from pydiffgen.data import load

    x = load("digits")[:28]  # [-1, 1], 8×8, many near-equal pixels and patches (ties)
    return x[:24], x[24:]


def test_patches_match_loops(odd):
    train, _ = odd
    rows = image_patches(train, 3)  # [N, H·W, P]
    assert torch.equal(rows.reshape(11, 5, 7, -1), _dense_patches(train, 3))


@pytest.mark.parametrize("equivariant", [False, True])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_local_matches_dense_reference(odd, sigma, equivariant):
    train, y = odd
    got = LocalEmpiricalDenoiser(train, 3, equivariant=equivariant)(y, sigma)
    want = _dense_local(y, train, 3, sigma, equivariant)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("equivariant", [True, False])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_pspc_matches_dense_reference(odd, sigma, equivariant):
    train, y = odd
    got = PatchPosteriorDenoiser(train, 3, equivariant=equivariant)(y, sigma)
    want = _dense_pspc(y, train, 3, sigma, equivariant)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_whole_image_patch_is_the_empirical_optimum(odd, sigma):
    train, y = odd
    # a 9 × 13 patch holds the whole 5 × 7 image at every location (zero padding elsewhere)
    want = EmpiricalDenoiser(train)(y, sigma)
    for model in (LocalEmpiricalDenoiser(train, (9, 13)),
                  PatchPosteriorDenoiser(train, (9, 13), equivariant=False)):
        torch.testing.assert_close(model(y, sigma), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_one_pixel_patch_is_the_per_pixel_posterior(odd, sigma):
    train, y = odd
    N, C, H, W = train.shape
    # LS: the posterior of the pixel's C values among the N training pixels there
    w = torch.softmax(-((y[:, None] - train[None]) ** 2).sum(2) / (2 * sigma**2), 1)
    want = (w[:, :, None] * train[None]).sum(1)  # [B, C, H, W]
    got = LocalEmpiricalDenoiser(train, 1)(y, sigma)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # ELS: among all N·H·W training pixel values
    vals = train.permute(0, 2, 3, 1).reshape(-1, C)  # [N·H·W, C]
    q = y.permute(0, 2, 3, 1).reshape(-1, 1, C)
    w = torch.softmax(-((q - vals) ** 2).sum(2) / (2 * sigma**2), 1)
    want = (w @ vals).reshape(len(y), H, W, C).permute(0, 3, 1, 2)
    got = LocalEmpiricalDenoiser(train, 1, equivariant=True)(y, sigma)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # PSPC with 1×1 patches is the same thing
    torch.testing.assert_close(PatchPosteriorDenoiser(train, 1)(y, sigma), got,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_digits_float32_with_ties(digits, sigma):
    train, held = digits
    y = held + sigma * torch.randn(held.shape, generator=torch.Generator().manual_seed(1))
    for equivariant in (False, True):
        got = LocalEmpiricalDenoiser(train, 3, equivariant=equivariant)(y, sigma)
        assert got.dtype == torch.float32
        want = _dense_local(y, train, 3, sigma, equivariant)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got = PatchPosteriorDenoiser(train, 3)(y, sigma)
    torch.testing.assert_close(got.double(), _dense_pspc(y, train, 3, sigma, True),
                               rtol=1e-5, atol=1e-5)


def test_patch_size_as_a_function_of_sigma(odd):
    train, y = odd
    model = LocalEmpiricalDenoiser(train, lambda s: 1 if s < 1 else 3)
    sig = torch.tensor([0.1, 2.0, 0.1, 2.0], dtype=torch.float64)
    got = model(y, sig)
    torch.testing.assert_close(got[0::2], LocalEmpiricalDenoiser(train, 1)(y[0::2], 0.1))
    torch.testing.assert_close(got[1::2], LocalEmpiricalDenoiser(train, 3)(y[1::2], 2.0))


def test_bad_arguments(odd):
    train, y = odd
    for size in (2, 0, (3, 4), "3", True):
        with pytest.raises(InputError, match="patch_size"):
            LocalEmpiricalDenoiser(train, size)
    with pytest.raises(InputError, match="y must have shape"):
        LocalEmpiricalDenoiser(train, 3)(y[:, :2], 1.0)
    with pytest.raises(InputError, match="train"):
        LocalEmpiricalDenoiser(train[0], 3)
    with pytest.raises(InputError, match=r"patch_size\(1"):
        LocalEmpiricalDenoiser(train, lambda s: 4)(y, 1.0)


def test_calibration_finds_the_generating_patch_size(odd):
    train, y = odd
    net = LocalEmpiricalDenoiser(train, 3, equivariant=True)  # a "network" that is ELS-3
    cal = calibrate_patch_size(net, train, y, [0.1, 1.0], candidates=(1, 3, 5))
    assert cal.model == "ELS" and cal.best == [3, 3]
    assert cal.best_r2 == pytest.approx([1.0, 1.0], abs=1e-12)
    assert cal.best_rmse == pytest.approx([0.0, 0.0], abs=1e-12)
    # at σ = 1 the other sizes are told apart (at σ = 0.1 sizes 3 and 5 both pick the
    # nearest training patches, so they tie)
    assert cal.r2[1][0] < 0.9 and cal.r2[1][2] < 0.9
    assert cal.patch_size(0.5) == 3
    assert r_squared(y, y) == 1.0
    pspc = calibrate_patch_size(PatchPosteriorDenoiser(train, 5), train, y, [1.0],
                                candidates=(3, 5), model="PSPC")
    assert pspc.best == [5] and pspc.best_r2[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(InputError, match="model must be one of"):
        calibrate_patch_size(net, train, y, [1.0], model="ls")
    with pytest.raises(InputError, match="candidates"):
        calibrate_patch_size(net, train, y, [1.0], candidates=(2,))
