"""`add_report`: a regularizer's report written to a real SummaryWriter and read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import torchpenalty as tp  # noqa: E402
from torchpenalty.integrations.tensorboard import add_report  # noqa: E402


def regularizer() -> tp.Regularizer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    reg = tp.Regularizer(model, "l1(0.3)")
    reg.prox_(1.0)  # some exact zeros to count
    return reg


def read(folder):
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"histograms": 0})
    events.Reload()
    return events


def test_scalars_per_tensor_and_in_total(tmp_path):
    reg = regularizer()
    report = reg.report()
    assert 0 < report.zero_fraction < 1
    with SummaryWriter(str(tmp_path)) as writer:
        add_report(writer, reg, 7)
        add_report(writer, report, 8, tag="again")
    events = read(tmp_path)
    tags = events.Tags()["scalars"]
    for tag in ("penalty", "again"):
        (point,) = events.Scalars(f"{tag}/total")
        assert point.value == pytest.approx(report.total_value, rel=1e-6)
        (point,) = events.Scalars(f"{tag}/zero_fraction")
        assert point.value == pytest.approx(report.zero_fraction, rel=1e-6)
    assert events.Scalars("penalty/total")[0].step == 7
    for row in report:
        for figure in ("value", "l2_norm", "zero_fraction"):
            assert f"penalty/{figure}/{row.name}" in tags
        (point,) = events.Scalars(f"penalty/l2_norm/{row.name}")
        assert point.value == pytest.approx(row.l2_norm, rel=1e-6)
    assert not events.Tags()["histograms"]


def test_histograms_of_the_regularized_tensors(tmp_path):
    reg = regularizer()
    with SummaryWriter(str(tmp_path)) as writer:
        add_report(writer, reg, 0, histograms=True)
    histograms = read(tmp_path).Tags()["histograms"]
    assert sorted(histograms) == sorted(f"penalty/weights/{n}" for n, _ in reg.named_parameters())


def test_histograms_need_the_regularizer(tmp_path):
    reg = regularizer()
    with SummaryWriter(str(tmp_path)) as writer:
        with pytest.raises(TypeError, match="needs the Regularizer"):
            add_report(writer, reg.report(), 0, histograms=True)
        with pytest.raises(TypeError, match="Regularizer or a Report"):
            add_report(writer, {"penalty": 1.0}, 0)
