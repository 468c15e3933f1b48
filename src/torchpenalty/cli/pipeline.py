"""The one pipeline of ``compare`` and ``sweep``: validate every contender, train them all
(checkpointed, resumable), then print the table and write results.json, history.csv and figures.

A command says what it compares (a `Study`) and how the finished runs read (a `Presentation`);
everything else is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.results import (
    format_table,
    run_records,
    summarize,
    write_history,
    write_json,
)
from torchpenalty.experiments.training import Contender, RunResult

from . import common

#: draws one figure into the given file
Figure = Callable[[Path], None]


@dataclasses.dataclass
class Presentation:
    """How a command shows its finished runs: extra table ``columns`` (header, key, format),
    the ``first_column`` header, ``notes`` printed after the table, its own ``fields`` in
    results.json, and its ``figures`` by file name."""

    columns: Sequence[tuple[str, str, str]] = ()
    first_column: str = "regularizer"
    notes: Sequence[str] = ()
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    figures: dict[str, Figure] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Finished:
    """What the shared pipeline hands to a command's presentation."""

    data: datasets.Dataset
    results: list[RunResult]
    summary: list[dict[str, Any]]  # one row per contender, mean and std over seeds
    models: dict[str, nn.Module]  # each contender's model from its first seed


@dataclasses.dataclass
class Study:
    """What a command compares: its ``contenders`` (trained in order), the lines that
    ``describe`` them, and how to ``present`` the finished runs."""

    command: str
    contenders: list[Contender]
    describe: Sequence[str]
    present: Callable[[Finished], Presentation]
    warm_start: bool = False
    rules_file: Path | None = None


def run_study(args: argparse.Namespace, parser: argparse.ArgumentParser, study: Study) -> int:
    """Train and report ``study``; returns the exit code (0, 1 after a training failure, 130
    after Ctrl-C; bad input exits 2 before anything trains)."""
    data = common.load_data(args)
    config = common.train_config(args)
    common.check_setup(parser, data, config, study.contenders, rules_file=study.rules_file)
    common.check_target(parser, args, data, config, study.contenders)
    common.check_tensorboard(parser, args)
    out = common.output_dir(args, study.command)
    seed_list = common.seeds(args)
    common.echo(common.describe_run(data, config, seed_list))
    for line in study.describe:
        common.echo(line)

    trained = common.train_all(
        args, data, config, study.contenders, seed_list, out, warm_start=study.warm_start
    )
    if not trained.results:
        return common.finish(trained)
    stacked = common.describe_stacks(trained, len(study.contenders) * len(seed_list))
    if stacked:
        common.echo(stacked)

    summary = summarize(trained.results, [c.label for c in study.contenders])
    shown = study.present(Finished(data, trained.results, summary, trained.first_models))
    columns = list(shown.columns)
    if args.compact:
        columns += common.add_compaction(summary, trained.first_models, data, config.device)
    common.echo()
    common.echo(format_table(summary, data.task, extra=columns, first=shown.first_column))
    for note in shown.notes:
        common.echo(note)
    write_json(
        out / "results.json",
        {
            **common.header(study.command, args, data, seed_list),
            **shown.fields,
            "summary": summary,
            "runs": run_records(trained.results),
            "stacks": [[{"contender": c, "seed": s} for c, s in st] for st in trained.stacks],
            "interrupted": trained.interrupted,
            "failure": trained.failure,
        },
    )
    write_history(out / "history.csv", trained.results)
    for name, draw in shown.figures.items():
        draw(out / name)
    common.echo(f"\nwrote {out}/: {', '.join(['results.json', 'history.csv', *shown.figures])}")
    return common.finish(trained)
