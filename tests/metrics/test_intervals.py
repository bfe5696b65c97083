"""Confidence intervals of every feature-space metric (half-sampling without replacement):
each contains its full-set value on random and tie-heavy features, is reproducible from
its seed, and covers a known population value in about the nominal fraction of draws."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pydiffgen.errors import InputError
from pydiffgen.metrics import (
    Estimate,
    authpct,
    confidence_interval,
    copy_score,
    ct_score,
    extraction_distance,
    fld,
    frechet_distance,
    kernel_distance,
    prdc,
)


def random_sets(seed=0, n=240, f=8):
    rng = np.random.default_rng(seed)
    return [(s * rng.normal(size=(n, f)) + m).astype(np.float32)
            for s, m in ((1.0, 0.0), (1.0, 0.0), (1.1, 0.2))]


def tied_sets():
    """8×8 digits: integer pixels (equidistant pairs, duplicates within a set), and gen
    holding 60 exact copies of train."""
    x = load_digits().data.astype(np.float32)
    train, test = x[:240], x[240:480]
    return [train, test, np.concatenate([x[480:660], train[:60]])]


# metric name -> (call on train, test, gen with ci=..., the fields that carry estimates)
METRICS = {
    "prdc": (lambda tr, te, g, **ci: prdc(tr, g, **ci),
             ("precision", "recall", "density", "coverage")),
    "fd": (lambda tr, te, g, **ci: frechet_distance(tr, g, **ci), None),
    "kid": (lambda tr, te, g, **ci: kernel_distance(tr, g, subsets=3, **ci), None),
    "authpct": (lambda tr, te, g, **ci: authpct(tr, g, **ci), None),
    "ct": (lambda tr, te, g, **ci: ct_score(tr, te, g, cells=2, **ci), None),
    "fld": (lambda tr, te, g, **ci: fld(tr, te, g, neighbours=10, iters=5, **ci),
            ("fld", "test_nll", "train_nll", "baseline_nll", "gap")),
    "extraction": (lambda tr, te, g, **ci: extraction_distance(g, tr, k=20, **ci),
                   ("fraction",)),
    "copy": (lambda tr, te, g, **ci: copy_score(g, tr, **ci),
             ("p95", "fraction", "background_p95")),
}


@pytest.mark.parametrize("inputs", ["random", "tied"])
@pytest.mark.parametrize("name", list(METRICS))
def test_interval_contains_the_full_set_value(name, inputs):
    call, fields = METRICS[name]
    sets = random_sets() if inputs == "random" else tied_sets()
    plain = call(*sets, seed=3)  # C_T, KID, FLD: the seed is also their own
    got = call(*sets, ci=0.9, n_boot=4, seed=3)
    pairs = [(got, plain)] if fields is None else \
        [(getattr(got, f), getattr(plain, f)) for f in fields]
    for est, value in pairs:
        assert isinstance(est, Estimate) and est.ci == 0.9
        assert est.value == pytest.approx(float(value), rel=1e-12, abs=1e-12)
        assert est.low <= est.value <= est.high and float(est) == est.value
    again = call(*sets, ci=0.9, n_boot=4, seed=3)
    assert all(getattr(again, f) == getattr(got, f) for f in fields) if fields else again == got


def test_seeded_and_ci_widens_with_the_level():
    real, _, fake = random_sets(1)
    a = frechet_distance(real, fake, ci=0.95, n_boot=20, seed=5)
    assert a == frechet_distance(real, fake, ci=0.95, n_boot=20, seed=5)
    assert a != frechet_distance(real, fake, ci=0.95, n_boot=20, seed=6)
    b = frechet_distance(real, fake, ci=0.5, n_boot=20, seed=5)
    assert a.low < b.low <= b.high < a.high
    # tensors of a dataclass result stay, thresholds stay plain numbers
    ex = extraction_distance(torch.from_numpy(fake), torch.from_numpy(real), k=10, ci=0.95,
                             n_boot=3)
    assert isinstance(ex.ratio, torch.Tensor) and isinstance(ex.threshold, float)


def test_bad_levels_and_too_small_half_samples_are_one_line_errors():
    real, _, fake = random_sets(2, n=10)
    cases = [(lambda: prdc(real, fake, ci=1.0), r"ci must be a level strictly between"),
             (lambda: prdc(real, fake, ci=0.9, n_boot=1), r"n_boot must be an integer >= 2"),
             (lambda: prdc(real, fake, k=5, ci=0.9), r"ci: half-samples of \[5, 5\] rows are "
                                                     r"too small for prdc: real needs at least 6"),
             (lambda: confidence_interval(lambda a: {"x": "y"}, real), r"number fields")]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def coverage(reps, n, f, n_boot, k=5):
    """Fraction of ``reps`` seeded draws whose 95% interval covers the population value:
    FD between N(0, I) and N(μ, diag s²) (closed form ‖μ‖² + Σ(1 − s_i)²); for two draws
    of one distribution, KID (0: the estimator is unbiased) and PRDC density (expectation
    1) and coverage (1 − Π_{i≤k} (n − i)/(2n − i)), Naeem et al. 2020, Lemma 1-2)."""
    mu, s = np.full(f, 1 / np.sqrt(f)), np.linspace(0.8, 1.2, f)
    truth = {"fd": float((mu ** 2).sum() + ((1 - s) ** 2).sum()), "kid": 0.0, "density": 1.0,
             "coverage": 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])}
    hits = dict.fromkeys(truth, 0)
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        a, b, c = rng.normal(size=(n, f)), rng.normal(size=(n, f)) * s + mu, rng.normal(
            size=(n, f))
        p = prdc(a, c, k=k, ci=0.95, n_boot=n_boot, seed=r)
        est = {"fd": frechet_distance(a, b, ci=0.95, n_boot=n_boot, seed=r),
               "kid": kernel_distance(a, c, subsets=3, ci=0.95, n_boot=n_boot, seed=r),
               "density": p.density, "coverage": p.coverage}
        for name, e in est.items():
            hits[name] += e.low <= truth[name] <= e.high
    return {name: h / reps for name, h in hits.items()}


def test_nominal_95_percent_intervals_cover_known_values():
    got = coverage(reps=20, n=100, f=4, n_boot=12)
    assert all(v >= 0.8 for v in got.values()), got


@pytest.mark.slow
def test_nominal_95_percent_intervals_cover_known_values_long():
    got = coverage(reps=200, n=400, f=4, n_boot=50)
    assert all(0.85 <= v <= 1.0 for v in got.values()), got
