"""threshold + balance + subset on 1,000,000 scored rows in 20 shards, vs. pandas in memory.

The rows carry judge-like scores (multiples of 0.1) and 16 categories with a
long tail (two categories under the minimum count). avcurate runs the three
stages through its real runner and CLI (DuckDB for the global balance
decision, shard-by-shard Arrow for the rest); the baseline is a
straightforward pandas implementation of the same rules that reads every
shard into one DataFrame and writes the same outputs (kept, rejected, subset).
Both run in their own process, timed and sampled for peak RSS in the same run.
Targets on a 2-core machine: under 5 s, under 1.5 GB peak RSS, faster than pandas.

    python benchmarks/bench_balance.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _util import measure

N_SHARDS = 20
PANDAS_BASELINE = r'''
import sys, pandas as pd, numpy as np
src, out = sys.argv[1], sys.argv[2]
df = pd.concat([pd.read_parquet(f) for f in sorted(__import__("glob").glob(src + "/part-*.parquet"))],
               ignore_index=True)
eps = 1e-9
ok = ((df.answer_accuracy - 1).abs() <= eps) & (df.question_logic >= 0.8 - eps) & \
     (df.composite_score >= 0.7 - eps)
kept, rejected = df[ok].copy(), [df[~ok]]
counts = kept.category.value_counts()
survivors = counts[counts >= 10].sort_values(ascending=False)
rejected.append(kept[~kept.category.isin(survivors.index)])
kept = kept[kept.category.isin(survivors.index)]
if len(survivors) >= 2:
    top, cap = survivors.index[0], int(np.floor(3 * survivors.iloc[1]))
    big = kept[kept.category == top].copy()
    big["both"] = (big.video_dependency >= 1 - eps) & (big.audio_dependency >= 1 - eps)
    big = big.sort_values(["both", "composite_score", "id"], ascending=[False, False, True])
    rejected.append(big.iloc[cap:].drop(columns="both"))
    kept = pd.concat([kept[kept.category != top], big.iloc[:cap].drop(columns="both")])
kept["subset_audio_visual"] = (kept.video_dependency >= 0.7 - eps) & (kept.audio_dependency >= 0.7 - eps)
kept.to_parquet(out + "/kept.parquet")
pd.concat(rejected).to_parquet(out + "/rejected.parquet")
kept[kept.subset_audio_visual].to_parquet(out + "/subset.parquet")
print(len(kept), len(kept[kept.subset_audio_visual]))
'''


def make_rows(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, 15) ** 1.3
    cats = rng.choice(14, size=n - 10, p=weights / weights.sum())
    category = np.concatenate([cats.astype(str), ["14"] * 5, ["15"] * 5])
    score = lambda p: rng.choice(np.arange(11) / 10, size=n, p=p)  # noqa: E731
    skew = np.array([1, 1, 1, 2, 2, 3, 5, 8, 12, 15, 50], float)
    vd, ad, ql = score(skew / skew.sum()), score(skew / skew.sum()), score(skew / skew.sum())
    aa = np.where(rng.random(n) < 0.8, 1.0, rng.choice(np.arange(10) / 10, size=n))
    ids = np.char.add("r", np.arange(n).astype(str))
    return pa.table({
        "id": ids, "source": ["bench"] * n, "video": np.char.add(ids, ".mp4"),
        "audio": pa.nulls(n, pa.string()), "question": np.char.add("question ", ids),
        "options": pa.array([["a", "b", "c", "d"]] * n, pa.list_(pa.string())),
        "answer": ["A"] * n, "duration_s": np.full(n, 10.0), "meta": ["{}"] * n,
        "category": pa.array([f"cat_{c}" for c in category]),
        "video_dependency": vd, "audio_dependency": ad, "question_logic": ql,
        "answer_accuracy": aa, "composite_score": (vd + ad + ql + aa) / 4,
    })


def make_run(root: Path, rows: int) -> Path:
    """A run folder whose 00-ingest holds the scored rows in 20 shards.

    Ingest from a Parquet file (extra_columns pass the scores through), then
    the stages are appended by the timed command, which resumes the ingest.
    """
    table = make_rows(rows)
    pq.write_table(table, root / "scored.parquet")
    scores = {c: "double" for c in ("video_dependency", "audio_dependency", "question_logic",
                                    "answer_accuracy", "composite_score")}
    extra = ", ".join(f'{k} = "{v}"' for k, v in ({"category": "string"} | scores).items())
    head = (f'[run]\nshard_size = {-(-rows // N_SHARDS)}\nworkers = 1\n[[sources]]\n'
            f'name = "parquet"\nannotations = "scored.parquet"\nmedia_root = "."\n'
            f'extra_columns = {{ {extra} }}\n')
    (root / "ingest.toml").write_text(head)
    (root / "funnel.toml").write_text(
        head + '[[stages]]\nname = "threshold"\n[[stages]]\nname = "balance"\nmax_ratio = 3\n'
               'min_count = 10\n[[stages]]\nname = "subset"\n')
    print(f"ingesting {rows:,} rows into {N_SHARDS} shards (not timed)...", flush=True)
    measure([sys.executable, "-m", "avcurate", "run", str(root / "ingest.toml"), "--out",
             str(root / "run"), "-q"])
    return root / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = make_run(root, args.rows)
        ours, ours_rss = measure([sys.executable, "-m", "avcurate", "run",
                                  str(root / "funnel.toml"), "--out", str(run_dir), "-q"])
        (root / "pandas").mkdir()
        script = root / "baseline.py"
        script.write_text(PANDAS_BASELINE)
        base, base_rss = measure([sys.executable, str(script), str(run_dir / "00-ingest"),
                                  str(root / "pandas")])
        manifest = json.loads((run_dir / "manifest.json").read_text())
        stage_s = {s["name"]: s["seconds"] for s in manifest["stages"][1:]}
        kept = manifest["stages"][-2]["kept"]
        pandas_kept = pq.ParquetFile(root / "pandas/kept.parquet").metadata.num_rows
    print(f"{args.rows:,} rows, {N_SHARDS} shards; kept after balance: {kept:,} "
          f"(pandas: {pandas_kept:,}{', same' if kept == pandas_kept else ', DIFFERENT'})")
    print(f"avcurate threshold+balance+subset: {ours:.2f} s wall "
          f"(stages {', '.join(f'{k} {v:.2f}s' for k, v in stage_s.items())}), "
          f"peak RSS {ours_rss / 2**20:.0f} MiB")
    print(f"pandas in memory:                  {base:.2f} s wall, peak RSS {base_rss / 2**20:.0f} MiB")
    print(f"speed-up vs pandas: {base / ours:.2f}x; memory ratio: {ours_rss / base_rss:.2f}")
    print(f"targets: < 5 s {'met' if ours < 5 else 'NOT met'}; < 1.5 GB "
          f"{'met' if ours_rss < 1.5 * 2**30 else 'NOT met'}; faster than pandas "
          f"{'met' if ours < base else 'NOT met'}")


if __name__ == "__main__":
    main()
