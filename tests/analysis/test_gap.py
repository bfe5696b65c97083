import math

import pytest
import torch

from pydiffgen import data, models
from pydiffgen.analysis import (
    EmpiricalDenoiser,
    GapResult,
    default_sigmas,
    noise_level_gap,
    noise_level_gap_over_training,
)
from pydiffgen.errors import InputError
from pydiffgen.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits64():
    return data.load("digits").reshape(-1, 64)  # [1797, 64] flattened 8×8 digits


def test_default_sigmas_are_the_edm_range_log_spaced():
    s = default_sigmas()
    assert len(s) == 64
    assert s[0] == pytest.approx(0.002) and s[-1] == pytest.approx(80.0)
    ratios = [b / a for a, b in zip(s, s[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_memorizing_model_gap_peaks_at_intermediate_sigma_and_grows_with_training(digits64):
    # N = 4 training images, a few hundred steps: the MLP memorizes them
    train, heldout = digits64[:4], digits64[1000:1004]
    torch.manual_seed(0)
    model = models.build("mlp", dim=64, hidden=128, depth=2)
    config = TrainConfig(steps=300, batch_size=32, sigma_dist="edm", ema=None,
                         checkpoint_every=None)
    sigmas = default_sigmas(20)
    res = noise_level_gap_over_training(model, train, heldout, config, eval_steps=(15, 300),
                                        sigmas=sigmas, noise_draws=8)
    assert set(res) == {15, 300}
    late, early = res[300], res[15]
    peak_sigma, peak = late.peak()
    assert 0.1 < peak_sigma < 10.0, late.gap  # intermediate noise level
    assert peak > 1.0  # held-out error more than twice the training error there
    assert abs(late.gap[0]) < 0.2 * peak  # ≈ identity at σ = 0.002: no gap
    assert late.gap[-1] < 0.5 * peak  # ≈ data mean at σ = 80
    assert early.peak()[1] < 0.5 * peak  # memorization grew with training
    # the model moved towards the empirical optimum where it memorizes
    i = late.sigma.index(peak_sigma)
    assert late.rmse_optimum[i] < early.rmse_optimum[i]
    assert model.training is False  # train() leaves the model in eval mode
    # the stored dict round-trips
    again = GapResult.from_dict(late.to_dict())
    assert again.gap == late.gap and again.peak() == late.peak()


def test_empirical_optimum_gap_and_symmetric_control(digits64):
    train, heldout = digits64[:8], digits64[500:508]
    sigmas = [0.01, 0.3, 1.0, 30.0]
    g = noise_level_gap(EmpiricalDenoiser(train), train, heldout, sigmas, noise_draws=4)
    assert g.error_train[0] == 0.0 and g.gap[0] == math.inf  # returns training images
    assert g.gap[1] > 1.0
    assert g.rmse_optimum == pytest.approx([0.0] * 4, abs=1e-6)  # it *is* D_M
    # a denoiser that memorizes both splits alike shows no systematic gap
    tr, ho = digits64[:64], digits64[500:564]
    both = EmpiricalDenoiser(torch.cat([tr, ho]))
    c = noise_level_gap(both, tr, ho, [1.0, 3.0, 30.0], noise_draws=4, optimum=None)
    assert c.rmse_optimum is None
    assert max(abs(v) for v in c.gap) < 0.3, c.gap


def test_fixed_noise_is_seeded_and_counts_are_equal(digits64):
    den = EmpiricalDenoiser(digits64[:20])
    a = noise_level_gap(den, digits64[:20], digits64[100:106], [0.5, 2.0], optimum=None)
    b = noise_level_gap(den, digits64[:20], digits64[100:106], [0.5, 2.0], optimum=None)
    c = noise_level_gap(den, digits64[:20], digits64[100:106], [0.5, 2.0], optimum=None, seed=3)
    assert a.n_images == 6  # the same number of train and held-out images
    assert a.error_train == b.error_train and a.error_heldout == b.error_heldout
    assert a.error_train != c.error_train


def test_gap_argument_errors(digits64):
    den = EmpiricalDenoiser(digits64[:4])
    with pytest.raises(InputError, match="share image shape"):
        noise_level_gap(den, digits64[:4], digits64[:4, :10])
    with pytest.raises(InputError, match="n_images=9"):
        noise_level_gap(den, digits64[:4], digits64[4:8], n_images=9)
    with pytest.raises(InputError, match="sigmas"):
        noise_level_gap(den, digits64[:4], digits64[4:8], [0.1, -1.0])
    with pytest.raises(InputError, match="denoiser must be callable"):
        noise_level_gap("D", digits64[:4], digits64[4:8])
    with pytest.raises(InputError, match="eval_steps"):
        noise_level_gap_over_training(models.build("mlp", dim=64), digits64[:4], digits64[4:8],
                                      TrainConfig(steps=5, batch_size=2), eval_steps=(10,))
