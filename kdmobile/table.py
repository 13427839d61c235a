"""Plain-text and Markdown tables for the terminal and reports (no dependency, aligned columns)."""

from __future__ import annotations

from typing import Any, Sequence


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Render rows under headers; `markdown=True` gives a GitHub table."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if markdown:
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
        return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


# Short names of int8 formats for narrow tables (the manifest keeps the full recipe name).
QUANT_SHORT = {"dynamic_wi8_afp32": "dynamic", "static_wi8_ai8": "static"}


def precision_label(precision: str, quantization: str | None, short: bool = True) -> str:
    """'int8 (w8a32)', 'int8 (dynamic)': the precision with the int8 format that was chosen, or just the precision."""
    if precision != "int8" or not quantization or quantization in ("none", precision):
        return precision
    return f"{precision} ({QUANT_SHORT.get(quantization, quantization) if short else quantization})"


def _shorten(text: str, width: int, middle: bool) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if middle:
        head = (width - 1) // 3  # the end tells rows apart (…-onnx-int8, …/teacher:NAME): keep more of it
        return text[:head] + "…" + text[len(text) - (width - 1 - head):]
    return text[: width - 1] + "…"


def fit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 120,
              squeeze: Sequence[int] = (0,), middle: Sequence[int] = (0,), min_width: int = 8) -> str:
    """format_table, with the cells of the `squeeze` columns shortened (…) until no line is wider than `width`.

    The widest squeezable column gives up one character at a time; `middle` columns keep both ends, mostly the end
    (model names differ there), the others keep the start. Gives up (returns the table as is) at `min_width` per column.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    while True:
        text = format_table(headers, cells)
        if max(map(len, text.splitlines())) <= width:
            return text
        widths = {i: max([len(headers[i]), *(len(r[i]) for r in cells)]) for i in squeeze}
        col = max(widths, key=lambda i: widths[i])
        target = max(widths[col] - 1, len(headers[col]), min_width)
        if target >= widths[col]:
            return text
        cells = [[_shorten(c, target, i in middle) if i == col else c for i, c in enumerate(r)] for r in cells]


def fit_table_notes(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 120,
                    movable: Sequence[int] = (), min_cell: int = 12) -> str:
    """format_table where, while a line is wider than `width`, the longest cell of the `movable` columns becomes a
    reference `[k]` and its full text goes, wrapped to `width`, under the table: nothing is lost, all fits."""
    import textwrap

    cells = [[_cell(v) for v in row] for row in rows]
    notes: list[str] = []
    while max(map(len, format_table(headers, cells).splitlines())) > width:
        longest = max(((len(r[i]), n, i) for n, r in enumerate(cells) for i in movable), default=(0, 0, 0))
        size, n, i = longest
        if size < min_cell:
            break
        notes.append(cells[n][i])
        cells[n][i] = f"[{len(notes)}]"
    lines = [format_table(headers, cells)]
    lines += [textwrap.fill(f"[{k}] {text}", width, subsequent_indent="    ") for k, text in enumerate(notes, 1)]
    return "\n".join(lines)
