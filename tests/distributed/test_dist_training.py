"""DistributedDataParallel training on 2 gloo ranks: the same steps as one process with the
same global batch, only rank 0 writes, and a run whose rank died resumes exactly."""

import pytest
import torch
from dist_workers import first_step_grads, launch, train_setup

from pydiffgen.training import train


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch("train_ddp", out_dir=out / "run", result=out / "result.pt", timeout=60)
    return out


def test_ddp_takes_the_steps_of_one_process_with_the_global_batch(uninterrupted):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, data, config = train_setup()
        grads = {}
        single = train(model, data, config, progress=False, callback=first_step_grads(grads))
    finally:
        torch.set_num_threads(n_threads)
    ddp = torch.load(uninterrupted / "result.pt", weights_only=True)
    # step 1 starts from the same weights: the all-reduced gradient of the 4 + 3 image
    # slices is the gradient of the 7-image batch (the global mean, not the mean of means)
    for k, g in grads.items():
        torch.testing.assert_close(ddp[f"grad1/{k}"], g, rtol=1e-4, atol=1e-7, msg=k)
    torch.testing.assert_close(ddp["losses"], torch.tensor(single.losses), rtol=1e-5, atol=1e-6)
    # later steps agree up to float reduction order, which Adam's m/√v amplifies for
    # near-zero gradients to a fraction of the learning rate (2e-3)
    for prefix, m in (("model/", single.model), ("ema/", single.ema)):
        for k, v in m.state_dict().items():
            torch.testing.assert_close(ddp[prefix + k], v, rtol=0, atol=5e-4, msg=prefix + k)
    run = uninterrupted / "run"
    assert (run / "model.safetensors").exists() and (run / "checkpoint.json").exists()
    assert not list(run.glob(".*.tmp"))  # atomic writes left nothing behind


def test_ddp_resumes_exactly_after_a_rank_dies(uninterrupted, tmp_path):
    # rank 1 dies at step 3, after the step-2 checkpoint: the job fails, the rerun resumes
    with pytest.raises(RuntimeError):  # a rank exited (or its peer failed first)
        launch("train_ddp", out_dir=tmp_path / "run", result=tmp_path / "result.pt", die_at=3,
               timeout=60)
    assert not (tmp_path / "result.pt").exists()
    assert (tmp_path / "run" / "checkpoint.json").exists()
    launch("train_ddp", out_dir=tmp_path / "run", result=tmp_path / "result.pt", timeout=60)
    resumed = torch.load(tmp_path / "result.pt", weights_only=True)
    ddp = torch.load(uninterrupted / "result.pt", weights_only=True)
    assert resumed.keys() - {k for k in resumed if k.startswith("grad1/")} == \
        ddp.keys() - {k for k in ddp if k.startswith("grad1/")}
    for k in ddp:  # bitwise: the same ranks, threads and steps
        if not k.startswith("grad1/"):  # step 1 was not rerun
            assert torch.equal(resumed[k], ddp[k]), k
