"""pydiffgen.ops.groupnorm_film_silu and bf_batchnorm_relu: every backend against a float64
reference on odd shapes, layouts and None parameters (forward and every gradient), low
precision by the 2× rule, gradcheck, opcheck, bad inputs; models with fused and eager
blocks train to the same losses. Triton runs in the interpreter (small shapes only)."""

import pytest
import torch

from pydiffgen import _native
from pydiffgen.errors import BackendError, InputError
from pydiffgen.kernels import TRITON_WHY_NOT, interpreted
from pydiffgen.ops import bf_batchnorm_relu, groupnorm_film_silu, reference
from pydiffgen.ops import blocks as OB

TRITON_HERE = TRITON_WHY_NOT is None and (interpreted() or torch.cuda.is_available())
CPP_WHY_NOT = _native.cpu_why_not("groupnorm_film_silu_fwd", "groupnorm_film_silu_bwd")
HAVE_CPP = CPP_WHY_NOT is None
BN_CPP_WHY_NOT = _native.cpu_why_not("bf_batchnorm_relu_fwd", "bf_batchnorm_relu_bwd")


def _gfs_backends():
    return [
        pytest.param("reference", id="reference"),
        pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(
            not HAVE_CPP, reason=str(CPP_WHY_NOT))),
        pytest.param("triton", id="triton", marks=pytest.mark.skipif(
            not TRITON_HERE, reason="no Triton here")),
    ]


def gfs(backend, x, G, w, b, s, t, eps=1e-5):
    """The backend's public code path; Triton is called directly on CPU (interpreter)."""
    if backend == "triton" and not x.is_cuda:
        return OB._gfs_triton(x, G, w, b, s, t, eps)
    return groupnorm_film_silu(x, G, w, b, s, t, eps, backend=backend)


def gfs_float64(x, G, w, b, s, t, eps=1e-5):
    """Direct float64 formula (not the op under test): mean/var per (sample, group)."""
    B, C = x.shape[:2]
    xd = x.double().reshape(B, G, -1)
    mu = xd.mean(-1, keepdim=True)
    var = ((xd - mu) ** 2).mean(-1, keepdim=True)
    h = ((xd - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    e = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    if w is not None:
        h = h * w.double()[(None,) + e[1:]]
    if b is not None:
        h = h + b.double()[(None,) + e[1:]]
    if s is not None:
        h = h * (1 + s.double()[e])
    if t is not None:
        h = h + t.double()[e]
    return h * torch.sigmoid(h)


def _inputs(shape, G, dtype=torch.float32, params=(True, True, True, True), seed=0,
            offset=0.0):
    g = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    x = (torch.randn(shape, generator=g) * 2 + offset).to(dtype)
    w = (1 + 0.5 * torch.randn(C, generator=g)).to(dtype) if params[0] else None
    b = (0.5 * torch.randn(C, generator=g)).to(dtype) if params[1] else None
    s = (0.5 * torch.randn(B, C, generator=g)).to(dtype) if params[2] else None
    t = (0.5 * torch.randn(B, C, generator=g)).to(dtype) if params[3] else None
    return x, G, w, b, s, t


GFS_CASES = [  # (shape, G)
    ((1, 1, 1, 2), 1),
    ((2, 3, 1, 2), 3),
    ((3, 6, 5, 7), 3),
    ((2, 64, 9, 9), 32),
    ((1, 4, 127), 2),
    ((5, 12, 33, 31), 4),
    ((7, 8, 1, 3), 8),
    ((1, 4, 33, 31), 2),  # batch 1: the Triton kernels split L over several programs
]


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(out.shape, generator=g).to(out.dtype)
    live = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, live, gy)


@pytest.mark.parametrize("backend", _gfs_backends())
@pytest.mark.parametrize("shape,G", GFS_CASES)
def test_gfs_matches_float64(backend, shape, G):
    if backend == "triton" and not torch.cuda.is_available() and shape[0] * shape[1] > 256:
        pytest.skip("large for the Triton interpreter")
    args = _inputs(shape, G, offset=3.0)  # a mean far from 0: the statistics must centre
    live = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    y = gfs(backend, *live)
    assert y.shape == args[0].shape and y.dtype == torch.float32
    tensors = [live[0]] + live[2:]
    got = _grads(y, tensors)
    d64 = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a
           for a in live]
    want_y = gfs_float64(*d64)
    want = _grads(want_y, [d64[0]] + d64[2:])
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=1e-5)
    for name, a, e in zip(("x", "weight", "bias", "scale", "shift"), got, want):
        # gradients of the parameters are sums over B·H·W: scale the tolerance with them
        tol = 2e-5 * max(1.0, float(e.abs().max()))
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=1e-4, msg=f"d{name}")


@pytest.mark.parametrize("backend", _gfs_backends())
@pytest.mark.parametrize("params", [(False, False, False, False), (True, True, False, False),
                                    (False, False, True, False), (True, False, False, True)])
def test_gfs_none_parameters(backend, params):
    x, G, w, b, s, t = _inputs((2, 6, 4, 3), 3, params=params, seed=3)
    x.requires_grad_()
    live = [v.requires_grad_() for v in (w, b, s, t) if v is not None]
    y = gfs(backend, x, G, w, b, s, t)
    want = gfs_float64(x.detach(), G, w, b, s, t)
    torch.testing.assert_close(y.double(), want, atol=2e-5, rtol=1e-5)
    grads = _grads(y, [x, *live])
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", _gfs_backends())
def test_gfs_layouts_noncontiguous_and_empty(backend):
    x, G, w, b, s, t = _inputs((3, 8, 6, 5), 4, seed=4)
    want = gfs_float64(x, G, w, b, s, t)
    cl = x.contiguous(memory_format=torch.channels_last)
    y = gfs(backend, cl, G, w, b, s, t)
    torch.testing.assert_close(y.double(), want, atol=2e-5, rtol=1e-5)
    if backend != "reference":
        assert y.is_contiguous(memory_format=torch.channels_last)
    wide = torch.randn(3, 8, 6, 10)[..., ::2]  # a strided view
    wide.copy_(x)
    torch.testing.assert_close(gfs(backend, wide, G, w, b, s, t).double(), want,
                               atol=2e-5, rtol=1e-5)
    empty = torch.randn(0, 8, 6, 5)
    assert gfs(backend, empty, G, w, None, None, None).shape == empty.shape


@pytest.mark.parametrize("backend", _gfs_backends())
def test_gfs_channels_last_split_reduction(backend):
    x, G, w, b, s, t = _inputs((1, 6, 20, 20), 3, seed=15, offset=-2.0)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = gfs(backend, x, G, w, b, s, t)
    xd = x.detach().double().requires_grad_()
    want = gfs_float64(xd, G, w, b, s, t)
    torch.testing.assert_close(y.double(), want, atol=2e-5, rtol=1e-5)
    gy = torch.randn(y.shape)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0].double(),
                               torch.autograd.grad(want, xd, gy.double())[0],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", _gfs_backends())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gfs_low_precision_within_twice_pytorch_error(backend, dtype):
    """Low precision: error vs float64 at most 2× that of PyTorch's eager chain in the same
    dtype (docs/design.md#tests), forward and gradient of x."""
    x, G, w, b, s, t = _inputs((2, 16, 8, 8), 4, dtype=dtype, seed=5)
    args = [x, G, w, b, s, t]
    d64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    want = gfs_float64(*d64)
    ours = gfs(backend, *args)
    eager = reference.groupnorm_film_silu(*args)
    assert ours.dtype == dtype
    err_ours = float((ours.double() - want).abs().max())
    err_eager = float((eager.double() - want).abs().max())
    assert err_ours <= 2 * err_eager + 1e-6, (err_ours, err_eager)

    def dx(fn, a):
        xx = a[0].detach().requires_grad_()
        out = fn(xx, *a[1:])
        gy = torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype)
        return torch.autograd.grad(out, xx, gy)[0]

    want_dx = dx(gfs_float64, d64)
    e_ours = float((dx(lambda *a: gfs(backend, *a), args).double() - want_dx).abs().max())
    e_eager = float((dx(reference.groupnorm_film_silu, args).double() - want_dx).abs().max())
    assert e_ours <= 2 * e_eager + 1e-6, (e_ours, e_eager)


@pytest.mark.parametrize("backend", [b for b in _gfs_backends() if b.id != "reference"])
def test_gfs_gradcheck_float64(backend):
    # the interpreter runs each launch slowly: a smaller case for it
    shape = (1, 2, 2, 2) if backend == "triton" and not torch.cuda.is_available() else (2, 4, 3, 2)
    x, G, w, b, s, t = _inputs(shape, 2, dtype=torch.float64, seed=6)
    args = [v.requires_grad_() for v in (x, w, b, s, t)]
    assert torch.autograd.gradcheck(lambda x, w, b, s, t: gfs(backend, x, G, w, b, s, t),
                                    args, atol=1e-6)


@pytest.mark.skipif(not HAVE_CPP, reason=str(CPP_WHY_NOT))
def test_gfs_opcheck_cpp():
    x, G, w, b, s, t = _inputs((2, 6, 5, 3), 3, seed=7)
    args = (x.requires_grad_(), G, w.requires_grad_(), b, s.requires_grad_(), t, 1e-5)
    torch.library.opcheck(torch.ops.pydiffgen.groupnorm_film_silu_fwd.default, args)
    y, mean, rstd = torch.ops.pydiffgen.groupnorm_film_silu_fwd(*[
        a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    torch.library.opcheck(torch.ops.pydiffgen.groupnorm_film_silu_bwd.default,
                          (torch.randn_like(y), x.detach(), mean, rstd, G, w.detach(), b,
                           s.detach(), t))


@pytest.mark.skipif(not TRITON_HERE, reason="no Triton here")
def test_gfs_opcheck_triton():
    x, G, w, b, s, t = _inputs((2, 4, 3, 3), 2, seed=8)
    args = (x.requires_grad_(), G, w, b, s.requires_grad_(), t, 1e-5)
    # schema, fake kernel and autograd registration (the interpreter is too slow for the
    # full dynamo check, which the gpu suite runs)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.pydiffgen.groupnorm_film_silu_triton_fwd.default, args,
                          test_utils=utils)


def test_gfs_bad_inputs():
    x = torch.randn(2, 6, 4, 4)
    with pytest.raises(InputError, match="num_groups=4 must divide the channel count C=6"):
        groupnorm_film_silu(x, 4)
    with pytest.raises(InputError, match="num_groups must be a positive integer"):
        groupnorm_film_silu(x, 0)
    with pytest.raises(InputError, match=r"scale must have shape \[2, 6\]"):
        groupnorm_film_silu(x, 3, scale=torch.zeros(6))
    with pytest.raises(InputError, match=r"weight must have shape \[6\]"):
        groupnorm_film_silu(x, 3, weight=torch.ones(5))
    with pytest.raises(InputError, match="x must be float16, bfloat16, float32 or float64"):
        groupnorm_film_silu(x.long(), 3)
    with pytest.raises(InputError, match=r"\[B, C, \*\]"):
        groupnorm_film_silu(torch.randn(5), 1)
    with pytest.raises(InputError, match="eps must be a number >= 0"):
        groupnorm_film_silu(x, 3, eps=-1.0)
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        groupnorm_film_silu(x, 3, backend="nope")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="triton.*cannot run on cpu"):
            groupnorm_film_silu(x, 3, backend="triton")


def test_gfs_under_torch_func_takes_the_reference():
    """vmap / jacrev see the differentiable reference chain (the fused ops are reverse
    mode only)."""
    x, G, w, b, s, t = _inputs((1, 4, 3, 3), 2, dtype=torch.float64, seed=9)
    f = lambda v: groupnorm_film_silu(v[None], G, w, b, s, t)[0]
    J = torch.func.jacrev(f)(x[0])
    J_ref = torch.func.jacrev(lambda v: gfs_float64(v[None], G, w, b, s, t)[0])(x[0])
    torch.testing.assert_close(J, J_ref)


# ------------------------------------------------------------------- bias-free BN + ReLU


def _bn_backends():
    return [pytest.param("reference", id="reference"),
            pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(
                BN_CPP_WHY_NOT is not None, reason=str(BN_CPP_WHY_NOT)))]


def bn_float64(x, gain, eps=1e-5):
    xd = x.double()
    dims = (0,) + tuple(range(2, x.ndim))
    mu = xd.mean(dims, keepdim=True)
    std = torch.sqrt(((xd - mu) ** 2).mean(dims, keepdim=True) + eps)
    e = (None, slice(None)) + (None,) * (x.ndim - 2)
    return torch.relu(xd / std * gain.double()[e]), std.flatten()


@pytest.mark.parametrize("backend", _bn_backends())
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (8, 33, 4, 4), (2, 3, 17)])
def test_bn_relu_matches_float64(backend, shape):
    g = torch.Generator().manual_seed(10)
    x = (torch.randn(shape, generator=g) + 0.7).requires_grad_()
    gain = torch.randn(shape[1], generator=g).requires_grad_()  # some negative gains
    y, std = bf_batchnorm_relu(x, gain, backend=backend)
    xd, gd = x.detach().double().requires_grad_(), gain.detach().double().requires_grad_()
    want_y, want_std = bn_float64(xd, gd)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(std.double(), want_std, atol=2e-6, rtol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    gs = torch.randn(std.shape, generator=g)
    got = torch.autograd.grad((y * gy).sum() + (std * gs).sum(), (x, gain))
    want = torch.autograd.grad((want_y * gy).sum() + (want_std * gs).sum(), (xd, gd))
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, atol=1e-4 * max(1, float(e.abs().max())),
                                   rtol=1e-4)


@pytest.mark.parametrize("backend", _bn_backends())
def test_bn_relu_layouts_and_low_precision(backend):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 6, 5, 5, generator=g)
    gain = torch.rand(6, generator=g) + 0.5
    want, _ = bn_float64(x, gain)
    y, _ = bf_batchnorm_relu(x.contiguous(memory_format=torch.channels_last), gain,
                             backend=backend)
    torch.testing.assert_close(y.double(), want, atol=2e-5, rtol=1e-5)
    xb, gb = x.bfloat16(), gain.bfloat16()
    want_b, _ = bn_float64(xb, gb)
    ours = bf_batchnorm_relu(xb, gb, backend=backend)[0]
    eager = reference.bf_batchnorm_relu(xb, gb)[0]
    assert ours.dtype == torch.bfloat16
    err_ours = float((ours.double() - want_b).abs().max())
    err_eager = float((eager.double() - want_b).abs().max())
    assert err_ours <= 2 * err_eager + 1e-6, (err_ours, err_eager)


@pytest.mark.skipif(BN_CPP_WHY_NOT is not None, reason="no C++ extension")
def test_bn_relu_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 4, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    gain = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g: bf_batchnorm_relu(x, g, backend="cpp"),
                                    (x, gain))
    torch.library.opcheck(torch.ops.pydiffgen.bf_batchnorm_relu_fwd.default,
                          (x.float().detach().requires_grad_(), gain.float(), 1e-5))


def test_bn_relu_bad_inputs():
    with pytest.raises(InputError, match=r"gain must have shape \[3\]"):
        bf_batchnorm_relu(torch.randn(2, 3, 4, 4), torch.ones(4))
    with pytest.raises(InputError, match="gain must be a tensor of shape"):
        bf_batchnorm_relu(torch.randn(2, 3, 4, 4), None)
    with pytest.raises(InputError, match="batch statistics need at least one element"):
        bf_batchnorm_relu(torch.randn(0, 3, 4, 4), torch.ones(3))


@pytest.mark.gpu
@pytest.mark.parametrize("B,C,H", [(1, 128, 64), (256, 64, 32), (3, 96, 17)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gfs_triton_on_gpu_unet_shapes(B, C, H, channels_last):
    """The Triton kernel at real sizes (split reductions with many splits), fp32 and bf16."""
    x, G, w, b, s, t = _inputs((B, C, H, H), 32, seed=13)
    x, w, b, s, t = (v.cuda() for v in (x, w, b, s, t))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    live = [v.requires_grad_() for v in (x, w, b, s, t)]
    y = groupnorm_film_silu(live[0], G, *live[1:], backend="triton")
    got = _grads(y, live)
    d64 = [v.detach().double().requires_grad_() for v in live]
    want_y = gfs_float64(d64[0], G, *d64[1:])
    want = _grads(want_y, d64)
    torch.testing.assert_close(y.double(), want_y, atol=5e-5, rtol=1e-4)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, atol=5e-5 * max(1.0, float(e.abs().max())),
                                   rtol=1e-3)
    xb = x.detach().bfloat16()
    args = [xb, G, w.detach(), b.detach(), s.detach().bfloat16(), t.detach().bfloat16()]
    want_b = gfs_float64(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    err = float((groupnorm_film_silu(*args).double() - want_b).abs().max())
    err_eager = float((reference.groupnorm_film_silu(*args).double() - want_b).abs().max())
    assert err <= 2 * err_eager + 1e-6


@pytest.mark.slow
def test_gfs_and_bn_relu_under_torch_compile():
    x, G, w, b, s, t = _inputs((2, 8, 5, 5), 4, seed=14)
    live = [v.requires_grad_() for v in (x, w, b, s, t)]
    f = torch.compile(lambda x, w, b, s, t: groupnorm_film_silu(x, G, w, b, s, t), fullgraph=True)
    y = f(*live)
    torch.testing.assert_close(y, reference.groupnorm_film_silu(x, G, w, b, s, t),
                               atol=1e-5, rtol=1e-5)
    assert all(g is not None for g in _grads(y, live))
    gain = torch.rand(8).requires_grad_()
    h = torch.compile(lambda x, g: bf_batchnorm_relu(x, g)[0], fullgraph=True)
    torch.testing.assert_close(h(x, gain), reference.bf_batchnorm_relu(x, gain)[0],
                               atol=1e-5, rtol=1e-5)
