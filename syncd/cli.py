"""syncd's command line: parse, call, print. No logic lives here."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from syncd import __version__
from syncd.errors import ConfigError, SyncdError, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncd", description=__doc__)
    p.add_argument("--config", "-c", type=Path, help="config file (default: $SYNCD_CONFIG)")
    p.add_argument("--log-level", default=os.environ.get("SYNCD_LOG_LEVEL", "info"))
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="validate config, create target schema, install capture")
    r = sub.add_parser("run", help="the daemon: snapshot, catch-up, streaming")
    r.add_argument("--until-caught-up", action="store_true",
                   help="exit 0 once every stream has copied its snapshot and has no pending change "
                        "(3 if a signal stops it first, 4 if --timeout runs out)")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --until-caught-up: stop and exit 4 if not caught up within SECONDS")
    s = sub.add_parser("status", help="per stream: phase, positions, pending, lag, rejects")
    s.add_argument("--json", action="store_true")
    sub.add_parser("uninstall", help="remove capture triggers and the changelog from the sources")
    rj = sub.add_parser("rejects", help="list rows that could not be written")
    rj.add_argument("--json", action="store_true")
    rj.add_argument("--limit", type=int, default=100)
    v = sub.add_parser("verify", help="compare the sources with PostgreSQL; exit 0 only if all match")
    v.add_argument("--json", action="store_true")
    v.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable)")
    v.add_argument("--collection", action="append", metavar="NAME", help="only this collection (repeatable)")
    v.add_argument("--chunk-rows", type=int, default=None, help="rows per checksum chunk (default 5000)")
    v.add_argument("--counts", action="store_true", help="row counts only (the quick cutover check)")
    v.add_argument("--sample-size", type=int, default=None, metavar="N",
                   help="query vectors per collection for search parity (default 20; 0 with --counts)")
    v.add_argument("--k", type=int, default=10, help="top-k of the search parity queries (default 10)")
    v.add_argument("--ef-search", type=int, default=None, metavar="N",
                   help="hnsw.ef_search of the pgvector queries (default: the collection's ef_search, 100)")
    v.add_argument("--min-recall", type=float, default=0.9,
                   help="recall@k of pgvector's HNSW index vs exact search below this fails (default 0.9)")
    for name, what in (("cutover", "switch the app to PostgreSQL: fence, drain, flip its config, reload"),
                       ("rollback", "switch the app back to SQLite/Chroma, losing nothing")):
        c = sub.add_parser(name, help=what)
        c.add_argument("--dry-run", action="store_true", help="run the preflight and print the plan only")
        c.add_argument("--resume", action="store_true", help=f"finish a {name} that stopped part-way")
        c.add_argument("--json", action="store_true")
    from syncd.files import commands as files

    files.add_parsers(sub)
    e = sub.add_parser("embedded", help="the embedded PostgreSQL (target.dsn = \"embedded\") on its own")
    e.add_argument("action", choices=("start", "stop", "dsn"),
                   help="start it and leave it running, stop it, or print its DSN and the psql command")
    fa = sub.add_parser("config", help="write syncd.toml from the app's own config (.env, YAML, TOML)")
    fa.add_argument("--from-app", action="append", type=Path, required=True, metavar="FILE",
                    help="the app's config file (repeatable)")
    fa.add_argument("--target", default=None, metavar="DSN", help="the PostgreSQL the app moves to")
    fa.add_argument("--write", type=Path, default=Path("syncd.toml"), metavar="FILE")
    fa.add_argument("--force", action="store_true", help="replace an existing --write file")
    fa.add_argument("--state-dir", default=None, metavar="DIR", help="syncd's [state] dir")
    fa.add_argument("--password-env", default="SYNCD_TARGET_PASSWORD", metavar="NAME",
                    help="the environment variable that holds the target's password")
    d = sub.add_parser("demo", help="try syncd on a generated app database and the embedded Postgres")
    d.add_argument("--dir", type=Path, default=None, help="demo directory (default: a new temp dir)")
    return p


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("SYNCD_CONFIG")
    if env:
        return Path(env)
    raise ConfigError("no config: pass --config FILE or set SYNCD_CONFIG")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from syncd.service import logs
    from syncd.streams import commands

    try:
        logs.configure(args.log_level)
        if args.command == "demo":
            from syncd.demo.run import run_demo

            return asyncio.run(run_demo(args.dir))
        if args.command == "config":
            from syncd.cutover import from_app

            return from_app.command(args.from_app, args.target, args.write, force=args.force,
                                    state_dir=args.state_dir, password_env=args.password_env)
        from syncd import config as config_mod

        cfg = config_mod.load(_config_path(args))
        if args.command == "run" and args.timeout is not None and (not args.until_caught_up
                                                                  or args.timeout <= 0):
            raise ConfigError("--timeout: needs --until-caught-up and a number of seconds > 0")
        if args.command == "embedded":
            from syncd.stores.postgres.embedded import command as embedded_command

            return embedded_command(cfg, args.action)
        if args.command == "init":
            return asyncio.run(commands.init(cfg))
        if args.command == "run":
            return asyncio.run(commands.run(cfg, until_caught_up=args.until_caught_up, timeout=args.timeout))
        if args.command == "status":
            return asyncio.run(commands.status(cfg, as_json=args.json))
        if args.command == "uninstall":
            return asyncio.run(commands.uninstall(cfg))
        if args.command == "verify":
            return asyncio.run(commands.verify(cfg, as_json=args.json, tables=args.table,
                                               collections=args.collection, chunk_rows=args.chunk_rows,
                                               counts_only=args.counts, sample_size=args.sample_size,
                                               k=args.k, min_recall=args.min_recall,
                                               ef_search=args.ef_search))
        if args.command in ("cutover", "rollback"):
            from syncd.cutover.command import command

            return asyncio.run(command(args.command, cfg, dry_run=args.dry_run, resume=args.resume,
                                       as_json=args.json))
        if args.command in ("backup", "restore"):
            from syncd.files import commands as files

            return files.run(args, cfg)
        if args.command == "rejects":
            return asyncio.run(commands.rejects(cfg, as_json=args.json, limit=args.limit))
    except ConfigError as exc:
        print(f"syncd: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SyncdError as exc:
        print(f"syncd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # a bug: still one line, never a password
        print(f"syncd: internal error: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        if os.environ.get("SYNCD_DEBUG"):
            raise
        return EXIT_FAILED
    return EXIT_USAGE


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
