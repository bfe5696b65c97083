"""Feature-space metrics against independent implementations on the same features: the
``prdc`` package, scipy's sqrtm / mannwhitneyu, and dense numpy versions written here,
on random features and on sklearn's 8×8 digits (integer pixels: many exact duplicates
and equidistant pairs), with duplicates across the two sets."""

import contextlib
import dataclasses
import io

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from pydiffgen.errors import InputError
from pydiffgen.metrics import (
    authpct,
    authpct_extraction,
    confidence_interval,
    copy_score,
    ct_score,
    extraction_distance,
    fld,
    frechet_distance,
    kernel_distance,
    prdc,
)


def dense_d2(a, b):
    """All squared distances [len(a), len(b)] from direct float64 differences."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data.astype(np.float32)  # [1797, 64], values 0..16


def random_pair(n=300, m=260, f=16, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n, f)).astype(np.float32)
    fake = (1.1 * rng.normal(size=(m, f)) + 0.2).astype(np.float32)
    return real, fake


def tie_pair(digits):
    """real and fake share rows 300..499 (duplicates across), and digits repeat inside."""
    return digits[:500], digits[300:760]


# ---- PRDC ----

def dense_prdc(real, fake, k):
    """Naeem et al. with closed balls (≤), float64."""
    rr, ff, rf = dense_d2(real, real), dense_d2(fake, fake), dense_d2(real, fake)
    r_real = np.sort(rr, axis=1)[:, k]
    r_fake = np.sort(ff, axis=1)[:, k]
    in_real = rf <= r_real[:, None]  # [N, M]
    return dict(precision=in_real.any(0).mean(), recall=(rf <= r_fake[None, :]).any(1).mean(),
                density=in_real.sum() / (k * len(fake)),
                coverage=(rf.min(1) <= r_real).mean())


def test_prdc_matches_the_prdc_package_on_random_features():
    import prdc as package  # the test extra installs it
    real, fake = random_pair()
    for k in (3, 5):
        with contextlib.redirect_stdout(io.StringIO()):
            want = package.compute_prdc(real, fake, k)
        got = prdc(real, fake, k)
        for name, value in want.items():
            assert getattr(got, name) == pytest.approx(float(value), abs=1e-12), name


def test_prdc_recall_paths_match_dense():
    """Recall is decided from the real→fake search where it can be, else by the residual
    search: fewer fakes than 2k (every fake seen), a far fake set (every real certainly
    out), rounded features (ties at the radii) and the random pair (residual reals)."""
    real, fake = random_pair(120, 90, 6, seed=4)
    cases = [(real[:12], fake[:7]), (real, fake * 0.2 + 5.0), (np.round(real), np.round(fake)),
             (real, fake)]
    for r, f in cases:
        for k in (1, 3, 5):
            got = prdc(torch.from_numpy(r), torch.from_numpy(f), k)
            for name, value in dense_prdc(r, f, k).items():
                assert getattr(got, name) == pytest.approx(value, abs=1e-12), (name, k)


def test_prdc_matches_dense_closed_balls_on_tied_digits(digits):
    real, fake = tie_pair(digits)
    got = prdc(torch.from_numpy(real), torch.from_numpy(fake), 5)
    for name, value in dense_prdc(real, fake, 5).items():
        assert getattr(got, name) == pytest.approx(float(value), abs=1e-12), name


def test_prdc_of_identical_sets_is_one(digits):
    x = digits[:400]
    got = prdc(x, x.copy(), 5)
    assert (got.precision, got.recall, got.coverage) == (1.0, 1.0, 1.0)
    assert got.density >= 1.0
    assert got.density == pytest.approx(dense_prdc(x, x, 5)["density"], abs=1e-12)


def test_prdc_regrows_k_when_a_ball_holds_many_fakes():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 4))
    fake = np.concatenate([real[:1] + 1e-3 * rng.normal(size=(120, 4)), rng.normal(size=(30, 4))])
    got = prdc(real, fake, 3)
    for name, value in dense_prdc(real, fake, 3).items():
        assert getattr(got, name) == pytest.approx(float(value), abs=1e-12), name


# ---- AuthPct ----

def dense_authpct(train, gen):
    tt = dense_d2(train, train)
    np.fill_diagonal(tt, np.inf)
    gt = dense_d2(gen, train)
    j = gt.argmin(1)  # ties: the first (lower) index
    return 100.0 * (tt.min(1)[j] < gt[np.arange(len(gen)), j]).mean()


def test_authpct_matches_dense_on_random_and_tied(digits):
    real, fake = random_pair()
    assert authpct(real, fake) == pytest.approx(dense_authpct(real, fake), abs=1e-9)
    train, gen = tie_pair(digits)
    assert authpct(train, gen) == pytest.approx(dense_authpct(train, gen), abs=1e-9)
    assert authpct(train, train[:50]) == 0.0  # copies are never authentic


# ---- C_T ----

def dense_ct(train, test, gen, cells, seed):
    from scipy.stats import mannwhitneyu

    km = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(train)
    lt, lp, lq = km.predict(train), km.predict(test), km.predict(gen)
    m, n, tau = len(gen), len(test), 20 / len(gen)
    w, z = [], []
    for c in range(cells):
        T, P, Q = train[lt == c], test[lp == c], gen[lq == c]
        if len(Q) / m <= tau:
            continue
        lq_d = np.sqrt(dense_d2(Q, T).min(1))
        lp_d = np.sqrt(dense_d2(P, T).min(1))
        u = mannwhitneyu(lq_d, lp_d, alternative="less").statistic
        nn, mm = len(P), len(Q)
        z.append((u - (nn * mm / 2 - 0.5)) / np.sqrt(nn * mm * (nn + mm + 1) / 12))
        w.append(len(P) / n)
    return float(np.dot(w, z) / np.sum(w))


def test_ct_score_matches_dense_on_random_and_tied(digits):
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(400, 6)), rng.normal(size=(200, 6))
    gen = np.concatenate([train[:100] + 0.01 * rng.normal(size=(100, 6)),
                          rng.normal(size=(100, 6))])
    got = ct_score(train, test, gen, cells=3, seed=0)
    assert got == pytest.approx(dense_ct(train, test, gen, 3, 0), rel=1e-9)
    assert got < 0  # half the samples are near-copies
    d = digits.astype(np.float64)
    train, test, gen = d[:700], d[700:1000], np.concatenate([d[:150], d[1000:1200]])
    assert ct_score(train, test, gen, cells=4, seed=1) == pytest.approx(
        dense_ct(train, test, gen, 4, 1), rel=1e-9)


# ---- FLD ----

def dense_fit(centres, data, iters):
    dim = centres.shape[1]
    d2 = dense_d2(data, centres)  # [N, M]
    lv = np.clip(np.log((d2.min(0) + 1e-3) / dim), -40, 20)
    for _ in range(iters):
        logp = -0.5 * d2 / np.exp(lv) - 0.5 * dim * (np.log(2 * np.pi) + lv)
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        mass, spread = r.sum(0), (r * d2).sum(0)
        seen = mass > 0
        lv[seen] = np.clip(np.log(np.maximum(spread[seen] / (dim * mass[seen]), np.exp(-40))),
                           -40, 20)
    return lv


def dense_nll(x, centres, lv):
    from scipy.special import logsumexp

    dim = centres.shape[1]
    logp = -0.5 * dense_d2(x, centres) / np.exp(lv) - 0.5 * dim * (np.log(2 * np.pi) + lv)
    return float(-(logsumexp(logp, axis=1) - np.log(len(centres))).mean() / dim)


def dense_fld(train, test, gen, iters, seed):
    mu, sd = test.mean(0), test.std(0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    train, test, gen = [(s - mu) / sd for s in (train, test, gen)]
    lv = dense_fit(gen, train, iters)
    test_nll, train_nll = dense_nll(test, gen, lv), dense_nll(train, gen, lv)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).numpy()
    split = min(len(gen), len(train) // 2)
    base = train[perm[:split]]
    base_nll = dense_nll(test, base, dense_fit(base, train[perm[split:]], iters))
    return dict(fld=100 * (test_nll - base_nll), test_nll=test_nll, train_nll=train_nll,
                baseline_nll=base_nll, gap=100 * (train_nll - test_nll))


def test_fld_matches_dense_mixture(digits):
    rng = np.random.default_rng(3)
    train, test = rng.normal(size=(300, 5)), rng.normal(size=(150, 5))
    d = digits.astype(np.float64)
    cases = [(train, test, rng.normal(size=(120, 5))),
             (d[:400], d[400:600], np.concatenate([d[:60], d[600:700]]))]
    for tr, te, g in cases:
        got = fld(tr, te, g, neighbours=10_000, iters=20)
        for name, value in dense_fld(tr, te, g, 20, 0).items():
            assert getattr(got, name) == pytest.approx(value, rel=1e-7, abs=1e-9), name


def test_fld_sees_memorization():
    rng = np.random.default_rng(4)
    train, test = rng.normal(size=(400, 6)), rng.normal(size=(200, 6))
    fresh = fld(train, test, rng.normal(size=(150, 6)))
    copied = fld(train, test, train[:150] + 1e-3 * rng.normal(size=(150, 6)))
    assert copied.gap < fresh.gap and copied.fld > fresh.fld
    assert copied.memorization.mean() > fresh.memorization.mean()


# ---- FD and KID ----

@pytest.mark.filterwarnings("ignore:Matrix is singular")  # digits: constant pixels
def test_frechet_distance_matches_scipy_sqrtm(digits):
    from scipy.linalg import sqrtm

    real, fake = random_pair(400, 350, 12, seed=5)
    for a, b in ((real, fake), tie_pair(digits)):
        a, b = a.astype(np.float64), b.astype(np.float64)
        c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        want = (((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2)
                - 2 * np.trace(sqrtm(c1 @ c2).real))
        assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


def dense_mmd2(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, f = x.shape
    kxx, kyy, kxy = [(a @ b.T / f + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    return ((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.sum() / m**2)


def test_kernel_distance_matches_dense_unbiased_mmd(digits):
    real, fake = random_pair(200, 200, 10, seed=6)
    # subsets as large as the sets: every subset is a permutation, MMD² is the full one
    assert kernel_distance(real, fake, subsets=3, subset_size=500) == pytest.approx(
        dense_mmd2(real, fake), rel=1e-9)
    a, b = tie_pair(digits)
    a, b = a[:300], b[:300]
    assert kernel_distance(a, b, subsets=2, subset_size=300) == pytest.approx(
        dense_mmd2(a, b), rel=1e-9)
    once = kernel_distance(real, fake, subsets=5, subset_size=50, seed=3)
    assert once == kernel_distance(real, fake, subsets=5, subset_size=50, seed=3)


# ---- extraction distance and copy score ----

def dense_extraction(gen, train, alpha, k):
    d = np.sqrt(np.sort(dense_d2(gen, train), axis=1)[:, :k])
    scale = alpha * d.mean(1)
    return np.where(scale > 0, d[:, 0] / np.where(scale > 0, scale, 1), 0.0)


def test_extraction_distance_matches_dense(digits):
    real, fake = random_pair(300, 100, 8, seed=7)
    train, gen = tie_pair(digits)
    for g, t, k in ((fake, real, 50), (gen, train, 20)):
        got = extraction_distance(g, t, alpha=0.5, k=k)
        want = dense_extraction(g, t, 0.5, k)
        np.testing.assert_allclose(got.ratio.numpy(), want, rtol=1e-12, atol=1e-12)
        assert got.fraction == pytest.approx((want < 1 / 3).mean())
    assert extraction_distance(train[:40], train, k=20).fraction == 1.0  # copies


def test_authpct_extraction_shares_one_search_and_matches_each(digits):
    train, gen = tie_pair(digits)
    for g, t, k in ((gen, train, 20), (train[:40], train, 5), (*random_pair()[::-1], 50)):
        both = authpct_extraction(g, t, k=k)
        assert both["authpct"] == pytest.approx(dense_authpct(t, g), abs=1e-9)
        assert both["extraction.fraction"] == extraction_distance(g, t, k=k).fraction
    est = authpct_extraction(gen, train, k=20, ci=0.9, n_boot=4)
    assert est["authpct"].value == authpct(train, gen)
    assert est["extraction.fraction"].low <= est["extraction.fraction"].high


def dense_top1_cosine(a, b, exclude_self=False):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1,
                                                                                keepdims=True)).T
    if exclude_self:
        np.fill_diagonal(cos, -np.inf)
    return cos.max(1)


def test_copy_score_matches_dense(digits):
    real, fake = random_pair(300, 120, 8, seed=8)
    train, gen = tie_pair(digits)
    for g, t in ((fake, real), (gen, train)):
        got = copy_score(g, t)
        want = dense_top1_cosine(g, t)
        np.testing.assert_allclose(got.similarity.numpy(), want, atol=1e-6)
        assert got.p95 == pytest.approx(np.quantile(want, 0.95), abs=1e-6)
        assert got.fraction == pytest.approx((want > 0.5).mean())
        np.testing.assert_allclose(got.background.numpy(),
                                   dense_top1_cosine(t, t, exclude_self=True), atol=1e-6)


# ---- confidence intervals (more in test_intervals.py) ----

def test_interval_brackets_and_is_seeded():
    real, fake = random_pair(200, 200, 6, seed=9)
    est = confidence_interval(frechet_distance, real, fake, n_boot=30, seed=1)
    assert est.value == pytest.approx(frechet_distance(real, fake))
    assert est.low <= est.high and est.ci == 0.95
    assert est == confidence_interval(frechet_distance, real, fake, n_boot=30, seed=1)
    four = confidence_interval(prdc, real, fake, n_boot=10, k=3)
    assert {f.name for f in dataclasses.fields(four)} == {"precision", "recall", "density",
                                                         "coverage"}
    fixed = authpct(real, fake, ci=0.95, n_boot=10)
    assert fixed.value == authpct(real, fake) and fixed.low <= fixed.high


# ---- bad input ----

def test_bad_input_is_one_line_naming_the_argument():
    real, fake = random_pair(50, 50, 4)
    bad = real.copy()
    bad[7, 2] = np.nan
    cases = [
        (lambda: prdc(bad, fake), r"real has NaN/Inf in 1 row\(s\): 7"),
        (lambda: authpct(real, np.full((3, 4), np.inf)), r"gen has NaN/Inf in 3 row"),
        (lambda: prdc(real, fake[:, :3]), r"feature widths differ \(real has 4, fake has 3\)"),
        (lambda: prdc(real, fake[:5], k=5), r"fake needs at least 6 rows"),
        (lambda: frechet_distance(real[:0], fake), r"real is empty"),
        (lambda: ct_score(real, fake, fake, cells=0), r"cells must be an integer"),
        (lambda: kernel_distance(real, np.arange(8).reshape(2, 4)), r"fake must hold floats"),
        (lambda: extraction_distance(fake, real[:10], k=50), r"train needs at least 50 rows"),
        (lambda: fld(real, fake[:1], fake), r"test needs at least 2 rows"),
        (lambda: copy_score(real[:, 0], fake), r"gen must be features \[N, F\]"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
