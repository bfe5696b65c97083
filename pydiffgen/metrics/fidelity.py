"""Precision, recall, density and coverage (Naeem et al., ICML 2020) on exact neighbours.

Each point's k-NN ball (radius: distance to its k-th nearest *other* point of its own set)
estimates the support of its distribution. Naeem et al. define, for real X [N, F] and fake
Y [M, F]:
  precision = (1/M) Σ_j 1[∃ i: Y_j ∈ B(X_i, r_i)]     recall = (1/N) Σ_i 1[∃ j: X_i ∈ B(Y_j, s_j)]
  density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_i)]    coverage = (1/N) Σ_i 1[min_j ‖X_i − Y_j‖ ∈ B]
The reference code (clovaai ``prdc``) builds three dense distance matrices; here every
count comes from ``pydiffgen.ops.knn.search``: the real balls are queried for the fakes
they contain with a growing k (rows whose k-th neighbour is still inside are searched
again with 2k), so memory is O((N + M)·k) plus one search's tiles.

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
from ..ops.exact import score64
from ..ops.knn import search
from .bootstrap import confidence_interval
from .inputs import agree, as_features

# Scores held at once by the ball queries: rows × k ≤ this.
BALL_ELEMS = 1 << 22
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


def kth_radius2(x: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance of each row of x [N, F] to its k-th nearest *other* row, float64
    [N]: the (k+1)-th smallest distance counting itself (a duplicate of a row sits at
    distance 0 like the row itself, so the multiset argument holds with duplicates)."""
    _, idx = search(x, x, k + 1, "l2")
    return score64(x, x, idx[:, k:], "l2")[:, 0]


def within(d2: torch.Tensor, idx: torch.Tensor, centres: torch.Tensor,
           points: torch.Tensor, radius2: torch.Tensor) -> torch.Tensor:
    """bool [r, k]: point idx[i, j] lies in the closed ball of centre i, given the search's
    float32 squared distances d2 [r, k] and the float64 radii² [r]. Decided in float32
    except within ``TIE_ULPS`` of the radius, where the float64 distance from direct
    differences decides (module docstring)."""
    r32 = radius2.float()[:, None]
    hit = d2 <= r32
    close = (d2 - r32).abs() <= TIE_ULPS * torch.finfo(torch.float32).eps * r32
    if bool(close.any()):
        i, j = close.nonzero(as_tuple=True)
        exact = (centres[i].double() - points[idx[i, j]].double()).square().sum(-1)
        hit[i, j] = exact <= radius2[i]
    return hit


def ball_hits(centres: torch.Tensor, radius2: torch.Tensor, points: torch.Tensor,
              start_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed balls B(centres_i, √radius2_i) against points [P, F].

    Returns counts int64 [C] (points inside each ball) and inside bool [P] (the point lies
    in at least one ball). The neighbours of a centre come sorted by exact distance, so the
    points inside form a prefix; a row whose last neighbour is still inside is searched again
    with twice the k (at most P), in row chunks of ≤ BALL_ELEMS scores.
    """
    P = points.shape[0]
    counts = torch.zeros(centres.shape[0], dtype=torch.int64, device=centres.device)
    inside = torch.zeros(P, dtype=torch.bool, device=centres.device)
    rows = torch.arange(centres.shape[0], device=centres.device)
    k = min(start_k, P)
    while len(rows):
        again = []
        for chunk in rows.split(max(1, BALL_ELEMS // k)):
            q = centres[chunk]
            d2, idx = search(q, points, k, "l2")
            hit = within(d2, idx, q, points, radius2[chunk])  # [r, k]
            inside[idx[hit]] = True
            full = hit[:, -1] if k < P else torch.zeros_like(hit[:, 0])
            counts[chunk[~full]] = hit[~full].sum(1)
            again.append(chunk[full])
        rows = torch.cat(again)
        k = min(2 * k, P)
    return counts, inside


def covered(centres: torch.Tensor, radius2: torch.Tensor, points: torch.Tensor,
            start_k: int) -> torch.Tensor:
    """inside bool [P]: the point of points [P, F] lies in at least one closed ball
    B(centres_i, √radius2_i). As ``ball_hits`` without counts (recall needs none), so a
    row searched again looks only among the points no ball has been seen to hold yet: a
    ball's unseen points lie beyond its last neighbour and are among those, and after the
    first pass few remain (fewer keys for every later search)."""
    P = points.shape[0]
    inside = torch.zeros(P, dtype=torch.bool, device=points.device)
    rows = torch.arange(centres.shape[0], device=points.device)
    keys = torch.arange(P, device=points.device)
    k = min(start_k, P)
    while len(rows) and k > 0:
        pts = points if len(keys) == P else points[keys]
        again = []
        for chunk in rows.split(max(1, BALL_ELEMS // k)):
            q = centres[chunk]
            d2, idx = search(q, pts, k, "l2")
            hit = within(d2, idx, q, pts, radius2[chunk])  # [r, k]
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
    r_real, r_fake = kth_radius2(real, k), kth_radius2(fake, k)
    # the real balls, each queried for the fakes it holds: about k per ball when they match
    fakes_per_ball, fake_in_real = ball_hits(real, r_real, fake, 2 * k)
    real_in_fake = covered(fake, r_fake, real, 2 * k)
    return PRDC(
        precision=float(fake_in_real.double().mean()),
        recall=float(real_in_fake.double().mean()),
        density=float(fakes_per_ball.sum()) / (k * fake.shape[0]),
        coverage=float((fakes_per_ball > 0).double().mean()),
    )
