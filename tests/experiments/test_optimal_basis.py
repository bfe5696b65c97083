"""Optimal-basis experiments: config checks and a tiny end-to-end run (the analysis they
use is tested in tests/analysis/test_basis.py)."""

import json
import math
from dataclasses import replace

import pytest

from pydiffgen.cli import main
from pydiffgen.errors import ConfigError
from pydiffgen.experiments import optimal_basis as ob


def test_config_validation_and_plan():
    with pytest.raises(ConfigError, match="experiments"):
        ob.OptimalBasisConfig(experiments=("nope",))
    with pytest.raises(ConfigError, match="multiple of"):
        ob.OptimalBasisConfig(size=18)
    with pytest.raises(ConfigError, match="fit_range"):
        ob.OptimalBasisConfig(fit_range=(10.0, 5.0))
    with pytest.raises(ConfigError, match="alphas"):
        ob.OptimalBasisConfig(alphas=(0.0,))
    text = ob.plan(ob.preset("quick"))
    assert "calpha_a1" in text and "top-5" in text


TINY = ob.OptimalBasisConfig(
    name="tiny", experiments=("calpha", "disks", "ray", "gaussian"), size=8, alphas=(2.0,),
    n_train=64, n_eval=8, levels=1, width=4, steps=4, batch_size=8,
    psnr_levels=(0.0, 10.0, 20.0), fit_range=(0.0, 20.0), sigmas=(0.2,), jacobian_images=2,
    gaussian_size=4,
)


def test_end_to_end_tiny_run_resumes_and_cli(tmp_path, capsys):
    out = tmp_path / "run"
    res = ob.optimal_basis(TINY, out, progress=False, log=lambda m: None)
    s = res["summary"]
    assert s["calpha"][0]["optimal_slope"] == pytest.approx(2 / 3)
    assert math.isfinite(s["calpha"][0]["slope"])
    assert math.isfinite(s["calpha"][0]["linear_slope"])  # the Wiener reference
    assert len(s["disks"][0]["mean_angles_deg"]) == 5 and len(s["ray"][0]["mean_angles_deg"]) == 1
    assert all(0 <= a <= 90 for a in s["disks"][0]["mean_angles_deg"])
    assert s["gaussian"][0]["optimum_max_angle_deg"] < 1e-3
    html = (out / "report.html").read_text()
    assert "PSNR slope" in html and "tangent space" in html
    stored = json.loads((out / "results.json").read_text())
    assert stored["summary"] == json.loads(json.dumps(s))
    seen = []
    again = ob.optimal_basis(TINY, out, progress=False, log=seen.append)
    assert again["summary"] == res["summary"]
    assert any("analysis done earlier" in m for m in seen)
    with pytest.raises(ConfigError, match="different config"):
        ob.optimal_basis(replace(TINY, steps=5), out, progress=False, log=lambda m: None)
    # the CLI rebuilds the report and refuses bad flags on one line
    assert main(["optimal-basis", "--report-only", str(out)]) == 0
    assert main(["optimal-basis", "--size", "10", "--dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multiple of" in err[0]


@pytest.mark.slow
def test_quick_preset_finds_the_disk_tangent_space(tmp_path):
    """A real (short) training run: the network's top eigenvectors lean towards the disk
    tangent space far more than a random subspace does, and the C^α slopes are sane."""
    res = ob.optimal_basis(ob.preset("quick"), tmp_path / "q", progress=False,
                           log=lambda m: None)
    s = res["summary"]
    for row in s["disks"]:
        assert row["mean_angles_deg"][0] < row["random_mean_angles_deg"][0] - 20
    for row in s["calpha"]:
        assert 0.1 < row["slope"] < 1.2


@pytest.mark.gpu
def test_tiny_run_on_cuda_matches_the_exact_references(tmp_path):
    """The experiments run with models on the GPU (comparisons on the CPU)."""
    res = ob.optimal_basis(replace(TINY, device="cuda"), tmp_path / "cuda", progress=False,
                           log=lambda m: None)
    s = res["summary"]
    assert math.isfinite(s["calpha"][0]["slope"])
    assert s["gaussian"][0]["optimum_max_angle_deg"] < 1e-3
    assert all(0 <= a <= 90 for a in s["disks"][0]["mean_angles_deg"])
