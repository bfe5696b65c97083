"""Test set-up: Triton runs in its CPU interpreter when no GPU is present."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """For tests of many tiny ops: one thread is fastest for them and immune to OpenMP
    spin-waits when the 2-core CI machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Inputs for the CLI tests: a tiny model (m), one with NaN weights (nan), 10 images
    (x.npy) and a plain file (afile)."""
    import numpy as np

    from pydiffgen import models
    from pydiffgen.checkpoint import save_model

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_model(d / "m", models.build("bf_cnn", channels=1), meta={"data_shape": [1, 8, 8]})
    nan = models.build("bf_cnn", channels=1)
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    save_model(d / "nan", nan, meta={"data_shape": [1, 8, 8]})
    np.save(d / "x.npy", np.random.default_rng(0).uniform(-1, 1, (10, 1, 8, 8)).astype("f4"))
    (d / "afile").write_text("x")
    return d


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A folder holding a tiny randomly initialised transformers DINOv2 (safetensors), as
    ``load_encoder("dinov2:DIR")`` reads it."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64,
                                       image_size=28, patch_size=14)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino")
    transformers.Dinov2Model(config).save_pretrained(folder, safe_serialization=True)
    return folder


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
