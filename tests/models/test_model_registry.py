"""Registry: build by name, unknown names, config round trips."""

import inspect

import pytest
import torch

import pydiffgen.models as models
from pydiffgen.errors import ConfigError
from pydiffgen.models import MODELS, build

SMALL = {
    "bf_unet": ({"channels": 3, "levels": 2, "width": 4}, (2, 3, 8, 8)),
    "bf_cnn": ({"channels": 3, "depth": 4, "width": 5}, (2, 3, 7, 9)),
    "unet": ({"channels": 3, "width": 6, "levels": 2, "emb_dim": 10}, (2, 3, 8, 8)),
    "mlp": ({"dim": 3, "hidden": 12, "depth": 2}, (4, 3)),
}


def test_registry_lists_the_four_models():
    # other test modules register their own tiny Denoisers; the library ships these four
    library = {k for k, v in MODELS.items() if v.__module__.startswith("pydiffgen.models")}
    assert library == {"bf_unet", "bf_cnn", "unet", "mlp"}
    assert MODELS["bf_unet"] is models.BiasFreeUNet
    assert MODELS["bf_cnn"] is models.BFCNN
    assert MODELS["unet"] is models.UNet
    assert MODELS["mlp"] is models.MLP
    assert MODELS["bf_unet"].blind and MODELS["bf_cnn"].blind
    assert not MODELS["unet"].blind and not MODELS["mlp"].blind


@pytest.mark.parametrize("name", sorted(SMALL))
def test_build_by_name_with_defaults(name):
    model = build(name)
    assert isinstance(model, MODELS[name])
    assert model.config["name"] == name


def test_unknown_name_and_bad_kwargs():
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*bf_cnn, bf_unet, mlp, unet"):
        build("resnet")
    with pytest.raises(ConfigError, match="bad arguments"):
        build("unet", depth=3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_config_rebuilds_identical_architecture(name):
    kwargs, shape = SMALL[name]
    model = build(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.train()
    model(torch.randn(*shape), 0.5)  # update any running statistics
    model.eval()
    # every constructor argument is recorded, defaults included, except `fused` (the eager
    # fallback of the fused blocks), recorded only when False so older checkpoints match
    assert model.config["name"] == name
    assert model.config.items() >= kwargs.items()
    params = set(inspect.signature(type(model)).parameters)
    assert set(model.config) == {"name"} | (params - {"fused"})
    if "fused" in params:
        assert build(name, **kwargs, fused=False).config["fused"] is False

    twin = build(**model.config)
    assert type(twin) is type(model)
    twin.load_state_dict(model.state_dict(), strict=True)
    twin.eval()
    y = torch.randn(*shape)
    torch.testing.assert_close(twin(y, 0.5), model(y, 0.5), rtol=0, atol=0)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in model.named_parameters()]
