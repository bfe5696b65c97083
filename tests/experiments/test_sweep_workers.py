"""The sweep's models trained in worker processes (``SweepConfig.workers``)."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from pydiffgen.experiments import SweepConfig, generalization_sweep, plan

PAIRS = SweepConfig(
    name="pairs", dataset="digits", sizes=(2, 5), model="bf_unet",
    model_options=(("levels", 1), ("width", 8)), steps=12, batch_size=16, n_samples=6,
    n_eval=4, n_baseline=50, psnr_levels=(5.0, 20.0), sampler="euler",
    sampler_options=(("steps", 4),), jacobian_images=0, workers=2,
)


class Killed(Exception):
    pass


def _per_n(out):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("n*/metrics.json"))}


def _weights(out):
    return {p.relative_to(out).as_posix(): load_file(str(p))
            for p in sorted(out.glob("n*/[AB]/model.safetensors"))}


def _same(a, b):
    return a.keys() == b.keys() and all(
        a[k].keys() == b[k].keys() and all(torch.equal(a[k][t], b[k][t]) for t in a[k])
        for k in a)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    """A sweep with two workers (two threads): its folder and its log."""
    out, seen = tmp_path_factory.mktemp("pairs"), []
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generalization_sweep(PAIRS, out, progress=False, log=seen.append)
    finally:
        torch.set_num_threads(n)
    return out, seen


def test_workers_train_the_models_of_one_thread_each(pairs_run, tmp_path):
    """Two workers with two threads: each model is the one a sweep training it with one
    thread gives, bit for bit, and the progress counts the models as they end."""
    out, seen = pairs_run
    assert any("4 models, 2 at once, 1 thread(s) each" in m for m in seen)
    assert [m for m in seen if " done (" in m][-1].startswith("[sweep] model 4/4 done (N=5 B)")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generalization_sweep(replace(PAIRS, workers=1), tmp_path / "one", progress=False,
                             log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    assert _same(_weights(out), _weights(tmp_path / "one"))


def test_workers_resume_where_the_sweep_stopped(pairs_run, tmp_path):
    straight, _ = pairs_run
    n = torch.get_num_threads()
    torch.set_num_threads(2)

    def killer(msg):  # the sweep stops while it evaluates N = 2
        if "model 2/4 done" in msg:
            raise Killed

    resumed = tmp_path / "resumed"
    try:
        with pytest.raises(Killed):
            generalization_sweep(PAIRS, resumed, progress=False, log=killer)
        assert not (resumed / "n2" / "metrics.json").exists()
        seen = []
        generalization_sweep(PAIRS, resumed, progress=False, log=seen.append)
    finally:
        torch.set_num_threads(n)
    assert not any("N=2 A" in m for m in seen)  # trained before the stop: loaded
    assert _per_n(resumed) == _per_n(straight)
    assert _same(_weights(resumed), _weights(straight))


def test_workers_are_at_most_the_threads(one_thread):
    assert "2 at once" not in plan(PAIRS)
    assert "with 1 thread(s)" in plan(PAIRS)
