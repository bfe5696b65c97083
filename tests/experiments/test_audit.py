import html as html_lib
import importlib
import json

import numpy as np
import pytest
import torch

from pydiffgen import data
from pydiffgen.cli import main
from pydiffgen.errors import InputError
from pydiffgen.experiments import audit as au
from pydiffgen.experiments.audit import AuditConfig, audit, find_duplicates, write_audit_report


@pytest.fixture(scope="module")
def train():
    """301 de-duplicated digits: no image has a near-copy elsewhere in the set."""
    x = data.deduplicate(data.load("digits"), threshold=0.95)
    return x[:301].clone()


def _copies_and_fresh(train, seed=0):
    g = torch.Generator().manual_seed(seed)
    copied = torch.tensor([0, 17, 150, 299])
    fresh = torch.randn(9, *train.shape[1:], generator=g) * 0.6  # Gaussian "samples"
    return torch.cat([train[copied], fresh]), copied


def test_copies_are_memorized_at_the_right_index_fresh_samples_are_not(train):
    samples, copied = _copies_and_fresh(train)
    res = audit(samples, train, config=AuditConfig(background_size=0))
    px = res.spaces["pixel"]
    m = px.memorization
    assert m.memorized.tolist() == [True] * 4 + [False] * 9
    assert m.nn_index[:4].tolist() == copied.tolist()
    assert torch.all(m.d1[:4] == 0) and torch.all(m.ratio[4:] > 0.5)
    assert torch.allclose(px.nearest_cosine[:4], torch.ones(4))
    assert px.nearest_cosine_index[:4].tolist() == copied.tolist()
    # the background: every training image's nearest *other* training image
    assert len(px.background_cosine) == len(train)
    assert torch.all(px.background_index != px.background_query)
    assert float(px.background_cosine.max()) < 0.999  # de-duplicated: no other copy
    s = res.summary()
    assert s["spaces"]["pixel"]["memorized_count"] == 4
    assert s["spaces"]["pixel"]["memorized_fraction"] == pytest.approx(4 / 13)
    assert [t["sample"] for t in s["spaces"]["pixel"]["most_copied"][:4]] == [0, 1, 2, 3]
    assert s["duplicates"]["n_duplicates"] == 0
    assert "4 of 13 samples" in s["verdict"] and "partly memorizes" in s["verdict"]


def test_samples_of_the_empirical_optimum_are_all_memorized(train):
    import pydiffgen
    from pydiffgen.analysis import EmpiricalDenoiser

    x = pydiffgen.sample(EmpiricalDenoiser(train[:60]), 12, (1, 8, 8), method="heun", seed=0,
                         steps=8)
    res = audit(x, train[:60])
    assert res.spaces["pixel"].memorization.fraction == 1.0
    assert "the model memorizes" in res.summary()["verdict"]


def test_held_out_images_are_not_memorized(train):
    held_out = data.deduplicate(data.load("digits"), threshold=0.95)[-40:]
    res = audit(held_out, train)
    assert res.spaces["pixel"].memorization.fraction == 0.0
    assert "no sample is a copy" in res.summary()["verdict"]


def test_planted_duplicates_are_found(train):
    planted_from = torch.tensor([3, 40, 200])
    noisy = train[planted_from] + 0.02 * torch.randn(3, *train.shape[1:])
    inverted = -train[7:8]  # a negated copy correlates −1: a duplicate too
    t = torch.cat([train, noisy, inverted])
    dups = find_duplicates(t, 0.95, chunk_size=64)  # chunks split pairs across boundaries
    N = len(train)
    assert dups.dropped.tolist() == [N, N + 1, N + 2, N + 3]
    assert dups.partner.tolist() == [3, 40, 200, 7]
    assert torch.all(dups.correlation[:3] > 0.95) and float(dups.correlation[3]) < -0.95
    s = audit(train[:5], t).summary()
    assert s["duplicates"]["n_duplicates"] == 4
    assert "4 near-duplicate images" in s["verdict"]


def test_feature_space_audit(train):
    samples, copied = _copies_and_fresh(train, seed=1)
    proj = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    feats = {"samples": samples.reshape(len(samples), -1) @ proj,
             "train": train.reshape(len(train), -1) @ proj}
    res = audit(samples, train, features=feats)
    ft = res.spaces["features"]
    assert ft.memorization.memorized[:4].all() and not ft.centered
    assert ft.memorization.nn_index[:4].tolist() == copied.tolist()
    assert "In feature space" in res.summary()["verdict"]
    with pytest.raises(InputError, match="one row per sample"):
        audit(samples, train, features={"samples": feats["samples"][:3], "train": feats["train"]})
    with pytest.raises(InputError, match="keys 'samples' and 'train'"):
        audit(samples, train, features={"x": feats["samples"]})


def test_every_search_goes_through_one_function(train, monkeypatch):
    calls = []
    real = au.search

    def counting(q, k_, k, metric="l2"):
        calls.append((len(q), len(k_), k, metric))
        return real(q, k_, k, metric)

    def forbidden(*a, **kw):
        raise AssertionError("a search bypassed experiments.audit.search")

    monkeypatch.setattr(au, "search", counting)
    for module in ("pydiffgen.data.dedup", "pydiffgen.metrics.memorization"):
        monkeypatch.setattr(importlib.import_module(module), "knn", forbidden)
    samples, _ = _copies_and_fresh(train)
    t = torch.cat([train, train[:2]])  # duplicates: the partner search runs too
    audit(samples, t, config=AuditConfig(chunk_size=5, background_size=20))
    metrics = {c[3] for c in calls}
    assert metrics == {"l2", "cosine", "ip"}
    assert max(c[0] for c in calls if c[3] == "l2") <= 5  # queries chunked


def test_chunking_does_not_change_the_result(train):
    samples, _ = _copies_and_fresh(train)
    a = audit(samples, train, config=AuditConfig(chunk_size=3, background_size=50)).summary()
    b = audit(samples, train, config=AuditConfig(chunk_size=4096, background_size=50)).summary()
    assert a["spaces"] == b["spaces"]


def test_bad_inputs_raise_clear_errors(train):
    with pytest.raises(InputError, match="share image shape"):
        audit(torch.zeros(2, 1, 4, 4), train)
    with pytest.raises(InputError, match="at least 2 training images"):
        audit(train[:1], train[:1])
    with pytest.raises(InputError, match="samples is empty"):
        audit(train[:0], train)
    with pytest.raises(InputError, match="dedup_threshold must lie in"):
        audit(train[:2], train, config=AuditConfig(dedup_threshold=1.5))


def test_report_has_its_sections_and_json_every_number(train, tmp_path):
    samples, _ = _copies_and_fresh(train)
    t = torch.cat([train, train[5:6]])
    res = audit(samples, t)
    path = write_audit_report(res, tmp_path)
    html = path.read_text()
    for section in ("Relative distance to the nearest training image",
                    "Nearest cosine against the training set",
                    "Most-copied samples", "Duplicates inside the training set", "Inputs"):
        assert section in html
    for png in ("ratio", "cosine", "most_copied_pixel", "duplicates"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    s = json.loads((tmp_path / "audit.json").read_text())
    assert s["verdict"] in html_lib.unescape(html)
    h = s["spaces"]["pixel"]["ratio_histogram"]
    assert sum(h["counts"]) == len(samples)
    assert sum(s["spaces"]["pixel"]["cosine_histogram"]["background"]) == len(t)
    with np.load(tmp_path / "neighbours.npz", allow_pickle=False) as z:
        assert z["pixel_nn_index"][:4].tolist() == [0, 17, 150, 299]
        assert z["duplicates_dropped"].tolist() == [len(train)]


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------


def _save(path, arr):
    with open(path, "wb") as f:
        np.save(f, arr)
    return str(path)


def test_cli_audit_files(train, tmp_path, capsys):
    samples, _ = _copies_and_fresh(train)
    np.savez(tmp_path / "s.npz", images=samples.clamp(-1, 1).numpy(), labels=np.zeros(13))
    s = str(tmp_path / "s.npz") + ":images"  # FILE.npz:KEY picks one array
    t = _save(tmp_path / "t.npy", train.numpy())
    proj = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", samples=samples.reshape(13, -1).numpy() @ proj,
             train=train.reshape(len(train), -1).numpy() @ proj)
    out = tmp_path / "out"
    assert main(["--quiet", "audit", "--samples", s, "--train", t, "--features",
                 str(tmp_path / "f.npz"), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("memorized 4/13 (30.8%); duplicates in train 0; report:")
    summary = json.loads((out / "audit.json").read_text())
    assert set(summary["spaces"]) == {"pixel", "features"}
    assert summary["sources"]["train"]["path"] == t


def test_cli_audit_a_sweep_samples_file(train, tmp_path, capsys):
    """A sweep's samples.safetensors holds samples (A) and training set (S1): FILE:KEY."""
    from safetensors.torch import save_file

    samples, _ = _copies_and_fresh(train)
    path = tmp_path / "samples.safetensors"
    save_file({"A": samples.clamp(-1, 1).contiguous(), "S1": train.contiguous()}, str(path))
    out = tmp_path / "out"
    assert main(["--quiet", "audit", "--samples", f"{path}:A", "--train", f"{path}:S1",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("memorized 4/13 (30.8%)")


def test_cli_audit_image_folders(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    for name, sel in (("train", range(6)), ("samples", (2, 4))):
        (tmp_path / name).mkdir()
        for i in sel:
            Image.fromarray(imgs[i]).save(tmp_path / name / f"{i}.png")
    assert main(["--quiet", "audit", "--samples", str(tmp_path / "samples"), "--train",
                 str(tmp_path / "train"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("memorized 2/2 (100.0%)")


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("pydiffgen: error:") and "\n" not in err, err
    return err


def test_cli_bad_inputs_print_one_line(train, tmp_path, capsys):
    t = _save(tmp_path / "t.npy", train.numpy())
    run = lambda *a: main(["--quiet", "audit", *a, "--out", str(tmp_path / "o")])
    assert run("--samples", str(tmp_path / "missing.npy"), "--train", t) == 1
    assert "missing.npy" in _one_error_line(capsys)
    wrong = _save(tmp_path / "w.npy", np.zeros((3, 4, 4), np.float32))
    assert run("--samples", wrong, "--train", t) == 1
    assert "share image shape" in _one_error_line(capsys)
    empty = _save(tmp_path / "e.npy", np.zeros((0, 8, 8), np.float32))
    assert run("--samples", empty, "--train", t) == 1
    assert "empty" in _one_error_line(capsys)
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    assert run("--samples", str(tmp_path / "c.npz"), "--train", t) == 1
    assert "c.npz" in _one_error_line(capsys)
    assert run("--train", t) == 1
    assert "exactly one of --samples" in _one_error_line(capsys)
    np.savez(tmp_path / "f.npz", samples=np.zeros((2, 3)))
    assert run("--samples", t, "--train", t, "--features", str(tmp_path / "f.npz")) == 1
    assert "'samples' and 'train'" in _one_error_line(capsys)
    assert run("--samples", t, "--train", t, "--features", t) == 1  # a .npy, not an .npz
    assert "'samples' and 'train'" in _one_error_line(capsys)
    assert run("--samples", t, "--train", t, "--threshold", "-1") == 1
    assert "threshold" in _one_error_line(capsys)


def test_cli_audit_a_checkpoint_resumes_its_samples(train, tmp_path, capsys):
    from pydiffgen import models
    from pydiffgen.checkpoint import save_model

    model = models.build("unet", channels=1, width=8, levels=1, emb_dim=8)
    save_model(tmp_path / "m", model, meta={"data_shape": [1, 8, 8]})
    t = _save(tmp_path / "t.npy", train.numpy())
    args = ["--quiet", "audit", "--model", str(tmp_path / "m"), "--train", t, "--n", "5",
            "--method", "euler", "--sampler-option", "steps=3", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    first = (tmp_path / "o" / "audit.json").read_text()
    assert json.loads((tmp_path / "o" / "samples.json").read_text())["method"] == "euler"
    stamp = (tmp_path / "o" / "samples.npy").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "o" / "samples.npy").stat().st_mtime_ns == stamp  # reused
    assert (tmp_path / "o" / "audit.json").read_text() == first
    # new weights under the same path: the cached samples are stale, so they are redrawn
    torch.manual_seed(1)
    save_model(tmp_path / "m", models.build("unet", channels=1, width=8, levels=1, emb_dim=8),
               meta={"data_shape": [1, 8, 8]})
    assert main(args) == 0
    assert (tmp_path / "o" / "samples.npy").stat().st_mtime_ns != stamp
    capsys.readouterr()


@pytest.mark.gpu
def test_audit_on_cuda_matches_cpu(train):
    samples, copied = _copies_and_fresh(train)
    t = torch.cat([train, train[5:6]])
    cpu = audit(samples, t)
    gpu = audit(samples.cuda(), t.cuda())
    for name in ("pixel",):
        a, b = cpu.spaces[name], gpu.spaces[name]
        assert torch.equal(a.memorization.memorized, b.memorization.memorized)
        assert torch.equal(a.memorization.nn_index, b.memorization.nn_index)
        assert torch.allclose(a.memorization.ratio, b.memorization.ratio, rtol=1e-5, atol=1e-6)
        assert torch.allclose(a.nearest_cosine, b.nearest_cosine, atol=1e-6)
        assert torch.equal(a.background_index, b.background_index)
    assert gpu.duplicates.dropped.tolist() == cpu.duplicates.dropped.tolist() == [len(train)]
    assert gpu.duplicates.partner.tolist() == [5]
