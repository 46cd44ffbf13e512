"""Search parity after `syncd import`: the bundle's own vectors as queries, pgvector's index
against exact search, through the real command line.

The bundle may come from an air-gapped Chroma, so the oracle is exact search in PostgreSQL
with query vectors read from the bundle. The tests make the check fail the two ways it can:
stored vectors that are not the bundle's (the query item is then not among its own exact top
k), and an index searched too shallowly (recall below --min-recall).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg

from tests.conftest import REPO, run_syncd, syncd_cmd
from tests.integration.files.test_export_import import config, do_import, export, make_app, make_chroma

BAR = ("█", "░", "\x1b[K")
LINE = re.compile(r"^verify collection docs: search recall@10 (\d\.\d+) against exact \((\d+) queries, "
                  r"index (\S+) hnsw vector_cosine_ops, hnsw\.ef_search (\d+)\)")


def search_line(stdout: str) -> re.Match[str] | None:
    return next((m for line in stdout.splitlines() if (m := LINE.match(line))), None)


async def imported(tmp_path: Path, pg_dsn: str) -> tuple[Path, Path]:
    make_app(tmp_path / "app.sqlite", invalid_utf8=False)
    make_chroma(tmp_path / "chroma")
    cfg = config(tmp_path, pg_dsn, chroma=tmp_path / "chroma")
    bundle = tmp_path / "bundle"
    out = export(cfg, bundle, "--chunk-rows", "40", "--collection", "docs", "--table", "notes")
    assert not any(b in out.stdout + out.stderr for b in BAR), out.stderr  # not a TTY: no bars
    return cfg, bundle


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run syncd with stderr on a pseudo-terminal; its exit code and what the terminal got."""
    master, slave = pty.openpty()
    got: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            got.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(syncd_cmd(*args), stdout=subprocess.PIPE, stderr=slave, timeout=300, cwd=REPO)
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.returncode, b"".join(got).decode("utf-8", "replace")


async def test_import_reports_search_recall_and_a_wrong_vector_fails_it(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    cfg, bundle = await imported(tmp_path, pg_dsn)
    proc = do_import(cfg, bundle)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(b in proc.stdout + proc.stderr for b in BAR), proc.stderr
    m = search_line(proc.stdout)
    assert m is not None, proc.stdout
    assert float(m[1]) >= 0.9 and int(m[2]) == 20 and int(m[4]) == 100, m[0]
    held = await pg.fetchval("SELECT indexname FROM pg_indexes WHERE tablename = 'docs' AND indexdef LIKE "
                             "'%hnsw%vector_cosine_ops%'")
    assert m[3] == held, (m[0], held)

    again = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert search_line(again.stdout) is not None, again.stdout

    # every other item's stored vector turned around: far from the bundle's
    await pg.execute("UPDATE docs SET embedding = (SELECT array_agg(-x) FROM unnest(embedding::real[]) x)"
                     "::vector WHERE right(id, 1) IN ('0', '2', '4', '6', '8')")
    bad = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = [x for x in bad.stdout.splitlines() if x.startswith("verify collection docs: search")]
    assert len(lines) == 1 and "not among their own exact top 10" in lines[0], bad.stdout
    wrong = re.search(r"(\d+) of (\d+) query items", lines[0])
    assert wrong is not None and 0 < int(wrong[1]) < int(wrong[2]) == 20, lines[0]
    named = re.findall(r"item-\d{4}", lines[0])
    assert named and all(int(i[-1]) % 2 == 0 for i in named), lines[0]  # only corrupted ones are named
    assert "Traceback" not in bad.stderr


async def test_an_index_searched_too_shallowly_is_a_difference(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    cfg, bundle = await imported(tmp_path, pg_dsn)
    before = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", check=False)
    lines = before.stderr.strip().splitlines()
    assert before.returncode == 1 and len(lines) == 1 and "not imported here" in lines[0], before.stderr
    assert await pg.fetchval("SELECT to_regclass('public.docs')") is None  # verify created nothing

    proc = do_import(cfg, bundle, "--no-verify")
    assert proc.returncode == 0 and search_line(proc.stdout) is None, proc.stdout + proc.stderr

    shallow = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", "--ef-search", "1",
                        check=False)
    assert shallow.returncode == 1, shallow.stdout + shallow.stderr
    m = search_line(shallow.stdout)
    assert m is not None and float(m[1]) < 0.9 and int(m[4]) == 1, shallow.stdout
    assert "below --min-recall 0.9" in shallow.stdout and "--ef-search" in shallow.stdout, shallow.stdout

    fine = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", "--sample-size", "5",
                     check=False)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    m = search_line(fine.stdout)
    assert m is not None and int(m[2]) == 5, fine.stdout


async def test_export_draws_bars_with_rows_and_eta_on_a_terminal(tmp_path: Path, pg_dsn: str) -> None:
    make_app(tmp_path / "app.sqlite", notes=500, invalid_utf8=False)
    make_chroma(tmp_path / "chroma")
    cfg = config(tmp_path, pg_dsn, chroma=tmp_path / "chroma")
    code, screen = on_a_terminal("--config", str(cfg), "export", "--to", str(tmp_path / "bundle"),
                                 "--chunk-rows", "40", "--table", "notes", "--collection", "docs")
    assert code == 0, screen
    finished = [line.split("\x1b[K")[-1] for line in screen.splitlines() if line.strip()]
    notes = [f for f in finished if "export notes" in f]
    docs = [f for f in finished if "export docs" in f]
    assert notes and "500/500 rows" in notes[-1] and "rows/s" in notes[-1], screen
    assert docs and "250/250 rows" in docs[-1], screen
    assert any("ETA" in line for line in screen.split("\x1b[K")), screen


IVF = re.compile(r"^verify collection docs: search recall@10 (\d\.\d+) against exact \(20 queries, "
                 r"index docs_ivf ivfflat vector_cosine_ops, ivfflat\.probes (\d+)\)")


async def test_an_adopted_ivfflat_index_is_searched_with_its_probes(
        tmp_path: Path, pg_dsn: str, pg: asyncpg.Connection) -> None:
    cfg, bundle = await imported(tmp_path, pg_dsn)
    assert do_import(cfg, bundle, "--no-verify").returncode == 0
    await pg.execute("DROP INDEX docs_embedding_hnsw")
    await pg.execute("CREATE INDEX docs_ivf ON docs USING ivfflat (embedding vector_cosine_ops) "
                     "WITH (lists = 10)")

    every = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", check=False)
    m = next((m for line in every.stdout.splitlines() if (m := IVF.match(line))), None)
    assert every.returncode == 0 and m is not None, every.stdout + every.stderr
    assert float(m[1]) == 1.0 and int(m[2]) == 10, m[0]  # every list probed: the exact answer

    one = run_syncd("--config", str(cfg), "import", str(bundle), "--verify-only", "--ef-search", "1",
                    check=False)
    m = next((m for line in one.stdout.splitlines() if (m := IVF.match(line))), None)
    assert one.returncode == 1 and m is not None, one.stdout + one.stderr
    assert float(m[1]) < 0.9 and int(m[2]) == 1 and "ivfflat.probes" in one.stdout, m[0]


DUPLICATES = """
import sys
import numpy as np
import chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("docs", embedding_function=None,
                                     configuration={"hnsw": {"space": "cosine"}})
rng = np.random.default_rng(3)
vecs = rng.standard_normal((60, 6)).astype(np.float32)
vecs[:40] = vecs[0]  # the same text embedded 40 times: 40 items at one point
col.add(ids=[f"item-{i:04d}" for i in range(60)], embeddings=vecs)
"""


def make_duplicates(persist: Path) -> None:
    subprocess.run([sys.executable, "-c", DUPLICATES, str(persist)], check=True, cwd=REPO,
                   capture_output=True, timeout=180)


async def test_items_at_one_point_are_ties_not_differences(tmp_path: Path, pg_dsn: str) -> None:
    """Forty items share a vector: any ten of them are the exact top 10 of each, so neither the
    index's ten nor the query item's absence from a tie-broken top 10 is a difference."""
    make_app(tmp_path / "app.sqlite", notes=5, invalid_utf8=False)
    make_duplicates(tmp_path / "chroma")
    cfg = config(tmp_path, pg_dsn, chroma=tmp_path / "chroma")
    bundle = tmp_path / "bundle"
    export(cfg, bundle, "--collection", "docs")
    proc = do_import(cfg, bundle)
    m = search_line(proc.stdout)
    assert proc.returncode == 0 and m is not None, proc.stdout + proc.stderr
    assert float(m[1]) == 1.0 and int(m[2]) == 20 and "not among" not in proc.stdout, m[0]


async def test_verify_only_writes_nothing_to_a_target_without_syncd_state(tmp_path: Path, pg_dsn: str,
                                                                          pg: asyncpg.Connection) -> None:
    """A target loaded by another route (syncd's state schema gone): `--verify-only` checks it and
    creates nothing there."""
    make_app(tmp_path / "app.sqlite", notes=50, invalid_utf8=False)
    make_chroma(tmp_path / "chroma")
    cfg = config(tmp_path, pg_dsn, chroma=tmp_path / "chroma")
    bundle = tmp_path / "bundle"
    export(cfg, bundle)
    assert do_import(cfg, bundle).returncode == 0
    await pg.execute("DROP SCHEMA syncd CASCADE")
    proc = do_import(cfg, bundle, "--verify-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify collection docs" in proc.stdout and "recall@10" in proc.stdout, proc.stdout
    made = await pg.fetch("SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace('syncd')")
    assert await pg.fetchval("SELECT to_regnamespace('syncd')") is None, [r[0] for r in made]
