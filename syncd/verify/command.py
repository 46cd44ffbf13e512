"""``syncd verify``: check its options, run the comparison, give quarantined rows their
``syncd.rejects`` id, and print the report (or JSON)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from syncd import exitcodes
from syncd.config import Config
from syncd.errors import ConfigError
from syncd.pg.connect import close_quietly, connect
from syncd.streams import supervisor
from syncd.verify import run as verify_mod
from syncd.verify.report import EXIT_QUARANTINED, render


async def verify(cfg: Config, *, as_json: bool, tables: list[str] | None, collections: list[str] | None,
                 chunk_rows: int | None, counts_only: bool, sample_size: int | None = None, k: int = 10,
                 min_recall: float = 0.9, ef_search: int | None = None,
                 digest_rows: int | None = None, digest_workers: int | None = None) -> int:
    """Compare the stores; print a summary (or JSON); exit 0 only when everything matches."""
    if chunk_rows is not None and chunk_rows < 2:
        raise ConfigError("--chunk-rows: must be at least 2")
    if sample_size is not None and sample_size < 0:
        raise ConfigError("--sample-size: must be 0 (no search parity) or more")
    if k < 1:
        raise ConfigError("--k: must be at least 1")
    if not 0.0 <= min_recall <= 1.0:
        raise ConfigError("--min-recall: must be between 0 and 1")
    if ef_search is not None and not 1 <= ef_search <= 1000:
        raise ConfigError("--ef-search: must be between 1 and 1000 (pgvector's range)")
    assert exitcodes.QUARANTINED == EXIT_QUARANTINED
    if digest_rows is not None and digest_rows < 0:
        raise ConfigError("--digest-rows: must be 0 (compare every row in Python) or more")
    if digest_workers is not None and digest_workers < 0:
        raise ConfigError("--digest-workers: must be 0 (digest on verify's own thread) or more")
    options = verify_mod.TableOptions(chunk_rows=chunk_rows or 5000,
                                      digest_rows=10_000 if digest_rows is None else digest_rows,
                                      digest_workers=digest_workers)
    coll_options = verify_mod.CollectionOptions(sample_size=sample_size, k=k, min_recall=min_recall,
                                                ef_search=ef_search)
    dsn = await supervisor.target_dsn(cfg)
    report = await verify_mod.verify(cfg, dsn, mode="counts" if counts_only else "full", tables=tables,
                                     collections=collections, options=options, progress_to=sys.stderr,
                                     collection_options=coll_options)
    if any(c.rejected for c in report.checks):
        await _mark_rejects(cfg, dsn, report)
    if as_json:
        print(json.dumps(report.to_json(), indent=2, default=str, ensure_ascii=False))
    else:
        print("\n".join(render(report)))
    return report.exit_code


async def _mark_rejects(cfg: Config, dsn: str, report: Any) -> None:
    """Give verify's rejected rows their ``syncd.rejects`` id, and mark those an operator accepted."""
    from syncd.streams import rejects as rejects_mod

    conn = await connect(cfg.target, dsn)
    try:
        known = await rejects_mod.unresolved(conn)
    finally:
        await close_quietly(conn)
    for c in report.checks:
        marked = []
        for r in c.rejected:
            found = known.get((c.name, rejects_mod.norm_key(r.key))) if r.recorded else None
            marked.append(dataclasses.replace(r, reject_id=found[0], accepted=found[1]) if found else r)
        c.rejected = marked
        c.decide()
