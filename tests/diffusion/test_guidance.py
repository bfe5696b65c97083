"""The conditional denoiser interface: cond, classifier-free guidance, x_init and sigmas."""

import pytest
import torch

from pydiffgen import models
from pydiffgen.diffusion import (
    expand_cond,
    guided,
    guided_call,
    karras_sigmas,
    sample,
    slice_cond,
    take_cond,
)
from pydiffgen.diffusion.sampling import METHODS
from pydiffgen.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops


@pytest.fixture(scope="module")
def cond_unet():
    """A conditional UNet whose label embedding is not zero (so labels matter)."""
    torch.manual_seed(0)
    m = models.build("unet", channels=1, width=8, levels=2, num_classes=3,
                     fused=False).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_contract_attributes():
    u = models.build("unet", channels=1, width=8, levels=2, num_classes=3)
    assert u.conditional and not u.latent and torch.equal(u.null_cond, torch.tensor([3]))
    for m in (models.build("unet", channels=1, width=8, levels=2),
              models.build("bf_cnn", depth=3, width=4), models.build("mlp", hidden=8, depth=1)):
        assert not m.conditional and not m.latent and m.null_cond is None


@pytest.mark.parametrize("name, kw, y", [
    ("bf_cnn", {"depth": 3, "width": 4}, torch.randn(2, 1, 8, 8)),
    ("mlp", {"hidden": 8, "depth": 1}, torch.randn(2, 2)),
    ("unet", {"channels": 1, "width": 8, "levels": 2}, torch.randn(2, 1, 8, 8)),
])
def test_unconditional_models_take_cond_none_and_refuse_a_cond(name, kw, y):
    m = models.build(name, **kw).eval()
    with torch.no_grad():
        assert torch.equal(m(y, 0.5), m(y, 0.5, cond=None))
        assert torch.equal(m(y, 0.5), m(y, 0.5, None))
    with pytest.raises(InputError, match="unconditional|num_classes=0"):
        m(y, 0.5, cond=torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError, match="unconditional|num_classes=0"):
        m(y, 0.5, torch.zeros(2, dtype=torch.long))


def test_cfg_is_uncond_plus_w_times_the_difference_exactly(cond_unet):
    y, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.7)
    c = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        D_c = cond_unet(y, sigma, c)
        D_u = cond_unet(y, sigma, torch.full((4,), 3))
        assert not torch.allclose(D_c, D_u)
        for w in (0.0, 2.5, 7.0):
            assert torch.equal(guided_call(cond_unet, y, sigma, c, w), D_u + w * (D_c - D_u))
            assert torch.equal(guided(cond_unet, c, w)(y, sigma), D_u + w * (D_c - D_u))
        assert torch.equal(guided(cond_unet, c, 1.0)(y, sigma), D_c)  # w = 1: conditional
        assert torch.equal(guided(cond_unet, c)(y, sigma), D_c)
        # batch-one cond broadcast to any batch
        assert torch.equal(guided(cond_unet, torch.tensor([2]))(y, sigma),
                           cond_unet(y, sigma, torch.full((4,), 2)))


def test_guided_returns_the_denoiser_itself_without_cond_and_refuses_a_second_cond(cond_unet):
    def plain(y, sigma):  # a third-party callable taking (y, σ) only
        return 0.5 * y

    assert guided(plain, None) is plain
    g = guided(cond_unet, torch.tensor([1]), 2.0)
    assert not g.conditional and g.null_cond is None
    with pytest.raises(InputError, match="unconditional"):
        g(torch.randn(1, 1, 8, 8), 0.5, torch.tensor([1]))


def test_cond_helpers_dicts_and_batches():
    c = {"labels": torch.tensor([1]), "emb": torch.randn(1, 3, 4)}
    e = expand_cond(c, 5)
    assert e["labels"].shape == (5,) and e["emb"].shape == (5, 3, 4)
    assert slice_cond(e, 1, 3)["emb"].shape == (2, 3, 4)
    assert take_cond(e, torch.tensor([0, 4]))["labels"].tolist() == [1, 1]
    assert expand_cond(None, 3) is None and slice_cond(None, 0, 1) is None
    with pytest.raises(InputError, match="batch size 2; it must be 1 .* or 5"):
        expand_cond(torch.zeros(2, dtype=torch.long), 5)
    with pytest.raises(InputError, match="disagree on the batch size"):
        expand_cond({"a": torch.zeros(2), "b": torch.zeros(3)}, 3)
    with pytest.raises(InputError, match="batch dimension"):
        expand_cond(torch.tensor(1), 3)


@pytest.mark.parametrize("method", ["kadkhodaie", "heun", "euler", "ddpm"])
def test_sampler_errors_are_one_line(cond_unet, method):
    kw = {"max_steps": 3} if method == "kadkhodaie" else {"steps": 3}
    plain = models.build("unet", channels=1, width=8, levels=2, fused=False)
    cases = [
        (cond_unet, {"cond": torch.zeros(3, dtype=torch.long)}, "batch size 3"),
        (plain, {"cond": torch.tensor([0]), "guidance": 2.0}, "unconditional"),
        (plain, {"cond": None, "guidance": 2.0}, "null_cond"),
        (cond_unet, {"guidance": 2.0}, "needs a condition"),
        (cond_unet, {"cond": torch.tensor([0]), "guidance": "a"}, "finite number"),
    ]
    for model, extra, msg in cases:
        with pytest.raises(InputError, match=msg) as err:
            sample(model, 4, (1, 8, 8), method, **kw, **extra)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["kadkhodaie", "heun", "euler", "ddpm"])
def test_conditional_sampling_per_sample_and_shared_cond(cond_unet, method):
    kw = {"max_steps": 3} if method == "kadkhodaie" else {"steps": 2}
    c = torch.tensor([0, 2, 2])
    a = sample(cond_unet, 3, (1, 8, 8), method, cond=c, guidance=2.0, batch_size=2, **kw)
    for i in (0, 2):  # a sample depends only on its own label (and its batch's noise)
        b = sample(cond_unet, 3, (1, 8, 8), method, cond=c[i:i + 1], guidance=2.0,
                   batch_size=2, **kw)
        torch.testing.assert_close(a[i], b[i], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, sample(cond_unet, 3, (1, 8, 8), method, cond=c, batch_size=2,
                                        **kw))


def test_third_party_callable_without_cond_keeps_working():
    calls = []

    def plain(y, sigma):
        calls.append(y.shape[0])
        return 0.5 * y

    for method in METHODS:
        kw = {"max_steps": 3} if method == "kadkhodaie" else {"steps": 3}
        assert sample(plain, 3, (4,), method, **kw).shape == (3, 4)
    assert calls


@pytest.mark.parametrize("method", ["kadkhodaie", "heun", "ddpm"])
def test_x_init_reproduces_a_run_from_the_same_noise(cond_unet, method):
    kw = {"max_steps": 6} if method == "kadkhodaie" else {"steps": 4}
    c = torch.tensor([1])
    x, traj = sample(cond_unet, 5, (1, 8, 8), method, cond=c, seed=3, batch_size=2,
                     return_trajectory=True, **kw)
    again = sample(cond_unet, 5, (1, 8, 8), method, cond=c, seed=3, batch_size=2,
                   x_init=traj.x[0], **kw)
    # the trajectory holds x0 in float32; the EDM samplers' state is float64
    torch.testing.assert_close(x, again, rtol=1e-5, atol=1e-4)
    if method == "heun":  # deterministic: the same noise from any seed gives the same run
        other = sample(cond_unet, 5, (1, 8, 8), method, cond=c, seed=9, x_init=traj.x[0], **kw)
        torch.testing.assert_close(x, other, rtol=1e-5, atol=1e-4)
    with pytest.raises(InputError, match="x_init must be a tensor of shape"):
        sample(cond_unet, 5, (1, 8, 8), method, x_init=torch.zeros(4, 1, 8, 8), **kw)


@pytest.mark.parametrize("method", ["heun", "euler", "ddpm"])
def test_sigmas_are_used_as_given(method):
    seen = []

    def plain(y, sigma):
        seen.append(float(sigma[0]))
        return 0.5 * y

    sigmas = torch.tensor([3.0, 1.5, 0.4, 0.1])  # ends above 0: no final denoising step
    x, traj = sample(plain, 2, (3,), method, sigmas=sigmas, return_trajectory=True)
    torch.testing.assert_close(traj.sigma[:, 0], sigmas)
    assert traj.n_steps.tolist() == [3, 3]
    want = sigmas[:-1].tolist()
    if method == "heun":  # Heun evaluates at σ_{i+1} as well (every σ_{i+1} > 0 here)
        want = [s for pair in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()) for s in pair]
    assert seen == pytest.approx(want)
    # the Karras schedule as given equals the sampler's own
    own = sample(plain, 2, (3,), method, steps=5, sigma_max=3.0)
    given = sample(plain, 2, (3,), method, sigmas=karras_sigmas(5, sigma_max=3.0))
    assert torch.equal(own, given)


def test_bad_sigmas_are_refused():
    for bad in ([1.0], [1.0, 2.0], [1.0, -0.5], [0.0, 0.0], [[1.0, 0.0]], [1.0, float("nan")],
                "abc"):
        with pytest.raises(InputError, match="sigmas must be"):
            sample(lambda y, s: y, 2, (3,), "heun", sigmas=bad)
    with pytest.raises(InputError, match="takes no sigmas"):
        sample(lambda y, s: y, 2, (3,), "kadkhodaie", sigmas=[1.0, 0.0])


def test_an_analysis_taking_D_y_sigma_runs_on_a_guided_model(cond_unet):
    from pydiffgen.analysis import jacobian

    y = torch.randn(1, 1, 8, 8)
    J = {c: jacobian(guided(cond_unet, torch.tensor([c])), y, 0.7) for c in (1, 3)}
    J_w = jacobian(guided(cond_unet, torch.tensor([1]), 2.5), y, 0.7)
    assert J_w.shape == (1, 64, 64)
    # the guided Jacobian is the same combination of the two Jacobians
    torch.testing.assert_close(J_w, J[3] + 2.5 * (J[1] - J[3]), rtol=1e-4, atol=1e-5)
