"""`parse`: penalty spec strings to penalties, with a real grammar (never ``eval``).

Grammar (case-insensitive, whitespace-tolerant)::

    spec     := term ("+" term)*
    term     := NAME [ "(" [ args ] ")" ]
    args     := arg ("," arg)* [","]
    arg      := NUMBER | NAME "=" (NUMBER | WORD)  (positional arguments come first)
    NUMBER   := ["+"|"-"] digits ["." digits] [("e"|"E") ["+"|"-"] digits]

A bare name (``"l2"``, Keras' ``"l1_l2"``) takes the default strengths (0.01 each); ``"none"`` is
no penalty. Strengths are plain numbers: NaN, infinities, negatives and repeated arguments are
errors. A few arguments take a word from a fixed list, e.g. ``group_lasso(1e-3, groups=cols)``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .._checks import check_strength
from .base import Penalty, known_names, lookup

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()=,+])
    """,
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "punct" or "end"
    text: str
    pos: int


class _Parser:
    def __init__(self, spec: str, default_strength: float | None = None) -> None:
        self.spec = spec
        self.default_strength = default_strength
        self.tokens = self._tokenize(spec)
        self.i = 0

    def error(self, message: str, pos: int) -> ValueError:
        return ValueError(
            f"invalid penalty spec {self.spec!r} at position {pos}: {message}\n"
            f"    {self.spec}\n    {' ' * pos}^\n"
            f"known penalties: {', '.join(known_names())}"
        )

    def _tokenize(self, spec: str) -> list[_Token]:
        tokens, pos = [], 0
        while pos < len(spec):
            m = _TOKEN.match(spec, pos)
            if m is None:
                raise self.error(f"unexpected character {spec[pos]!r}", pos)
            if m.lastgroup != "space":
                tokens.append(_Token(str(m.lastgroup), m.group(), pos))
            pos = m.end()
        tokens.append(_Token("end", "", len(spec)))
        return tokens

    @property
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self, kind: str, text: str | None = None, what: str | None = None) -> _Token:
        tok = self.peek
        if tok.kind != kind or (text is not None and tok.text != text):
            found = "end of string" if tok.kind == "end" else repr(tok.text)
            raise self.error(f"expected {what or repr(text)}, found {found}", tok.pos)
        self.i += 1
        return tok

    def parse(self) -> Penalty:
        penalty = self.term()
        while self.peek.text == "+":
            self.i += 1
            penalty = penalty + self.term()
        if self.peek.kind != "end":
            raise self.error(
                f"expected '+' or end of string, found {self.peek.text!r}", self.peek.pos
            )
        return penalty

    def term(self) -> Penalty:
        name_tok = self.take("name", what="a penalty name")
        try:
            cls = lookup(name_tok.text)
        except ValueError:
            cls = None
        if cls is None or not cls.in_specs:
            raise self.error(f"unknown penalty {name_tok.text!r}", name_tok.pos)
        positional: list[tuple[float, int]] = []
        keywords: dict[str, tuple[float | str, int]] = {}
        if self.peek.text == "(":
            self.i += 1
            while self.peek.text != ")":
                self.argument(positional, keywords)
                if self.peek.text != ",":
                    break
                self.i += 1
            self.take("punct", ")", what="')' or ','")
        return self.build(cls, name_tok, positional, keywords)

    def argument(self, positional: list, keywords: dict) -> None:
        tok = self.peek
        if tok.kind == "name" and self.tokens[self.i + 1].text == "=":
            self.i += 2
            if tok.text.lower() in keywords:
                raise self.error(f"argument {tok.text!r} given twice", tok.pos)
            keywords[tok.text.lower()] = (self.value(), tok.pos)
        elif tok.kind == "number":
            if keywords:
                raise self.error("positional argument after keyword argument", tok.pos)
            positional.append((self.number(), tok.pos))
        else:
            raise self.error(
                "expected a number or name=number (arguments are plain numbers)", tok.pos
            )

    def value(self) -> float | str:
        """A keyword's value: a number, or a word (checked against the penalty's choices later)."""
        if self.peek.kind == "name":
            return self.take("name").text.lower()
        return self.number()

    def number(self) -> float:
        tok = self.take("number", what="a number (plain numbers only: no nan, inf or names)")
        return float(tok.text)

    def build(
        self,
        cls: type[Penalty],
        name_tok: _Token,
        positional: list[tuple[float, int]],
        keywords: dict[str, tuple[float | str, int]],
    ) -> Penalty:
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        strengths = [f for f in fields if f not in cls.choices]
        if len(positional) > len(strengths):
            raise self.error(
                f"{cls.name} takes at most {len(strengths)} positional argument(s) "
                f"({', '.join(strengths)})",
                positional[len(strengths)][1],
            )
        args: dict[str, Any] = {}
        for field, (number, _) in zip(strengths, positional, strict=False):
            args[field] = number
        for key, (value, pos) in keywords.items():
            field = cls.keyword_aliases.get(key, key)
            if field not in fields:
                raise self.error(
                    f"{cls.name} has no argument {key!r}; it takes {', '.join(fields)}", pos
                )
            if field in args:
                raise self.error(f"argument {field!r} of {cls.name} given twice", pos)
            if field in cls.choices and value not in cls.choices[field]:
                raise self.error(
                    f"{field} must be one of {', '.join(cls.choices[field])}, got {value!r}", pos
                )
            if field not in cls.choices and isinstance(value, str):
                raise self.error(
                    f"{field} takes a plain number (no nan, inf or names), got {value!r}", pos
                )
            args[field] = value
        given = [f for f in strengths if f in args]
        if not given and self.default_strength is not None:
            args.update(dict.fromkeys(strengths, self.default_strength))
        if given and len(given) < len(strengths):
            missing = [f for f in strengths if f not in args]
            raise self.error(
                f"{cls.name} needs all of its strengths ({', '.join(strengths)}) or none "
                f"(defaults); missing {', '.join(missing)}",
                name_tok.pos,
            )
        try:
            return cls(**args)
        except (TypeError, ValueError) as exc:
            raise self.error(str(exc), name_tok.pos) from None


def parse(spec: str | Penalty, *, default_strength: float | None = None) -> Penalty:
    """Turn a spec string such as ``"l1(1e-5) + l2(lam=1e-4)"`` into a `Penalty`.

    ``parse(repr(p)) == p`` for every penalty ``p``. The string is tokenized and parsed by a
    small grammar, never evaluated.

    Args:
        spec: the spec string, or a `Penalty` (returned unchanged).
        default_strength: the strength of terms that give none (``parse("l2",
            default_strength=1)`` is ``L2(1.0)``, a unit penalty to scale); None: each
            penalty's default, 0.01.

    Returns:
        The canonical penalty (a sum is canonical: ``"l1 + l2"`` is an `ElasticNet`).

    Raises:
        ValueError: the spec is malformed; the message quotes it, points at the position and
            lists the known names.
        TypeError: ``spec`` is neither a string nor a `Penalty`.
    """
    if isinstance(spec, Penalty):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string or a Penalty, got {type(spec).__name__}")
    if default_strength is not None:
        default_strength = check_strength(default_strength, "default_strength")
    return _Parser(spec, default_strength).parse()
