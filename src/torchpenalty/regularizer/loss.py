"""The loss-mode autograd node: ``sum_i R(w_i)`` whose backward is the closed-form gradient.

Backward adds ``grad_out * grad R(w_i)`` straight into each ``w_i.grad`` when that is exactly
what autograd's accumulator would do with a returned gradient (``grad += new``, after which the
accumulator's hooks run, as they do here): one read-read-write pass, no new gradient tensor.
That holds when every parameter of the node

- already has a ``.grad`` of its own shape, dtype and device, dense and outside any graph;
- has its accumulator run by this backward (``.backward()``; not ``autograd.grad``, and not
  left out by ``backward(inputs=...)``);
- has no tensor hook (``register_hook``) that could change the gradient it receives;

and the backward builds no graph (``create_graph=False``). Otherwise, and always inside a
compiled region, on FSDP2 shards and for ``params=`` tensors, it returns new gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..distributed import Sharding
from ..penalties import Penalty
from ..penalties.batch import Batch

#: a parameter's ``AccumulateGrad`` node (``None``: not a leaf that requires grad)
Accumulator = Any


def grad_accumulators(params: Sequence[nn.Parameter]) -> list[Accumulator]:
    """Each parameter's gradient accumulator node (held, so it stays the one autograd uses)."""
    nodes = []
    with torch.enable_grad():
        for p in params:
            grad_fn = p.view_as(p).grad_fn if p.is_leaf and p.requires_grad else None
            nodes.append(grad_fn.next_functions[0][0] if grad_fn is not None else None)
    return nodes


def _runs_in_this_backward(node: Accumulator) -> bool:
    """Whether the running backward will execute ``node`` (private
    ``torch._C._will_engine_execute_node``, which no public API replaces; where torch lacks
    it, the answer is no and the penalty's gradient goes back through autograd: the same
    numbers, chunked)."""
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)
    if will_execute is None:
        return False
    try:
        return bool(will_execute(node))
    except RuntimeError:  # autograd.grad(): leaf accumulators do not run
        return False


def accumulates_in_place(params: Sequence[Tensor], nodes: Sequence[Accumulator] | None) -> bool:
    """Whether the backward running now may add the penalty's gradient into every ``.grad``
    itself (the conditions in the module's docstring)."""
    if nodes is None or torch.is_grad_enabled():
        return False
    for p, node in zip(params, nodes, strict=True):
        g = p.grad
        if (
            node is None
            or g is None
            or g.requires_grad
            or g.layout != torch.strided
            or (g.shape, g.dtype, g.device) != (p.shape, p.dtype, p.device)
            # private Tensor._backward_hooks (hooks registered with register_hook): a tensor
            # whose hooks torch no longer lists this way is taken to have some
            or getattr(p, "_backward_hooks", True)
            or not _runs_in_this_backward(node)
        ):
            return False
    return True


class PenaltyTotal(torch.autograd.Function):
    """``sum_i R(w_i)`` over a chunk of tensors as one autograd node: no graph over the weights.
    On FSDP2 shards the forward sums every process's share (one all-reduce) and the backward
    returns each local gradient as a DTensor laid out like its parameter."""

    @staticmethod
    def forward(
        ctx: Any,
        penalty: Penalty,
        sharding: Sharding,
        batch: Batch,
        accumulators: Sequence[Accumulator] | None,
        *tensors: Tensor,
    ) -> Tensor:
        ctx.penalty, ctx.sharding, ctx.batch, ctx.params = penalty, sharding, batch, tensors
        ctx.accumulators = accumulators
        ws = [w.detach() for w in sharding.locals(tensors)]
        ctx.save_for_backward(*ws)
        if accumulators is None:  # no in-place backward: nothing to keep
            ctx.state = None
            return sharding.total([penalty.total_value(ws, batch)])
        total, ctx.state = penalty.total_value_with_state(ws, batch)
        return sharding.total([total])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        ws = ctx.saved_tensors
        scale = grad_out.to(ws[0].device)
        if accumulates_in_place(ctx.params, ctx.accumulators):
            gs = [p.grad for p in ctx.params]  # the group norms of the forward, when it kept them
            ctx.penalty.add_grad_with_state_(ws, gs, scale, ctx.batch, ctx.state)
            return (None,) * (4 + len(ws))
        grads = ctx.penalty.grads(ws, scale, ctx.batch)
        return (None, None, None, None, *ctx.sharding.like_params(grads, ctx.params))
