"""distributed.empirical_denoiser with an ops.EmpiricalIndex of each rank's shard, on 1 to
4 gloo ranks with uneven shards (one holding a single image, one empty): every σ in
[0.002, 80] within 1e-6 relative of the single-process op and of the float64 softmax,
each shard prepared once for every call and σ (no bf16 keys rebuilt, at most one kNN
index, the held keys the same objects)."""

import torch
from dist_workers import index_cases, launch

from pydiffgen.ops import empirical_denoiser

TOL = 1e-6


def softmax64(y, x, sig):
    d2 = ((y.double()[:, None, :] - x.double()[None]) ** 2).sum(-1)  # [M, N]
    return torch.softmax(-d2 / (2 * sig.double()[:, None] ** 2), dim=1) @ x.double()


def rel(got, ref):
    return float(((got.double() - ref.double()).norm(dim=1) / ref.double().norm(dim=1)).max())


def test_sharded_index_equals_single_process_every_sigma(tmp_path):
    out = tmp_path / "results.pt"
    world = 4
    launch("empirical_index", world=world, timeout=300, out=out)
    got = torch.load(out, weights_only=True)
    worst = {}
    cases = index_cases()
    refs = {(name, c): (empirical_denoiser(y, train, sig), softmax64(y, train, sig))
            for name, y, train, sigmas in cases for c, sig in enumerate(sigmas)}
    for R in range(1, world + 1):
        for name, y, _, sigmas in cases:
            for c in range(len(sigmas)):
                d = got[f"{R}/{name}/{c}"]
                assert d.dtype == torch.float32 and d.shape == y.shape, (R, name)
                err = max(rel(d, ref) for ref in refs[name, c])
                assert err <= TOL, (R, name, c, err)
                worst[name] = max(worst.get(name, 0.0), err)
            assert torch.equal(got[f"{R}/{name}/tensor"], got[f"{R}/{name}/0"]), (R, name)
            # prepared once: no bf16 keys rebuilt over the calls, the kNN index of the
            # exact rows built at most once per shard, the held tiles the same objects
            assert int(got[f"{R}/{name}/prepared-keys"]) == 0, (R, name)
            assert int(got[f"{R}/{name}/prepared-knn"]) <= 1, (R, name)
            assert int(got[f"{R}/{name}/same-held"]) == 1, (R, name)
        # the cluster's exact rows do search the kNN candidates (once)
        assert int(got[f"{R}/cluster-knn-rows/prepared-knn"]) == 1, R
    print("worst relative error per case:", worst)
