"""The generalization sweep spread over 2 gloo ranks: killed when a rank dies after its first
run, rerun, it finishes with the results of an uninterrupted single-process sweep."""

import json

import pytest
import torch
from dist_workers import launch, sweep_config
from safetensors.torch import load_file

from pydiffgen.experiments import generalization_sweep


def test_sweep_killed_midway_and_relaunched_equals_an_uninterrupted_run(tmp_path):
    with pytest.raises(RuntimeError):  # a rank exited (or its peer failed first)
        launch("sweep", out=tmp_path / "dist", die_after_first_run=True, timeout=90)
    dist = tmp_path / "dist"
    assert (dist / "n2" / "B" / "model.json").exists()  # rank 1's first run survived
    assert not (dist / "n4" / "B" / "model.json").exists()
    assert not (dist / "report.html").exists()
    launch("sweep", out=dist, timeout=90)
    assert (dist / "report.html").exists()

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        generalization_sweep(sweep_config(), tmp_path / "single", progress=False,
                             log=lambda m: None)
    finally:
        torch.set_num_threads(n_threads)
    for n in sweep_config().sizes:
        for sub in "AB":
            a = load_file(str(dist / f"n{n}" / sub / "model.safetensors"))
            b = load_file(str(tmp_path / "single" / f"n{n}" / sub / "model.safetensors"))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (n, sub)
        got = json.loads((dist / f"n{n}" / "metrics.json").read_text())
        want = json.loads((tmp_path / "single" / f"n{n}" / "metrics.json").read_text())
        assert got == want, n
    got = json.loads((dist / "metrics.json").read_text())
    want = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert got["sizes"] == want["sizes"]
