"""The Penalty interface: configuration round-trips, registry lookups and the batched defaults."""

from __future__ import annotations

import pytest
import torch

from torchpenalty import L1, L2, ElasticNet, Penalty, Zero
from torchpenalty.penalties import known_names, lookup


@pytest.mark.parametrize("pen", [L1(0.1), L2(2.0), ElasticNet(0.1, 0.2), Zero()])
def test_config_round_trip(pen):
    config = pen.get_config()
    assert config["name"] == pen.name
    assert Penalty.from_config(config) == pen
    assert type(pen).from_config({k: v for k, v in config.items() if k != "name"}) == pen


def test_config_errors():
    with pytest.raises(ValueError, match="needs a 'name'"):
        Penalty.from_config({"lam": 0.1})
    with pytest.raises(ValueError, match="unknown penalty 'l9'; known penalties: elastic_net"):
        Penalty.from_config({"name": "l9"})
    with pytest.raises(
        ValueError, match=r"takes the arguments \['center', 'lam'\], got unknown \['l3'\]"
    ):
        Penalty.from_config({"name": "l2", "l3": 0.1})
    with pytest.raises(ValueError, match="not a L1"):
        L1.from_config({"name": "l2", "lam": 0.1})
    with pytest.raises(TypeError, match="config must be a mapping"):
        Penalty.from_config("l2")


def test_scaling_multiplies_every_strength():
    assert 0.5 * L2(1.0) == L2(0.5) == L2(1.0) * 0.5
    assert 3 * ElasticNet(0.1, 0.2) == ElasticNet(0.1 * 3, 0.2 * 3)
    assert 2.0 * Zero() == Zero()
    w = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close((2.5 * L1(0.3)).value(w), 2.5 * L1(0.3).value(w))
    with pytest.raises(ValueError, match="factor must be a finite number >= 0"):
        -1.0 * L2(0.1)
    with pytest.raises(TypeError):
        L2(0.1) * "2"


def test_registry():
    assert lookup("L1_L2") is ElasticNet and lookup("none") is Zero
    assert {"l1", "l2", "elastic_net", "l1_l2", "none"} <= set(known_names())
    assert "sum" not in known_names()


@pytest.mark.parametrize("pen", [L1(0.3), L2(0.7), ElasticNet(0.2, 0.5), Zero()], ids=repr)
def test_batched_ops_match_single_tensor_ops(pen):
    """The foreach overrides against the base-class reference loops, float64, bitwise or close."""
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (7,), (), (0,), (2, 3, 4)]
    ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    gs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]

    torch.testing.assert_close(
        pen.total_value(ws), Penalty.total_value(pen, ws), rtol=1e-13, atol=1e-15
    )
    for a, b in zip(pen.grads(ws, 0.5), Penalty.grads(pen, ws, 0.5), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    for method, args in (("add_grad_", (None,)), ("decay_", (0.1,)), ("prox_", (0.1,))):
        fast = [t.clone() for t in (gs if method == "add_grad_" else ws)]
        slow = [t.clone() for t in fast]
        if method == "add_grad_":
            pen.add_grad_(ws, fast)
            Penalty.add_grad_(pen, ws, slow)
        else:
            getattr(pen, method)(fast, *args)
            getattr(Penalty, method)(pen, slow, *args)
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-16)


def test_batched_value_accumulates_bf16_in_float32():
    ws = [torch.full((4096,), 0.01, dtype=torch.bfloat16)]
    value = L1(1.0).total_value(ws)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(4096 * float(torch.tensor(0.01, dtype=torch.bfloat16)))


def test_a_user_penalty_joins_the_fast_path():
    """The batched methods are a public protocol: Regularizer calls a subclass's own, once per
    bucket, with a Batch that carries the regularizer's kernels."""
    import dataclasses
    from typing import ClassVar

    from torch import nn

    from torchpenalty import L2, Regularizer
    from torchpenalty.penalties import Batch

    calls: list[tuple[str, int, str]] = []

    @dataclasses.dataclass(frozen=True, repr=False)
    class CountedL2(L2):
        name: ClassVar[str] = "counted_l2"

        def decay_(self, ws, lr, batch=None):
            assert isinstance(batch, Batch)
            calls.append(("decay_", len(ws), batch.kernels.backend))
            super().decay_(ws, lr, batch)

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    reg = Regularizer(model, CountedL2(0.5), backend="eager")
    w = [p.detach().clone() for _, p in reg.named_parameters()]
    reg.decay_(0.1)
    assert calls == [("decay_", 2, "eager")]  # both weights in one call
    for before, (_, p) in zip(w, reg.named_parameters(), strict=True):
        torch.testing.assert_close(p, before * (1 - 0.1 * 0.5))
