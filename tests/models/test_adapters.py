"""DiffusersDenoiser: a tiny random UNet2DModel + DDPMScheduler saved to a tmp folder."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from pydiffgen.cli import main  # noqa: E402
from pydiffgen.errors import CheckpointError, ConfigError  # noqa: E402
from pydiffgen.models.adapters import DiffusersDenoiser, is_diffusers_dir  # noqa: E402

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
    D = DiffusersDenoiser.from_pretrained(pipeline_dir)
    assert D.meta["data_shape"] == [1, 8, 8] and D.prediction_type == "epsilon"
    y = torch.randn(3, 1, 8, 8)
    out = D(y, torch.tensor([0.05, 1.0, 4.0]))
    assert out.shape == y.shape and out.dtype == y.dtype and torch.isfinite(out).all()
    assert torch.equal(D(y, 0.0), y)  # σ = 0: nothing to remove
    assert torch.allclose(D(y, 1.0), D(y, torch.ones(3)))


def test_sigma_t_round_trip():
    sched = _scheduler()
    D = DiffusersDenoiser(_tiny_unet(), sched.alphas_cumprod)
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
    D = DiffusersDenoiser(unet, sched.alphas_cumprod, prediction_type).double()
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
        DiffusersDenoiser.from_pretrained(tmp_path / "bin")
    with pytest.raises(CheckpointError, match="holds no diffusers UNet"):
        DiffusersDenoiser.from_pretrained(tmp_path)
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match="only unconditional UNet2DModel"):
        DiffusersDenoiser.from_pretrained(tmp_path / "cond")
    with pytest.raises(ConfigError, match="decrease strictly"):
        DiffusersDenoiser(_tiny_unet(), torch.ones(10))


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
        DiffusersDenoiser.from_pretrained(pipeline_dir).sigma_max)
    assert (out / "report.html").is_file()
