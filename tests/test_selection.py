"""`select`: the default "weights" rule, every rule kind, canonical names and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpenalty import select
from torchpenalty.selection import canonical_name, unwrap

from .conftest import WEIGHTS, make_model


def names(selection):
    return [n for n, _ in selection]


def test_default_selects_weights_not_biases_or_norms(model):
    sel = select(model)
    assert names(sel) == WEIGHTS
    assert all(p is dict(model.named_parameters())[n] for n, p in sel)
    assert sel.frozen == []


class RMSNormLike(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, d))  # 2-D on purpose: only the class name tells


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.norm = RMSNormLike(4)
        self.rms = nn.RMSNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm1d(4, affine=True)
        self.attn = nn.MultiheadAttention(4, 2)
        self.proj = nn.Linear(4, 4)

    def no_weight_decay(self):
        return {"pos_embed"}


def test_default_rule_on_many_layer_kinds():
    sel = names(select(Block()))
    assert sel == ["emb.weight", "attn.in_proj_weight", "attn.out_proj.weight", "proj.weight"]


def test_no_weight_decay_of_a_submodule_is_relative_to_it():
    model = nn.Sequential(Block())
    assert "0.pos_embed" not in names(select(model))
    assert "0.pos_embed" in names(select(model, include="*pos_embed", among="all"))


def test_include_kinds(model):
    assert names(select(model, include="fc.*")) == ["fc.weight"]
    assert names(select(model, include=nn.Linear)) == ["fc.weight", "head.weight"]
    assert names(select(model, include=model.head)) == ["head.weight"]
    assert names(select(model, include=model.conv.weight)) == ["conv.weight"]
    assert names(select(model, include=lambda n, p, m: p.shape[0] == 8)) == ["fc.weight"]
    assert names(select(model, include=["conv.*", model.head])) == ["conv.weight", "head.weight"]
    assert names(select(model, include=nn.Linear, among="all")) == [
        "fc.weight",
        "fc.bias",
        "head.weight",
        "head.bias",
    ]


def test_exclude(model):
    assert names(select(model, exclude="head.*")) == ["conv.weight", "fc.weight"]
    assert names(select(model, exclude=[nn.Conv2d, model.fc])) == ["head.weight"]
    # an exclude rule may name parameters the default already leaves out
    assert names(select(model, exclude="*.bias")) == WEIGHTS


def test_among_all_reaches_biases_and_norms(model):
    assert names(select(model, include="bn.*", among="all")) == ["bn.weight", "bn.bias"]


def test_among_a_predicate_is_where_rules_start(model):
    """A framework's own decay rule (the Hugging Face Trainer's names) as the starting set."""
    kept = {n for n, _ in select(model, among="all") if n.endswith("bias")}
    chosen = select(model, among=lambda name, param, module: name in kept)
    assert {n for n, _ in chosen} == kept
    first = sorted(kept)[0]
    assert [n for n, _ in select(model, include=first, among=lambda n, p, m: n in kept)] == [first]


def test_canonical_names_through_compile_and_dataparallel(model):
    compiled = torch.compile(model)
    assert names(select(compiled)) == WEIGHTS
    assert names(select(compiled, include="fc.weight")) == ["fc.weight"]
    wrapped = nn.DataParallel(model)  # prefixes "module." like DDP
    assert names(select(wrapped)) == WEIGHTS
    assert unwrap(nn.DataParallel(compiled)) is model
    model.fc = torch.compile(model.fc)  # a compiled submodule adds "_orig_mod." mid-name
    assert names(select(model)) == WEIGHTS
    assert canonical_name("a._orig_mod.b.weight") == "a.b.weight"


def test_tied_parameters_count_once():
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 7, bias=False))
    model[1].weight = model[0].weight
    sel = select(model)
    assert names(sel) == ["0.weight"]


def test_frozen_parameters_are_skipped_and_reported(model):
    model.conv.weight.requires_grad_(False)
    sel = select(model)
    assert names(sel) == ["fc.weight", "head.weight"]
    assert sel.frozen == ["conv.weight"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"include": "encoder.*"}, ValueError, r"rule 'encoder\.\*' selects nothing"),
        ({"include": "fc.bias"}, ValueError, "pass among='all' to select them"),
        ({"include": nn.Conv1d}, ValueError, "rule Conv1d selects nothing"),
        ({"exclude": "nope.*"}, ValueError, r"exclude rule 'nope\.\*' matches no parameter"),
        ({"include": nn.Linear(2, 2)}, ValueError, "is not a submodule of the model"),
        ({"include": nn.Parameter(torch.ones(2, 2))}, ValueError, "does not belong to the model"),
        ({"include": 3}, TypeError, "a rule must be a glob on parameter names"),
        ({"include": int}, TypeError, "must be an nn.Module subclass"),
        ({"include": []}, ValueError, "an empty list is not a rule"),
        ({"exclude": nn.Module}, ValueError, "the selection is empty"),
        ({"among": "biases"}, ValueError, "among must be 'weights', 'all' or a predicate"),
    ],
)
def test_bad_rules(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        select(model, **kwargs)


def test_frozen_only_rule_and_all_frozen(model):
    model.conv.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="selects only frozen parameters"):
        select(model, include=model.conv.weight)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen parameters skipped: conv\.weight, fc\.weight"):
        select(model)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        select([torch.ones(2, 2)])


def test_float32_model_selection_is_dtype_agnostic():
    assert names(select(make_model(torch.float32))) == WEIGHTS


# -- the default keeps every embedding table and leaves normalization parameters out ------------


class GRN(nn.Module):
    """ConvNeXt-V2's Global Response Normalization, as its reference code writes it."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class NormedEmbedding(nn.Embedding):
    def __init__(self):
        super().__init__(10, 4)
        self.norm = nn.LayerNorm(4)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 6, 4))
        self.layer_scale = nn.Parameter(torch.ones(4, 1, 1))


def test_embedding_subclasses_named_norm_keep_their_table():
    model = nn.ModuleDict({"emb": NormedEmbedding(), "bag": nn.EmbeddingBag(5, 3)})
    names = [n for n, _ in select(model)]
    assert names == ["emb.weight", "bag.weight"]  # the LayerNorm inside is not a weight


def test_a_transformers_normed_embedding_keeps_its_table():
    transformers = pytest.importorskip("transformers")
    from transformers.models.inkling.modeling_inkling import InklingNormedEmbedding

    assert transformers.__version__
    model = nn.ModuleDict({"embed": InklingNormedEmbedding(32, 8, 0, 1e-6)})
    names = [n for n, _ in select(model)]
    assert names == ["embed.weight"]  # and not embed.embed_norm.weight (its RMSNorm)


def test_vector_shaped_normalization_parameters_are_not_weights():
    model = nn.ModuleDict(
        {
            "grn": GRN(4),
            "tokens": Tokens(),
            "first": nn.Linear(1, 8),  # (8, 1): a real weight, from a scalar input
            "rnn": nn.LSTM(1, 3),  # weight_ih (12, 1)
            "conv": nn.Conv2d(1, 4, 1),  # (4, 1, 1, 1)
        }
    )
    names = [n for n, _ in select(model)]
    assert names == [
        "tokens.pos_embed",
        "first.weight",
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "conv.weight",
    ]
