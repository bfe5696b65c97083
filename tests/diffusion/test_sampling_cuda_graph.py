"""Samplers with cuda_graph=True: refused off CUDA; on a GPU the same samples as eager."""

import pytest
import torch

from pydiffgen.diffusion.sampling import ddpm_ancestral, edm_heun, sample
from pydiffgen.errors import InputError
from pydiffgen.models import build


def test_cuda_graph_needs_cuda():
    model = build("unet", width=8, levels=2)
    with pytest.raises(InputError, match="cuda_graph=True needs a CUDA device"):
        edm_heun(model, 2, (1, 8, 8), steps=2, cuda_graph=True)
    with pytest.raises(InputError, match="cuda_graph must be True or False"):
        ddpm_ancestral(model, 2, (1, 8, 8), steps=2, cuda_graph="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["heun", "euler", "ddpm"])
def test_cuda_graph_sampling_matches_eager(method):
    torch.manual_seed(0)
    model = build("unet", width=16, levels=2).cuda()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial network (F ≢ 0)
    kw = dict(steps=6, seed=3, device="cuda", batch_size=8)
    eager = sample(model, 8, (1, 16, 16), method, **kw)
    graphed = sample(model, 8, (1, 16, 16), method, cuda_graph=True, **kw)
    torch.testing.assert_close(graphed, eager, atol=1e-5, rtol=1e-5)
    assert model.training  # the sampler restores the model's mode
