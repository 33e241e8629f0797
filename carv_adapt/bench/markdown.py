"""Markdown table primitives for the benchmark's outputs: :func:`md_table` builds a table (every cell escaped by
:func:`md_cell`), :func:`check_markdown_tables` finds malformed tables in any markdown text. ``bench.md``
(:mod:`carv_adapt.bench.report`) and the README's benchmark blocks (:mod:`carv_adapt.bench.readme`) are both
built from these and checked by them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from carv_adapt.errors import ConfigError

__all__ = ["md_cell", "md_table", "check_markdown_tables"]


def md_cell(x: Any) -> str:
    """One table cell: the text of ``x`` on one line, with every ``|`` escaped as ``\\|``."""
    return " ".join(str(x).splitlines()).replace("|", "\\|")


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table (header, delimiter row, one line per row); every cell goes through :func:`md_cell`."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(md_cell(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _cells(row: str) -> list[str]:
    """A table row's cells: split at ``|`` not escaped by a backslash; the outer pipes delimit, not cells."""
    s = row.strip()
    cells: list[str] = []
    cur: list[str] = []
    escaped = trailing = False
    for ch in s:
        trailing = False
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == "|":
            cells.append("".join(cur))
            cur = []
            trailing = True
        else:
            cur.append(ch)
    if not trailing:
        cells.append("".join(cur))
    return cells[1:] if s.startswith("|") else cells


_DELIMITER_CELL = re.compile(r"^\s*:?-+:?\s*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _is_delimiter_row(line: str) -> bool:
    s = line.strip()
    return s.startswith("|") and all(_DELIMITER_CELL.match(c) for c in _cells(s))


def check_markdown_tables(text: str) -> list[str]:
    """Problems with the markdown tables in ``text`` (empty when all are well formed), one string each naming
    the line: a delimiter row or body row whose number of cells (counting only unescaped ``|``) differs from
    the header's, a row with whitespace before its first ``|``, a ``|`` row that belongs to no table (no
    header and delimiter row above it). Fenced code blocks are skipped."""
    problems: list[str] = []
    lines = text.splitlines()
    fence: str | None = None
    n_header: int | None = None  # cells in the current table's header; None outside a table
    for i, line in enumerate(lines):
        no = i + 1
        m = _FENCE.match(line)
        if fence is not None:
            if m and m.group(1).startswith(fence):
                fence = None
            continue
        if m:
            fence, n_header = m.group(1), None
            continue
        stripped = line.lstrip()
        if not stripped.startswith("|") or (n_header is None and len(line) - len(stripped) >= 4):
            n_header = None  # a blank line or text ends a table; 4+ spaces outside a table is indented code
            continue
        if stripped != line:
            problems.append(f"line {no}: table row has whitespace before its first '|': {line!r}")
        n = len(_cells(line))
        if n_header is None:
            if i + 1 < len(lines) and _is_delimiter_row(lines[i + 1]):
                n_header = n
            else:
                problems.append(f"line {no}: '|' row outside a table (no header and delimiter row): {line!r}")
            continue
        if n != n_header:
            what = "delimiter row" if _is_delimiter_row(line) else "row"
            problems.append(f"line {no}: {what} has {n} cells, the header has {n_header}: {line!r}")
    return problems


def _checked(name: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    problems = check_markdown_tables(text)
    if problems:
        raise ConfigError(f"generated block {name!r} has malformed markdown tables: " + "; ".join(problems))
    return text


def outer_table(result: dict[str, Any]) -> list[str]:
    """Markdown: per checkpoint with outer designs, each design's ECM over "+strat" [90 % CI] at "+strat"'s ``K``,
    the between share of the variance there and the gain it bounds (docs/theory.md §15.3)."""
    rows = []
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            o = c.get("outer")
            if not o:
                continue
            cells = []
            for d in ("stratified", "antithetic"):
                r = o["designs"].get(d)
                cells.append("-" if r is None else "{:.2f} [{:.2f}, {:.2f}]".format(*r["over_strat"]))
            rows.append(
                [w["workload"], f"{c['step']}/{w['training']['steps']}", o["K"], *cells]
                + [f"{o['between_share']:.2f}", f"{o['gain_bound']:.2f}", o["chosen"]]
            )
    header = ["workload", "step", "K", "stratified / +strat", "antithetic / +strat", "between share", "bound"]
    return md_table([*header, "+outer uses"], rows)
