"""Shared blocks: the GroupNorm → FiLM → SiLU chain, group counts, σ-embedding."""

import pytest
import torch
from torch import nn

from pydiffgen.errors import InputError
from pydiffgen.models import PositionalEmbedding, ResBlock, groupnorm_film_silu, num_groups


@pytest.mark.parametrize(
    "channels,expected", [(1, 1), (3, 3), (6, 6), (32, 32), (48, 24), (64, 32), (96, 32), (36, 18)]
)
def test_num_groups(channels, expected):
    assert num_groups(channels) == expected


@pytest.mark.parametrize("C", [6, 64])
def test_groupnorm_film_silu_matches_modules(C):
    B, H, W = 3, 5, 7
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    gn = nn.GroupNorm(num_groups(C), C).double()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    scale = torch.randn(B, C, dtype=torch.float64)
    shift = torch.randn(B, C, dtype=torch.float64)
    out = groupnorm_film_silu(x, gn.num_groups, gn.weight, gn.bias, scale, shift, gn.eps)
    expected = nn.functional.silu(gn(x) * (1 + scale[..., None, None]) + shift[..., None, None])
    torch.testing.assert_close(out, expected)
    # None scale / shift: plain GN → SiLU
    plain = groupnorm_film_silu(x, gn.num_groups, gn.weight, gn.bias, None, None, gn.eps)
    torch.testing.assert_close(plain, nn.functional.silu(gn(x)))


def test_groupnorm_film_silu_gradcheck():
    B, C = 2, 4
    args = [
        torch.randn(B, C, 3, 3, dtype=torch.float64, requires_grad=True),
        2,
        torch.randn(C, dtype=torch.float64, requires_grad=True),
        torch.randn(C, dtype=torch.float64, requires_grad=True),
        torch.randn(B, C, dtype=torch.float64, requires_grad=True),
        torch.randn(B, C, dtype=torch.float64, requires_grad=True),
        1e-5,
    ]
    assert torch.autograd.gradcheck(groupnorm_film_silu, args)


def test_resblock_calls_the_one_chain_function(monkeypatch):
    from pydiffgen.models import blocks

    calls = []
    real = blocks.groupnorm_film_silu

    def spy(*args):
        calls.append(args[4] is not None)
        return real(*args)

    monkeypatch.setattr(blocks, "groupnorm_film_silu", spy)
    block = ResBlock(4, 8, emb_dim=16)
    out = block(torch.randn(2, 4, 6, 6), torch.randn(2, 16))
    assert out.shape == (2, 8, 6, 6)
    assert calls == [False, True]  # GN → SiLU, then GN → FiLM → SiLU


def test_resblock_starts_as_skip_and_uses_embedding():
    block = ResBlock(8, 8, emb_dim=4)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 4)), x)  # conv1 starts at zero
    with torch.no_grad():
        block.conv1.weight.normal_(0, 0.1)
    e = torch.randn(2, 4)
    assert not torch.allclose(block(x, e), block(x, e + 1.0))


def test_positional_embedding():
    emb = PositionalEmbedding(8)
    c = torch.tensor([0.0, 0.5, -1.0])
    e = emb(c)
    assert e.shape == (3, 8)
    torch.testing.assert_close(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0, sin 0
    torch.testing.assert_close(e[1, 0], torch.cos(torch.tensor(0.5)))  # f_0 = 1
    torch.testing.assert_close(e[1, 4], torch.sin(torch.tensor(0.5)))
    torch.testing.assert_close(e[:, 3], torch.cos(c * 1e-4))  # f_{K−1} = 1/max_positions
    assert emb.state_dict() == {}  # fixed frequencies: not part of a checkpoint
    with pytest.raises(InputError):
        PositionalEmbedding(7)


def test_unet_routes_every_norm_through_the_chain_function(monkeypatch):
    from pydiffgen.models import UNet, blocks

    calls = []
    real = blocks.groupnorm_film_silu

    def spy(*args):
        calls.append(args[0].shape[1])
        return real(*args)

    monkeypatch.setattr(blocks, "groupnorm_film_silu", spy)
    model = UNet(width=8, levels=2, blocks_per_level=1)
    model(torch.randn(2, 1, 8, 8), 1.0)
    n_norms = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    n_blocks = sum(isinstance(m, ResBlock) for m in model.modules())
    assert n_blocks == 2 + 2 + 2  # encoder, middle, decoder
    assert len(calls) == n_norms == 2 * n_blocks + 1  # two per block + the output norm
