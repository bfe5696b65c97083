"""Encoders (pixel, Inception-v3, DINOv2, CLIP, TorchScript, callables) and the resumable
feature cache of extract()."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pydiffgen.errors import CheckpointError, ConfigError, InputError
from pydiffgen.features import InceptionV3, extract, load_encoder, wrap
from pydiffgen.features.pretrained import import_transformers

ROOT = Path(__file__).resolve().parents[2]
transformers = import_transformers("test")


def images(n=5, c=3, size=20, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- pixel -------------------------------------------------------------------------------

def test_pixel_flattens_and_pools():
    x = images(4, 1, 8)
    assert torch.equal(load_encoder("pixel").encode(x), x.reshape(4, -1))
    pooled = load_encoder("pixel:pool=2")
    assert pooled.name == "pixel:pool=2"
    assert torch.allclose(pooled.encode(x), torch.nn.functional.avg_pool2d(x, 2).reshape(4, -1))
    with pytest.raises(ConfigError, match="pool=K"):
        load_encoder("pixel:pool=0")


def test_unknown_spec_lists_known_ones():
    with pytest.raises(ConfigError, match="known: pixel, inception:FILE, dinov2:DIR"):
        load_encoder("vgg")
    with pytest.raises(ConfigError, match="dinov2:DIR"):
        load_encoder("dinov2")


# --- Inception-v3 ------------------------------------------------------------------------

TORCHVISION_KEYS = [  # names of torchvision.models.inception_v3().state_dict()
    "Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_mean",
    "Conv2d_4a_3x3.bn.num_batches_tracked", "Mixed_5b.branch5x5_2.conv.weight",
    "Mixed_6a.branch3x3dbl_3.bn.bias", "Mixed_6e.branch7x7dbl_5.conv.weight",
    "AuxLogits.conv1.conv.weight", "AuxLogits.fc.bias", "Mixed_7a.branch7x7x3_4.bn.weight",
    "Mixed_7c.branch3x3dbl_3b.conv.weight", "Mixed_7c.branch_pool.conv.weight",
    "fc.weight", "fc.bias",
]


def test_inception_loads_torchvision_named_weights(tmp_path):
    from safetensors.torch import save_file

    net = InceptionV3()
    state = net.state_dict()
    assert set(TORCHVISION_KEYS) <= set(state) and len(state) == 580
    with torch.no_grad():  # BN statistics that are not the identity
        for k, v in state.items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2)
    file = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    enc = load_encoder(f"inception:{file}")
    assert (enc.input_size, enc.feature_dim) == (299, 2048)
    loaded = enc.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    x = images(1, 1, 32)
    feats = enc.encode(x)  # resized to 299, grey repeated to RGB, scaled to [-1, 1]
    assert feats.shape == (1, 2048) and feats.dtype == torch.float32
    assert enc.preprocess(x).shape == (1, 3, 299, 299)

    # pytorch-fid's layout: no auxiliary head, 1008 classes, a .pth read with weights_only
    fid = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    fid["fc.weight"], fid["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(fid, tmp_path / "fid.pth")
    assert load_encoder(f"inception:{tmp_path / 'fid.pth'}").feature_dim == 2048

    del fid["Mixed_7c.branch_pool.conv.weight"]
    fid["extra.weight"] = torch.zeros(1)
    torch.save(fid, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing 1: Mixed_7c\.branch_pool\.conv\.weight"
                                              r"; unexpected 1: extra\.weight"):
        load_encoder(f"inception:{tmp_path / 'bad.pth'}")


def test_inception_refuses_pickled_code_and_missing_file(tmp_path):
    torch.save({"a": object()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_encoder(f"inception:{tmp_path / 'code.pt'}")
    with pytest.raises(CheckpointError, match="does not exist: put the Inception-v3 weights"):
        load_encoder(f"inception:{tmp_path / 'none.safetensors'}")


# --- DINOv2 and CLIP from local transformers folders ---------------------------------------

def tiny(family, folder, preprocessor=None):
    if family == "dinov2":
        config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64,
                                           image_size=28, patch_size=14)
        model = transformers.Dinov2Model(config)
    else:
        config = transformers.CLIPVisionConfig(hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64,
                                               image_size=28, patch_size=14)
        model = transformers.CLIPVisionModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    if preprocessor:
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model.eval()


@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_transformers_encoders_match_the_model(tmp_path, family):
    pre = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
           "crop_size": {"height": 42, "width": 42}}
    model = tiny(family, tmp_path / "m", pre if family == "dinov2" else None)
    enc = load_encoder(f"{family}:{tmp_path / 'm'}")
    assert enc.feature_dim == 32
    x = images(3, 1, 20)
    feats = enc.encode(x)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    if family == "dinov2":  # from preprocessor_config.json
        assert enc.input_size == 42 and enc.preprocess.mean == (0.5, 0.4, 0.3)
    else:  # the family's standard values
        assert enc.input_size == 28 and enc.preprocess.std[0] == pytest.approx(0.26862954)
    with torch.no_grad():
        want = model(pixel_values=enc.preprocess(x)).pooler_output
    torch.testing.assert_close(feats, want)


def test_transformers_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist: put the Dinov2Model folder.*"
                                              "downloads nothing"):
        load_encoder(f"dinov2:{tmp_path / 'absent'}")
    model = tiny("dinov2", tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds a 'dinov2' model"):
        load_encoder(f"clip:{tmp_path / 'm'}")
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickled weights \(pytorch_model\.bin\).*"
                                              "safe_serialization=True") as err:
        load_encoder(f"dinov2:{tmp_path / 'm'}")
    assert "\n" not in str(err.value)


# --- TorchScript and callables -------------------------------------------------------------

def test_torchscript_needs_trust_code(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))
    net.save(str(tmp_path / "net.pt"))
    with pytest.raises(ConfigError, match="is code as well as weights.*trust_code=True"):
        load_encoder(f"torchscript:{tmp_path / 'net.pt'}")
    enc = load_encoder(f"torchscript:{tmp_path / 'net.pt'}", trust_code=True)
    assert enc.encode(images(2, 1, 6)).shape == (2, 4 * 4 * 4)


def test_callable_and_module_are_wrapped():
    enc = load_encoder(lambda x: x.mean(dim=(2, 3)))
    assert enc.encode(images(2)).shape == (2, 3) and enc.feature_dim == 3
    assert load_encoder(torch.nn.Flatten()).name == "callable:torch.nn.modules.flatten.Flatten"
    assert load_encoder(enc) is enc


def test_bad_images():
    enc = load_encoder("pixel")
    with pytest.raises(InputError, match="images is uint8"):
        enc.encode(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"images has values in \[1, 2\]"):
        enc.encode(torch.ones(1, 1, 4, 4) * 2 - torch.eye(4))
    with pytest.raises(InputError, match="source is uint8"):
        extract(enc, torch.zeros(3, 1, 4, 4, dtype=torch.uint8), progress=False)
    with pytest.raises(InputError, match="source has values"):
        extract(enc, torch.full((3, 1, 4, 4), -1.5), progress=False)
    with pytest.raises(InputError, match="source must have 4 dimensions"):
        extract(enc, torch.zeros(3, 4, 4), progress=False)


# --- extract and its cache -----------------------------------------------------------------

def test_extract_from_tensor_and_files(tmp_path):
    x = images(7, 1, 8)
    want = x.reshape(7, -1)
    assert torch.equal(extract("pixel", x, batch_size=3, progress=False), want)
    np.save(tmp_path / "x.npy", x.numpy())
    np.savez(tmp_path / "x.npz", a=x.numpy(), b=x.numpy()[:2])
    for src in (tmp_path / "x.npy", f"{tmp_path / 'x.npz'}:a"):
        torch.testing.assert_close(extract("pixel", src, batch_size=4, progress=False), want)
    cached = extract("pixel", x, batch_size=3, cache=tmp_path / "f.npy", progress=False)
    assert torch.equal(cached, want)
    assert json.loads((tmp_path / "f.npy.json").read_text())["done"] == 7
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "f.npy")), want)
    # a finished cache is read back without encoding anything
    never = wrap(lambda b: 1 / 0, name="pixel")
    assert torch.equal(extract(never, x, cache=tmp_path / "f.npy", progress=False), want)


def test_stale_cache_is_refused(tmp_path):
    x = images(4, 1, 8)
    cache = tmp_path / "f.npy"
    extract("pixel", x, cache=cache, progress=False)
    with pytest.raises(CheckpointError, match="made by encoder pixel, not pixel:pool=2"):
        extract("pixel:pool=2", x, cache=cache, progress=False)
    with pytest.raises(CheckpointError, match="was made from .*delete it"):
        extract("pixel", images(4, 1, 8, seed=1), cache=cache, progress=False)
    np.save(tmp_path / "other.npy", np.zeros((4, 64), np.float32))
    with pytest.raises(CheckpointError, match="without other.npy.json"):
        extract("pixel", x, cache=tmp_path / "other.npy", progress=False)


SLOW_RUN = textwrap.dedent("""
    import sys, time, torch
    from pydiffgen.features import extract, wrap

    def slow(x):
        time.sleep(float(sys.argv[2]))
        return x.mean(dim=1).flatten(1) * 3

    x = torch.linspace(-1, 1, 40 * 16).reshape(40, 1, 4, 4)
    feats = extract(wrap(slow, name="slow"), x, batch_size=4, cache=sys.argv[1],
                    progress=False)
    torch.save(feats, sys.argv[1] + ".pt")
""")


def test_extract_resumes_after_a_kill(tmp_path):
    script, cache = tmp_path / "run.py", tmp_path / "f.npy"
    script.write_text(SLOW_RUN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(cache), "0.3"], env=env)
    sidecar = Path(f"{cache}.json")
    deadline = time.time() + 60
    while time.time() < deadline:
        if sidecar.is_file() and json.loads(sidecar.read_text())["done"] >= 12:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(sidecar.read_text())["done"]
    assert 12 <= done < 40 and done % 4 == 0
    partial = np.load(cache)[:done].copy()

    # the rerun starts at the recorded row and ends equal to an uninterrupted run
    resumed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        from pydiffgen.features import extract, wrap
        calls = []
        def slow(x):
            calls.append(len(x))
            return x.mean(dim=1).flatten(1) * 3
        x = torch.linspace(-1, 1, 40 * 16).reshape(40, 1, 4, 4)
        f = extract(wrap(slow, name="slow"), x, batch_size=4, cache={str(cache)!r},
                    progress=False)
        print(sum(calls))
    """)], env=env, capture_output=True, text=True, check=True)
    assert int(resumed.stdout.split()[-1]) == 40 - done
    x = torch.linspace(-1, 1, 40 * 16).reshape(40, 1, 4, 4)
    want = (x.mean(dim=1).flatten(1) * 3).numpy()
    np.testing.assert_array_equal(np.load(cache), want)
    np.testing.assert_array_equal(partial, want[:done])
