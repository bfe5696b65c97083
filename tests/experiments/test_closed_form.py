"""``pydiffgen closed-form`` end to end on a tiny network trained here on digits."""

import json

import pytest
import torch

from pydiffgen.cli import main
from pydiffgen.config import replace
from pydiffgen.errors import ConfigError
from pydiffgen.experiments.closed_form import MODELS, ClosedFormConfig, closed_form


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from pydiffgen import data, models, training

    out = tmp_path_factory.mktemp("closed-form") / "net"
    x = data.load("digits")[:60]  # the first 60 images: its training set
    torch.manual_seed(0)
    net = models.build("unet", channels=1, width=4, levels=1)
    training.train(net, x, training.TrainConfig(steps=30, batch_size=32, sigma_dist="edm"),
                   out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_config(tiny_model):
    return ClosedFormConfig(name="tiny", model=str(tiny_model), data="digits", n_train=60,
                            n_heldout=6, sigmas=(0.1, 2.0), patch_sizes=(3, 5))


@pytest.fixture(scope="module")
def cli_run(tiny_config, tmp_path_factory):
    """The command as a user types it; its output folder and what it printed."""
    import contextlib
    import io

    c = tiny_config
    out = tmp_path_factory.mktemp("closed-form-run") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--quiet", "closed-form", "--model", c.model, "--data", "digits",
                     "--n-train", "60", "--n-heldout", "6", "--sigmas", "0.1,2",
                     "--patch-sizes", "3,5", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_cli_runs_and_writes_report(cli_run):
    out, printed = cli_run
    assert "best" in printed and "report:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sigma"] == [0.1, 2.0]
    assert list(metrics["r2"]) == list(MODELS)
    for m in MODELS:
        assert all(r <= 1 + 1e-9 for r in metrics["r2"][m])
        assert all(e >= 0 for e in metrics["rmse"][m])
    for m in ("LS", "ELS", "PSPC"):
        assert set(metrics["patch_size"][m]) <= {3, 5}
        # the chosen size is the calibration's best
        for i, cal in enumerate(metrics["calibration"]):
            assert metrics["r2"][m][i] == max(cal[m].values())
    assert metrics["best"][0] in MODELS
    assert (out / "report.html").stat().st_size > 10_000
    for fig in ("r2", "rmse", "patch_size", "samples"):
        assert (out / f"{fig}.png").exists()


def test_closed_form_samples_from_the_networks_noise(cli_run):
    out, printed = cli_run
    samples = json.loads((out / "metrics.json").read_text())["samples"]
    assert set(samples) == {"network", *MODELS}
    net = torch.tensor(samples["network"]["samples"])
    assert net.shape == (16, 1, 8, 8) and torch.isfinite(net).all()
    for m in MODELS:
        x = torch.tensor(samples[m]["samples"])
        assert x.shape == net.shape
        cos = torch.nn.functional.cosine_similarity(x.flatten(1), net.flatten(1), dim=1)
        torch.testing.assert_close(torch.tensor(samples[m]["cosine"]), cos, atol=1e-5, rtol=0)
        assert 0 <= samples[m]["memorized"] <= 1
    # deterministic samples of the exact empirical optimum are training images
    assert samples["empirical"]["memorized"] == 1.0
    assert "samples from the network's initial noise" in printed


def test_calibrated_size_takes_the_nearest_sigma_in_log():
    from pydiffgen.experiments.closed_form import calibrated_size

    per_sigma = [{"sigma": 0.1, "patch_size": {"LS": 3}}, {"sigma": 1.0, "patch_size": {"LS": 7}}]
    size = calibrated_size(per_sigma, "LS")
    assert [size(s) for s in (0.002, 0.1, 0.3, 0.32, 5.0)] == [3, 3, 3, 7, 7]


def test_rerun_resumes_and_refuses_another_config(tiny_config, cli_run):
    out, _ = cli_run
    first = json.loads((out / "metrics.json").read_text())
    logs = []
    config = replace(tiny_config, name="closed-form")  # the CLI's config (default name)
    again = closed_form(config, out, progress=False, log=logs.append)
    assert sum("done earlier" in m for m in logs) == 3  # two σ and the samples
    assert again["r2"] == first["r2"]
    with pytest.raises(ConfigError, match="different config"):
        closed_form(replace(config, seed=1), out, progress=False, log=logs.append)


def test_dry_run_prints_the_plan(tiny_config, capsys):
    assert main(["closed-form", "--model", tiny_config.model, "--dry-run"]) == 0
    assert "LS / ELS / PSPC patch size" in capsys.readouterr().out


def test_bad_inputs(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="--model is required"):
        closed_form(replace(tiny_config, model=""), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="do not both fit"):
        closed_form(replace(tiny_config, n_train=5000), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="patch_sizes"):
        replace(tiny_config, patch_sizes=(2,))
