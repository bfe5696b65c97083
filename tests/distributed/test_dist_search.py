"""Sharded knn and empirical denoiser on 2 gloo ranks equal the single-process ops."""

import pytest
import torch
from dist_workers import audit_inputs, empirical_cases, launch, search_cases

from pydiffgen import ops
from pydiffgen.ops import reference


def test_sharded_search_equals_single_process(tmp_path):
    out = tmp_path / "results.pt"
    launch("search", world=2, timeout=90, out=out)
    got = torch.load(out, weights_only=True)

    for name, q, keys, k, metric, _ in search_cases():
        v, i = ops.knn(q, keys, k, metric)
        assert torch.equal(got[f"knn/{name}/indices"], i), name
        torch.testing.assert_close(got[f"knn/{name}/values"], v, rtol=0, atol=0, msg=name)
        # and the float64 brute force (ties to the lower index)
        _, i64 = reference.knn_bruteforce(q, keys, k, metric)
        assert torch.equal(got[f"knn/{name}/indices"], i64), name
    v, i = ops.knn(*search_cases()[0][1:4])
    assert torch.equal(got["knn/reversed-offsets/indices"], i)
    assert torch.equal(got["knn/reversed-offsets/values"], v)

    for name, y, train, sigma, _ in empirical_cases():
        single = ops.empirical_denoiser(y, train, sigma)
        sig = torch.as_tensor(sigma, dtype=torch.float64).expand(len(y))
        exact = reference.empirical_denoiser(y.reshape(len(y), -1), train.reshape(len(train), -1),
                                             sig).reshape(y.shape)
        d = got[f"empirical/{name}"]
        assert d.dtype == y.dtype and d.shape == y.shape, name
        tol = 1e-12 if y.dtype == torch.float64 else 2e-6
        torch.testing.assert_close(d.double(), exact, rtol=tol, atol=tol, msg=name)
        torch.testing.assert_close(d, single, rtol=tol, atol=tol, msg=name)

    assert int(got["refused-on-every-rank"]) == 1
    assert int(got["run_on_main-error-everywhere"]) == 1
    assert int(got["one-rank-nan-keys"]) == 1 and int(got["one-rank-bad-shape"]) == 1
    assert int(got["run_on_main-value"]) == 42  # rank 0's result on every rank

    # the audit with its searches sharded over the ranks: the single-process answers
    from pydiffgen.experiments.audit import audit

    a = audit(*audit_inputs())
    px = a.spaces["pixel"]
    assert torch.equal(got["audit/nn"], px.memorization.nn_index)
    assert torch.equal(got["audit/ratio"], px.memorization.ratio)
    assert torch.equal(got["audit/cos_index"], px.nearest_cosine_index)
    assert torch.equal(got["audit/background_index"], px.background_index)
    assert torch.equal(got["audit/dropped"], a.duplicates.dropped)
    assert len(a.duplicates.dropped) == 7 and int(px.memorization.memorized.sum()) >= 10


@pytest.mark.gpu
def test_sharded_search_on_a_gpu_equals_the_float64_references(tmp_path):
    """Both ranks on the one GPU (Triton knn candidates, torch GEMM partials), gloo
    collectives through the host; judged against the float64 references."""
    out = tmp_path / "results.pt"
    launch("search", world=2, timeout=300, out=out, device="cuda")
    got = torch.load(out, weights_only=True)
    for name, q, keys, k, metric, _ in search_cases():
        v64, i64 = reference.knn_bruteforce(q, keys, k, metric)
        assert torch.equal(got[f"knn/{name}/indices"], i64), name
        torch.testing.assert_close(got[f"knn/{name}/values"], v64.float(), msg=name)
    for name, y, train, sigma, _ in empirical_cases():
        sig = torch.as_tensor(sigma, dtype=torch.float64).expand(len(y))
        exact = reference.empirical_denoiser(y.reshape(len(y), -1), train.reshape(len(train), -1),
                                             sig).reshape(y.shape)
        tol = 1e-12 if y.dtype == torch.float64 else 2e-6
        torch.testing.assert_close(got[f"empirical/{name}"].double(), exact, rtol=tol, atol=tol,
                                   msg=name)
    assert int(got["refused-on-every-rank"]) == 1
