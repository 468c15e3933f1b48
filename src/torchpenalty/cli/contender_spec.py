"""The ``--reg`` contender grammar: ``PART [+ PART ...] [@MODE]``.

A part is a penalty term of the spec grammar (``l2(1e-3)``, ``l1(1e-5) + l2(1e-4)``), or one of
the regularizers that are no penalty: ``dropout(p)`` (``p`` in [0, 1), the dropout of the
contender's model, replacing the model-wide ``--dropout``) and ``label_smoothing(eps)`` (``eps``
in [0, 1), cross-entropy's label smoothing, classification only). ``@MODE`` applies the penalty
in that mode (``loss``, ``grad``, ``decoupled`` or ``proximal``) instead of ``--mode``.
"""

from __future__ import annotations

import dataclasses
import math
import re

from torchpenalty import Penalty, Zero, parse
from torchpenalty.regularizer.attach import ALL_MODES

#: regularizers that are no penalty: name -> (keyword, what the value means)
EXTRAS = {"dropout": "p", "label_smoothing": "eps"}
_EXTRA = re.compile(r"^(\w+)\s*\(\s*(?:(\w+)\s*=\s*)?([^()=,]*?)\s*\)$")


@dataclasses.dataclass(frozen=True)
class ContenderText:
    """One ``--reg`` value, parsed: its penalty (None: no penalty part), the mode its ``@MODE``
    names (None: ``--mode``), its dropout (None: ``--dropout``) and label smoothing."""

    penalty: Penalty | None
    mode: str | None = None
    dropout: float | None = None
    label_smoothing: float = 0.0


def split_terms(text: str) -> list[str]:
    """``text`` split at its top-level ``+`` (not inside parentheses)."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "+" and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms]


def _extra_value(term: str, name: str) -> float:
    keyword = EXTRAS[name]
    match = _EXTRA.match(term)
    if match is None or match.group(1) != name or match.group(2) not in (None, keyword):
        raise ValueError(f"{name} takes one number: {name}(0.1) or {name}({keyword}=0.1)")
    try:
        value = float(match.group(3))
    except ValueError:
        raise ValueError(f"{name} takes one number, got {match.group(3)!r}") from None
    if not math.isfinite(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {match.group(3)}")
    return value


def split_mode(text: str) -> tuple[str, str | None]:
    """``SPEC@MODE`` as ``(SPEC, MODE)``, ``SPEC`` as ``(SPEC, None)``; raises `ValueError` for
    an unknown mode."""
    if "@" not in text:
        return text, None
    body, _, mode = text.rpartition("@")
    mode = mode.strip()
    if mode not in ALL_MODES:
        raise ValueError(f"unknown mode {mode!r} after '@'; one of {', '.join(ALL_MODES)}")
    return body, mode


def parse_contender(text: str) -> ContenderText:
    """Parse one ``--reg`` value; raises `ValueError` with a one-line reason."""
    body, mode = split_mode(text)
    if not body.strip():
        raise ValueError("nothing before '@MODE'")
    penalty_terms, extras = [], {}
    for term in split_terms(body):
        name = term.split("(")[0].strip()
        if name not in EXTRAS:
            penalty_terms.append(term)
        elif name in extras:
            raise ValueError(f"{name} is given twice")
        else:
            extras[name] = _extra_value(term, name)
    penalty = None
    if penalty_terms:
        try:
            penalty = parse(" + ".join(penalty_terms))
        except ValueError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
    if mode is not None and (penalty is None or penalty == Zero()):
        raise ValueError(f"@{mode} sets the mode of a penalty, and there is none")
    return ContenderText(penalty, mode, extras.get("dropout"), extras.get("label_smoothing", 0.0))
