import pytest
import torch

from pydiffgen import data
from pydiffgen.analysis import EmpiricalDenoiser, trajectory_probe
from pydiffgen.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sets():
    x = data.load("digits")
    return x[:8], x[900:908]


def test_empirical_optimum_outputs_are_nearest_to_its_training_set(sets):
    train, heldout = sets
    probe = trajectory_probe(EmpiricalDenoiser(train), train, heldout, n_samples=12, steps=10,
                             center=True)
    T = len(probe.sigma)
    assert T == 10 and probe.sigma[0] == pytest.approx(80.0)
    assert probe.path_train.shape == (T, 12) and probe.recon_train_train.shape == (T, 8)
    frac = probe.path_train_fraction()
    assert frac[-1] == 1.0 and min(frac[T // 2:]) == 1.0  # nearer to train, not held-out
    assert sum(frac) / T > 0.8
    # the last outputs *are* training images
    assert float(probe.path_train[-1].min()) > 0.999
    assert float(probe.path_heldout[-1].max()) < 0.99
    # reconstructions of noisy held-out images at small σ are training images too
    s = probe.summary()
    assert s["recon_heldout_train"][-1] > 0.999 and s["recon_heldout_train_fraction"][-1] == 1.0
    assert s["recon_train_train"][-1] > 0.999


def test_probe_is_symmetric_in_the_roles_of_the_sets(sets):
    train, heldout = sets
    # the optimum of the *held-out* set: its outputs are nearest to held-out instead
    probe = trajectory_probe(EmpiricalDenoiser(heldout), train, heldout, n_samples=8, steps=8,
                             center=True, method="euler")
    assert probe.path_train_fraction()[-1] == 0.0
    assert bool(torch.isfinite(probe.samples).all())
    assert probe.samples.shape == (8, 1, 8, 8)


def test_probe_argument_errors(sets):
    train, heldout = sets
    den = EmpiricalDenoiser(train)
    with pytest.raises(InputError, match="deterministic"):
        trajectory_probe(den, train, heldout, method="ddpm")
    with pytest.raises(InputError, match="n_recon=20"):
        trajectory_probe(den, train, heldout, n_recon=20)
    with pytest.raises(InputError, match="share image shape"):
        trajectory_probe(den, train, heldout[:, :, :4])
