"""`torchrun -m pydiffgen train` on 2 gloo ranks: DDP through the CLI, one writer."""

import json
import os
import subprocess
import sys

import pytest
from dist_workers import free_port


@pytest.mark.slow
def test_torchrun_train_matches_one_process(tmp_path):
    args = ["train", "--data", "gaussian", "--data-option", "n=40", "--data-option", "size=8",
            "--model", "unet", "--model-option", "width=8", "--model-option", "levels=2",
            "--steps", "4", "--batch-size", "9", "--sigma-dist", "edm", "--checkpoint-every",
            "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", "-m", "pydiffgen", "--quiet", *args,
         "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("model:") == 1  # rank 0 reports, once
    one = subprocess.run([sys.executable, "-m", "pydiffgen", "--quiet", *args,
                          "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    b = json.loads((tmp_path / "one" / "checkpoint.json").read_text())
    assert a["step"] == b["step"] == 4
    # the same seeded initial weights and global batches: the losses agree
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-4)
