"""Where syncd reads a Chroma source from, and the rules for touching its persist directory.

- ``url`` + ``path``: a Chroma server owns the persist directory; syncd reads its
  log read-only from ``path/chroma.sqlite3`` and asks the server for what the
  log no longer holds.
- ``path`` only: allowed when no other process has the directory open; syncd
  then starts its own ``chroma run`` on a loopback port and works as above.
- ``url`` only: ``syncd run`` reads everything through the server and finds changes by
  re-scanning each collection (:mod:`syncd.stores.chroma.remote`); the commands that
  need the persist directory (init's log retention, cutover's fence, the reverse
  stream, verify) refuse it.

See docs/chroma.md.
"""

from __future__ import annotations

import asyncio

import structlog

from syncd.config import Config
from syncd.errors import ConfigError, SourceError
from syncd.ports.collections import CollectionInfo
from syncd.stores.chroma.log import ChromaLog
from syncd.stores.chroma.server import ChromaServer, PrivateServer, ensure_unused

log = structlog.get_logger("syncd.chroma")


class Topology:
    """The log, the server, and (path only) the private server syncd started."""

    def __init__(self, chroma_log: ChromaLog, server: ChromaServer | None,
                 private: PrivateServer | None) -> None:
        self.log = chroma_log
        self.server = server
        self.private = private

    @classmethod
    async def open(cls, config: Config, *, start_private: bool = True) -> Topology:
        c = config.chroma
        assert c is not None
        if c.path is None:
            raise ConfigError(
                "source.chroma.path: this command reads Chroma's log from its persist directory; with a "
                "server only (url without path) `syncd run` syncs by re-scanning each collection, but it "
                "cannot fence, reverse or verify — run syncd on the machine that holds the directory and "
                "set path to it (docs/chroma.md, \"Server only\")")
        private: PrivateServer | None = None
        url = c.url
        if url is None:
            await asyncio.to_thread(ensure_unused, c.path)
            if start_private:
                private = PrivateServer(c.path, config.state_dir / "chroma-server.log")
                url = await private.start()
                log.info("started a private Chroma server for the persist directory", path=str(c.path),
                         url=url, pid=private.pid)
        try:
            chroma_log = await ChromaLog.open(c.path)
        except BaseException:
            if private:
                await private.stop()
            raise
        server = None
        if url is not None:
            try:
                server = await ChromaServer.connect(url, c.tenant, c.database)
                await _check_same_directory(server, chroma_log, c.tenant, c.database)
            except BaseException:
                await chroma_log.close()
                if private:
                    await private.stop()
                raise
        return cls(chroma_log, server, private)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.log.close()
        if self.private is not None:
            await self.private.stop()


async def _check_same_directory(server: ChromaServer, chroma_log: ChromaLog, tenant: str,
                                database: str) -> None:
    on_server = set(await server.collections())
    on_disk = {c.id for c in await chroma_log.catalog(tenant, database)}
    if on_server and on_disk and not on_server & on_disk:
        raise SourceError(f"the Chroma server at {server.address} does not serve {chroma_log.directory}: "
                          "none of its collections is in that directory; point source.chroma.path at the "
                          "server's --path")


def server_only(config: Config) -> bool:
    """``url`` without ``path``: everything through the server (topology "server only")."""
    return config.chroma is not None and config.chroma.path is None and config.chroma.url is not None


def wanted(config: Config, info: CollectionInfo) -> bool:
    assert config.chroma is not None
    names = config.chroma.collections
    return names is None or info.name in names
