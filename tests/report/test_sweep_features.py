"""The sweep's feature-space section end to end on the tiny sweep (pixel encoder and a
tiny local DINOv2): n<N>/features.json per N, metrics.json's "features", the report's
section and figure, resume, and runs without the section."""

import json
from dataclasses import replace

import pytest

from pydiffgen.experiments import SweepConfig, generalization_sweep, write_report
from pydiffgen.report.sweep_features import READING

# tests/experiments/test_sweep.py's tiny sweep, with N = 24 and 24 samples so that most
# metrics have the rows they need (N = 2 shows the skipping), no Jacobian spectra
TINY = SweepConfig(
    name="tiny", dataset="digits", sizes=(2, 24), model="bf_unet",
    model_options=(("levels", 1), ("width", 8)), steps=12, batch_size=16, n_samples=24,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="euler",
    sampler_options=(("steps", 4),), jacobian_images=0,
)


@pytest.fixture(autouse=True)
def few_replicates(monkeypatch):
    """5 half-samples per interval (the sweep's 30 cost minutes here, FLD's fit above all)."""
    monkeypatch.setattr("pydiffgen.experiments.generalization.FEATURE_N_BOOT", 5)


def check_section(out, encoder_name):
    feats = {n: json.loads((out / f"n{n}" / "features.json").read_text()) for n in (2, 24)}
    big = feats[24]
    assert big["encoder"].startswith(encoder_name)
    for row in ("prdc.precision", "fd", "authpct", "copy.p95", "fld.gap"):
        r = big["metrics"][row]
        assert r["low"] <= r["value"] <= r["high"] and r["ci"] == 0.95
    assert "extraction" in big["skipped"]  # 50 neighbours need 100 training rows
    assert feats[2]["metrics"] == {} and "needs 12 samples" in feats[2]["skipped"]["all"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"]["24"] == big
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Feature space:" in html and "authpct" in html and READING["authpct"] in html
    assert "Skipped:" in html and "N = 24" in html
    assert (out / "feature_metrics.png").stat().st_size > 2000
    return feats


def test_pixel_features_per_n_resume_and_rebuild(tmp_path):
    out = tmp_path / "run"
    generalization_sweep(TINY, out, progress=False, log=lambda m: None)
    feats = check_section(out, "pixel")
    assert feats[24]["feature_dim"] == 64
    # a rerun keeps each N's features; a run that lost them computes them again
    (out / "n24" / "features.json").unlink()
    seen = []
    generalization_sweep(TINY, out, progress=False, log=seen.append)
    assert any("N=24: feature-space metrics" in m for m in seen)
    assert check_section(out, "pixel") == feats
    # runs from before the section (no features.json) report without it
    for n in (2, 24):
        (out / f"n{n}" / "features.json").unlink()
    assert "features" not in write_report(out)
    assert "Feature space:" not in (out / "report.html").read_text(encoding="utf-8")


def test_tiny_dinov2_features(tmp_path, tiny_dinov2):
    out = tmp_path / "run"
    generalization_sweep(replace(TINY, encoder=f"dinov2:{tiny_dinov2}"), out,
                         progress=False, log=lambda m: None)
    feats = check_section(out, "dinov2")
    assert feats[24]["feature_dim"] == 32


def test_a_bad_encoder_fails_before_training(tmp_path):
    from pydiffgen.errors import PydiffgenError

    with pytest.raises(PydiffgenError, match="nowhere"):
        generalization_sweep(replace(TINY, encoder=f"dinov2:{tmp_path / 'nowhere'}"),
                             tmp_path / "run", progress=False, log=lambda m: None)
    assert not list((tmp_path / "run").glob("n*/A/model.json"))
