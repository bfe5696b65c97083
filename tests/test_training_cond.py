"""Class-conditional training: labels from the dataset or given, label dropout for CFG,
checkpoints that rebuild the model conditional."""

import pytest
import torch

from pydiffgen import data, load_model
from pydiffgen.errors import InputError
from pydiffgen.models import build
from pydiffgen.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    return TrainConfig(steps=6, batch_size=8, sigma_dist="edm", ema=None, seed=1,
                       checkpoint_every=None, **kw)


def _model(num_classes=10):
    torch.manual_seed(0)
    return build("unet", channels=1, width=8, levels=2, num_classes=num_classes, fused=False)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", n=40, return_info=True)


def test_labels_come_from_the_dataset_or_are_given(digits):
    x, info = digits
    from_dataset = train(_model(), digits, _cfg(label_dropout=0.2), progress=False).losses
    result = train(_model(), x, _cfg(label_dropout=0.2), labels=info["labels"], progress=False)
    assert from_dataset == result.losses
    rows = result.model.F.class_embed.weight.abs().sum(1)  # [11]: zero at initialisation
    assert (rows[info["labels"].unique()] > 0).all()


def test_an_unconditional_model_ignores_the_dataset_labels(digits):
    x, _ = digits
    a = train(_model(0), digits, _cfg(), progress=False).losses
    assert a == train(_model(0), x, _cfg(), progress=False).losses


def test_a_conditional_model_on_a_dataset_without_labels_is_refused(digits):
    x, _ = digits
    with pytest.raises(InputError, match="dataset has no labels"):
        train(_model(), (x, {"groups": None}), _cfg(), progress=False)


def test_label_dropout_uses_the_null_label(digits):
    x, info = digits
    seen = []
    model = _model()
    forward = model.forward

    def spy(y, sigma, cond=None):
        seen.append(cond.clone())
        return forward(y, sigma, cond=cond)

    model.forward = spy
    train(model, digits, _cfg(label_dropout=0.5), progress=False)
    labels = torch.cat(seen)
    assert (labels == 10).any() and (labels < 10).any()  # some dropped, some kept


def test_checkpoint_rebuilds_a_conditional_model(digits, tmp_path):
    model = train(_model(), digits, _cfg(label_dropout=0.1), out_dir=tmp_path,
                  progress=False).model
    back = load_model(tmp_path)
    assert back.conditional and torch.equal(back.null_cond, torch.tensor([10]))
    y, c = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 10])
    with torch.no_grad():
        assert torch.equal(back(y, 0.5, cond=c), model(y, 0.5, cond=c))
