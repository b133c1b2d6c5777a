"""What the probe measured: accuracy per condition and category, pass rates, blind share,
and how the judge's dependency scores agree with the measured ones."""

from __future__ import annotations

from typing import Any

from avcurate.curation.probe import CONDITIONS

PAIRS = (("video_dependency", "measured_video_dependency"),
         ("audio_dependency", "measured_audio_dependency"))
MAX_POINTS = 2000  # points drawn in a scatter plot (a sample of larger runs)


def probe_summary(con, views: list[str]) -> dict[str, Any]:
    """{} when the run has no probe stage; else the figures `avcurate stats` shows."""
    if "probe" not in views:
        return {}
    cols = {r[0] for r in con.execute('DESCRIBE "probe"').fetchall()}
    probed = "FROM probe WHERE probe_n IS NOT NULL"
    accs = ", ".join(f"avg(probe_acc_{c})" for c in CONDITIONS)
    n, *overall = con.execute(f"SELECT count(*), {accs} {probed}").fetchone()
    if not n:
        return {"rows": 0}
    out: dict[str, Any] = {
        "rows": n,
        "accuracy": dict(zip(CONDITIONS, overall, strict=True)),
        "pass_rate_histogram": {f"{p:.3f}": k for p, k in con.execute(
            f"SELECT round(pass_rate, 3), count(*) {probed} AND pass_rate IS NOT NULL "
            "GROUP BY 1 ORDER BY 1").fetchall()},
        "blind_answerable_share": con.execute(
            f"SELECT avg((blind_answerable > 0)::INT), avg((blind_answerable > 0.25)::INT) "
            f"{probed} AND blind_answerable IS NOT NULL").fetchone(),
        "unparsed": con.execute(f"SELECT sum(probe_unparsed) {probed}").fetchone()[0],
        "answers": con.execute("SELECT sum(probe_n * ({})) {}".format(
            " + ".join(f"(probe_acc_{c} IS NOT NULL)::INT" for c in CONDITIONS), probed)
                               ).fetchone()[0],
        # kept rows the probe asked nothing: open-ended questions have no letter to grade
        "not_probed": con.execute("SELECT count(*) FROM probe WHERE probe_n IS NULL"
                                  ).fetchone()[0],
    }
    out["blind_answerable_share"] = dict(zip(("above_chance", "above_0.25"),
                                             out["blind_answerable_share"], strict=True))
    if "category" in cols:
        out["by_category"] = {str(c): dict(zip(("rows", *CONDITIONS), rest, strict=True))
                              for c, *rest in con.execute(
            f"SELECT coalesce(category, '(none)'), count(*), {accs} {probed} "
            "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()}
    out["judge_vs_measured"] = _agreement(con, cols, probed)
    return out


def _agreement(con, cols: set[str], probed: str) -> dict[str, Any]:
    """Spearman's rho between the judge's and the measured dependency (scipy), with points
    for the scatter plot; {} when the run was not scored."""
    from scipy.stats import spearmanr

    out = {}
    for judge, measured in PAIRS:
        if judge not in cols:
            continue
        points = con.execute(f"SELECT {judge}, {measured} {probed} AND {judge} IS NOT NULL "
                             f"AND {measured} IS NOT NULL ORDER BY id").fetchall()
        if len(points) < 3:
            continue
        xs, ys = zip(*points, strict=True)
        rho = spearmanr(xs, ys).statistic if len(set(xs)) > 1 and len(set(ys)) > 1 else None
        step = max(1, len(points) // MAX_POINTS)
        out[judge.split("_")[0]] = {"spearman": None if rho is None else float(rho),
                                    "n": len(points), "points": points[::step]}
    return out
