"""One registration per custom op: its fake kernel, its autograd and its vmap rule.

``register`` gives an op (defined in C++ by ``TORCH_LIBRARY`` or in Python by
``torch.library.custom_op``) everything it needs once, from one autograd spec
(``setup_context``, ``backward`` and, for forward mode, ``jvp``):

- the fake kernel, so ``torch.compile`` traces it;
- ``torch.library.register_autograd``, used when the op is called while compiling and by
  direct op calls (``torch.library.opcheck``);
- ``torch.library.register_vmap`` when a vmap rule is given;
- an ``autograd.Function`` built from the same spec, which the returned caller uses in
  eager mode and under ``torch.func``. Custom-op autograd does not run under torch.func
  (grad / jacrev refuse it, jacfwd silently returns zeros), while a Function with
  ``setup_context``, ``jvp`` and ``generate_vmap_rule`` does (built when ``jvp`` is
  given); in eager mode a Function also costs ~40 µs less per forward + backward than
  the op's own autograd, which small-batch calls of the fused blocks pay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def transformed(*tensors) -> bool:
    """True when one of ``tensors`` is wrapped by a torch.func transform (vmap, grad, jvp):
    values cannot steer control flow there. Dynamo cannot trace the check; while compiling
    it sees plain tensors."""
    if torch.compiler.is_compiling():
        return False
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(isinstance(t, torch.Tensor) and is_wrapped(t) for t in tensors)


class Registered:
    """A registered op: ``self(*args)`` runs it with autograd (see the module doc);
    ``op`` is the bare ``torch.ops.pydiffgen.<name>.default``."""

    def __init__(self, op, function: type[torch.autograd.Function] | None):
        self.op = op
        self.function = function

    def __call__(self, *args):
        if self.function is None or torch.compiler.is_compiling():
            return self.op(*args)
        if torch._C._are_functorch_transforms_active() or (torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return self.function.apply(*args)
        return self.op(*args)


def register(name: str, *, fake: Callable, setup_context: Callable | None = None,
             backward: Callable | None = None, jvp: Callable | None = None,
             vmap: Callable | None = None) -> Registered:
    """Register fake kernel, autograd (when ``backward`` is given) and vmap rule of the op
    ``pydiffgen::<name>``. ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, *grads) -> one gradient per input`` follow
    ``torch.library.register_autograd``; ``jvp(ctx, *tangents)`` follows
    ``torch.autograd.Function.jvp``; ``vmap`` follows ``torch.library.register_vmap``."""
    qualname = f"pydiffgen::{name}"
    op = getattr(torch.ops.pydiffgen, name).default
    torch.library.register_fake(qualname, fake)
    if vmap is not None:
        torch.library.register_vmap(qualname, vmap)
    if backward is None:
        return Registered(op, None)
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)

    if jvp is None:
        # reverse mode only (callers route torch.func inputs elsewhere): the classic
        # Function form, whose apply skips the functorch argument binding (~100 µs less
        # per forward + backward than the setup_context form)
        def forward_with_ctx(ctx, *args):
            output = op(*args)
            setup_context(ctx, args, output)
            return output

        body = {"forward": staticmethod(forward_with_ctx), "backward": staticmethod(backward)}
    else:
        body = {"forward": staticmethod(lambda *args: op(*args)),
                "setup_context": staticmethod(setup_context), "backward": staticmethod(backward),
                "jvp": staticmethod(jvp), "generate_vmap_rule": True}
    return Registered(op, type(f"{name}_autograd", (torch.autograd.Function,), body))
