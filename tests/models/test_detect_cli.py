"""`pydiffgen audit --model DIR --classes LIST | --prompts FILE`: memorization detectors
per condition, end to end on a class-conditional pydiffgen UNet and on a saved
text-conditional diffusers pipeline (tiny, random, offline)."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers_nets import NETWORKS, clip_text_parts, save_pipeline  # noqa: E402

from pydiffgen import data, models, training  # noqa: E402
from pydiffgen.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    """A class-conditional UNet trained briefly on digits, and the training set file."""
    root = tmp_path_factory.mktemp("cond-unet")
    x, info = data.load("digits", return_info=True)
    x, labels = x[:200], info["labels"][:200]
    torch.manual_seed(0)
    net = models.build("unet", channels=1, width=4, levels=1, num_classes=10)
    training.train(net, x, training.TrainConfig(steps=20, batch_size=32, sigma_dist="edm",
                                                label_dropout=0.2),
                   labels=labels, out_dir=root / "net", progress=False)
    np.save(root / "train.npy", x.numpy())
    return root


def test_classes_ranked_with_copies_and_auc(class_model, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("1\n0\n0\n")
    out = tmp_path / "out"
    assert main(["--quiet", "audit", "--model", str(class_model / "net"), "--classes", "0,3,7",
                 "--train", str(class_model / "train.npy"), "--n", "4", "--labels",
                 str(tmp_path / "labels.txt"), "--sampler-option", "steps=4",
                 "--sampler-option", "sigma_max=5", "--wen-sigma-max", "5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "detect.json").read_text())
    names = [r["condition"] for r in result["conditions"]]
    assert names == ["class 0", "class 3", "class 7"]
    scores = [r["wen_score"] for r in result["conditions"]]
    assert all(np.isfinite(scores)) and min(scores) > 0
    # the ranking is by score, highest first, and printed in that order
    assert result["ranking"]["wen"] == [names[i] for i in np.argsort(scores)[::-1]]
    assert printed.index(f"1. {result['ranking']['wen'][0]}") < printed.index(
        f"2. {result['ranking']['wen'][1]}")
    for r in result["conditions"]:
        assert 0 <= r["copies"] <= 4 and len(r["nearest_index"]) == 4
    assert set(result["auc"]) == {"wen", "copies"} and result["wen_sigma_max"] == 5.0
    assert all(0 <= v <= 1 for v in result["auc"].values())
    assert (out / "report.html").stat().st_size > 1000


def test_wen_score_needs_no_training_set(class_model, tmp_path):
    out = tmp_path / "out"
    assert main(["--quiet", "audit", "--model", str(class_model / "net"), "--classes", "1,2",
                 "--n", "2", "--out", str(out)]) == 0
    result = json.loads((out / "detect.json").read_text())
    assert "copies" not in result["conditions"][0] and "auc" not in result


def test_text_pipeline_prompts_with_token_attribution(tmp_path, capsys):
    tokenizer, encoder = clip_text_parts(tmp_path)
    torch.manual_seed(6)
    unet = NETWORKS["unet_text"][0](diffusers).eval()
    root = save_pipeline(tmp_path / "sd", unet, diffusers.DDIMScheduler(
        num_train_timesteps=50, clip_sample=False), text_encoder=encoder, tokenizer=tokenizer)
    (tmp_path / "prompts.txt").write_text("lower newer\nlowest\n\nwider\n")
    out = tmp_path / "out"
    assert main(["--quiet", "audit", "--model", str(root), "--prompts",
                 str(tmp_path / "prompts.txt"), "--n", "2", "--out", str(out)]) == 0
    result = json.loads((out / "detect.json").read_text())
    assert [r["condition"] for r in result["conditions"]] == ["lower newer", "lowest", "wider"]
    for r in result["conditions"]:
        assert len(r["tokens"]) == 7 and all(t >= 0 for t in r["tokens"])
    assert "Wen score" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "PROMPTS"], "has no text encoder; it takes --classes"),
    (["--classes", "0,x"], "--classes must be comma-separated integers"),
    (["--classes", "0,1", "--labels", "LABELS"], "must hold 2 lines of 0 or 1"),
    (["--classes", "0", "--prompts", "PROMPTS"], "not both"),
])
def test_bad_condition_arguments(class_model, tmp_path, capsys, extra, message):
    (tmp_path / "p.txt").write_text("a\n")
    (tmp_path / "l.txt").write_text("1\n")
    extra = [{"PROMPTS": str(tmp_path / "p.txt"), "LABELS": str(tmp_path / "l.txt")}.get(a, a)
             for a in extra]
    assert main(["audit", "--model", str(class_model / "net"), *extra,
                 "--out", str(tmp_path / "o")]) != 0
    assert message in capsys.readouterr().err


def test_unconditional_model_takes_no_classes(tmp_path, capsys):
    torch.manual_seed(0)
    net = models.build("unet", channels=1, width=4, levels=1)
    training.train(net, data.load("digits")[:32], training.TrainConfig(steps=2, batch_size=8),
                   out_dir=tmp_path / "net", progress=False)
    assert main(["audit", "--model", str(tmp_path / "net"), "--classes", "0",
                 "--out", str(tmp_path / "o")]) != 0
    assert "is unconditional" in capsys.readouterr().err
    assert main(["audit", "--model", str(tmp_path / "net"), "--out", str(tmp_path / "o")]) != 0
    assert "--train FILE is required" in capsys.readouterr().err


def test_cli_trains_a_class_conditional_model_on_the_datasets_labels(tmp_path):
    from pydiffgen.checkpoint import load_model

    assert main(["--quiet", "train", "--data", "digits", "--data-option", "n=64", "--model",
                 "unet", "--model-option", "num_classes=10", "--model-option", "width=4",
                 "--model-option", "levels=1", "--steps", "2", "--batch-size", "8",
                 "--label-dropout", "0.1", "--out", str(tmp_path / "net")]) == 0
    model = load_model(tmp_path / "net")
    assert model.conditional and model.num_classes == 10
