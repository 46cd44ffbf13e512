"""Run a ``syncd`` command under :mod:`tracemalloc`, dumping snapshots as it goes.

    python -m bench.tracemem DIR [--every S] [--frames N] [--snapshot-every S] \
        -- --config syncd.toml run

For the soak (``python -m bench.soak --memory-dir DIR [--tracemalloc-frames N]``): every *S*
seconds (15) a thread appends one line to ``DIR/memory.csv``: seconds since start, the
process's RSS, glibc's bytes in use / free but kept / mmapped (``mallinfo2``), CPython's
allocated blocks, the objects the garbage collector tracks, the threads, and with
``--frames N`` > 0 tracemalloc's traced total, its peak and its own overhead; with tracing on,
every ``--snapshot-every`` seconds (300) it writes ``DIR/snap-<t>.pickle`` (a
:class:`tracemalloc.Snapshot`). RSS rising while malloc's bytes in use and the Python objects
stay flat is memory the allocator keeps (freed, not returned); the traced total or the object
count rising is Python objects, and comparing snapshots (:func:`compare`) names the
allocation sites. ``DIR/imports.log`` names the modules imported after start, with when
(a lazy import leaves its code objects behind for good).

    python -m bench.tracemem --compare DIR [--top 25]

prints the sites that grew most between the first snapshot after *--skip* seconds and the last;

    python -m bench.tracemem --summary DIR/memory.csv [--skip 120]

the first-third / last-third medians, range and slope per hour of every column.

A debugging harness, not part of the product: tracemalloc costs the daemon CPU and memory.
"""

from __future__ import annotations

import argparse
import csv as csv_module
import ctypes
import gc
import os
import pickle
import statistics
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from bench.stream_lag import slope

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def rss() -> tuple[int, int, int]:
    """(RSS, its anonymous part, its file-backed part: mapped libraries) in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields.get("RssAnon", 0), fields.get("RssFile", 0)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mallinfo() -> tuple[int, int, int, int]:
    """glibc's (bytes its arenas took from the system, of them in use, of them free but kept,
    bytes in mmapped chunks) over all arenas; zeros where mallinfo2 is missing."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return 0, 0, 0, 0
    fn.restype = _Mallinfo2
    info = fn()
    return int(info.arena), int(info.uordblks), int(info.fordblks), int(info.hblkhd)


HEADER = ("t,rss,rss_anon,rss_file,malloc_arena,malloc_used,malloc_free,malloc_mmap,"
          "pymalloc_blocks,gc_objects,threads,traced,traced_peak,tracemalloc_overhead\n")


def sampler(out: Path, every: float, snap_every: float, started: float) -> None:
    """One memory.csv line every *every* seconds; a snapshot every *snap_every* (tracing)."""
    next_snap = snap_every
    known = set(sys.modules)
    with (out / "memory.csv").open("a") as csv, (out / "imports.log").open("a") as imports:
        csv.write(HEADER)
        csv.flush()
        while True:
            time.sleep(every)
            t = time.monotonic() - started
            arena, used, free, mmapped = mallinfo()
            traced = peak = overhead = 0
            if tracemalloc.is_tracing():
                traced, peak = tracemalloc.get_traced_memory()
                overhead = tracemalloc.get_tracemalloc_memory()
            resident, anon, mapped = rss()
            csv.write(f"{t:.0f},{resident},{anon},{mapped},{arena},{used},{free},{mmapped},"
                      f"{sys.getallocatedblocks()},{len(gc.get_objects())},{threading.active_count()},{traced},{peak},"
                      f"{overhead}\n")
            csv.flush()
            new = sorted(set(sys.modules) - known)
            if new:
                known.update(new)
                imports.write(f"{t:.0f} {len(new)} {' '.join(new)}\n")
                imports.flush()
            if tracemalloc.is_tracing() and t >= next_snap:
                next_snap += snap_every
                snap = tracemalloc.take_snapshot()
                with (out / f"snap-{t:07.0f}.pickle").open("wb") as f:
                    pickle.dump(snap, f)
                del snap


def run(out: Path, every: float, snap_every: float, frames: int, argv: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    if frames > 0:
        tracemalloc.start(frames)
    threading.Thread(target=sampler, args=(out, every, snap_every, time.monotonic()),
                     daemon=True).start()
    from syncd.cli import main

    return main(argv)


def load(path: Path) -> tracemalloc.Snapshot:
    with path.open("rb") as f:
        snap: tracemalloc.Snapshot = pickle.load(f)
    return snap.filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ])


def compare(out: Path, skip: float, top: int, key: str) -> None:
    snaps = sorted(out.glob("snap-*.pickle"))
    times = [float(p.stem.split("-")[1]) for p in snaps]
    first = next((p for p, t in zip(snaps, times, strict=True) if t >= skip), snaps[0])
    last = snaps[-1]
    a, b = load(first), load(last)
    print(f"{first.name} -> {last.name}: traced {sum(s.size for s in a.statistics('filename')) / MIB:.2f}"
          f" -> {sum(s.size for s in b.statistics('filename')) / MIB:.2f} MiB")
    for stat in b.compare_to(a, key)[:top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
              f"(now {stat.size / 1024:8.1f} KiB {stat.count:7d})")
        for line in stat.traceback.format(limit=8 if key == "traceback" else 1):
            print(f"        {line}")


COLUMNS = (("rss", MIB), ("rss_anon", MIB), ("rss_file", MIB), ("malloc_arena", MIB),
           ("malloc_used", MIB), ("malloc_free", MIB), ("malloc_mmap", MIB),
           ("pymalloc_blocks", 1000), ("gc_objects", 1000), ("threads", 1), ("traced", MIB))


def summary(path: Path, skip: float) -> None:
    """Per column of *path* (a memory.csv) from *skip* seconds on: the medians of the first
    and the last third, the range and the least-squares slope per hour."""
    with path.open() as f:
        rows = [r for r in csv_module.DictReader(f) if float(r["t"]) >= skip]
    if len(rows) < 2:
        print(f"{path}: {len(rows)} samples after {skip:.0f} s")
        return
    t = [float(r["t"]) for r in rows]
    third = max(1, len(rows) // 3)
    print(f"{path}: {len(rows)} samples, t {t[0]:.0f}-{t[-1]:.0f} s")
    for col, unit in COLUMNS:
        if col not in rows[0]:
            continue
        ys = [float(r[col]) for r in rows]
        if not any(ys):
            continue
        name = "MiB" if unit == MIB else "k" if unit == 1000 else ""
        first, last = statistics.median(ys[:third]), statistics.median(ys[-third:])
        print(f"  {col:16s} {first / unit:8.2f} -> {last / unit:8.2f} {name:3s} (first -> last "
              f"third)  range {min(ys) / unit:8.2f}-{max(ys) / unit:8.2f}  "
              f"slope {slope(list(zip(t, ys, strict=True))) * 3600 / unit:+8.2f} {name}/h")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--summary":
        ap = argparse.ArgumentParser(prog="python -m bench.tracemem --summary")
        ap.add_argument("csv", type=Path, nargs="+")
        ap.add_argument("--skip", type=float, default=120.0)
        args = ap.parse_args(sys.argv[2:])
        for path in args.csv:
            summary(path, args.skip)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--compare":
        ap = argparse.ArgumentParser(prog="python -m bench.tracemem --compare")
        ap.add_argument("dir", type=Path)
        ap.add_argument("--skip", type=float, default=120.0)
        ap.add_argument("--top", type=int, default=25)
        ap.add_argument("--key", default="lineno", choices=("lineno", "traceback", "filename"))
        args = ap.parse_args(sys.argv[2:])
        compare(args.dir, args.skip, args.top, args.key)
        return 0
    if "--" not in sys.argv:
        print("usage: python -m bench.tracemem DIR [--every S] [--frames N] -- SYNCD ARGS",
              file=sys.stderr)
        return 2
    split = sys.argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m bench.tracemem")
    ap.add_argument("dir", type=Path)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between memory.csv lines")
    ap.add_argument("--snapshot-every", type=float, default=300.0,
                    help="seconds between tracemalloc snapshots")
    ap.add_argument("--frames", type=int, default=0,
                    help="tracemalloc traceback depth (0: tracemalloc off, memory.csv only)")
    args = ap.parse_args(sys.argv[1:split])
    return run(args.dir, args.every, args.snapshot_every, args.frames, sys.argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
