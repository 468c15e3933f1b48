"""Hostile input: arbitrary text never escapes `parse` as anything but ValueError (and is never
evaluated); every penalty survives ``parse(repr(p))``; NaN, Inf, empty and 0-dim tensors behave
as documented (IEEE arithmetic: NaN stays NaN where it is, nothing is silently zeroed)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpenalty import L1, L2, ElasticNet, GroupLasso, Penalty, SparseGroupLasso, parse


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_parses_or_raises_value_error(text):
    with contextlib.suppress(ValueError):
        assert isinstance(parse(text), Penalty)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "l1",
                "l2",
                "(",
                ")",
                "=",
                ",",
                "+",
                "1e-3",
                "-1",
                "nan",
                "lam",
                "groups",
                "rows",
                "inf",
                "1e400",
                " ",
                "elastic_net",
                "0",
            ]
        ),
        max_size=14,
    )
)
def test_spec_shaped_noise_parses_or_raises_value_error(tokens):
    with contextlib.suppress(ValueError):
        assert isinstance(parse("".join(tokens)), Penalty)


def test_specs_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    for spec in (
        f"__import__('pathlib').Path('{marker}').touch()",
        f"l2(lam=__import__('pathlib').Path('{marker}').touch())",
    ):
        with pytest.raises(ValueError):
            parse(spec)
    assert not marker.exists()


strengths = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
penalties = st.one_of(
    st.builds(L1, strengths),
    st.builds(L2, strengths),
    st.builds(ElasticNet, strengths, strengths),
    st.builds(
        GroupLasso,
        strengths,
        st.sampled_from(["rows", "cols", "tensor"]),
        st.sampled_from(["none", "sqrt_size"]),
    ),
    st.builds(
        SparseGroupLasso,
        strengths,
        strengths,
        st.sampled_from(["rows", "cols", "tensor"]),
        st.sampled_from(["none", "sqrt_size"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(penalties, min_size=1, max_size=3))
def test_repr_round_trips_for_every_penalty_and_sum(terms):
    pen = terms[0]
    for t in terms[1:]:
        pen = pen + t
    assert parse(repr(pen)) == pen
    assert Penalty.from_config(pen.get_config()) == pen


ELEMENTWISE = [L1(0.5), L2(0.5), ElasticNet(0.5, 0.5)]


@pytest.mark.parametrize("pen", ELEMENTWISE, ids=repr)
def test_nan_stays_where_it_is(pen):
    w = torch.tensor([1.0, float("nan"), -2.0])
    assert math.isnan(pen.value(w).item())
    grad, prox = pen.grad(w), pen.prox(w, 0.1)
    assert torch.isnan(grad[1]) and torch.isnan(prox[1])
    assert torch.isfinite(grad[[0, 2]]).all() and torch.isfinite(prox[[0, 2]]).all()


def test_infinities_follow_the_formulas():
    w = torch.tensor([float("inf"), float("-inf"), 1.0])
    assert L1(0.5).value(w).item() == math.inf and L2(0.5).value(w).item() == math.inf
    assert L1(0.5).grad(w).tolist() == [0.5, -0.5, 0.5]  # sign(+-inf) = +-1
    assert L2(0.5).grad(w)[:2].tolist() == [math.inf, -math.inf]
    assert L1(0.5).prox(w, 1.0)[:2].tolist() == [math.inf, -math.inf]  # inf - clip(inf) = inf


def test_nan_in_a_group_spreads_over_that_group_only():
    w = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    pen = GroupLasso(0.1, "rows")
    assert torch.isnan(pen.prox(w, 1.0)[0]).all() and torch.isfinite(pen.prox(w, 1.0)[1]).all()
    assert torch.isnan(pen.grad(w)[0]).all() and torch.isfinite(pen.grad(w)[1]).all()


@pytest.mark.parametrize(
    "pen", [*ELEMENTWISE, GroupLasso(0.5), SparseGroupLasso(0.1, 0.5)], ids=repr
)
@pytest.mark.parametrize("shape", [(0,), (0, 4), (), (3, 0)])
def test_empty_and_zero_dim(pen, shape):
    w = torch.ones(shape)
    value = pen.value(w)
    assert value.shape == () and (value.item() == 0.0 or w.numel() > 0)
    assert pen.grad(w).shape == w.shape and pen.prox(w, 0.1).shape == w.shape
    assert np.asarray(pen.value(np.ones(shape))).shape == ()
