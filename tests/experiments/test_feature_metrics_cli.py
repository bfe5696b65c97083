"""`pydiffgen metrics` and `audit --encoder` end to end on 8×8 digits saved as .npy, with
the pixel encoder and a tiny local DINOv2."""

import json

import numpy as np
import pytest
import torch

from pydiffgen import metrics as mt
from pydiffgen.cli import main


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """real = 300 digits (also the training set's first 300), fake = 300 others + 50 exact
    copies of real, test = 200 held out; and fake without the copies."""
    from sklearn.datasets import load_digits

    x = (load_digits().images.astype(np.float32) / 8 - 1)[:, None]  # [1797, 1, 8, 8]
    p = np.random.default_rng(0).permutation(len(x))
    real, other, test = x[p[:300]], x[p[300:600]], x[p[600:800]]
    folder = tmp_path_factory.mktemp("digits")
    sets = {"real": real, "train": real, "test": test, "clean": other,
            "fake": np.concatenate([other, real[:50]]), "wide": np.zeros((20, 1, 9, 9),
                                                                         np.float32)}
    for name, a in sets.items():
        np.save(folder / f"{name}.npy", a)
    return folder


def run(argv, capsys):
    rc = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def feats(out, name):
    return torch.from_numpy(np.load(out / "features" / f"{name}.npy"))


def test_all_metrics_with_the_pixel_encoder(digits, tmp_path, capsys):
    out = tmp_path / "m"
    rc, text, _ = run(["metrics", "--real", str(digits / "real.npy"), "--fake",
                       str(digits / "fake.npy"), "--train", str(digits / "train.npy"),
                       "--test", str(digits / "test.npy"), "--n-boot", "2", "--out", str(out)],
                      capsys)
    assert rc == 0
    result = json.loads((out / "metrics.json").read_text())
    rows = result["metrics"]
    names = ["prdc.precision", "prdc.recall", "prdc.density", "prdc.coverage", "fd", "kid",
             "authpct", "ct", "fld.fld", "fld.gap", "extraction.fraction", "copy.p95",
             "copy.fraction", "copy.background_p95"]
    assert list(rows) == names and result["skipped"] == {}
    for name in names:
        assert set(rows[name]) == {"value", "low", "high", "ci"} and rows[name]["ci"] == 0.95
        assert name in text
    assert "95% CI" in text and (out / "report.html").is_file()
    assert "prdc.precision" in (out / "report.html").read_text()
    real, fake, train, test = (feats(out, n) for n in ("real", "fake", "train", "test"))
    assert real.shape == (300, 64) and fake.shape == (350, 64)
    pr = mt.prdc(real, fake, k=5)
    assert rows["prdc.precision"]["value"] == pytest.approx(pr.precision)
    assert rows["prdc.coverage"]["value"] == pytest.approx(pr.coverage)
    assert rows["fd"]["value"] == pytest.approx(mt.frechet_distance(real, fake))
    assert rows["kid"]["value"] == pytest.approx(mt.kernel_distance(real, fake, subsets=10))
    assert rows["authpct"]["value"] == pytest.approx(mt.authpct(train, fake))
    assert rows["ct"]["value"] == pytest.approx(mt.ct_score(train, test, fake))
    assert rows["extraction.fraction"]["value"] == pytest.approx(
        mt.extraction_distance(fake, train).fraction)
    assert rows["copy.p95"]["value"] == pytest.approx(mt.copy_score(fake, train).p95)


def test_copies_raise_the_copy_metrics_and_missing_sets_are_skipped(digits, tmp_path, capsys):
    rows = {}
    for name in ("clean", "fake"):
        out = tmp_path / name
        rc, text, _ = run(["metrics", "--real", str(digits / "real.npy"), "--fake",
                           str(digits / f"{name}.npy"), "--train", str(digits / "train.npy"),
                           "--metrics", "copy,extraction,authpct,ct", "--n-boot", "2",
                           "--out", str(out)], capsys)
        assert rc == 0 and "skipped ct: needs --test" in text
        result = json.loads((out / "metrics.json").read_text())
        assert result["skipped"] == {"ct": "needs --test"}
        rows[name] = result["metrics"]
    # 50 of 350 samples are exact copies of training images: above the 95th percentile
    assert rows["fake"]["copy.p95"]["value"] == pytest.approx(1.0)
    assert rows["clean"]["copy.p95"]["value"] < 0.99
    assert rows["fake"]["extraction.fraction"]["value"] >= 50 / 350
    assert rows["clean"]["extraction.fraction"]["value"] < 50 / 350
    assert rows["fake"]["authpct"]["value"] < rows["clean"]["authpct"]["value"]


def test_tiny_dinov2_encoder(digits, tmp_path, capsys, tiny_dinov2):
    out = tmp_path / "m"
    rc, text, _ = run(["metrics", "--real", str(digits / "real.npy"), "--fake",
                       str(digits / "fake.npy"), "--train", str(digits / "train.npy"),
                       "--encoder", f"dinov2:{tiny_dinov2}",
                       "--metrics", "prdc,fd,copy", "--n-boot", "2", "--out", str(out)], capsys)
    assert rc == 0 and "dinov2" in text
    rows = json.loads((out / "metrics.json").read_text())["metrics"]
    real, fake, train = (feats(out, n) for n in ("real", "fake", "train"))
    assert real.shape[0] == 300 and real.shape[1] != 64
    assert rows["prdc.density"]["value"] == pytest.approx(mt.prdc(real, fake).density)
    assert rows["fd"]["value"] == pytest.approx(mt.frechet_distance(real, fake))
    assert rows["copy.fraction"]["value"] == pytest.approx(mt.copy_score(fake, train).fraction)


@pytest.mark.parametrize("argv, message", [
    (["--fake", "{d}/missing.npy"], "does not exist"),
    (["--fake", "{d}/fake.npy", "--metrics", "prdc,nope"], "unknown metric nope"),
    (["--fake", "{d}/wide.npy", "--metrics", "prdc"], "different widths"),
])
def test_bad_inputs_are_one_line_errors(digits, tmp_path, capsys, argv, message):
    argv = [a.replace("{d}", str(digits)) for a in argv]
    rc, _, err = run(["metrics", "--real", str(digits / "real.npy"), *argv, "--n-boot", "2",
                      "--out", str(tmp_path / "m")], capsys)
    assert rc != 0
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_audit_with_an_encoder_adds_the_feature_section(digits, tmp_path, capsys):
    out = tmp_path / "a"
    rc, _, _ = run(["audit", "--samples", str(digits / "fake.npy"), "--train",
                    str(digits / "train.npy"), "--encoder", "pixel", "--n-boot", "2",
                    "--out", str(out)], capsys)
    assert rc == 0
    section = json.loads((out / "audit.json").read_text())["encoder_metrics"]
    assert section["encoder"] == "pixel" and section["feature_dim"] == 64
    rows = section["metrics"]
    assert {"prdc.precision", "authpct", "extraction.fraction", "copy.p95"} <= set(rows)
    train = torch.from_numpy(np.load(digits / "train.npy").reshape(300, 64))
    fake = torch.from_numpy(np.load(digits / "fake.npy").reshape(350, 64))
    assert rows["authpct"]["value"] == pytest.approx(mt.authpct(train, fake))
    assert "Feature space: pixel" in (out / "report.html").read_text()
