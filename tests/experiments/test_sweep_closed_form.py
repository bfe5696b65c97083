"""A sweep records each N's training sets; ``pydiffgen closed-form`` finds a sweep model's
own training set and held-out images from them; the sweep's "which closed form explains
the model" step and its report section."""

import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from pydiffgen.cli import main
from pydiffgen.errors import ConfigError
from pydiffgen.experiments import SweepConfig, generalization_sweep
from pydiffgen.experiments.closed_form import MODELS, training_images
from pydiffgen.experiments.sweep_closed_form import SETTINGS
from pydiffgen.experiments.training_sets import load_split, split_path

# a tiny sweep: two sizes, a few seconds of training
TINY = SweepConfig(
    name="tiny", dataset="digits", sizes=(2, 4), model="bf_unet",
    model_options=(("levels", 1), ("width", 8)), steps=8, batch_size=16, n_samples=3,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="euler",
    sampler_options=(("steps", 3),), jacobian_images=0,
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    logs = []
    metrics = generalization_sweep(TINY, out, progress=False, log=logs.append)
    return out, metrics, logs


def _closed_form(*args):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--quiet", "closed-form", "--sigmas", "0.1,1", "--patch-sizes", "3",
                     "--n-heldout", "5", "--n-samples", "2", "--sampler-steps", "3",
                     *args]) == 0
    return printed.getvalue()


def test_sweep_records_each_training_set(sweep):
    out, _, _ = sweep
    for n in TINY.sizes:
        stored = load_file(str(out / f"n{n}" / "samples.safetensors"))
        for sub, subset in (("A", "S1"), ("B", "S2")):
            assert split_path(out / f"n{n}" / sub) == (out / f"n{n}" / "split.json", subset)
            assert split_path(out / f"n{n}" / sub / "model.json")[1] == subset
            train, held, about = load_split(out / f"n{n}" / "split.json", subset)
            torch.testing.assert_close(train, stored[subset], rtol=0, atol=0)
            assert about["dataset"] == "digits" and about["deduplicated"] == len(held) + 2 * n
            # held out: the de-duplicated images in neither set
            assert not training_images(held, torch.cat([stored["S1"], stored["S2"]])).any()
    assert split_path(out) is None and split_path(out / "n2") is None


def test_closed_form_takes_the_sweep_models_own_training_set(sweep, tmp_path):
    out, _, _ = sweep
    printed = _closed_form("--model", str(out / "n4" / "B"), "--out", str(tmp_path / "b"))
    assert "best" in printed
    data = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert data["name"] == "digits" and data["train"] == 4 and data["held_out"] == 5
    assert "S2" in data["source"] and "split.json" in data["source"]
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    # B's samples from the exact empirical optimum of its own training set are copies of it
    assert metrics["samples"]["empirical"]["memorized"] == 1.0
    assert "S2" in (tmp_path / "b" / "report.html").read_text()


def test_closed_form_with_an_explicit_training_file(sweep, tmp_path):
    out, _, _ = sweep
    _closed_form("--model", str(out / "n4" / "A"), "--data", "digits", "--train",
                 f"{out / 'n4' / 'samples.safetensors'}:S1", "--out", str(tmp_path / "a"))
    data = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert data["train"] == 4 and data["source"].endswith("samples.safetensors:S1")


def test_training_images_match_up_to_rounding():
    x = torch.rand(10, 1, 4, 4) * 2 - 1
    rounded = torch.round((x[[2, 7]] + 1) * 127.5) / 127.5 - 1  # an 8-bit file of two
    assert training_images(x, rounded).nonzero().flatten().tolist() == [2, 7]
    with pytest.raises(ConfigError, match="training set's images"):
        training_images(x, torch.zeros(2, 1, 8, 8))


def test_closed_form_says_when_it_cannot_tell_the_training_set(sweep, tmp_path):
    from pydiffgen.experiments.closed_form import ClosedFormConfig, closed_form

    out, _, _ = sweep
    model = str(out / "n4" / "A")
    lone = tmp_path / "lone"  # the model without its sweep
    lone.mkdir()
    for f in ("model.json", "model.safetensors"):
        (lone / f).write_bytes((out / "n4" / "A" / f).read_bytes())
    cases = [(ClosedFormConfig(model=str(lone)), "cannot tell what .* was trained on"),
             (ClosedFormConfig(model=model, n_train=4), "--n-train does not apply"),
             (ClosedFormConfig(model=model, data="patches"), "trained on digits"),
             (ClosedFormConfig(model=model, n_heldout=5000), "lower --n-heldout")]
    for i, (config, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            closed_form(config, tmp_path / f"e{i}", progress=False, log=lambda m: None)
    # a dataset that changed since the sweep is refused, not silently used
    split = json.loads((out / "n4" / "split.json").read_text())
    changed = tmp_path / "changed" / "n4"
    changed.mkdir(parents=True)
    (changed / "split.json").write_text(json.dumps({**split, "sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="no longer"):
        load_split(changed / "split.json", "S1")


def test_sweep_stores_which_closed_form_explains_model_a(sweep):
    out, metrics, logs = sweep
    for n in TINY.sizes:
        r = json.loads((out / f"n{n}" / "closed_form.json").read_text())
        assert r["sigma"] == list(SETTINGS.sigmas) and r["held_out"] == SETTINGS.n_heldout
        assert list(r["r2"]) == list(MODELS) and len(r["best"]) == len(SETTINGS.sigmas)
        assert all(v <= 1 + 1e-9 for curve in r["r2"].values() for v in curve)
        assert metrics["closed_form"][str(n)] == r
    html = (out / "report.html").read_text()
    assert "Which closed form explains the model" in html and "best at σ = 0.05" in html
    assert (out / "closed_form_r2.png").stat().st_size > 10_000
    # a rerun keeps the stored results
    again = []
    generalization_sweep(TINY, out, progress=False, log=again.append)
    assert sum("which closed form" in m for m in logs) == len(TINY.sizes)
    assert not any("which closed form" in m for m in again)
