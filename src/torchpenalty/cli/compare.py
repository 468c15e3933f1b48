"""``torchpenalty compare``: train one model per regularizer and show the results side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torchpenalty import parse
from torchpenalty.experiments import plots
from torchpenalty.experiments.training import Contender

from . import argtypes, common, flags, pipeline
from .contender_spec import parse_contender

DEFAULT_REGS = ("none", "l2(1e-3)", "l1(1e-4)")
DEFAULT_WEIGHT_DECAY = 1e-3


def contender_text(text: str) -> str:
    """A ``--reg`` value, validated; the label keeps the user's spelling."""
    try:
        parse_contender(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"contender {text.strip()!r}: {exc}") from None
    return text.strip()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train the same model once per regularizer and compare",
        description="Train the same model, from the same initialisation and data split, once per "
        "regularizer, then print a table and write results.json, history.csv and figures. With no "
        f"regularizer flags: {', '.join(DEFAULT_REGS)} and weight_decay={DEFAULT_WEIGHT_DECAY:g}.",
    )
    g = p.add_argument_group("regularizers")
    g.add_argument(
        "--reg",
        action="append",
        type=contender_text,
        metavar="SPEC",
        help="a contender (repeatable): a penalty spec (none, l2(1e-4), l1(1e-5) + l2(1e-4)), "
        "dropout(P), label_smoothing(EPS), or a sum of these (l2(1e-3) + dropout(0.2)); "
        "@MODE after a penalty overrides --mode for it: l2(1e-2)@decoupled. A contender's "
        "dropout replaces the model-wide --dropout",
    )
    flags.add_mode_flag(g)
    g.add_argument(
        "--weight-decay",
        action="append",
        type=argtypes.non_negative_float,
        metavar="X",
        help="torch.optim's own weight_decay as one more contender (repeatable)",
    )
    g.add_argument(
        "--rules",
        type=Path,
        metavar="TOML",
        help="per-layer rules, one more contender: a TOML file mapping parameter "
        'names or globs to specs, e.g. "0.weight" = "l1(1e-4)"; first match wins',
    )
    flags.add_compact_flag(g)
    flags.add_tensorboard_flag(g)
    flags.add_run_flags(p)
    p.set_defaults(handler=main, command_parser=p, sparsity_target=None)


def load_rules(path: Path) -> dict[str, str]:
    """A TOML file of ``"glob" = "spec"`` pairs, in file order."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    try:
        rules = tomllib.loads(path.read_text())
    except OSError as exc:
        raise common.CommandError(f"{path}: cannot read rules file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise common.CommandError(f"{path}: not valid TOML ({exc})") from None
    if not rules:
        raise common.CommandError(f'{path}: no rules; write lines such as "fc.weight" = "l2(1e-4)"')
    for key, spec in rules.items():
        if not isinstance(spec, str):
            raise common.CommandError(
                f"{path}: rule {key!r} must map to a spec string, got {spec!r}"
            )
        try:
            parse(spec)
        except ValueError as exc:
            raise common.CommandError(f"{path}: rule {key!r}: {str(exc).splitlines()[0]}") from None
    return rules


def contenders(args: argparse.Namespace) -> list[Contender]:
    regs = args.reg
    decays = args.weight_decay
    if regs is None and decays is None and args.rules is None:
        regs, decays = list(DEFAULT_REGS), [DEFAULT_WEIGHT_DECAY]
    suffix = "" if args.mode == "loss" else f" [{args.mode}]"
    out = []
    for text in regs or ():
        parsed = parse_contender(text)
        penalty = parsed.penalty
        has_penalty = penalty is not None and penalty != parse("none")
        label = text + suffix if has_penalty and parsed.mode is None else text
        out.append(
            Contender(
                label,
                penalty,
                parsed.mode or args.mode,
                dropout=parsed.dropout,
                label_smoothing=parsed.label_smoothing,
                target=args.sparsity_target,
            )
        )
    for wd in decays or ():
        out.append(Contender(f"weight_decay={wd:g}", None, "loss", weight_decay=wd))
    if args.rules is not None:
        out.append(
            Contender(
                f"rules:{args.rules.name}{suffix}",
                load_rules(args.rules),
                args.mode,
                target=args.sparsity_target,
            )
        )
    labels = [c.label for c in out]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"the same contender is given twice: {', '.join(duplicates)}")
    return out


def describe(c: Contender) -> dict[str, Any]:
    """A contender as results.json records it."""
    if c.penalty is None:
        penalty: Any = None
    elif isinstance(c.penalty, dict):
        penalty = {k: str(v) for k, v in c.penalty.items()}
    else:
        penalty = repr(c.penalty)
    return {
        "label": c.label,
        "description": c.describe(),
        "mode": c.mode if c.has_penalty else None,
        "penalty": penalty,
        "weight_decay": c.weight_decay,
        "dropout": c.dropout,
        "label_smoothing": c.label_smoothing,
    }


def legend(c: Contender) -> str:
    """A contender's legend text: its label, and what it applies where the label does not say."""
    return c.label if c.label == c.describe() else f"{c.label}: {c.describe()}"


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        entrants = contenders(args)
    except ValueError as exc:
        parser.error(str(exc))

    def present(done: pipeline.Finished) -> pipeline.Presentation:
        labels = [s["contender"] for s in done.summary]
        task = done.data.task
        described = {c.label: c.describe() for c in entrants}
        for row in done.summary:  # every part of each contender, and its mode
            row["description"] = described[row["contender"]]
        return pipeline.Presentation(
            columns=[("applied as", "description", "")],
            fields={"contenders": [describe(c) for c in entrants]},
            figures={
                "curves.png": lambda path: plots.plot_curves(
                    done.results, labels, task, path, {c.label: legend(c) for c in entrants}
                ),
                "weights.png": lambda path: plots.plot_weight_histograms(done.models, path),
            },
        )

    study = pipeline.Study(
        "compare",
        entrants,
        [f"  {c.label}: {c.describe()}" for c in entrants],
        present,
        rules_file=args.rules,
    )
    return pipeline.run_study(args, parser, study)
