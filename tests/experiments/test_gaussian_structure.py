"""The hidden-Gaussian-structure experiment: a tiny run end to end, resume, CLI."""

import json

import pytest

from pydiffgen.cli import main
from pydiffgen.config import replace
from pydiffgen.errors import ConfigError
from pydiffgen.experiments.gaussian_structure import (
    GaussianConfig,
    gaussian_structure,
    preset,
    regimes,
)

TINY = GaussianConfig(
    name="tiny", n_train=200, n_eval=32, sizes=(20, 200), width=8, widths=(4, 8), steps=40,
    checkpoints=(10,), n_sigmas=6, adam_sigmas=(1.0,), n_samples=8, sampler_steps=4,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gaussian") / "tiny"
    logs = []
    metrics = gaussian_structure(TINY, out, progress=False, log=logs.append)
    return out, metrics, logs


def test_tiny_run_writes_report_metrics_and_models(tiny_run):
    out, metrics, logs = tiny_run
    assert (out / "report.html").stat().st_size > 10_000
    for fig in ("distances", "linearity", "weights", "sweeps"):
        assert (out / f"{fig}.png").exists()
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["summary"] == json.loads(json.dumps(metrics["summary"]))
    s = metrics["summary"]
    assert set(s["sizes"]) == {"20", "200"} and set(s["widths"]) == {"4", "8"}
    assert set(s["steps"]) == {"10", "40"}
    main_ = metrics["main"]
    assert len(main_["sigma"]) == 6 and main_["sigma"][0] == pytest.approx(0.002)
    # physics that holds for any network: at σ = 0.002 the linear and Gaussian denoisers
    # are the identity; at σ = 80 every denoiser returns ≈ the mean
    assert s["regimes"][0] == "low"
    assert main_["dist"]["G-M"]["rmse"][-1] < 0.05
    assert main_["dist"]["G-y"]["rmse"][0] < 0.01
    assert all(0 <= v <= 1 + 1e-9 for v in main_["linearity"]["net"])
    assert s["adam"][0]["rel_error_vs_lstsq"] < 0.2
    assert sum("training" in m for m in logs) == 4  # 3 models + 1 checkpoint stage


def test_rerun_reuses_models_and_analyses(tiny_run):
    out, metrics, _ = tiny_run
    logs = []
    again = gaussian_structure(TINY, out, progress=False, log=logs.append)
    assert not any("training" in m or "analysed" in m for m in logs)
    assert again["summary"] == metrics["summary"]
    with pytest.raises(ConfigError, match="different config"):
        gaussian_structure(replace(TINY, steps=41), out, progress=False, log=logs.append)


def test_regime_labels():
    dist = {p: {"rmse": v} for p, v in {
        "net-G": [0.001, 0.2, 0.01], "net-L": [0.001, 0.1, 0.01], "L-G": [0.001, 0.02, 0.01],
        "net-M": [0.3, 0.3, 0.01], "G-M": [0.3, 0.3, 0.01], "L-y": [0.001, 0.5, 9.0],
        "G-y": [0.001, 0.5, 9.0]}.items()}
    assert regimes([0.01, 1.0, 50.0], dist, 0.05) == ["low", "intermediate", "high"]


def test_regimes_are_contiguous_bands():
    # D_G dips within tol of D_M mid-range (smooth data): still one intermediate band
    dist = {"G-y": {"rmse": [0.01, 0.1, 0.5, 1.0, 2.0, 9.0]},
            "G-M": {"rmse": [0.06, 0.06, 0.04, 0.06, 0.03, 0.001]}}
    assert regimes([0.01, 0.1, 0.5, 1.0, 2.0, 9.0], dist, 0.05) == [
        "low", "intermediate", "intermediate", "intermediate", "high", "high"]
    far = {"G-y": {"rmse": [0.01, 0.02]}, "G-M": {"rmse": [0.3, 0.3]}}
    assert regimes([0.001, 0.002], far, 0.05) == ["low", "low"]


def test_config_validation_and_cli(tmp_path, capsys, tiny_run):
    with pytest.raises(ConfigError, match="sizes must lie in"):
        GaussianConfig(sizes=(5000,))
    with pytest.raises(ConfigError, match="checkpoints must lie in"):
        GaussianConfig(checkpoints=(1000,))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
    assert main(["gaussian", "--preset", "demo", "--dry-run"]) == 0
    assert "4 EDM UNets" in capsys.readouterr().out
    assert main(["gaussian", "--steps", "0", "--dry-run"]) == 1
    assert "steps must be an integer >= 1" in capsys.readouterr().err
    out, _, _ = tiny_run
    (out / "report.html").unlink()
    assert main(["gaussian", "--report-only", str(out)]) == 0
    assert (out / "report.html").exists()


def test_demo_preset_sizes_fit_the_data():
    from pydiffgen.data import deduplicate, load

    c = preset("demo")
    n = len(deduplicate(load(c.dataset), threshold=c.dedup_threshold))
    assert c.n_train + c.n_eval < n


def test_sweep_report_gains_a_gaussian_section(tmp_path):
    from pydiffgen.analysis import GaussianDenoiser
    from pydiffgen.data import load
    from pydiffgen.experiments.generalization import (
        SweepConfig,
        gaussian_rmse,
        generalization_sweep,
    )

    x = load("digits")[:60]
    G = GaussianDenoiser.fit(x[:40])
    same = gaussian_rmse(G, x[:40], x[40:], "cpu")
    assert len(same["sigma"]) == 12 and max(same["rmse"]) < 1e-6
    assert gaussian_rmse(G, x[:40], x[40:], "cpu", max_dim=10) is None
    config = SweepConfig(
        name="tiny", dataset="digits", sizes=(2, 5), model="bf_unet",
        model_options=(("levels", 1), ("width", 4)), steps=4, batch_size=8, n_samples=4,
        n_eval=4, n_baseline=20, psnr_levels=(5.0,), sampler="euler",
        sampler_options=(("steps", 3),))
    generalization_sweep(config, tmp_path / "sweep", progress=False, log=lambda m: None)
    assert "Gaussian structure" in (tmp_path / "sweep" / "report.html").read_text()
    assert (tmp_path / "sweep" / "gaussian_rmse.png").exists()
