"""Pure-PyTorch ground truth for every op: simple enough to trust, chunked where it must be."""

from __future__ import annotations

import torch


def topk_merge(values, indices, tile, offset: int, largest: bool):
    """Merge a score tile into a running top-k.

    values, indices: [M, k] running best (sorted, empty slots = ±inf and index -1);
    tile: [M, T] scores of keys offset .. offset+T-1. Returns the best k of the union,
    sorted (ascending unless ``largest``), ties broken by the lower key index.
    """
    M, k = values.shape
    T = tile.shape[1]
    tile_idx = torch.arange(offset, offset + T, device=tile.device, dtype=torch.int64)
    v = torch.cat([values, tile.to(values.dtype)], dim=1)
    i = torch.cat([indices, tile_idx.expand(M, T)], dim=1)
    by_index = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    order = torch.sort(v, dim=1, descending=largest, stable=True).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


def knn_bruteforce(queries, keys, k: int, metric: str = "l2"):
    """float64 brute force over the full [M, N] matrix: the test oracle, small inputs only."""
    q = queries.reshape(queries.shape[0], -1).double()
    x = keys.reshape(keys.shape[0], -1).double()
    if metric == "l2":
        d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        largest = False
    elif metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-300)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        d, largest = q @ x.T, True
    else:
        d, largest = q @ x.T, True
    fill = float("-inf") if largest else float("inf")
    v0 = torch.full((q.shape[0], k), fill, dtype=torch.float64)
    i0 = torch.full((q.shape[0], k), -1, dtype=torch.int64)
    return topk_merge(v0, i0, d, 0, largest)


def _empirical_tiles(M, N, D, tile_elems):
    """Row chunk and training tile sizes: the [m, t] logits and [t, D] tile stay bounded."""
    n_tile = max(1, min(N, max(64, (1 << 20) // max(1, D)), tile_elems))
    m_chunk = max(1, min(M, tile_elems // n_tile))
    return m_chunk, n_tile


def empirical_denoiser(y, train, sigma, *, tile_elems: int = 1 << 20):
    """Empirical optimal denoiser D_M(y; σ) = Σ_i softmax_i(−‖y − y_i‖²/(2σ²)) y_i, float64.

    y [M, D], train [N, D], sigma [M] (> 0). Returns float64 [M, D].
    Streamed over training tiles with the online log-sum-exp merge of (max, sum,
    weighted sum), all in float64; the training mean is subtracted before the
    ‖y‖² + ‖x‖² − 2⟨y, x⟩ expansion, so the logit error is ~1e-16·‖y−μ‖‖x−μ‖/σ²
    (exact enough for σ ≥ 1e-5 on [-1, 1] data). Never holds an [M, N] matrix.
    """
    M, D = y.shape
    N = train.shape[0]
    mu = train.double().mean(0)  # [D]
    inv_var = 1.0 / sigma.double().square()  # [M]
    out = torch.empty(M, D, dtype=torch.float64, device=y.device)
    m_chunk, n_tile = _empirical_tiles(M, N, D, tile_elems)
    for m0 in range(0, M, m_chunk):
        yc = y[m0 : m0 + m_chunk].double() - mu  # [m, D]
        iv = inv_var[m0 : m0 + m_chunk, None]  # [m, 1]
        run_max = torch.full((len(yc),), float("-inf"), dtype=torch.float64, device=y.device)
        run_sum = torch.zeros(len(yc), dtype=torch.float64, device=y.device)
        acc = torch.zeros(len(yc), D, dtype=torch.float64, device=y.device)
        for n0 in range(0, N, n_tile):
            xc = train[n0 : n0 + n_tile].double() - mu  # [t, D]
            # −‖y − x‖²/(2σ²) up to the per-row constant −‖y‖²/(2σ²): (⟨y,x⟩ − ‖x‖²/2)/σ²
            logits = (yc @ xc.T - 0.5 * xc.square().sum(1)) * iv  # [m, t]
            new_max = torch.maximum(run_max, logits.amax(1))
            scale = torch.exp(run_max - new_max)  # 0 on the first tile (exp(−inf))
            p = torch.exp(logits - new_max[:, None])  # [m, t]
            run_sum = run_sum * scale + p.sum(1)
            acc = acc * scale[:, None] + p @ xc
            run_max = new_max
        out[m0 : m0 + m_chunk] = acc / run_sum[:, None] + mu
    return out


def empirical_denoiser_vjp(y, train, sigma, denoised, grad, *, tile_elems: int = 1 << 20):
    """Vector-Jacobian product of the empirical denoiser, float64.

    ∂D/∂y = Cov_w[y_i]/σ² (symmetric), so grad_y = Cov_w[y_i]·g/σ²
    = Σ_i w_i (y_i − D)⟨y_i − D, g⟩ / σ², streamed with the same online merge;
    ``denoised`` [M, D] is the forward output (centring on it avoids cancellation).
    """
    M, D = y.shape
    N = train.shape[0]
    mu = train.double().mean(0)
    inv_var = 1.0 / sigma.double().square()
    out = torch.empty(M, D, dtype=torch.float64, device=y.device)
    m_chunk, n_tile = _empirical_tiles(M, N, D, tile_elems)
    for m0 in range(0, M, m_chunk):
        sl = slice(m0, m0 + m_chunk)
        yc = y[sl].double() - mu
        Dc = denoised[sl].double() - mu  # [m, D]
        g = grad[sl].double()  # [m, D]
        Dg = (Dc * g).sum(1)  # [m]
        iv = inv_var[sl, None]
        run_max = torch.full((len(yc),), float("-inf"), dtype=torch.float64, device=y.device)
        run_sum = torch.zeros(len(yc), dtype=torch.float64, device=y.device)
        acc = torch.zeros(len(yc), D, dtype=torch.float64, device=y.device)  # Σ p a x
        acc_a = torch.zeros(len(yc), dtype=torch.float64, device=y.device)  # Σ p a
        for n0 in range(0, N, n_tile):
            xc = train[n0 : n0 + n_tile].double() - mu
            logits = (yc @ xc.T - 0.5 * xc.square().sum(1)) * iv
            new_max = torch.maximum(run_max, logits.amax(1))
            scale = torch.exp(run_max - new_max)
            p = torch.exp(logits - new_max[:, None])
            pa = p * (g @ xc.T - Dg[:, None])  # p_i ⟨x_i − D, g⟩  [m, t]
            run_sum = run_sum * scale + p.sum(1)
            acc = acc * scale[:, None] + pa @ xc
            acc_a = acc_a * scale + pa.sum(1)
            run_max = new_max
        # Σ w a (x − D) = (Σ p a x − D Σ p a) / Σ p
        out[sl] = (acc - Dc * acc_a[:, None]) / run_sum[:, None] * iv
    return out


def groupnorm_film_silu(x, num_groups: int, weight, bias, scale, shift, eps: float = 1e-5):
    """SiLU(GN(x)·(1 + scale) + shift), computed by PyTorch ops in x's dtype.

    x [B, C, *]; weight, bias [C] (GroupNorm affine) or None; scale, shift [B, C] (FiLM,
    Perez et al. 2018) or None. The eager chain every fused backend is tested against.
    """
    h = torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)  # [B, C, *]
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    if scale is not None:
        h = h * (1 + scale[expand])
    if shift is not None:
        h = h + shift[expand]
    return torch.nn.functional.silu(h)


def bf_batchnorm_relu(x, gain, eps: float = 1e-5):
    """ReLU(x·γ/std) with std_c = sqrt(Var_{B,*}[x_c] + eps): bias-free batch norm in
    training mode (Mohan et al. 2020; no mean subtraction of x) followed by ReLU.

    x [B, C, *], gain [C]. Returns (y [B, C, *], std [C]).
    """
    dims = (0,) + tuple(range(2, x.ndim))
    std = torch.sqrt(x.var(dim=dims, unbiased=False) + eps)  # [C]
    expand = (None, slice(None)) + (None,) * (x.ndim - 2)
    return torch.relu(x * (gain / std)[expand]), std
