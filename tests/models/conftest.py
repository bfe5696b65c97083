"""Fixtures of the model tests: tiny diffusers networks saved once per session."""

import pytest
import torch
from diffusers_nets import NETWORKS


@pytest.fixture(scope="session")
def saved_networks(tmp_path_factory):
    """name -> folder holding the saved network of NETWORKS[name] (seeded)."""
    diffusers = pytest.importorskip("diffusers")
    out = {}
    for i, (name, (build, _)) in enumerate(NETWORKS.items()):
        torch.manual_seed(i)
        net = build(diffusers).eval()
        # adaLN-zero and zero-initialised output layers would make the output 0: perturb
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[name] = tmp_path_factory.mktemp(name)
        net.save_pretrained(out[name], safe_serialization=True)
    return out
