"""``pydiffgen jacobian`` end to end on a tiny trained checkpoint; the sweep's Jacobian step."""

import json

import pytest
import torch

from pydiffgen import data, models, training
from pydiffgen.cli import main
from pydiffgen.experiments.jacobian_spectra import (
    heldout_images,
    jacobian_spectra,
    sweep_jacobian,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = models.build("bf_unet", levels=1, width=4)
    training.train(model, data.load("digits")[:64], training.TrainConfig(steps=3, batch_size=8),
                   out_dir=out, progress=False)
    return out


def test_cli_writes_spectra_and_report(checkpoint, tmp_path, capsys):
    out = tmp_path / "jac"
    rc = main(["--quiet", "jacobian", "--model", str(checkpoint), "--data", "digits", "--n", "2",
               "--sigmas", "0.1,0.5", "--show", "3", "--out", str(out)])
    assert rc == 0
    assert "sigma 0.1: tr J" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["d"] == 64 and res["n_images"] == 2 and res["sigmas"] == [0.1, 0.5]
    for r in res["per_sigma"]:
        lam = torch.tensor(r["eigenvalues"])
        assert lam.shape == (2, 64)
        assert bool((lam[:, :-1] >= lam[:, 1:] - 1e-6).all())  # descending
        # dense path: tr J = tr of its symmetric part = Σ λ
        assert torch.allclose(lam.sum(1), torch.tensor(r["trace"]), rtol=1e-4, atol=1e-4)
        assert torch.tensor(r["eigenvectors"]).shape == (2, 3, 1, 8, 8)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # spectra, tr J, one grid per image


@pytest.mark.parametrize("argv, message", [
    (["--sigmas", "a,b"], "--sigmas"),
    (["--sigmas", "0.1,-1"], "sigmas"),
    (["--n", "5000"], "n must be"),
    (["--data", "disks", "--data-option", "size=16"], "shape"),
    (["--k", "65"], "k must be"),
])
def test_cli_bad_input_one_line(checkpoint, tmp_path, capsys, argv, message):
    base = ["jacobian", "--model", str(checkpoint), "--data", "digits", "--n", "1",
            "--out", str(tmp_path / "o")]
    assert main(base + argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pydiffgen: error:") and message in err[0]


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["jacobian", "--model", str(tmp_path / "none"), "--data", "digits"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_spectra_of_a_linear_denoiser_are_exact():
    """D(y) = W y with W symmetric: the spectra are W's eigenvalues at every y and σ."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(9, 9, generator=g, dtype=torch.float64)
    W = (A + A.T) / 6

    def linear(y, sigma):
        return (y.reshape(len(y), -1) @ W).reshape(y.shape)

    res = jacobian_spectra(linear, torch.randn(2, 1, 3, 3, dtype=torch.float64), [0.1, 1.0])
    expected = torch.linalg.eigvalsh(W).flip(0)
    for r in res["per_sigma"]:
        assert torch.allclose(torch.tensor(r["eigenvalues"], dtype=torch.float64),
                              expected.expand(2, -1), atol=1e-10)


def test_sweep_jacobian_identical_models_agree():
    x = data.load("digits")[:40]
    idx1, idx2 = torch.arange(0, 10), torch.arange(10, 20)
    held = heldout_images(x, idx1, idx2, 3, seed=0)
    assert held.shape == (3, 1, 8, 8)
    assert not any(torch.equal(h, t) for h in held for t in x[:20])
    assert heldout_images(x[:20], idx1, idx2, 3) is None
    torch.manual_seed(0)
    m = models.build("bf_unet", levels=1, width=4).eval()
    torch.manual_seed(1)
    other = models.build("bf_unet", levels=1, width=4).eval()
    same = sweep_jacobian(m, m, held, [0.2, 1.0], show=2, agree_k=4)
    assert same["d"] == 64 and set(same["agreement"]) == {"0.2", "1"}
    assert all(abs(v - 1) < 1e-6 for v in same["agreement"].values())
    assert torch.tensor(same["A"]["eigenvectors"]["0.2"]).shape == (2, 1, 8, 8)
    diff = sweep_jacobian(m, other, held, [0.2], show=2, agree_k=4)
    assert diff["agreement"]["0.2"] < 0.99


@pytest.mark.gpu
def test_cli_on_cuda(checkpoint, tmp_path):
    out = tmp_path / "jac"
    assert main(["--quiet", "jacobian", "--model", str(checkpoint), "--data", "digits",
                 "--n", "2", "--sigmas", "0.1", "--device", "cuda", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    lam = torch.tensor(res["per_sigma"][0]["eigenvalues"])
    assert torch.allclose(lam.sum(1), torch.tensor(res["per_sigma"][0]["trace"]), rtol=1e-3,
                          atol=1e-3)
