"""syncd's command line: parse, call, print. No logic lives here.

Every way out is one line on stderr (or the command's own report on stdout) and an exit
code from :mod:`syncd.exitcodes`: a config or argument error (2), a failure (1), verify's
quarantined rows (5), a signal (128 + N). Never a traceback, never a password.
"""

from __future__ import annotations

import signal
import sys

from syncd.service import signals  # first, so that a signal during start-up is one line too

signals.install()

import argparse  # noqa: E402 - after the signal handlers, on purpose
import json  # noqa: E402
import os  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

from syncd import __version__, exitcodes  # noqa: E402
from syncd.errors import ConfigError, SyncdError, redact  # noqa: E402
from syncd.service.signals import Interrupted, run_async  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = exitcodes.OK, exitcodes.FAILED, exitcodes.USAGE

DESCRIPTION = """\
Move a live app from SQLite + ChromaDB to PostgreSQL + pgvector without losing a write:
copy everything once, stream every change after, check that both sides hold the same
data, then switch the app over (and back, if need be).

A first try, on a generated database:   syncd demo
On your app:  write a config (config.example.toml), then
  syncd -c syncd.toml init          create the target tables, install change capture
  syncd -c syncd.toml run           copy, then stream (the daemon; systemd runs it)
  syncd -c syncd.toml status        where every stream stands
  syncd -c syncd.toml verify        compare SQLite/Chroma with PostgreSQL
  syncd -c syncd.toml cutover       switch the app to PostgreSQL"""

EPILOG = """\
Exit codes: 0 done; 1 failed (the line says what and where); 2 the config or the command
line is wrong (the line names the key or option); 3 and 4 `run --until-caught-up` stopped by
a signal or its --timeout before it caught up; 5 verify found only quarantined rows;
128+N another command stopped by signal N (130: Ctrl-C, 143: SIGTERM).
Docs: README.md, docs/operations.md ("When something is wrong")."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and a pointer to the help."""

    def error(self, message: str) -> NoReturn:
        print(f"syncd: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(exitcodes.USAGE)


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _ef_search(text: str) -> int:
    value = _at_least(1)(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000 (pgvector's range), got {value}")
    return value


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-c/--config and --log-level, accepted before or after the command."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("-c", "--config", type=Path, metavar="FILE", default=default,
                        help="syncd's config file (default: $SYNCD_CONFIG)")
    parser.add_argument("--log-level", metavar="LEVEL", choices=("debug", "info", "warning", "error"),
                        default=None if top else argparse.SUPPRESS,
                        help="debug, info, warning or error (default: $SYNCD_LOG_LEVEL, else info for "
                             "`run` and warning for the other commands); logs go to stderr")


def _sub(sub: Any, name: str, summary: str, details: str, examples: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary}.\n\n{details}" if details else summary + ".",
        epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, top=False)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="syncd", description=DESCRIPTION, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, top=True)
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _sub(sub, "init", "create or adopt the target tables and install change capture",
         "Checks the config against both stores first. Safe to run again: it only adds what is\n"
         "missing. Needs write access to the SQLite file and its directory.",
         "  syncd -c /etc/syncd/syncd.toml init")
    r = _sub(sub, "run", "the daemon: copy everything, then stream every change until stopped",
             "SIGTERM or Ctrl-C stops it after the current batch (a second signal at once).\n"
             "JSON log lines on stderr; progress bars and a summary when stderr is a terminal.",
             "  syncd -c syncd.toml run\n"
             "  syncd -c syncd.toml run --until-caught-up && syncd -c syncd.toml verify")
    r.add_argument("--until-caught-up", action="store_true",
                   help="exit once the copy is done and no change is pending: 0 caught up, 3 if a "
                        "signal stops it first, 4 if --timeout runs out (for scripts and first runs)")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --until-caught-up: stop and exit 4 if not caught up within SECONDS")
    s = _sub(sub, "status", "where every stream stands: phase, position, pending changes, lag, rejects",
             "Asks the running daemon (health.listen) and falls back to the stores themselves, so\n"
             "it works with the daemon stopped.",
             "  syncd -c syncd.toml status\n"
             "  syncd status -c syncd.toml --json | jq '.streams[].lag_seconds'")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    _sub(sub, "uninstall", "remove change capture (triggers, changelog, fences) from the stores",
         "syncd's own state in PostgreSQL (schema syncd) and the copied tables are kept.",
         "  syncd -c syncd.toml uninstall")
    rj = _sub(sub, "rejects", "rows PostgreSQL could not take, quarantined in syncd.rejects",
              "A reject clears itself when the app changes the row in SQLite again (the new version\n"
              "is applied). --accept records that PostgreSQL may lack the row: the evidence stays\n"
              "in syncd.rejects, marked accepted, and verify no longer counts it.",
              "  syncd -c syncd.toml rejects\n"
              "  syncd -c syncd.toml rejects --accept 12 --accept 13 --reason 'test rows, not needed'\n"
              "  syncd -c syncd.toml rejects --accepted --json")
    rj.add_argument("--json", action="store_true", help="print JSON instead of text")
    rj.add_argument("--limit", type=_at_least(1), default=100, metavar="N",
                    help="list at most N rejects (default 100)")
    rj.add_argument("--accept", type=_at_least(1), action="append", metavar="ID",
                    help="accept reject #ID: PostgreSQL may lack that row (repeatable)")
    rj.add_argument("--reason", metavar="TEXT", default="",
                    help="why, recorded with --accept")
    rj.add_argument("--accepted", action="store_true", help="list accepted rejects instead of open ones")
    v = _sub(sub, "verify", "compare SQLite/Chroma with PostgreSQL row by row and vector by vector",
             "Exit 0: everything matches; 5: only rows quarantined in syncd.rejects differ;\n"
             "1: something else differs or could not be checked.",
             "  syncd -c syncd.toml verify\n  syncd -c syncd.toml verify --counts\n"
             "  syncd -c syncd.toml verify --table users --json")
    v.add_argument("--json", action="store_true", help="print JSON instead of text")
    v.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable)")
    v.add_argument("--collection", action="append", metavar="NAME", help="only this collection (repeatable)")
    v.add_argument("--chunk-rows", type=_at_least(2), default=None, metavar="N",
                   help="rows per checksum chunk (default 5000)")
    v.add_argument("--digest-rows", type=_at_least(0), default=None, metavar="N",
                   help="rows per key range compared by digest in both databases; ranges that differ "
                        "are compared row by row (default 10000; 0: every row in Python)")
    v.add_argument("--digest-workers", type=_at_least(0), default=None, metavar="N",
                   help="processes computing SQLite's digests in parallel (default: one per CPU, "
                        "at most 4; 0: none)")
    v.add_argument("--counts", action="store_true", help="compare row counts only (quick)")
    v.add_argument("--sample-size", type=_at_least(0), default=None, metavar="N",
                   help="query vectors per collection for search parity (default 20; 0: none)")
    v.add_argument("--k", type=_at_least(1), default=10, metavar="K",
                   help="top-k of the search parity queries (default 10)")
    v.add_argument("--ef-search", type=_ef_search, default=None, metavar="N",
                   help="hnsw.ef_search of the pgvector queries (default: the collection's, or 100)")
    v.add_argument("--min-recall", type=_fraction, default=0.9, metavar="R",
                   help="fail when pgvector's recall@k against exact search is below R (default 0.9)")
    for name, what, details in (
            ("cutover", "switch the app to PostgreSQL: fence the old stores, drain, flip its config, reload",
             "Needs the daemon running. Refuses, changing nothing, unless every stream is caught up."),
            ("rollback", "switch the app back to SQLite/Chroma, with every write it made meanwhile",
             "Needs the daemon running (it streams PostgreSQL back into the old stores).")):
        c = _sub(sub, name, what, details,
                 f"  syncd -c syncd.toml {name} --dry-run\n  syncd -c syncd.toml {name}\n"
                 f"  syncd -c syncd.toml {name} --resume")
        c.add_argument("--dry-run", action="store_true",
                       help="run the checks and print the plan; change nothing")
        c.add_argument("--resume", action="store_true", help=f"finish a {name} that stopped part-way")
        c.add_argument("--json", action="store_true", help="print JSON instead of text")
    b = _sub(sub, "backup", "copy the app's SQLite file and Chroma directory online, with a manifest",
             "A consistent copy while the app keeps writing (SQLite's backup API), checksummed.\n"
             "Also taken before init, cutover and rollback change a store (backup.auto).",
             "  syncd -c syncd.toml backup\n  syncd -c syncd.toml backup --to /srv/backups")
    b.add_argument("--to", type=Path, default=None, metavar="DIR",
                   help="write the backup under DIR (default: backup.dir, <state.dir>/backups)")
    rs = _sub(sub, "restore", "put the app's stores back as a backup holds them (app stopped)",
              "Checks every checksum first; refuses while the app or syncd holds the files.",
              "  syncd -c syncd.toml restore /var/lib/syncd/backups/2026-12-04T10-00-00 --dry-run")
    rs.add_argument("backup", type=Path, metavar="BACKUP", help="a directory `syncd backup` wrote")
    rs.add_argument("--dry-run", action="store_true",
                    help="check the backup and print what would be overwritten")
    ex = _sub(sub, "export", "write every table and collection as a bundle: chunked JSONL plus a manifest",
              "Reads the app consistently (one SQLite read transaction; Chroma at one log position) and\n"
              "writes nothing to it. Run it again after an interruption: it keeps the chunks written.",
              "  syncd -c syncd.toml export --to /srv/bundle\n"
              "  syncd -c syncd.toml export --to /srv/bundle --table users --table orders\n"
              "  head -1 /srv/bundle/collections/0000/000001.jsonl | jq .")
    ex.add_argument("--to", type=Path, required=True, metavar="DIR", help="a new or empty directory")
    ex.add_argument("--table", action="append", metavar="NAME", help="only this table (repeatable)")
    ex.add_argument("--collection", action="append", metavar="NAME", help="only this collection (repeatable)")
    ex.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                    help="chunk file format: jsonl (the default) or parquet (needs pyarrow: "
                         "pip install 'syncd[parquet]'); import reads either")
    ex.add_argument("--chunk-rows", type=_at_least(1), default=None, metavar="N",
                    help="rows per chunk file (default: stream.chunk_rows)")
    im = _sub(sub, "import", "load a bundle into the target (PostgreSQL / pgvector), then verify it",
              "Checks every chunk's sha256 first; loads with binary COPY through the snapshot's sink,\n"
              "builds indexes after; resumable. A bundle with capture positions lets `syncd run` continue\n"
              "streaming from where the export read. Exit as verify: 0 equal, 5 only rejects differ.",
              "  syncd -c syncd.toml import /srv/bundle\n"
              "  syncd -c syncd.toml import /srv/bundle --batch-size 10000 --no-skip-errors\n"
              "  syncd -c syncd.toml import /srv/bundle && syncd -c syncd.toml run --until-caught-up\n"
              "  syncd -c syncd.toml import /srv/bundle --verify-only --ef-search 200")
    im.add_argument("bundle", type=Path, metavar="DIR", help="a directory `syncd export` wrote")
    im.add_argument("--batch-size", type=_at_least(1), default=None, metavar="N",
                    help="rows per COPY / transaction (default: stream.chunk_rows)")
    im.add_argument("--workers", type=_at_least(1), default=2, metavar="N",
                    help="chunk files read, checked and converted ahead of the load (default 2)")
    im.add_argument("--skip-errors", action=argparse.BooleanOptionalAction, default=True,
                    help="quarantine rows the target cannot hold in syncd.rejects (default); "
                         "--no-skip-errors stops at the first")
    im.add_argument("--update-existing", action="store_true",
                    help="upsert into tables that already hold rows (default: refuse them)")
    im.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip comparing the target with the bundle after the load (hashes, search)")
    im.add_argument("--verify-only", action="store_true",
                    help="load nothing: compare the target with the bundle again (after an import)")
    im.add_argument("--sample-size", type=_at_least(0), default=None, metavar="N",
                    help="bundle items queried per collection for search parity (default 20; 0: none)")
    im.add_argument("--k", type=_at_least(1), default=10, metavar="K",
                    help="top-k of the search parity queries (default 10)")
    im.add_argument("--ef-search", type=_ef_search, default=None, metavar="N",
                    help="hnsw.ef_search (ivfflat.probes) of the index queries (default: the "
                         "collection's, or 100; ivfflat: every list)")
    im.add_argument("--min-recall", type=_fraction, default=0.9, metavar="R",
                    help="a difference when the index's recall@k against exact search is below R "
                         "(default 0.9)")
    e = _sub(sub, "embedded", "the embedded PostgreSQL (target.dsn = \"embedded\") on its own",
             "Look at the target without running the daemon.",
             "  syncd -c syncd.toml embedded dsn\n  syncd -c syncd.toml embedded start")
    e.add_argument("action", choices=("start", "stop", "dsn"),
                   help="start it and leave it running, stop it, or print its DSN and the psql command")
    fa = _sub(sub, "config", "write syncd.toml from the app's own config (.env, YAML, TOML)",
              "Derives the sources and the cutover keys from what the app already has; writes nothing\n"
              "else and needs no syncd config.",
              "  syncd config --from-app apps/backend/.env --target postgresql://app@db/app")
    fa.add_argument("--from-app", action="append", type=Path, required=True, metavar="FILE",
                    help="the app's config file (repeatable)")
    fa.add_argument("--target", default=None, metavar="DSN", help="the PostgreSQL the app moves to")
    fa.add_argument("--write", type=Path, default=Path("syncd.toml"), metavar="FILE",
                    help="where to write the config (default syncd.toml)")
    fa.add_argument("--force", action="store_true", help="replace an existing --write file")
    fa.add_argument("--state-dir", default=None, metavar="DIR", help="syncd's [state] dir")
    fa.add_argument("--password-env", default="SYNCD_TARGET_PASSWORD", metavar="NAME",
                    help="the environment variable that holds the target's password")
    fa.add_argument("--chroma-path", default=None, metavar="DIR",
                    help="the Chroma server's persist directory on this machine ([source.chroma] path)")
    fa.add_argument("--chroma-url", default=None, metavar="URL",
                    help="the Chroma server's address, when the app's config names none "
                         "([source.chroma] url)")
    fa.add_argument("--collection", default=None, metavar="NAME",
                    help="the app's Chroma collection (default: qckstrt-embeddings for qckstrt, signal-hub "
                         "for Signal Hub)")
    d = _sub(sub, "demo", "try syncd on a generated app database and the embedded PostgreSQL",
             "Needs no config. Leaves its files (and a config to try the other commands) in DIR.",
             "  syncd demo\n  syncd demo --dir ./syncd-demo")
    d.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="a new or empty directory for the demo's files (default: a new temp dir)")
    return p


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("SYNCD_CONFIG")
    if env:
        return Path(env)
    raise ConfigError("no config: pass -c FILE (before or after the command) or set SYNCD_CONFIG")


_ADVICE = {
    "init": "run `syncd init` again: it completes what is missing",
    "uninstall": "run `syncd uninstall` again: it removes what is left",
    "cutover": "`syncd status` shows where it stopped: `syncd cutover --resume` or `syncd rollback`",
    "rollback": "`syncd status` shows where it stopped: `syncd rollback --resume`",
    "run": "the checkpoint is in PostgreSQL: `syncd run` resumes from it",
    "demo": "start it again with a new --dir",
    "export": "run the same `syncd export` again: it keeps the chunks written and goes on",
    "import": "run the same `syncd import` again: it resumes after the last chunk loaded",
}


def _dispatch(args: argparse.Namespace) -> int:
    from syncd.streams import commands

    if args.command == "demo":
        from syncd.demo.run import run_demo

        return run_async(run_demo(args.dir))
    if args.command == "config":
        from syncd.cutover import from_app

        return from_app.command(args.from_app, args.target, args.write, force=args.force,
                                state_dir=args.state_dir, password_env=args.password_env,
                                chroma_path=args.chroma_path, chroma_url=args.chroma_url,
                                collection=args.collection)
    if args.command == "run" and args.timeout is not None and (not args.until_caught_up or args.timeout <= 0):
        raise ConfigError("--timeout: needs --until-caught-up and a number of seconds > 0")
    from syncd import config as config_mod

    path = _config_path(args)
    cfg = config_mod.load(path)
    args.config_file = path  # errors from here on are about what the file says
    if args.command == "embedded":
        from syncd.pg.embedded import command as embedded_command

        return embedded_command(cfg, args.action)
    if args.command != "import":  # the import's machine may not have the app's stores
        commands.preflight(cfg, args.command)
    if args.command in ("backup", "restore", "export", "import"):
        from syncd.files import commands as files

        return files.run(args, cfg)
    if args.command == "init":
        return run_async(commands.init(cfg))
    if args.command == "run":
        return run_async(commands.run(cfg, until_caught_up=args.until_caught_up, timeout=args.timeout))
    if args.command == "status":
        return run_async(commands.status(cfg, as_json=args.json))
    if args.command == "uninstall":
        return run_async(commands.uninstall(cfg))
    if args.command == "verify":
        from syncd.verify.command import verify

        return run_async(verify(cfg, as_json=args.json, tables=args.table, collections=args.collection,
                                chunk_rows=args.chunk_rows, counts_only=args.counts,
                                sample_size=args.sample_size, k=args.k, min_recall=args.min_recall,
                                ef_search=args.ef_search, digest_rows=args.digest_rows,
                                digest_workers=args.digest_workers))
    if args.command in ("cutover", "rollback"):
        from syncd.cutover.command import command

        return run_async(command(args.command, cfg, dry_run=args.dry_run, resume=args.resume,
                                 as_json=args.json))
    if args.command == "rejects":
        if args.accept:
            return run_async(commands.accept_rejects(cfg, args.accept, reason=args.reason))
        return run_async(commands.rejects(cfg, as_json=args.json, limit=args.limit,
                                          accepted=args.accepted))
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = argparse.Namespace(command=None)
    signals.started()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("which command? e.g. `syncd demo`, `syncd -c FILE status`")
        from syncd.service import logs

        logs.configure(args.log_level or os.environ.get("SYNCD_LOG_LEVEL")
                       or _default_log_level(args.command))
        return _dispatch(args)
    except ConfigError as exc:
        where = getattr(args, "config_file", None)
        print(f"syncd: config error{f' in {where}' if where else ''}: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except SyncdError as exc:
        print(f"syncd: {args.command or 'error'}: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        advice = _ADVICE.get(str(args.command), "it changed nothing; run it again when ready")
        what = f"{args.command} " if args.command else ""
        print(f"syncd: {what}interrupted by {exitcodes.signal_name(signum)}; {advice}", file=sys.stderr)
        return exitcodes.for_signal(signum, args.command,
                                    until_caught_up=bool(getattr(args, "until_caught_up", False)))
    except Exception as exc:  # a bug: still one line, never a password
        print(f"syncd: internal error (a bug: please report it, with the output of SYNCD_DEBUG=1 "
              f"syncd …): {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        if os.environ.get("SYNCD_DEBUG"):
            raise
        return exitcodes.FAILED


def _default_log_level(command: str) -> str:
    """info for `run`; `import` says what happened itself (a rejected row is counted in its summary,
    a stopped load is its one error line), so only critical; warning for the others."""
    return {"run": "info", "import": "critical"}.get(command, "warning")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
