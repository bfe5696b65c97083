import json
from dataclasses import replace

import pytest

from pydiffgen.cli import main
from pydiffgen.errors import ConfigError
from pydiffgen.experiments import SweepConfig, generalization_sweep, plan, preset, write_report
from pydiffgen.experiments.generalization import verdict

TINY = SweepConfig(
    name="tiny", dataset="digits", sizes=(2, 5), model="bf_unet",
    model_options=(("levels", 1), ("width", 8)), steps=12, batch_size=16, n_samples=6,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="euler",
    sampler_options=(("steps", 4),),
)


def _per_n(out):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("n*/metrics.json"))}


class Killed(Exception):
    pass


def test_sweep_writes_report_and_resumes_identically(tmp_path):
    straight = tmp_path / "straight"
    metrics = generalization_sweep(TINY, straight, progress=False, log=lambda m: None)
    assert set(metrics["sizes"]) == {"2", "5"}
    for s in metrics["sizes"].values():
        assert s["verdict"] in {"memorizing", "transition", "generalizing"}
        assert 0 <= min(s["basis_agreement"].values()) <= max(s["basis_agreement"].values()) <= 1
        assert -1.0 <= s["paired_median"] <= 1.0
    html = (straight / "report.html").read_text()
    assert "N = 2:" in html and "data:image/png;base64," in html
    for png in ("similarity_histograms", "median_similarity", "psnr_curves", "samples_n5",
                "jacobian_eigenvectors"):
        assert (straight / f"{png}.png").stat().st_size > 1000

    # kill the second run while it trains model B at N = 5, then rerun
    resumed = tmp_path / "resumed"

    def killer(msg):
        if "N=5 B: training" in msg:
            raise Killed

    with pytest.raises(Killed):
        generalization_sweep(TINY, resumed, progress=False, log=killer)
    assert (resumed / "n2" / "metrics.json").exists()
    assert not (resumed / "n5" / "metrics.json").exists()
    seen = []
    generalization_sweep(TINY, resumed, progress=False, log=seen.append)
    assert any("N=2: done earlier" in m for m in seen)
    assert not any("N=5 A: training" in m for m in seen)  # model A of N=5 was kept
    assert _per_n(resumed) == _per_n(straight)

    # the report can be rebuilt from disk alone
    (resumed / "report.html").unlink()
    assert write_report(resumed)["sizes"] == metrics["sizes"]
    assert (resumed / "report.html").exists()


def test_sweep_refuses_another_config_in_the_same_folder(tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    generalization_sweep(replace(TINY, sizes=(2,)), out, progress=False,
                         log=lambda m: None)
    with pytest.raises(ConfigError, match="different config"):
        generalization_sweep(TINY, out, progress=False, log=lambda m: None)


def test_config_validation_and_plan():
    with pytest.raises(ConfigError, match="sizes"):
        SweepConfig(sizes=(0, 10))
    with pytest.raises(ConfigError, match="distinct"):
        SweepConfig(sizes=(4, 4))
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")
    text = plan(preset("demo"))
    assert "sizes N =" in text and "digits" in text


def test_largest_size_must_fit_the_data(tmp_path):
    with pytest.raises(ConfigError, match="lower --sizes"):
        generalization_sweep(replace(TINY, sizes=(2, 1000)),
                             tmp_path / "x", progress=False, log=lambda m: None)


def test_verdict_rules():
    base = {"paired_median": 0.3, "nearest_median": 0.99, "memorized_fraction": 0.95}
    assert verdict(base) == "memorizing"
    gen = {"paired_median": 0.95, "nearest_median": 0.8, "memorized_fraction": 0.0}
    assert verdict(gen) == "generalizing"
    mid = {"paired_median": 0.7, "nearest_median": 0.8, "memorized_fraction": 0.1}
    assert verdict(mid) == "transition"


def test_cli_dry_run_and_errors(capsys):
    assert main(["sweep", "--preset", "demo", "--sizes", "3,30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sizes N = 3, 30" in out
    assert main(["sweep", "--preset", "nope", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pydiffgen: error:") and "unknown preset" in err and "\n" not in err
    assert main(["sweep", "--steps", "many", "--dry-run"]) == 1
    assert "--steps" in capsys.readouterr().err


def test_cli_train_sample_report(tmp_path, capsys):
    ckpt = tmp_path / "m"
    assert main(["--quiet", "train", "--data", "digits", "--data-option", "n=32",
                 "--model", "bf_unet", "--model-option", "levels=1", "--model-option",
                 "width=8", "--steps", "5", "--batch-size", "8", "--out", str(ckpt)]) == 0
    assert (ckpt / "model.safetensors").exists()
    npy = tmp_path / "s.npy"
    assert main(["--quiet", "sample", "--model", str(ckpt), "--n", "3", "--out", str(npy)]) == 0
    import numpy as np

    assert np.load(npy).shape == (3, 1, 8, 8)
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
