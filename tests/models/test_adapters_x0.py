"""load_diffusers: for every network × scheduler × prediction type, pydiffgen's D at the
scheduler's own timesteps is the scheduler's x0 (``pred_original_sample``), and a
deterministic pydiffgen run over the scheduler's σ's from the same noise is its own loop."""

import pytest
import torch
from diffusers_nets import NETWORKS, make_cond

diffusers = pytest.importorskip("diffusers")

from pydiffgen.diffusion.sampling import sample  # noqa: E402
from pydiffgen.models.adapters import load_diffusers  # noqa: E402

T, STEPS, B = 40, 4, 2
PREDICTIONS = ("epsilon", "sample", "v_prediction")
VP = dict(num_train_timesteps=T, beta_end=0.2)
SCHEDULERS = {  # name -> (class, options, prediction types)
    "ddpm": ("DDPMScheduler", dict(VP, clip_sample=False), PREDICTIONS),
    "ddpm_clip": ("DDPMScheduler", dict(VP, clip_sample_range=0.5), ("epsilon",)),
    "ddim": ("DDIMScheduler", dict(VP, clip_sample=False), PREDICTIONS),
    "euler": ("EulerDiscreteScheduler", VP, PREDICTIONS),
    "euler_karras": ("EulerDiscreteScheduler", dict(VP, use_karras_sigmas=True), ("epsilon",)),
    "euler_continuous": ("EulerDiscreteScheduler", dict(VP, timestep_type="continuous"),
                         ("v_prediction",)),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", VP, ("epsilon", "v_prediction")),
    "dpm": ("DPMSolverMultistepScheduler", VP, PREDICTIONS),
    "edm": ("EDMEulerScheduler", dict(sigma_max=20.0), ("epsilon", "v_prediction")),
    "edm_dpm": ("EDMDPMSolverMultistepScheduler", dict(sigma_max=20.0),
                ("epsilon", "v_prediction")),
    "score_sde_ve": ("ScoreSdeVeScheduler", dict(sigma_max=20.0), (None,)),
}
# the default suite takes each scheduler × prediction type once, the networks in turn; the
# full product is slow (tens of tiny forward passes each, on a shared CPU)
PAIRS = [(sched, pred) for sched, (_, _, preds) in SCHEDULERS.items() for pred in preds]
FAST = [(list(NETWORKS)[i % len(NETWORKS)], *pair) for i, pair in enumerate(PAIRS)]
CASES = FAST + [pytest.param(net, *pair, marks=pytest.mark.slow) for net in NETWORKS
                for pair in PAIRS if (net, *pair) not in FAST]


def _pipeline(tmp_path, saved_networks, net_name, sched_name, prediction):
    """A pipeline folder (the saved network linked in) and a fresh copy of its scheduler."""
    kind, options, _ = SCHEDULERS[sched_name]
    extra = {} if prediction is None else {"prediction_type": prediction}
    scheduler = getattr(diffusers, kind)(**options, **extra)
    folder = "transformer" if "transformer" in net_name or net_name == "dit" else "unet"
    (tmp_path / folder).symlink_to(saved_networks[net_name])
    scheduler.save_pretrained(tmp_path / "scheduler")
    D = load_diffusers(tmp_path, dtype=torch.float64)
    return D, getattr(diffusers, kind).from_pretrained(tmp_path / "scheduler")


def _net_call(D, cond):
    """The diffusers network called the way its pipeline calls it, at time t."""
    def call(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))
        kw = {} if cond is None else (
            {"encoder_hidden_states": cond} if D.condition == "text" else {"class_labels": cond})
        if type(D.net).__name__.startswith("UNet"):
            return D.net(x, t, **kw).sample[:, :1]
        return D.net(x, timestep=t, **kw).sample[:, :1]
    return call


def _scheduler_x0(sched, kind, net, x0, noise):
    """(y, σ, the scheduler's x0) at each of its timesteps, with y = x0 + σ·noise."""
    sched.set_timesteps(STEPS)
    if kind == "ScoreSdeVeScheduler":
        sched.set_sigmas(STEPS)
        for s in sched.sigmas.double():
            y = x0 + s * noise
            yield y, s, y + s**2 * net(y, s)  # the score's Tweedie mean
        return
    if kind in ("DDPMScheduler", "DDIMScheduler"):
        abar = sched.alphas_cumprod = sched.alphas_cumprod.double()
        for t in sched.timesteps:
            s = ((1 - abar[t]) / abar[t]).sqrt()
            x_t = (x0 + s * noise) * abar[t].sqrt()
            yield x_t / abar[t].sqrt(), s, sched.step(net(x_t, t), t, x_t).pred_original_sample
        return
    for i, t in enumerate(sched.timesteps):
        s = sched.sigmas[i].double()
        y = x0 + s * noise
        if kind == "DPMSolverMultistepScheduler":  # works on x_t = y/√(1+σ²) and keeps x0
            x_t = y / (1 + s**2).sqrt()
            sched.step(net(x_t, t), t, x_t)
            yield y, s, sched.model_outputs[-1]
        elif kind == "EDMDPMSolverMultistepScheduler":  # works on y, keeps x0
            sched.step(net(sched.scale_model_input(y, t), t), t, y)
            yield y, s, sched.model_outputs[-1]
        else:  # Euler, EDM: work on y and scale the network input themselves
            out = net(sched.scale_model_input(y, t), t)
            yield y, s, sched.step(out, t, y).pred_original_sample


@pytest.mark.parametrize("net_name,sched_name,prediction", CASES)
def test_x0_is_the_schedulers_at_its_timesteps(tmp_path, saved_networks, net_name,
                                                sched_name, prediction):
    D, sched = _pipeline(tmp_path, saved_networks, net_name, sched_name, prediction)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(B, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64)
    cond = make_cond(D.condition, B)
    n = 0
    with torch.no_grad():
        for y, s, expected in _scheduler_x0(sched, type(sched).__name__,
                                            _net_call(D, cond), x0, noise):
            got = D(y, s.expand(B), cond)
            err = (got - expected).abs().max() / expected.abs().max()
            assert err <= 1e-5, (float(s), float(err))
            n += 1
    assert n >= STEPS


def _diffusers_loop(sched, net, x):
    """The scheduler's own deterministic loop from x (its first state)."""
    for t in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


LOOPS = [("ddim", "epsilon"), ("ddim", "v_prediction"), ("euler", "epsilon"),
         ("euler_karras", "epsilon")]
SAMPLING = [(net, *loop) if (i + j) % len(NETWORKS) == 0 or net == "unet" else
            pytest.param(net, *loop, marks=pytest.mark.slow)
            for i, net in enumerate(NETWORKS) for j, loop in enumerate(LOOPS)]


@pytest.mark.parametrize("net_name,sched_name,prediction", SAMPLING)
def test_sampling_retraces_the_schedulers_loop(tmp_path, saved_networks, net_name, sched_name,
                                               prediction):
    """DDIM (η = 0) is Euler in y = x_t/√ᾱ: both retrace pydiffgen's Euler over σ's."""
    D, sched = _pipeline(tmp_path, saved_networks, net_name, sched_name, prediction)
    cond = make_cond(D.condition, B)
    sigmas = D.scheduler_sigmas(STEPS)
    sched.set_timesteps(STEPS)
    z = torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if sched_name == "ddim":
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
        x_init = z * (1 + sigmas[0] ** 2).sqrt()  # diffusers starts at x_T = z = y_T·√ᾱ_T
    else:
        x_init = z * sched.init_noise_sigma
    with torch.no_grad():
        expected = _diffusers_loop(sched, _net_call(D, cond), z if sched_name == "ddim"
                                   else x_init.clone())
        got = sample(D, B, (1, 8, 8), method="euler", sigmas=sigmas, x_init=x_init,
                     cond=cond, dtype=torch.float64)
    assert sigmas[-1] == 0
    err = (got - expected).abs().max() / expected.abs().max()
    assert err <= 1e-5, float(err)
