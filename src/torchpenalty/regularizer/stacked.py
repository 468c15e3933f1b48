"""`Stacked`: ``K`` models of one architecture as one module, to train them all at once.

``Stacked(models)`` holds each parameter and buffer of the models stacked along a new leading
dim (``torch.func.stack_module_state``), in a copy of the first model's module tree, so names,
module types and rules read as the single model's (``"0.weight"``, ``nn.Linear``). Its forward
runs every member through ``torch.func.functional_call`` under ``torch.func.vmap``: each member
gets its own inputs (``x`` of shape ``(K, batch, ...)``) or, with ``shared=True``, the same ones,
and its own dropout draws (``randomness="different"``). One optimizer over ``stacked.parameters()``
is ``K`` independent optimizers wherever the optimizer is elementwise (SGD, Adam, AdamW,
RMSprop, Adagrad, ...); summing the members' losses gives each member its own gradient.

A ``Sequential`` of ``Linear`` layers and elementwise modules (activations, dropout) without
hooks runs as batched matmuls instead, the same arithmetic without vmap's per-call dispatch,
which dominates the small models a sweep trains.

``Regularizer(stacked, "l1", strengths=torch.logspace(-6, -1, K))`` gives member ``k`` the
penalty ``strengths[k] * l1`` (`torchpenalty.penalties.members.Members`), in any of the four
modes. Modules whose forward writes buffers (BatchNorm in training) cannot run under ``vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn


def _set(module: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if parameter:
        owner._parameters[attr] = nn.Parameter(value)
    else:
        owner._buffers[attr] = value


class Stacked(nn.Module):
    """``models`` (one architecture) stacked for training at once (see the module docstring).

    Args:
        models: two or more... or one model; every one with the same parameter and buffer
            names and shapes.

    Raises:
        ValueError: no models, or models of different architectures.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError("Stacked takes a non-empty sequence of torch.nn.Module models")
        shapes = {n: p.shape for n, p in models[0].named_parameters()}
        for i, m in enumerate(models[1:], 1):
            other = {n: p.shape for n, p in m.named_parameters()}
            if other != shapes:
                raise ValueError(
                    f"models[{i}] has other parameters than models[0]: stacking needs one "
                    "architecture"
                )
        params, buffers = torch.func.stack_module_state(models)
        module = copy.deepcopy(models[0])
        for name, value in params.items():
            _set(module, name, value.detach(), parameter=True)
        for name, value in buffers.items():
            _set(module, name, value, parameter=False)
        #: the models' module tree, each parameter and buffer stacked along dim 0
        self.stacked_module = module
        #: the number of members
        self.members = len(models)

    def _run_chain(self, x: Tensor, shared: bool) -> Tensor:
        k = self.members
        h = x.expand(k, *x.shape) if shared else x
        for layer in cast(nn.Sequential, self.stacked_module):
            if isinstance(layer, nn.Linear):
                # member k's rows times member k's weight: (K, ..., in) @ (K, 1.., in, out)
                weight = layer.weight.transpose(-1, -2)
                h = torch.matmul(h, weight.view(k, *[1] * (h.ndim - 3), *weight.shape[1:]))
                if layer.bias is not None:
                    h = h + layer.bias.view(k, *[1] * (h.ndim - 2), -1)
            else:
                h = layer(h)  # elementwise: dropout draws each element's mask, so each member's
        return h

    def forward(self, *inputs: Any, shared: bool = False) -> Any:
        """Every member's output, stacked along dim 0: member ``k`` reads ``inputs[i][k]``
        (or all of ``inputs[i]`` with ``shared=True``)."""
        if len(inputs) == 1 and isinstance(inputs[0], Tensor) and _is_chain(self.stacked_module):
            return self._run_chain(inputs[0], shared)
        params: dict[str, Tensor] = dict(self.stacked_module.named_parameters())
        buffers = dict(self.stacked_module.named_buffers())

        def call(p: dict[str, Tensor], b: dict[str, Tensor], *xs: Any) -> Any:
            return torch.func.functional_call(self.stacked_module, (p, b), xs)

        in_dims = (0, 0, *([None if shared else 0] * len(inputs)))
        return torch.func.vmap(call, in_dims=in_dims, randomness="different")(
            params, buffers, *inputs
        )

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s state dict, as its single model's (copies)."""
        return {n: t[k].detach().clone() for n, t in self.stacked_module.state_dict().items()}

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as a single model of the architecture (a copy)."""
        single = copy.deepcopy(self.stacked_module)
        for name, value in self.member_state_dict(k).items():
            is_param = name in dict(single.named_parameters())
            _set(single, name, value, parameter=is_param)
        return single


#: modules that act on each element alone: a stacked input passes through them unchanged in
#: meaning (dropout draws each element's mask, so each member's)
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softplus,
    nn.Dropout,
    nn.Identity,
)


def _is_chain(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and len(module) > 0
        and all(isinstance(m, (nn.Linear, *ELEMENTWISE_MODULES)) for m in module)
        and not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
    )


def members_of(model: nn.Module) -> int | None:
    """The number of members of a `Stacked` model (looked for through DDP and compile
    wrappers), else None."""
    while not isinstance(model, Stacked):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model.members


__all__ = ["Stacked", "members_of"]
