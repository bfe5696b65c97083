import math

import pytest
import torch

from pydiffgen import data
from pydiffgen.analysis import (
    EmpiricalDenoiser,
    identification_bound,
    identification_bound_from_denoisers,
    optimum_copy_fraction,
)
from pydiffgen.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets():
    x = data.load("digits")
    return [x[8 * j: 8 * (j + 1)] for j in range(4)]  # J = 4 disjoint sets of 8


def test_empirical_optimum_samples_are_training_images(sets):
    out = optimum_copy_fraction(sets[0], 24, steps=10)
    assert out["fraction"] >= 0.99
    assert out["median_relative_distance"] < 1e-3


def test_memorizing_models_reach_log_j_and_a_shared_model_zero(sets):
    own = identification_bound_from_denoisers([EmpiricalDenoiser(s) for s in sets], sets, 24,
                                              steps=10)
    assert own.log_j == pytest.approx(math.log(4))
    assert own.bound == pytest.approx(math.log(4), abs=0.02)
    assert own.bound_bits == pytest.approx(2.0, abs=0.03)
    assert own.accuracy == 1.0 and own.n_samples == 96

    # one denoiser shared by all "models" (the optimum of the union): no dependence
    shared = EmpiricalDenoiser(torch.cat(sets))
    none = identification_bound_from_denoisers([shared] * 4, sets, 24, steps=10)
    assert abs(none.bound) < 0.1, none
    assert none.bound_clipped < 0.1
    assert none.accuracy < 0.6


def test_fixed_temperatures_and_errors(sets):
    xs = [s.clone() for s in sets]  # the "samples" are the training sets themselves
    uniform = identification_bound(xs, sets, temperature=math.inf)
    assert uniform.bound == 0.0 and uniform.cross_entropy == pytest.approx(math.log(4))
    sharp = identification_bound(xs, sets, temperature=1e-6)
    assert sharp.bound == pytest.approx(math.log(4))
    with pytest.raises(InputError, match="same number of samples"):
        identification_bound([xs[0], xs[1][:3]], sets[:2])
    with pytest.raises(InputError, match="J >= 2"):
        identification_bound(xs[:1], sets[:1])
    with pytest.raises(InputError, match="image shape"):
        identification_bound([xs[0], xs[1][:, :, :4]], sets[:2])
    with pytest.raises(InputError, match="temperature"):
        identification_bound(xs, sets, temperature=-1.0)
