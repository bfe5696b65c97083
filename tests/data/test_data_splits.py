"""disjoint_split: two non-overlapping training sets, reproducible, group-aware."""

import pytest
import torch

from pydiffgen.data import disjoint_split
from pydiffgen.errors import InputError


def _data(N=50):
    # each image is filled with its own index, so subsets can be traced back
    return torch.arange(N, dtype=torch.float32)[:, None, None, None].expand(N, 1, 2, 2).clone()


def test_random_split_is_disjoint_sized_and_reproducible():
    x = _data()
    s1, s2, i1, i2 = disjoint_split(x, 20, seed=3, return_index=True)
    assert s1.shape == (20, 1, 2, 2) and s2.shape == (20, 1, 2, 2)
    assert not set(i1.tolist()) & set(i2.tolist())
    assert torch.equal(s1, x[i1]) and torch.equal(s2, x[i2])
    assert i1.tolist() == sorted(i1.tolist())
    again = disjoint_split(x, 20, seed=3)
    assert torch.equal(again[0], s1) and torch.equal(again[1], s2)
    other = disjoint_split(x, 20, seed=4)
    assert not torch.equal(other[0], s1)
    assert len(disjoint_split(x, 25)[0]) == 25  # 2n = N is allowed


def test_random_split_is_nested_across_sizes():
    x = _data(200)
    small = disjoint_split(x, 10, seed=0, return_index=True)
    large = disjoint_split(x, 100, seed=0, return_index=True)
    assert set(small[2].tolist()) <= set(large[2].tolist())
    assert set(small[3].tolist()) <= set(large[3].tolist())


def test_ends_mode_is_the_papers_convention():
    x = _data(30)
    _, _, i1, i2 = disjoint_split(x, 10, mode="ends", return_index=True)
    assert i1.tolist() == list(range(10)) and i2.tolist() == list(range(20, 30))


def test_groups_never_straddle_the_split():
    gen = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 12, (300,), generator=gen)
    x = _data(300)
    for seed in range(5):
        s1, s2, i1, i2 = disjoint_split(x, 100, seed=seed, groups=groups, return_index=True)
        assert len(i1) == len(i2) == 100
        assert not set(groups[i1].tolist()) & set(groups[i2].tolist())
    again = disjoint_split(x, 100, seed=4, groups=groups.tolist(), return_index=True)
    assert torch.equal(again[2], i1) and torch.equal(again[3], i2)


def test_groups_that_need_balancing():
    # one big group and five singletons: only {big} vs {singletons} works for n = 5
    groups = torch.tensor([0] * 5 + [1, 2, 3, 4, 5])
    for seed in range(10):
        _, _, i1, i2 = disjoint_split(_data(10), 5, seed=seed, groups=groups, return_index=True)
        sides = {tuple(sorted(set(groups[i].tolist()))) for i in (i1, i2)}
        assert sides == {(0,), (1, 2, 3, 4, 5)}


def test_errors():
    x = _data(10)
    with pytest.raises(InputError, match="2n=12"):
        disjoint_split(x, 6)
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        disjoint_split(x, 0)
    with pytest.raises(InputError, match="mode"):
        disjoint_split(x, 2, mode="middle")
    with pytest.raises(InputError, match="cannot form two sides"):
        disjoint_split(x, 3, groups=torch.tensor([0] * 8 + [1, 2]))
    with pytest.raises(InputError, match="share groups"):
        disjoint_split(x, 5, mode="ends", groups=torch.tensor([0, 1] * 5))
    with pytest.raises(InputError, match=r"groups must be integers of shape \[10\]"):
        disjoint_split(x, 2, groups=torch.zeros(9, dtype=torch.int64))
