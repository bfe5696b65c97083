"""Memorization detectors per condition: Wen et al.'s magnitude, copies among samples,
detector AUC."""

import pytest
import torch

from pydiffgen import data, models
from pydiffgen.analysis import (
    EmpiricalDenoiser,
    GaussianDenoiser,
    copy_detection,
    detector_auc,
    wen_score,
)
from pydiffgen.diffusion import karras_sigmas
from pydiffgen.errors import InputError
from pydiffgen.models import Denoiser
from pydiffgen.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3  # classes: 0 trained on a single digit image (memorized), 1 and 2 on 40 images each


@pytest.fixture(scope="module")
def digit_classes():
    """(training images with the single one repeated [3·40, 1, 8, 8], their labels [120],
    the distinct training images [81, 1, 8, 8]): digits 0 (one image), 1 and 2."""
    x, info = data.load("digits", return_info=True)
    single = x[info["labels"] == 0][:1]
    others = [x[info["labels"] == k][:40] for k in (1, 2)]
    images = torch.cat([single.expand(40, -1, -1, -1), *others])  # balanced classes
    labels = torch.arange(K).repeat_interleave(40)
    return images, labels, torch.cat([single, *others])


class PerClass(Denoiser):
    """A class-conditional denoiser made of one denoiser per class, the last for the null
    class K: ``D(y, σ, c) = D_c(y, σ)``."""

    conditional = True

    def __init__(self, denoisers):
        super().__init__()
        self.denoisers = torch.nn.ModuleList(denoisers)
        self.null_cond = torch.tensor([len(denoisers) - 1])

    def forward(self, y, sigma, cond=None):
        cond = self.null_cond.expand(len(y)) if cond is None else cond
        sigma = torch.as_tensor(sigma, dtype=y.dtype).expand(len(y))
        out = torch.empty_like(y)
        for k in cond.unique().tolist():
            rows = cond == k
            out[rows] = self.denoisers[k](y[rows], sigma[rows])
        return out


@pytest.fixture(scope="module")
def ideal(digit_classes):
    """The optimal denoisers of each class's training images: class 0's empirical one (its
    single image, memorized), Gaussian ones for the classes that generalize and the null."""
    images, labels, _ = digit_classes
    per_class = [EmpiricalDenoiser(images[:1])]
    per_class += [GaussianDenoiser.fit(images[labels == k]) for k in (1, 2)]
    return PerClass([*per_class, GaussianDenoiser.fit(images)])


def _check_detectors(model, distinct, guidance=None):
    w = wen_score(model, torch.arange(K), shape=(1, 8, 8), steps=3, seeds=range(4),
                  sigmas=karras_sigmas(10, sigma_max=5.0))
    assert w.magnitude.shape == (K, 4, 3) and w.tokens is None
    assert w.ranking[0] == 0 and w.score[0] > w.score[1:].max()
    cd = copy_detection(model, torch.arange(K), distinct, n=8, steps=10, sigma_max=5.0,
                        guidance=guidance)
    assert cd.samples.shape == (K, 8, 1, 8, 8)
    assert cd.ranking[0] == 0 and cd.copies[0] >= 2 and cd.copies[1:].tolist() == [0, 0]
    assert torch.equal(cd.fraction, cd.copies.double() / 8)
    assert detector_auc(w.score, torch.tensor([1, 0, 0])) == 1.0
    return w, cd


def test_detectors_on_the_optimal_class_denoisers(ideal, digit_classes):
    w, cd = _check_detectors(ideal, digit_classes[2])
    assert cd.copies[0] == 8  # the empirical denoiser of one image only returns it


@pytest.mark.slow
def test_detectors_on_a_class_conditional_unet_trained_here(digit_classes):
    """A tiny UNet, 300 steps on CPU: the class trained on one image scores highest on Wen
    et al.'s magnitude and its samples are copies of that image; the others are not."""
    images, labels, distinct = digit_classes
    torch.manual_seed(1)
    model = models.build("unet", channels=1, width=8, levels=2, num_classes=K, fused=False)
    cfg = TrainConfig(steps=300, batch_size=16, sigma_dist="edm", P_mean=-0.6, P_std=1.4,
                      lr=2e-3, ema=0.99, seed=1, label_dropout=0.2, checkpoint_every=None)
    ema = train(model, images, cfg, labels=labels, progress=False).ema
    _check_detectors(ema, distinct, guidance=3.0)


class TokenModel(Denoiser):
    """A text-conditional toy: ``D(y, σ, e) = c_skip y + c_out tanh(W e_1)`` for
    embeddings e [B, L=3, E=4]; only token 1 matters, the null prompt is zeros."""

    conditional = True

    def __init__(self):
        super().__init__()
        self.W = torch.nn.Linear(4, 6, bias=False)
        self.null_cond = torch.zeros(1, 3, 4)

    def forward(self, y, sigma, cond=None):
        cond = self.null_cond.expand(len(y), -1, -1) if cond is None else cond
        s = torch.as_tensor(sigma, dtype=y.dtype).reshape(-1, 1)
        return (y + s**2 * torch.tanh(self.W(cond[:, 1]))) / (1 + s**2)


def test_token_attribution_finds_the_token_that_matters():
    torch.manual_seed(0)
    model = TokenModel()
    prompts = torch.randn(2, 3, 4)
    w = wen_score(model, prompts, shape=(6,), steps=2, seeds=(0, 1),
                  sigmas=karras_sigmas(5, sigma_max=2.0))
    assert w.tokens.shape == (2, 3)
    assert (w.tokens[:, 1] > 0).all() and (w.tokens[:, [0, 2]] == 0).all()
    # the magnitude is that of the conditional part: zero for the null prompt itself
    null = wen_score(model, model.null_cond, shape=(6,), steps=2, seeds=(0,),
                     sigmas=karras_sigmas(5, sigma_max=2.0))
    assert float(null.score[0]) == 0.0
    assert wen_score(model, prompts, shape=(6,), attribution=False).tokens is None


def test_detector_errors_are_one_line(ideal, digit_classes):
    plain = models.build("bf_cnn", depth=3, width=4)
    with pytest.raises(InputError, match="unconditional"):
        wen_score(plain, torch.arange(2), shape=(1, 8, 8))
    with pytest.raises(InputError, match="steps=60"):
        wen_score(ideal, torch.arange(2), shape=(1, 8, 8), steps=60)
    with pytest.raises(InputError, match="conds is None"):
        copy_detection(ideal, None, digit_classes[2])
    with pytest.raises(InputError, match="at least one memorized and one other"):
        detector_auc([0.1, 0.2], [1, 1])
    with pytest.raises(InputError, match="0/1"):
        detector_auc([0.1, 0.2], [1, 2])


def _auc_pairwise(scores, labels):
    """Dense reference: the mean over (memorized, other) pairs of [s⁺ > s⁻] + ½[s⁺ = s⁻]."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_detector_auc_matches_roc_auc_with_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 6, (40,), generator=g).double()  # many ties
        labels = torch.randint(0, 2, (40,), generator=g)
        want = _auc_pairwise(scores, labels)
        try:
            from sklearn.metrics import roc_auc_score

            want = roc_auc_score(labels.numpy(), scores.numpy())
        except ImportError:
            pass
        assert detector_auc(scores, labels) == pytest.approx(want, abs=1e-12)
        assert detector_auc(scores, labels.bool()) == pytest.approx(want, abs=1e-12)
    assert detector_auc([3.0, 1.0, 2.0], [1, 0, 0]) == 1.0
    assert detector_auc([1.0, 1.0], [1, 0]) == 0.5


class DictModel(TokenModel):
    """:class:`TokenModel` taking its embeddings as ``cond={"emb": [B, 3, 4]}``."""

    def __init__(self):
        super().__init__()
        self.null_cond = {"emb": torch.zeros(1, 3, 4)}

    def forward(self, y, sigma, cond=None):
        return super().forward(y, sigma, (cond or self.null_cond)["emb"].expand(len(y), -1, -1))


def test_wen_score_takes_dict_conditions():
    torch.manual_seed(0)
    tok, dct = TokenModel(), DictModel()
    dct.load_state_dict(tok.state_dict())
    prompts = torch.randn(2, 3, 4)
    kw = {"shape": (6,), "steps": 2, "seeds": (0, 1), "sigmas": karras_sigmas(5, sigma_max=2.0)}
    a, b = wen_score(tok, prompts, **kw), wen_score(dct, {"emb": prompts}, **kw)
    torch.testing.assert_close(a.score, b.score)
    assert b.tokens is None  # attribution is for a bare [K, L, E] tensor
