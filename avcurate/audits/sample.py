"""What an audit looks at: the rows the score stage rated, and a stratified sample of them.

The sample is stratified by category and by the first judge's composite-score bucket, so
a 200-row audit still sees the rare categories and the borderline scores rather than
mostly the large categories with typical scores.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avcurate.core.store import RunStore

BUCKET_EDGES = (0.25, 0.5, 0.75)  # composite buckets: [0, .25) [.25, .5) [.5, .75) [.75, 1]
NO_CATEGORY = "(none)"


class AuditError(ValueError):
    """An audit that cannot run as asked; the message is one line for the user."""


def score_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's (latest) finished score stage: the first judge."""
    entries = [e for e in manifest.get("stages", []) if e["name"] == "score"]
    if not entries:
        raise AuditError("this run has no finished score stage to audit; run `avcurate score` "
                         "first")
    return entries[-1]


def scored_rows(store: RunStore, entry: dict[str, Any]) -> pa.Table:
    """The rows the score stage kept (each with the first judge's scores), with `category`
    (from a later classify stage when the run has one) and the composite `bucket`."""
    table = pq.read_table(store.shards(store.root / entry["dir"]))
    if "category" not in table.column_names:
        table = table.append_column("category", pa.array(_categories(store, entry, table),
                                                         pa.string()))
    return with_strata(table)


def with_strata(table: pa.Table) -> pa.Table:
    """`category` with nulls as '(none)', and `bucket` (the composite score's quarter, 0
    when the rows were not scored), the columns the sample is stratified by."""
    if "category" in table.column_names:
        category = pc.fill_null(table.column("category"), NO_CATEGORY)
        table = table.set_column(table.schema.get_field_index("category"), "category", category)
    else:
        table = table.append_column("category", pa.array([NO_CATEGORY] * table.num_rows,
                                                          pa.string()))
    buckets = (bucket_of(table.column("composite_score")) if "composite_score" in
               table.column_names else [0] * table.num_rows)
    table = table.drop_columns([c for c in ("bucket",) if c in table.column_names])
    return table.append_column("bucket", pa.array(buckets, pa.int64()))


def _categories(store: RunStore, entry: dict[str, Any], table: pa.Table) -> list[str | None]:
    """Each row's category from the stages after the score stage (kept or rejected rows)."""
    found: dict[str, str] = {}
    for stage_dir in store.stage_dirs():
        if store.stage_number(stage_dir) <= entry["index"]:
            continue
        for path in store.shards(stage_dir) + store.rejects(stage_dir):
            if "category" not in pq.read_schema(path).names:
                continue
            part = pq.read_table(path, columns=["id", "category"]).to_pydict()
            for i, c in zip(part["id"], part["category"], strict=True):
                if c is not None:
                    found.setdefault(i, c)
    return [found.get(i) for i in table.column("id").to_pylist()]


def bucket_of(composite: pa.ChunkedArray | pa.Array) -> list[int]:
    """0-3: which quarter of [0, 1] each composite score falls in."""
    values = np.nan_to_num(pc.fill_null(composite, 0.0).to_numpy(zero_copy_only=False))
    return np.searchsorted(BUCKET_EDGES, values, side="right").tolist()


def parse_sample(text: str) -> int | None:
    """'200' -> 200, 'all' -> None; anything else is a one-line error."""
    if text.strip().lower() == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise AuditError(f"--sample takes a number of rows or 'all', not {text!r}") from None
    if n < 1:
        raise AuditError(f"--sample must be at least 1, not {n}")
    return n


def allocate(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    """Rows to draw per stratum: one from each (the largest first when n is smaller than
    the number of strata), the rest in proportion to size (largest remainder), never more
    than a stratum holds."""
    order = sorted(sizes, key=lambda k: (-sizes[k], str(k)))
    quota = {k: 0 for k in sizes}
    for k in order[:n]:
        quota[k] = 1
    left = n - sum(quota.values())
    spare = {k: sizes[k] - quota[k] for k in sizes}
    total = sum(spare.values())
    if left <= 0 or total == 0:
        return quota
    exact = {k: left * spare[k] / total for k in sizes}
    for k in sizes:
        quota[k] += int(exact[k])
    rest = left - sum(int(v) for v in exact.values())
    for k in sorted(sizes, key=lambda k: (-(exact[k] - int(exact[k])), str(k)))[:rest]:
        quota[k] += 1
    return {k: min(q, sizes[k]) for k, q in quota.items()}


def stratified(table: pa.Table, n: int | None, seed: int,
               by: tuple[str, ...] = ("category", "bucket")) -> pa.Table:
    """A stratified random sample of `n` rows (all rows when n is None or too large),
    in the table's order. The same seed gives the same sample."""
    if n is None or n >= table.num_rows:
        return table
    keys = list(zip(*(table.column(c).to_pylist() for c in by), strict=True))
    quota = allocate(Counter(keys), n)
    taken: Counter = Counter()
    picked = []
    for i in np.random.default_rng(seed).permutation(table.num_rows).tolist():
        if taken[keys[i]] < quota[keys[i]]:
            taken[keys[i]] += 1
            picked.append(i)
    return table.take(sorted(picked))


def strata(table: pa.Table) -> dict[str, int]:
    """Rows per 'category / composite bucket' stratum, for the audit summary."""
    names = ("<0.25", "0.25-0.5", "0.5-0.75", ">=0.75")
    keys = zip(table.column("category").to_pylist(), table.column("bucket").to_pylist(),
               strict=True)
    return {f"{c} / {names[b]}": k for (c, b), k in sorted(Counter(keys).items())}

