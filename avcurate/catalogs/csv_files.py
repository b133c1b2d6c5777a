"""Records of a CSV or TSV file: one per line after the header, which names the columns.
The separator is a tab for .tsv, else the one the header uses (`,`, `;` or a tab).

Read with the standard library's `csv` module, streaming, every cell kept as the text it
is: a type-guessing reader (pyarrow's, pandas') would turn a video id `0007` into 7 and
the path template `{vid}.mp4` would name the wrong file. An empty cell is a missing value
(None). A line with more cells than the header names is a `BadLine`, rejected with its
number; one with fewer leaves the last columns missing.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from avcurate.catalogs.base import BadLine, check_text

TAB_SUFFIXES = (".tsv", ".tab")


def _opened(path: str | os.PathLike):
    # utf-8-sig: the byte-order mark a spreadsheet's "CSV UTF-8" export starts with;
    # surrogateescape keeps other bytes for `text()` to reject in their record alone
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _dialect(path: str | os.PathLike) -> dict[str, str]:
    """Tabs for .tsv; else the separator the header line uses most of `,`, `;` and tab (a
    spreadsheet saves "CSV" with `;` where the comma is the decimal mark: much of Europe)."""
    if Path(path).suffix.lower() in TAB_SUFFIXES:
        return {"delimiter": "\t"}
    with _opened(path) as f:
        return {"delimiter": header_delimiter(f.readline())}


def header_delimiter(header: str) -> str:
    """The separator a CSV's header line uses most of `,`, `;` and a tab (`,` when none)."""
    return max(",;\t", key=header.count) if any(map(header.count, ",;\t")) else ","


def csv_header(path: str | os.PathLike) -> list[str]:
    """The column names on the file's first line (ValueError for a file that is not text
    or has no header)."""
    check_text(Path(path))
    with _opened(path) as f:
        header = next(csv.reader(f, **_dialect(path)), None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path} has no header line naming its columns")
    return [h.strip() for h in header]


def csv_records(path: str | os.PathLike) -> Iterator[dict | BadLine]:
    """Each line's cells by column name, lazily."""
    header = csv_header(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a long rationale in one cell
    with _opened(path) as f:
        dialect = _dialect(path)
        reader = csv.reader(f, **dialect)
        next(reader)
        for cells in reader:
            if not cells:
                continue  # a blank line
            if len(cells) > len(header):
                line = dialect["delimiter"].join(cells)[:2000]
                yield BadLine(reader.line_num, line, f"has {len(cells)} cells where the header "
                              f"names {len(header)} columns")
                continue
            cells += [""] * (len(header) - len(cells))
            yield {name: (cell if cell != "" else None) for name, cell in zip(header, cells, strict=True)}
