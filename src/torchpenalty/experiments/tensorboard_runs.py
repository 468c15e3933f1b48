"""The CLI's ``--tensorboard DIR``: one TensorBoard run per contender and seed, one point per
epoch, written as the epochs finish (``DIR/NN-LABEL/seedK``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: what each epoch writes: tag -> EpochRecord field
SCALARS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "{metric}/train": "train_metric",
    "{metric}/validation": "val_metric",
    "penalty": "penalty",
    "weights/l2_norm": "weight_norm",
    "weights/zero_fraction": "zero_fraction",
    "weights/zero_units": "zero_units",
    "weights/zero_groups": "zero_groups",
}


def run_name(index: int, label: str, seed: int) -> str:
    """``NN-LABEL/seedK``: the contender's place keeps runs apart whose labels read alike once
    characters a path cannot hold are replaced."""
    safe = re.sub(r"[^\w.,=+()\[\]@-]+", "_", label).strip("_") or "run"
    return f"{index:02d}-{safe}/seed{seed}"


class TensorBoardRuns:
    """Writers of one comparison's runs. `record` takes a run's whole history so far: a new run
    (or one read back from a checkpoint) starts a fresh event file that drops what an earlier,
    interrupted attempt wrote from its first epoch on (``purge_step``), then writes the epochs
    not yet written."""

    def __init__(self, root: Path, labels: Sequence[str], task: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the optional extra, checked by the CLI

        self._writer_type = SummaryWriter
        self.root = root
        self._index = {label: i for i, label in enumerate(labels)}
        self._metric = "accuracy" if task == "classification" else "mse"
        self._writers: dict[tuple[str, int], Any] = {}
        self._written: dict[tuple[str, int], int] = {}

    def record(self, label: str, seed: int, history: Sequence[Mapping[str, Any]]) -> None:
        key = (label, seed)
        if key not in self._writers:
            where = self.root / run_name(self._index[label], label, seed)
            first = int(history[0]["epoch"]) if history else 1
            self._writers[key] = self._writer_type(str(where), purge_step=first)
            self._written[key] = 0
        writer = self._writers[key]
        for record in history[self._written[key] :]:
            for tag, field in SCALARS.items():
                value = record.get(field)
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue  # no groups, or a figure older checkpoints lack
                writer.add_scalar(tag.format(metric=self._metric), value, int(record["epoch"]))
        self._written[key] = len(history)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
