"""Two non-overlapping training sets S1, S2 of equal size (Kadkhodaie et al. 2024, §1)."""

from __future__ import annotations

import torch

from .._checks import check_positive_int
from ..errors import InputError

MODES = ("random", "ends")


def disjoint_split(x: torch.Tensor, n: int, seed: int = 0, groups=None, mode: str = "random",
                   return_index: bool = False):
    """Split ``x [N, ...]`` into S1, S2 ``[n, ...]`` with no image (and no group) in both.

    mode "ends" is the paper's convention: S1 = first n, S2 = last n (``seed`` unused).
    mode "random" applies the same rule to a seeded permutation, so for a fixed seed the
    subsets are nested across n (S1 for n = 10 lies inside S1 for n = 100), as in the
    paper's sweep. ``groups`` (int [N], e.g. the source photograph of each patch) forbids
    a group from appearing on both sides: whole groups are assigned to a side, then n
    images are drawn from each side. Index tensors are sorted, so subsets keep data order.
    Returns ``(S1, S2)``, or ``(S1, S2, index1, index2)`` with ``return_index``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise InputError(f"x must be a tensor [N, ...], got {type(x).__name__}")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_positive_int(n, "n")
    N = len(x)
    if 2 * n > N:
        raise InputError(f"two disjoint subsets of n={n} need 2n={2 * n} images, x has N={N}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        order = torch.arange(N) if mode == "ends" else torch.randperm(N, generator=gen)
        i1, i2 = order[:n], order[N - n :]
    else:
        g = _check_groups(groups, N)
        if mode == "ends":
            i1, i2 = torch.arange(n), torch.arange(N - n, N)
            shared = set(g[i1].tolist()) & set(g[i2].tolist())
            if shared:
                raise InputError(
                    f"the first and last {n} images share groups {sorted(shared)[:8]}; use "
                    f"mode='random' to assign whole groups to each side"
                )
        else:
            i1, i2 = _split_groups(g, n, gen)
    i1, i2 = i1.sort().values, i2.sort().values
    i1, i2 = i1.to(x.device), i2.to(x.device)
    return (x[i1], x[i2], i1, i2) if return_index else (x[i1], x[i2])


def _check_groups(groups, N: int) -> torch.Tensor:
    g = torch.as_tensor(groups)
    if g.shape != (N,) or g.is_floating_point() or g.is_complex():
        raise InputError(
            f"groups must be integers of shape [{N}] (one per image), got "
            f"{g.dtype} {tuple(g.shape)}"
        )
    return g.to(torch.int64).cpu()


def _split_groups(g: torch.Tensor, n: int, gen: torch.Generator):
    """Assign whole groups to two sides with ≥ n images each, then draw n per side."""
    labels, inverse, counts = torch.unique(g, return_inverse=True, return_counts=True)
    shuffled = torch.randperm(len(labels), generator=gen)
    # random order first, so which groups land where is random; if that strands one side,
    # largest-first balancing (LPT), which rarely fails when a split exists
    by_size = shuffled[torch.sort(counts[shuffled], descending=True, stable=True).indices]
    for order in (shuffled, by_size):
        sides = _balance(order.tolist(), counts.tolist(), n)
        if sides is not None:
            break
    else:
        raise InputError(
            f"cannot form two sides of n={n} images from whole groups: {len(labels)} groups "
            f"of sizes up to {int(counts.max())} hold {int(counts.sum())} images; lower n"
        )
    picked = []
    for side in sides:
        members = torch.isin(inverse, torch.tensor(side)).nonzero()[:, 0]
        picked.append(members[torch.randperm(len(members), generator=gen)[:n]])
    return picked[0], picked[1]


def _balance(order: list[int], counts: list[int], n: int):
    """Give each group in ``order`` to the emptier side until both hold ≥ n, else None."""
    sides, sizes = ([], []), [0, 0]
    for grp in order:
        if min(sizes) >= n:
            break
        open_sides = [s for s in (0, 1) if sizes[s] < n]
        s = min(open_sides, key=lambda s: sizes[s])
        sides[s].append(grp)
        sizes[s] += counts[grp]
    return sides if min(sizes) >= n else None
