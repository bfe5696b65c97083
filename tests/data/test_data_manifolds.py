"""render_disks (explicit-parameter disks, for tangent spaces) and the ray data set."""

import pytest
import torch

from pydiffgen import data
from pydiffgen.errors import InputError


def test_render_disks_reproduces_the_data_set_and_is_differentiable():
    x, info = data.load("disks", n=7, size=13, seed=4, return_info=True)
    r = data.render_disks(info["params"].double(), 13)
    assert r.shape == (7, 1, 13, 13) and r.dtype == torch.float64
    # params are stored as float32, so the render differs by their rounding only
    assert torch.allclose(r.float(), x, atol=1e-5)
    p = info["params"][:1].double().requires_grad_()
    data.render_disks(p, 13).sum().backward()
    assert p.grad.abs().sum() > 0  # the image moves with every parameter set
    with pytest.raises(InputError, match=r"\[n, 5\]"):
        data.render_disks(torch.zeros(3, 4), 13)


def test_ray_is_positive_multiples_of_one_image():
    x, info = data.load("ray", n=9, size=16, min_scale=0.2, seed=1, return_info=True)
    assert x.shape == (9, 1, 16, 16) and x.abs().max() <= 1
    a = info["scales"]
    assert bool((a >= 0.2).all() and (a <= 1).all())
    assert torch.allclose(x, a[:, None, None, None] * info["direction"], atol=1e-6)
    sv = torch.linalg.svdvals(x.reshape(9, -1).double())
    assert sv[1] < 1e-6 * sv[0]  # rank one up to float32 rounding
    assert abs(float(info["direction"].mean())) < 1e-6  # mean removed: a true ray
    with pytest.raises(InputError, match="min_scale"):
        data.load("ray", n=2, min_scale=2.0)
