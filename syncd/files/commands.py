"""The `syncd backup`, `restore`, `export` and `import` subcommands: their arguments and what they print."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TextIO

from syncd.config import Config
from syncd.errors import ConfigError

COMMANDS = ("backup", "restore", "export", "import")


def backup_lines(cfg: Config, to: Path | None, reason: str = "manual") -> list[str]:
    from syncd.files import backup

    result = backup.take(cfg, to, reason)
    m = result.manifest
    lines = [f"backup written: {result.path} ({len(m.files)} files, "
             f"{sum(f.size for f in m.files)} bytes, sha256 in manifest.json)"]
    if m.sqlite is not None:
        rows = sum(m.sqlite["tables"].values())
        lines.append(f"SQLite {m.sqlite['source']}: integrity_check {m.sqlite['integrity_check']}, "
                     f"{len(m.sqlite['tables'])} tables, {rows} rows")
    if m.chroma is not None:
        items = ", ".join(f"{k} {v}" for k, v in m.chroma["collections"].items()) or "no collection"
        lines.append(f"Chroma {m.chroma['source']}: integrity_check {m.chroma['integrity_check']}, {items}")
    lines += [f"removed old backup {p} (backup.keep = {cfg.backup.keep})" for p in result.pruned]
    return lines


async def auto_backup(cfg: Config, reason: str, out: TextIO | None = None) -> None:
    """The backup taken before `init` changes a store and before `cutover` / `rollback`
    (``backup.auto``); a store that is not there yet, or a Chroma known only by its URL, is skipped."""
    if not cfg.backup.auto:
        return
    sqlite = cfg.sqlite if cfg.sqlite is not None and cfg.sqlite.path.is_file() else None
    chroma = cfg.chroma if (cfg.chroma is not None and cfg.chroma.path is not None
                            and (cfg.chroma.path / "chroma.sqlite3").is_file()) else None
    if sqlite is None and chroma is None:
        return
    cfg = dataclasses.replace(cfg, sqlite=sqlite, chroma=chroma)
    for line in await asyncio.to_thread(backup_lines, cfg, None, reason):
        print(line, file=out or sys.stdout)


def status_line(cfg: Config) -> str:
    """For `syncd status`: the newest complete backup in ``backup.dir`` and how many there are."""
    from syncd.files.backup import PREFIX, backup_dir
    from syncd.files.manifest import MANIFEST

    directory = backup_dir(cfg)
    done = sorted(p for p in directory.iterdir() if p.name.startswith(PREFIX)
                  and (p / MANIFEST).is_file()) if directory.is_dir() else []
    if not done:
        return f"backups: none in {directory} (`syncd backup` takes one)"
    return f"backups: {len(done)} in {directory}, newest {done[-1].name}"


def export_lines(cfg: Config, args: argparse.Namespace) -> list[str]:
    from syncd.files.export import export

    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("--format parquet: pyarrow is not installed with this syncd; install it (pip "
                              "install 'syncd[parquet]') or use --format jsonl (the default)") from None
    m = export(cfg, args.to, tables=args.table, collections=args.collection, chunk_rows=args.chunk_rows,
               chunk_format=args.format)
    lines = [f"bundle written: {args.to} (format {m.get('format', 'syncd-export')} {m.get('version', 1)}, "
             f"{m.get('chunk_format', 'jsonl')} chunks, manifest.json)"]
    for t in m["tables"]:
        lines.append(f"table {t['name']}: {t['rows']} rows in {len(t['chunks'])} chunks")
    for c in m["collections"]:
        lines.append(f"collection {c['name']}: {c['rows']} items in {len(c['chunks'])} chunks, "
                     f"{c['dimension']}-d {c['space']}, log position {c['position']}")
    cap = (m.get("sqlite") or {}).get("capture")
    if m.get("sqlite") is not None:
        lines.append(f"SQLite capture position {cap['position']}: `syncd run` can continue from it after the "
                     "import" if cap else "SQLite has no change capture: the bundle is a copy, `syncd run` "
                     "cannot continue from it (run `syncd init` before exporting for that)")
    return lines


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.command == "export":
        for line in export_lines(cfg, args):
            print(line)
        return 0
    if args.command == "import":
        from syncd.files.importer import run_import
        from syncd.service.signals import run_async
        from syncd.verify.collections import CollectionOptions

        if args.verify_only and not args.verify:
            raise ConfigError("--verify-only and --no-verify: choose one")
        search = CollectionOptions(sample_size=args.sample_size, k=args.k, min_recall=args.min_recall,
                                   ef_search=args.ef_search)
        return run_async(run_import(cfg, args.bundle, batch_size=args.batch_size, workers=args.workers,
                                    skip_errors=args.skip_errors, update_existing=args.update_existing,
                                    verify=args.verify, verify_only=args.verify_only, search=search))
    if args.command == "backup":
        lines = backup_lines(cfg, args.to)
    else:
        from syncd.files.restore import restore

        lines = restore(cfg, args.backup, dry_run=args.dry_run)
    for line in lines:
        print(line)
    return 0
