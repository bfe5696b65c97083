"""load_diffusers / DiffusersDenoiser: tiny random diffusers models saved to tmp folders
(pixel and latent, unconditional, class- and text-conditional), read back."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers_nets import (  # noqa: E402
    CLASSES,
    EMBED,
    NETWORKS,
    clip_text_parts,
    save_pipeline,
)

from pydiffgen.cli import main  # noqa: E402
from pydiffgen.diffusion.guidance import guided  # noqa: E402
from pydiffgen.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from pydiffgen.models.adapters import (  # noqa: E402
    DiffusersDenoiser,
    DiscreteVP,
    is_diffusers_dir,
    load_diffusers,
)

T = 50


def _tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()


def _scheduler(prediction_type="epsilon"):
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_end=0.2, clip_sample=False,
                                   prediction_type=prediction_type)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A pipeline layout: unet/ (safetensors) + scheduler/."""
    root = tmp_path_factory.mktemp("ddpm")
    _tiny_unet().save_pretrained(root / "unet", safe_serialization=True)
    _scheduler().save_pretrained(root / "scheduler")
    return root


def test_loads_pipeline_layout_and_denoises(pipeline_dir):
    assert is_diffusers_dir(pipeline_dir)
    D = load_diffusers(pipeline_dir)
    assert D.meta["data_shape"] == [1, 8, 8] and D.prediction_type == "epsilon"
    y = torch.randn(3, 1, 8, 8)
    out = D(y, torch.tensor([0.05, 1.0, 4.0]))
    assert out.shape == y.shape and out.dtype == y.dtype and torch.isfinite(out).all()
    assert torch.equal(D(y, 0.0), y)  # σ = 0: nothing to remove
    assert torch.allclose(D(y, 1.0), D(y, torch.ones(3)))


def test_sigma_t_round_trip():
    sched = _scheduler()
    D = DiffusersDenoiser(_tiny_unet(), DiscreteVP(sched.alphas_cumprod))
    abar = sched.alphas_cumprod.double()
    t = torch.arange(T, dtype=torch.float64)
    # at the discrete steps σ_t = √((1 − ᾱ_t)/ᾱ_t) and t(σ_t) = t
    assert torch.allclose(D.t_to_sigma(t), ((1 - abar) / abar).sqrt(), rtol=1e-12)
    assert torch.allclose(D.sigma_to_t(((1 - abar) / abar).sqrt()), t, atol=1e-9)
    frac = torch.rand(101, dtype=torch.float64) * (T - 1)
    assert torch.allclose(D.sigma_to_t(D.t_to_sigma(frac)), frac, atol=1e-9)
    sig = torch.exp(torch.empty(101, dtype=torch.float64).uniform_(
        np.log(D.sigma_min), np.log(D.sigma_max)))
    assert torch.allclose(D.t_to_sigma(D.sigma_to_t(sig)), sig, rtol=1e-12)
    # outside the schedule t is clamped
    assert D.sigma_to_t(torch.tensor([1e-6, 1e6])).tolist() == [0.0, T - 1]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_matches_the_schedulers_x0_prediction_at_its_timesteps(prediction_type):
    unet, sched = _tiny_unet(1), _scheduler(prediction_type)
    # the scheduler's arithmetic in float64 too, so the formulas are compared, not roundings
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    D = DiffusersDenoiser(unet, DiscreteVP(sched.alphas_cumprod, prediction_type)).double()
    unet.double()
    sched.set_timesteps(T)
    abar = sched.alphas_cumprod.double()
    x0 = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    for t in (0, 7, 31, T - 1):
        x_t = sched.add_noise(x0, torch.randn_like(x0), torch.tensor([t]))
        with torch.no_grad():
            eps = unet(x_t, torch.tensor([t], dtype=torch.float64)).sample
            expected = sched.step(eps, t, x_t).pred_original_sample
            sigma = ((1 - abar[t]) / abar[t]).sqrt()
            got = D(x_t / abar[t].sqrt(), sigma.expand(4))  # y = x_t/√ᾱ
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9), (prediction_type, t)


def test_refuses_pickle_weights_and_other_models(tmp_path):
    _tiny_unet().save_pretrained(tmp_path / "bin", safe_serialization=False)
    _scheduler().save_pretrained(tmp_path / "bin")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_diffusers(tmp_path / "bin")
    with pytest.raises(CheckpointError, match="holds no diffusers UNet"):
        load_diffusers(tmp_path)
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet3DConditionModel"}))
    with pytest.raises(CheckpointError, match="network UNet3DConditionModel is not supported"):
        load_diffusers(tmp_path / "cond")
    with pytest.raises(ConfigError, match="decrease strictly"):
        DiscreteVP(torch.ones(10))


def test_cli_audit_model_end_to_end(pipeline_dir, tmp_path, capsys):
    from pydiffgen import data

    train = data.load("digits")[:40]
    with open(tmp_path / "t.npy", "wb") as f:
        np.save(f, train.numpy())
    out = tmp_path / "o"
    assert main(["--quiet", "audit", "--model", str(pipeline_dir), "--train",
                 str(tmp_path / "t.npy"), "--n", "4", "--sampler-option", "steps=4",
                 "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    summary = json.loads((out / "audit.json").read_text())
    assert summary["n_samples"] == 4 and summary["image_shape"] == [1, 8, 8]
    request = json.loads((out / "samples.json").read_text())
    assert request["method"] == "heun"
    assert request["options"]["sigma_max"] == pytest.approx(
        load_diffusers(pipeline_dir).sigma_max)
    assert (out / "report.html").is_file()


# --- latent, class- and text-conditional pipelines -------------------------------------


def _vae():
    torch.manual_seed(3)
    return diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=8, scaling_factor=0.7,
        shift_factor=0.1).eval()


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    """A latent pipeline: a UNet on 2×4×4 latents, an AutoencoderKL for 1×8×8 images."""
    torch.manual_seed(4)
    unet = diffusers.UNet2DModel(
        sample_size=4, in_channels=2, out_channels=2, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return save_pipeline(tmp_path_factory.mktemp("latent"), unet,
                         diffusers.DDIMScheduler(num_train_timesteps=T), vae=_vae())


def test_latent_pipeline_encodes_and_decodes_as_its_vae(latent_dir, tmp_path):
    vae = _vae()
    D = load_diffusers(latent_dir)
    assert D.latent and not D.conditional and D.null_cond is None
    assert D.meta["data_shape"] == [2, 4, 4] and D.meta["pixel_shape"] == [1, 8, 8]
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = D.encode(x)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        assert torch.allclose(z, (mean - 0.1) * 0.7, atol=1e-6)
        own = vae.decode(mean).sample  # the VAE's own round trip
    assert torch.allclose(D.decode(z), own, atol=1e-5)
    assert D(z, torch.full((3,), 2.0)).shape == z.shape
    pixels = load_diffusers(pipeline_dir_of(tmp_path / "pixels"))
    with pytest.raises(InputError, match="no encode/decode"):
        pixels.decode(z)


def pipeline_dir_of(root):
    return save_pipeline(root, _tiny_unet(), _scheduler())


def test_text_pipeline_embeds_prompts_with_its_own_clip(tmp_path):
    tokenizer, encoder = clip_text_parts(tmp_path)
    torch.manual_seed(6)
    unet = NETWORKS["unet_text"][0](diffusers).eval()
    root = save_pipeline(tmp_path / "sd", unet, diffusers.DDIMScheduler(
        num_train_timesteps=T, clip_sample=False), text_encoder=encoder, tokenizer=tokenizer)
    D = load_diffusers(root, dtype=torch.float64)
    assert D.conditional and not D.latent and D.condition == "text"
    prompts = ["lower newer", "lowest", "lower newer"]
    emb = D.embed_prompts(prompts)
    ids = tokenizer(prompts, padding="max_length", max_length=7, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        own = encoder.double()(ids)[0]
    assert emb.shape == (3, 7, EMBED) and torch.allclose(emb, own, atol=1e-10)
    assert set(D.prompts.cache) == {"lower newer", "lowest"}  # cached per prompt
    assert torch.equal(D.null_cond, D.embed_prompts([""]))
    # x0 = y − σ·ε̂ with the UNet called on those embeddings (DDIM, ε-prediction)
    y = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    t = D.sigma_to_t(sigma)
    with torch.no_grad():
        eps = D.net(y / (1 + sigma**2).sqrt()[:, None, None, None], t,
                    encoder_hidden_states=own).sample
        got = D(y, sigma, emb)
        assert torch.allclose(got, y - sigma[:, None, None, None] * eps, atol=1e-10)
        # no cond: the empty prompt's (the null condition, shared by the batch)
        assert torch.allclose(D(y, sigma), D(y, sigma, D.embed_prompts([""] * 3)), atol=1e-12)
        assert not torch.allclose(D(y, sigma), got)


@pytest.mark.parametrize("net_name", ["dit", "transformer", "unet_classes", "unet"])
def test_conditions_and_null_conditions(tmp_path, saved_networks, net_name):
    folder = "unet" if net_name.startswith("unet") else "transformer"
    (tmp_path / folder).symlink_to(saved_networks[net_name])
    _scheduler().save_pretrained(tmp_path / "scheduler")
    D = load_diffusers(tmp_path)
    y = torch.randn(2, 1, 8, 8)
    if net_name == "unet":
        assert not D.conditional and D.null_cond is None
        with pytest.raises(InputError, match="unconditional"):
            D(y, 1.0, torch.tensor([0, 1]))
        return
    assert D.conditional and D.condition == "classes"
    labels = torch.tensor([0, 2])
    assert not torch.allclose(D(y, 1.0, labels), D(y, 1.0, labels.flip(0)))
    assert torch.equal(D(y, 1.0, labels[:1]), D(y, 1.0, labels[:1].expand(2)))  # batch one
    if net_name == "unet_classes":  # its label embedding has no "no class" row
        assert D.null_cond is None
        with pytest.raises(InputError, match="no null condition"):
            D(y, 1.0)
    else:  # DiT's label-dropout row, as DiTPipeline's guidance uses
        assert D.null_cond.tolist() == [CLASSES]
        null = D(y, 1.0, torch.tensor([CLASSES] * 2))
        assert torch.equal(D(y, 1.0), null)
        # classifier-free guidance through the adapter: D_∅ + w·(D_c − D_∅); w = 1: D_c
        cond = D(y, 1.0, labels)
        assert torch.allclose(guided(D, labels, 2.5)(y, 1.0), null + 2.5 * (cond - null),
                              atol=1e-6)
        assert torch.equal(guided(D, labels, 1.0)(y, 1.0), null + 1.0 * (cond - null))


# --- what is refused ------------------------------------------------------------------------


def test_bin_only_folder_says_how_to_convert(tmp_path):
    _tiny_unet().save_pretrained(tmp_path, safe_serialization=False)
    _scheduler().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_diffusers(tmp_path)
    assert "\n" not in str(err.value) and "safe_serialization=True" in str(err.value)


@pytest.mark.parametrize("scheduler,options,match", [
    ("LCMScheduler", {}, "scheduler LCMScheduler cannot be mapped"),
    ("FlowMatchEulerDiscreteScheduler", {}, "FlowMatchEulerDiscreteScheduler cannot be mapped"),
    ("DDPMScheduler", {"thresholding": True}, "DDPMScheduler: thresholding=True"),
    ("DPMSolverMultistepScheduler", {"prediction_type": "flow_prediction"},
     "DPMSolverMultistepScheduler: prediction_type 'flow_prediction'"),
    ("DDIMScheduler", {"rescale_betas_zero_snr": True}, "DDIMScheduler: .*σ = ∞"),
    ("EDMEulerScheduler", {"prediction_type": "sample"}, "EDM schedulers predict"),
])
def test_unmappable_scheduler_configs_are_refused_by_name(tmp_path, scheduler, options, match):
    _tiny_unet().save_pretrained(tmp_path, safe_serialization=True)
    cfg = dict(getattr(diffusers, scheduler)().config, _class_name=scheduler, **options)
    cfg.pop("_use_default_values")  # as saved: every value is the file's
    (tmp_path / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_diffusers(tmp_path)


def test_no_scheduler_is_not_read_as_ddpm(tmp_path):
    _tiny_unet().save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(CheckpointError, match="not guessed"):
        load_diffusers(tmp_path)


def test_clip_sample_follows_the_config_and_can_be_turned_off(tmp_path):
    _tiny_unet().save_pretrained(tmp_path, safe_serialization=True)
    diffusers.DDPMScheduler(num_train_timesteps=T).save_pretrained(tmp_path)  # clips by default
    y = 5 * torch.randn(2, 1, 8, 8)
    D = load_diffusers(tmp_path)
    assert D.schedule.clip_range == 1.0 and D(y, 2.0).abs().max() <= 1
    off = load_diffusers(tmp_path, clip_sample=False)
    assert off.schedule.clip_range is None and off(y, 2.0).abs().max() > 1


def test_scheduler_sigmas_are_its_own_or_refused(tmp_path):
    _tiny_unet().save_pretrained(tmp_path, safe_serialization=True)
    diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T).save_pretrained(tmp_path)
    D = load_diffusers(tmp_path)
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T)
    sched.set_timesteps(6)
    assert torch.equal(D.scheduler_sigmas(6), sched.sigmas.double())
    # with Karras σ's DPM-Solver rounds the network's timesteps: not the σ's it steps over
    diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, use_karras_sigmas=True).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="DPMSolverMultistepScheduler: .*timesteps other"):
        load_diffusers(tmp_path).scheduler_sigmas(6)


def test_cli_audit_model_on_a_dit_pipeline(saved_networks, tmp_path, capsys):
    """A class-conditional transformer samples its null class (unconditional) in an audit."""
    (tmp_path / "dit" / "transformer").parent.mkdir()
    (tmp_path / "dit" / "transformer").symlink_to(saved_networks["dit"])
    diffusers.DDIMScheduler(num_train_timesteps=T).save_pretrained(tmp_path / "dit" / "scheduler")
    np.save(tmp_path / "t.npy", np.random.default_rng(0).uniform(-1, 1, (20, 1, 8, 8)))
    assert main(["--quiet", "audit", "--model", str(tmp_path / "dit"), "--train",
                 str(tmp_path / "t.npy"), "--n", "3", "--sampler-option", "steps=3",
                 "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "audit.json").read_text())["image_shape"] == [1, 8, 8]


def test_cli_audit_model_on_a_latent_pipeline(latent_dir, tmp_path):
    """A latent model's samples are decoded and audited as images."""
    np.save(tmp_path / "t.npy", np.random.default_rng(0).uniform(-1, 1, (20, 1, 8, 8)))
    assert main(["--quiet", "audit", "--model", str(latent_dir), "--train",
                 str(tmp_path / "t.npy"), "--n", "3", "--sampler-option", "steps=3",
                 "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "audit.json").read_text())["image_shape"] == [1, 8, 8]
