import math

import pytest
import torch

from pydiffgen.errors import InputError
from pydiffgen.metrics import (
    denoising_psnr_curve,
    generalization_score,
    memorization,
    nearest_cosine,
    paired_cosine,
    psnr,
    sigma_for_psnr,
)


def test_paired_cosine_identical_and_opposite():
    x = torch.randn(17, 1, 5, 7)
    assert torch.allclose(paired_cosine(x, x), torch.ones(17))
    assert torch.allclose(paired_cosine(x, -x), -torch.ones(17))
    assert torch.allclose(paired_cosine(x, 3.5 * x), torch.ones(17))


def test_paired_cosine_matches_formula_and_centering():
    a, b = torch.randn(9, 3, 4, 4), torch.randn(9, 3, 4, 4)
    fa, fb = a.reshape(9, -1).double(), b.reshape(9, -1).double()
    expected = torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    assert torch.allclose(paired_cosine(a, b).double(), expected, atol=1e-6)
    # a constant offset changes raw cosine but not the centred one
    centred = paired_cosine(a, b, center=True)
    assert torch.allclose(paired_cosine(a + 5, b, center=True), centred, atol=1e-6)
    assert not torch.allclose(paired_cosine(a + 5, b), paired_cosine(a, b), atol=1e-3)


def test_nearest_cosine_finds_copies_and_index():
    train = torch.randn(301, 1, 6, 6)
    pick = torch.tensor([5, 0, 300, 123])
    vals, idx = nearest_cosine(train[pick] * 2.0, train, return_index=True)
    assert torch.equal(idx, pick)
    assert torch.allclose(vals, torch.ones(4))


def test_nearest_cosine_matches_bruteforce():
    s, t = torch.randn(23, 2, 3, 3), torch.randn(131, 2, 3, 3)
    fs = torch.nn.functional.normalize(s.reshape(23, -1).double(), dim=1)
    ft = torch.nn.functional.normalize(t.reshape(131, -1).double(), dim=1)
    assert torch.allclose(nearest_cosine(s, t).double(), (fs @ ft.T).max(1).values, atol=1e-6)


def test_nearest_cosine_exclude_self_is_background():
    train = torch.randn(40, 16)
    bg = nearest_cosine(train, train, exclude_self=True)
    ft = torch.nn.functional.normalize(train.double(), dim=1)
    c = ft @ ft.T
    c.fill_diagonal_(-2)
    assert torch.allclose(bg.double(), c.max(1).values, atol=1e-6)
    assert (bg < 0.999).all()


def test_exact_copies_are_memorized_fresh_samples_are_not():
    train = torch.randn(500, 1, 8, 8)
    copies = train[:50] + 1e-4 * torch.randn(50, 1, 8, 8)
    rep = memorization(copies, train)
    assert rep.fraction == 1.0
    assert torch.equal(rep.nn_index, torch.arange(50))
    assert (rep.ratio < 0.01).all()
    fresh = memorization(torch.randn(200, 1, 8, 8), train)
    assert fresh.fraction == 0.0
    assert (fresh.ratio > 0.5).all()


def test_memorization_report_consistency():
    train, s = torch.randn(64, 10), torch.randn(30, 10)
    rep = memorization(s, train, threshold=0.9)
    d = torch.cdist(s.double(), train.double())
    top = d.topk(2, largest=False).values
    assert torch.allclose(rep.d1.double(), top[:, 0], atol=1e-5)
    assert torch.allclose(rep.d2.double(), top[:, 1], atol=1e-5)
    assert torch.allclose(rep.ratio.double(), top[:, 0] / top[:, 1], atol=1e-5)
    assert torch.equal(rep.memorized, rep.ratio < 0.9)
    assert rep.fraction == pytest.approx(rep.memorized.float().mean().item())


def test_memorization_duplicate_training_images():
    base = torch.randn(5, 12)
    train = torch.cat([base, base[:1]])  # image 0 appears twice: d2 = 0 for its copy
    rep = memorization(base[:1].clone(), train)
    assert rep.memorized.item()


def test_generalization_score():
    train = torch.randn(100, 1, 4, 4)
    assert generalization_score(train[:10], train) == pytest.approx(0.0, abs=1e-6)
    far = generalization_score(torch.randn(50, 1, 4, 4), train)
    assert 0.6 < far < 2.0


def test_psnr_known_values():
    x = torch.zeros(3, 1, 4, 4)
    y = x + 0.1  # MSE = 0.01, range 2 → 10 log10(4 / 0.01) = 26.0206
    assert torch.allclose(psnr(y, x), torch.full((3,), 10 * math.log10(400)), atol=1e-4)
    assert torch.isinf(psnr(x, x)).all()
    assert sigma_for_psnr(20 * math.log10(2 / 0.5)) == pytest.approx(0.5)


def test_denoising_psnr_curve_identity_and_oracle():
    images = torch.rand(20, 1, 8, 8) * 2 - 1
    sigmas = [0.05, 0.2, 1.0]
    ident = denoising_psnr_curve(lambda y, s: y, images, sigmas)
    # the identity's output PSNR is the input PSNR up to the noise draw
    for i, o in zip(ident["input_psnr"], ident["output_psnr"]):
        assert o == pytest.approx(i, abs=0.3)
    oracle = denoising_psnr_curve(lambda y, s: images, images, sigmas)
    assert all(math.isinf(o) for o in oracle["output_psnr"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_cosine(torch.randn(3, 4), torch.randn(4, 4)), "same shape"),
        (lambda: nearest_cosine(torch.randn(3, 4), torch.randn(5, 5)), "share image shape"),
        (lambda: memorization(torch.randn(3, 4), torch.randn(1, 4)), "at least 2"),
        (lambda: memorization(torch.randn(3, 4), torch.randn(5, 4), threshold=0), "threshold"),
        (lambda: memorization(torch.full((3, 4), float("nan")), torch.randn(5, 4)), "NaN"),
        (lambda: psnr(torch.randn(3, 4), torch.randn(3, 4), data_range=-1), "data_range"),
        (lambda: paired_cosine(torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 4)), "floating"),
        (lambda: nearest_cosine(torch.randn(0, 4), torch.randn(5, 4)), "empty"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(InputError, match=match):
        call()
