import json

import pytest
import torch

from pydiffgen import data, models
from pydiffgen.cli import main
from pydiffgen.errors import ConfigError, InputError
from pydiffgen.experiments.memorization_factors import (
    PRESETS,
    FactorConfig,
    factor_points,
    memorization_factors,
    write_report,
)
from pydiffgen.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = FactorConfig(
    name="tiny", n_train=6, n_heldout=6, steps=12, width=8, steps_values=(4, 12),
    width_values=(8,), size_values=(4,), classes_values=(2,), guidance_values=(0.0, 1.5),
    guidance_classes=2, batch_size=8, n_samples=6, sampler_steps=4, n_gap_sigmas=5,
    gap_images=6,
)


class Killed(Exception):
    pass


def _points(out):
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))}


def _strip(points):  # timings differ between runs
    return {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in points.items()}


def test_config_validation_and_presets():
    for c in PRESETS.values():
        assert factor_points(c)
    with pytest.raises(ConfigError, match="factors must be"):
        FactorConfig(factors=("steps", "depth"))
    with pytest.raises(ConfigError, match="k >= 2"):
        FactorConfig(classes_values=(1, 4))
    with pytest.raises(ConfigError, match="label_dropout"):
        FactorConfig(label_dropout=0.0)
    with pytest.raises(ConfigError, match="guidance_values"):
        FactorConfig(guidance_values=(-1.0,))


def test_points_share_models():
    pts = factor_points(TINY)
    assert [p["key"] for p in pts] == ["steps_4", "steps_12", "width_8", "size_4", "classes_2",
                                       "guidance_0.0", "guidance_1.5"]
    models_used = {p["model"] for p in pts}
    # the steps run, the base width and the size run; classes and guidance share k = 2
    assert models_used == {"n6_w8_k0", "n4_w8_k0", "n6_w8_k2"}
    assert {p["w"] for p in pts if p["factor"] == "guidance"} == {0.0, 1.5}


def test_factor_sweep_runs_resumes_identically_and_reports(tmp_path):
    straight = tmp_path / "straight"
    summary = memorization_factors(TINY, straight, log=lambda m: None)
    assert set(summary["points"]) == {p["key"] for p in factor_points(TINY)}
    for r in summary["points"].values():
        assert len(r["gap"]["gap"]) == 5
        assert 0.0 <= r["memorized_fraction"] <= 1.0
    # guidance changes the denoiser, so the w = 1.5 gap differs from w = 0
    g0, g1 = summary["points"]["guidance_0.0"], summary["points"]["guidance_1.5"]
    assert g0["gap"]["error_train"] != g1["gap"]["error_train"]
    assert g0["gap"]["error_train"] == summary["points"]["classes_2"]["gap"]["error_train"]
    html = (straight / "report.html").read_text()
    assert "Factor: guidance" in html and "data:image/png;base64," in html
    assert (straight / "factor_steps_gap.png").stat().st_size > 1000

    # kill a second run while it evaluates the conditional model, then rerun
    resumed = tmp_path / "resumed"

    def killer(msg):
        if "classes=2" in msg:
            raise Killed

    with pytest.raises(Killed):
        memorization_factors(TINY, resumed, log=killer)
    done = set(_points(resumed))
    assert "steps_12.json" in done and "classes_2.json" not in done
    seen = []
    memorization_factors(TINY, resumed, log=seen.append)
    assert not any("steps=12" in m for m in seen)  # kept from the first run
    assert _strip(_points(resumed)) == _strip(_points(straight))

    # the report rebuilds from disk; a different config in the same folder is refused
    (resumed / "report.html").unlink()
    write_report(resumed)
    assert (resumed / "report.html").exists()
    with pytest.raises(ConfigError, match="different config"):
        memorization_factors(FactorConfig(name="other"), resumed, log=lambda m: None)


def test_cli_dry_run(capsys):
    assert main(["memorization", "factors", "--preset", "demo", "--dry-run",
                 "--factors", "width,guidance"]) == 0
    out = capsys.readouterr().out
    assert "width=32" in out and "guidance=3.0" in out and "steps=" in out
    assert main(["memorization", "factors", "--factors", "depth", "--dry-run"]) == 1


def test_class_conditional_unet_and_label_dropout_training():
    x = data.load("digits")[:12]
    labels = torch.arange(12) % 3
    torch.manual_seed(0)
    model = models.build("unet", channels=1, width=8, levels=2, num_classes=3)
    assert model.null_label == 3
    cfg = TrainConfig(steps=30, batch_size=8, sigma_dist="edm", label_dropout=0.2,
                      checkpoint_every=None, ema=None)
    train(model, x, cfg, labels=labels, progress=False)
    y = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        a = model(y, 0.5, torch.zeros(4, dtype=torch.long))
        b = model(y, 0.5, torch.full((4,), 2))
        u = model(y, 0.5)  # None: the null label
        assert not torch.allclose(a, b) and not torch.allclose(a, u)
        assert torch.equal(u, model(y, 0.5, torch.full((4,), 3)))
    with pytest.raises(InputError, match=r"class_labels must lie in \[0, 3\]"):
        model(y, 0.5, torch.full((4,), 4))
    with pytest.raises(InputError, match="num_classes=0"):
        models.build("unet", channels=1, width=8, levels=2)(y, 0.5, torch.zeros(4).long())
    with pytest.raises(ConfigError, match="needs labels"):
        train(models.build("unet", channels=1, width=8, levels=2, num_classes=3), x, cfg,
              progress=False)
    with pytest.raises(InputError, match="not class-conditional"):
        train(models.build("unet", channels=1, width=8, levels=2), x,
              TrainConfig(steps=1, batch_size=2), labels=labels, progress=False)
