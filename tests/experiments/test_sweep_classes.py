"""The sweep with class-conditional pairs (``--condition classes``): both models of each N
are class-conditional UNets over the digits' ten classes, sample every class from the same
noise, and the report gives memorization per class."""

import json
from dataclasses import replace

import pytest
import torch

from pydiffgen.checkpoint import load_model
from pydiffgen.cli import main
from pydiffgen.errors import ConfigError
from pydiffgen.experiments import SweepConfig, generalization_sweep
from pydiffgen.experiments.generalization import per_class, sample_classes

TINY = SweepConfig(
    name="tiny-classes", dataset="digits", sizes=(2, 12), model="unet",
    model_options=(("levels", 1), ("width", 4)), steps=10, batch_size=16, n_samples=20,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="heun",
    sampler_options=(("steps", 3),), sigma_dist="edm", condition="classes",
    jacobian_images=0, encoder="pixel",
)


def test_class_conditional_sweep_reports_per_class(tmp_path):
    out = tmp_path / "run"
    metrics = generalization_sweep(TINY, out, progress=False, log=lambda m: None)
    for n in ("2", "12"):
        pc = metrics["sizes"][n]["per_class"]
        assert sorted(pc, key=int) == [str(k) for k in range(10)]  # 20 samples: 2 per class
        assert all(c["samples"] == 2 for c in pc.values())
        stored = json.loads((out / f"n{n}" / "metrics.json").read_text())
        # the per-class numbers are those of the samples of that class
        paired = torch.tensor(stored["paired"])
        classes = sample_classes(20, 10)
        for k, c in pc.items():
            assert c["paired_median"] == pytest.approx(float(paired[classes == int(k)].median()))
        ratios = torch.tensor(stored["memorization"]["ratio"]).view(2, -1)
        fractions = [pc[str(k)]["memorized"] for k in range(10)]
        assert sum(fractions) / 10 == pytest.approx(float((ratios < 1 / 3).double().mean()))
    model = load_model(out / "n12" / "A")
    assert model.conditional and model.num_classes == 10
    assert "Memorization per class" in (out / "report.html").read_text()


def test_per_class_counts_both_models():
    paired = torch.tensor([0.1, 0.9, 0.2, 0.8])
    memorized = torch.tensor([[True, False, True, False], [True, True, False, False]])
    out = per_class(paired, memorized, sample_classes(4, 2))
    assert out == {"0": {"samples": 2, "paired_median": pytest.approx(0.1),
                         "memorized": pytest.approx(0.75)},
                   "1": {"samples": 2, "paired_median": pytest.approx(0.8),
                         "memorized": pytest.approx(0.25)}}


def test_condition_checks(tmp_path, capsys):
    with pytest.raises(ConfigError, match="condition must be one of none, classes"):
        replace(TINY, condition="text")
    with pytest.raises(ConfigError, match="not 'bf_unet'; pass --model unet"):
        replace(TINY, model="bf_unet", model_options=())
    with pytest.raises(ConfigError, match="guidance needs condition=classes"):
        replace(TINY, condition="none", guidance=2.0)
    with pytest.raises(ConfigError, match="patches has none"):
        generalization_sweep(replace(TINY, dataset="patches", sizes=(2,)), tmp_path / "f",
                             progress=False, log=lambda m: None)
    assert main(["sweep", "--condition", "classes", "--model", "unet", "--sizes", "2",
                 "--dry-run"]) == 0
    assert "sweep" in capsys.readouterr().out
