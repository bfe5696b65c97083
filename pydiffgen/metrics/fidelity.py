"""Precision, recall, density and coverage (Naeem et al., ICML 2020) on exact neighbours.

Each point's k-NN ball (radius: distance to its k-th nearest *other* point of its own set)
estimates the support of its distribution. Naeem et al. define, for real X [N, F] and fake
Y [M, F]:
  precision = (1/M) Σ_j 1[∃ i: Y_j ∈ B(X_i, r_i)]     recall = (1/N) Σ_i 1[∃ j: X_i ∈ B(Y_j, s_j)]
  density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_i)]    coverage = (1/N) Σ_i 1[min_j ‖X_i − Y_j‖ ∈ B]
The reference code (clovaai ``prdc``) builds three dense distance matrices; here every
count comes from exact k-NN searches (``pydiffgen.ops.KnnIndex``, each key set prepared
once), never an N×N matrix, and three full searches do it: real→real and fake→fake for
the radii, and real→fake with 2k neighbours. The latter decides precision, density and
coverage (the real balls' fakes form a prefix of each real's neighbours; a row whose 2k-th
fake is still inside is searched again with twice the k) and, from the same neighbours,
recall for almost every real: a real is in a fake ball if one of its 2k nearest fakes
holds it, and in none if its 2k-th fake lies beyond the largest fake radius (every other
fake is farther). Only the reals left undecided are searched for, from the fakes whose
ball reaches past those reals' 2k-th fake. Memory: O((N + M)·k) plus one search call's
(``QUERY_ROWS`` queries, ``TILE_ELEMS`` scores).

Ties: balls are closed (‖·‖ ≤ r, where the package writes <), and every comparison is
decided on exact float64 distances from direct differences, so identical real and fake
sets give precision = recall = coverage = 1 (the package's strict < gives 0 wherever a
radius is 0, i.e. k+1 duplicates) and equal numbers come out equal. Without exact ties the
two agree. The search already returns its neighbours' float64 distances rounded to
float32; rounding is monotone, so a float32 comparison can only be wrong where the two
float32 numbers lie within a few ulps of each other, and only those pairs (ties among
them) are recomputed in float64 (``within``): the rest of the float64 work the search
has done once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive_int
from ..ops.knn import KnnIndex
from .bootstrap import confidence_interval
from .inputs import agree, as_features

# Scores held at once by the ball queries: rows × k ≤ this.
BALL_ELEMS = 1 << 22
# Scores a search holds at once (its tiles): 4M float32 = 16 MiB, where the default (16M)
# would make a search's tiles most of PRDC's peak memory
TILE_ELEMS = 1 << 22
# Queries per search call: a search's working memory grows with its queries (≈ 17 KiB
# each at 512 features, measured), so 2048 keep it near 35 MiB at any N
QUERY_ROWS = 2048
# float64 entries of a difference chunk (4 MiB): score64's 4M-entry gathers took a third
# of PRDC's peak memory
DIFF_ELEMS = 1 << 19
# float32 ulps (relative) within which a distance and a radius are compared in float64
TIE_ULPS = 4


@dataclass(frozen=True)
class PRDC:
    """Naeem et al.'s four numbers (precision, recall, coverage in [0, 1]; density ≥ 0,
    ≈ 1 when fake matches real)."""

    precision: float
    recall: float
    density: float
    coverage: float


def kth_radius2(index: KnnIndex, k: int) -> torch.Tensor:
    """Squared distance of each key row x [N, F] of ``index`` to its k-th nearest *other*
    row, float64 [N]: the (k+1)-th smallest distance counting itself (a duplicate of a row
    sits at distance 0 like the row itself, so the multiset argument holds with
    duplicates)."""
    x = index.rows
    idx = torch.cat([index.search_rows(q, k + 1, tile_elems=TILE_ELEMS)[1][:, k]
                     for q in x.split(QUERY_ROWS)])
    return dist2(x, torch.arange(len(x), device=x.device), x, idx)


def dist2(a: torch.Tensor, ia: torch.Tensor, b: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """‖a_ia_n − b_ib_n‖² float64 [n] for rows a [A, F], b [B, F] and indices ia, ib int64
    [n], from direct float64 differences (every exact comparison here uses this one
    formula), gathered in chunks of ≤ DIFF_ELEMS entries (never an [n, F] copy)."""
    rows = max(1, DIFF_ELEMS // a.shape[1])
    return torch.cat([(a[ia[r0:r0 + rows]].double() - b[ib[r0:r0 + rows]].double())
                      .square().sum(-1) for r0 in range(0, len(ia), rows)])


def within(d2: torch.Tensor, idx: torch.Tensor, centres: torch.Tensor,
           points: torch.Tensor, radius2: torch.Tensor) -> torch.Tensor:
    """bool [r, k]: point idx[i, j] of points lies in the closed ball of radius² radius2
    (float64, [r, 1]: centre i's; or [r, k]: point idx[i, j]'s own ball, which holds centre
    i at the same distance) around centre i of centres [r, F], given the search's float32
    squared distances d2 [r, k]. Decided in float32 except within ``TIE_ULPS`` of the
    radius, where the float64 distance from direct differences decides (module
    docstring)."""
    radius2 = radius2.expand_as(d2)
    r32 = radius2.float()
    hit = d2 <= r32
    close = (d2 - r32).abs() <= TIE_ULPS * torch.finfo(torch.float32).eps * r32
    if bool(close.any()):
        i, j = close.nonzero(as_tuple=True)
        hit[i, j] = dist2(centres, i, points, idx[i, j]) <= radius2[i, j]
    return hit


@dataclass(frozen=True)
class Balls:
    """What one real→fake search (``ball_hits``) tells: counts int64 [N] (fakes in each
    real ball), fake_inside bool [M] (the fake lies in some real ball), real_inside bool
    [N] (the real lies in the ball of one of its first neighbours) and reach2 float32 [N]
    (squared distance to its last first-pass neighbour: any other fake is at least as
    far)."""

    counts: torch.Tensor
    fake_inside: torch.Tensor
    real_inside: torch.Tensor
    reach2: torch.Tensor


def ball_hits(centres: torch.Tensor, radius2: torch.Tensor, points: KnnIndex,
              point_radius2: torch.Tensor, start_k: int) -> Balls:
    """Closed balls B(centres_i, √radius2_i) against the keys [P, F] of ``points``, whose
    own balls have radii² point_radius2 [P] (float64).

    The neighbours of a centre come sorted by exact distance, so the points inside its ball
    form a prefix; a row whose last neighbour is still inside is searched again with twice
    the k (at most P), in row chunks of ≤ QUERY_ROWS rows and BALL_ELEMS scores. The first
    pass (start_k neighbours for every centre) also tells which centres one of those
    neighbours' balls holds (``Balls.real_inside``)."""
    P, C, device = len(points), centres.shape[0], centres.device
    counts = torch.zeros(C, dtype=torch.int64, device=device)
    fake_inside = torch.zeros(P, dtype=torch.bool, device=device)
    real_inside = torch.zeros(C, dtype=torch.bool, device=device)
    reach2 = torch.zeros(C, dtype=torch.float32, device=device)
    rows = torch.arange(C, device=device)
    k = min(start_k, P)
    first = True
    while len(rows):
        again = []
        for chunk in rows.split(max(1, min(QUERY_ROWS, BALL_ELEMS // k))):
            q = centres[chunk]
            d2, idx = points.search_rows(q, k, tile_elems=TILE_ELEMS)
            hit = within(d2, idx, q, points.rows, radius2[chunk, None])  # [r, k]
            if first:
                held = within(d2, idx, q, points.rows, point_radius2[idx])
                real_inside[chunk], reach2[chunk] = held.any(1), d2[:, -1]
            fake_inside[idx[hit]] = True
            full = hit[:, -1] if k < P else torch.zeros_like(hit[:, 0])
            counts[chunk[~full]] = hit[~full].sum(1)
            again.append(chunk[full])
        rows, first = torch.cat(again), False
        k = min(2 * k, P)
    return Balls(counts, fake_inside, real_inside, reach2)


def recall_inside(real: torch.Tensor, fake: torch.Tensor, r_fake: torch.Tensor,
                  balls: Balls, start_k: int) -> torch.Tensor:
    """bool [N]: the real lies in some fake ball, from ``ball_hits``' first pass where that
    decides it (held by a first neighbour's ball, or its last first neighbour beyond the
    largest fake radius), else by ``covered``: the undecided reals searched for from the
    fakes whose ball reaches past the nearest of those reals' last first neighbours (a fake
    holding a real outside its first neighbours lies beyond them). Float32 comparisons
    carry ``TIE_ULPS`` of slack toward "undecided", so the result is exact."""
    slack = TIE_ULPS * torch.finfo(torch.float32).eps
    r32 = r_fake.float()
    inside = balls.real_inside.clone()
    open_ = ~inside & (balls.reach2 <= r32.max() * (1 + slack))
    if bool(open_.any()):
        reach = balls.reach2[open_].min() * (1 - slack)
        big = (r32 >= reach).nonzero()[:, 0]
        inside[open_] = covered(fake, r_fake, big, real[open_], start_k)
    return inside


def covered(centres: torch.Tensor, radius2: torch.Tensor, rows: torch.Tensor,
            points: torch.Tensor, start_k: int) -> torch.Tensor:
    """inside bool [P]: the point of points [P, F] lies in at least one closed ball
    B(centres_i, √radius2_i) for i in rows (int64, indices into centres [C, F] and
    radius2 [C], gathered a chunk at a time). As ``ball_hits`` without counts, so a row
    searched again looks only among the points no ball has been seen to hold yet: a ball's
    unseen points lie beyond its last neighbour and are among those, and after the first
    pass few remain (fewer keys for every later search)."""
    P = points.shape[0]
    inside = torch.zeros(P, dtype=torch.bool, device=points.device)
    keys = torch.arange(P, device=points.device)
    k = min(start_k, P)
    while len(rows) and k > 0:
        pts = points if len(keys) == P else points[keys]
        index = KnnIndex.of_rows(pts)
        again = []
        for chunk in rows.split(max(1, min(QUERY_ROWS, BALL_ELEMS // k))):
            q = centres[chunk]
            d2, idx = index.search_rows(q, k, tile_elems=TILE_ELEMS)
            hit = within(d2, idx, q, pts, radius2[chunk, None])  # [r, k]
            inside[keys[idx[hit]]] = True
            if k < len(keys):  # the last neighbour inside: more may follow
                again.append(chunk[hit[:, -1]])
        rows = torch.cat(again) if again else rows[:0]
        keys = (~inside).nonzero()[:, 0]
        k = min(2 * k, len(keys))
    return inside


def prdc(real, fake, k: int = 5, *, ci: float | None = None, n_boot: int = 100,
         seed: int = 0) -> PRDC:
    """Precision, recall, density, coverage of fake [M, F] against real [N, F] with k-NN
    balls (Naeem et al. 2020; k=5 as in the paper). Both sets need at least k+1 rows.

    Same numbers as ``prdc.compute_prdc(real, fake, k)`` where no distance equals a
    radius; closed balls where one does (see the module docstring). ``ci``: a level (e.g.
    0.95) makes each number an ``Estimate`` with its interval (``confidence_interval``,
    ``n_boot`` half-samples seeded with ``seed``).
    """
    if ci is not None:
        return confidence_interval(prdc, real, fake, k=k, ci=ci, n_boot=n_boot, seed=seed)
    check_positive_int(k, "k")
    real = as_features(real, "real", min_rows=k + 1)
    fake = as_features(fake, "fake", min_rows=k + 1)
    real, fake = agree(real=real, fake=fake)
    real_index, fake_index = KnnIndex.of_rows(real), KnnIndex.of_rows(fake)
    r_real, r_fake = kth_radius2(real_index, k), kth_radius2(fake_index, k)
    # the real balls, each queried for the fakes it holds: about k per ball when they match
    balls = ball_hits(real, r_real, fake_index, r_fake, 2 * k)
    return PRDC(
        precision=float(balls.fake_inside.double().mean()),
        recall=float(recall_inside(real, fake, r_fake, balls, 2 * k).double().mean()),
        density=float(balls.counts.sum()) / (k * fake.shape[0]),
        coverage=float((balls.counts > 0).double().mean()),
    )
