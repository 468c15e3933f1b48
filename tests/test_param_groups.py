"""`param_groups`: torch.optim groups that decay only the selected parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpenalty import param_groups

from .conftest import WEIGHTS


def test_groups_split_weights_from_the_rest(model):
    groups = param_groups(model, 0.05)
    named = {id(p): n for n, p in model.named_parameters()}
    assert [named[id(p)] for p in groups[0]["params"]] == WEIGHTS
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    rest = {named[id(p)] for p in groups[1]["params"]}
    assert rest == set(named.values()) - set(WEIGHTS)
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as is


def test_groups_follow_rules_and_skip_frozen(model):
    model.bn.weight.requires_grad_(False)
    groups = param_groups(model, 0.1, include=nn.Linear)
    assert len(groups[0]["params"]) == 2
    assert not any(p is model.bn.weight for g in groups for p in g["params"])


def test_empty_rest_group_is_omitted():
    model = nn.Linear(3, 3, bias=False)
    assert len(param_groups(model, 0.1)) == 1


@pytest.mark.parametrize(
    "wd, error", [(-1.0, ValueError), (float("nan"), ValueError), ("x", TypeError)]
)
def test_bad_weight_decay(model, wd, error):
    with pytest.raises(error, match="weight_decay must be"):
        param_groups(model, wd)
