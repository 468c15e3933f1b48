"""A regularizer's report in TensorBoard (``pip install torchpenalty[tensorboard]``)::

writer = SummaryWriter("runs/l1")
add_report(writer, reg, step)                    # or reg.report(); histograms=True for weights
"""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from ..regularizer import Regularizer, Report


def add_report(
    writer: SummaryWriter,
    source: Regularizer | Report,
    step: int,
    *,
    tag: str = "penalty",
    histograms: bool = False,
) -> None:
    """Write one report as scalars at ``step``: ``{tag}/total`` (loss units) and
    ``{tag}/zero_fraction`` (exact zeros over all regularized elements), and per tensor
    ``{tag}/value/NAME``, ``{tag}/l2_norm/NAME`` and ``{tag}/zero_fraction/NAME``; with
    ``histograms``, each regularized tensor's values as ``{tag}/weights/NAME``.

    Args:
        writer: a `torch.utils.tensorboard.SummaryWriter`.
        source: a `Regularizer` (its `Regularizer.report` is taken: one device sync) or a
            `Report` already taken.
        step: the global step the figures belong to.
        tag: the prefix of every tag.
        histograms: also write the tensors' histograms (needs the `Regularizer`).

    Raises:
        TypeError: ``source`` is neither; ``histograms`` without the `Regularizer`.
    """
    if not isinstance(source, Regularizer | Report):
        raise TypeError(f"source must be a Regularizer or a Report, got {type(source).__name__}")
    if histograms and not isinstance(source, Regularizer):
        raise TypeError(
            "histograms=True needs the Regularizer (a Report holds figures, not the tensors)"
        )
    report = source.report() if isinstance(source, Regularizer) else source
    writer.add_scalar(f"{tag}/total", report.total_value, step)
    writer.add_scalar(f"{tag}/zero_fraction", report.zero_fraction, step)
    for row in report:
        writer.add_scalar(f"{tag}/value/{row.name}", row.value, step)
        writer.add_scalar(f"{tag}/l2_norm/{row.name}", row.l2_norm, step)
        writer.add_scalar(f"{tag}/zero_fraction/{row.name}", row.zero_fraction, step)
    if histograms and isinstance(source, Regularizer):
        for name, param in source.named_parameters():
            writer.add_histogram(f"{tag}/weights/{name}", param.detach().float().cpu(), step)


__all__ = ["add_report"]
