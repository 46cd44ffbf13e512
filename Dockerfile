# syntax=docker/dockerfile:1
# The syncd daemon. Build: docker build -t syncd .   Run: docker-compose.yml, or
#   docker run --network host -v ./syncd.toml:/etc/syncd/syncd.toml:ro \
#     -e POSTGRES_PASSWORD -v syncd-state:/var/lib/syncd syncd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so that ownership of mounted data can be arranged from the host.
RUN groupadd --system --gid 10001 syncd \
 && useradd --system --uid 10001 --gid syncd --home-dir /var/lib/syncd \
      --shell /usr/sbin/nologin syncd \
 && install -d -o syncd -g syncd -m 0750 /var/lib/syncd \
 && install -d -m 0755 /etc/syncd

WORKDIR /build
COPY pyproject.toml README.md ./
COPY syncd ./syncd
# [chroma]: the chromadb client, for Chroma sources and the reverse stream.
RUN pip install ".[chroma]" \
 && rm -rf /build

WORKDIR /var/lib/syncd
USER syncd
# The health server; [health] listen must not be 127.0.0.1 unless the container
# shares the host's network (as in docker-compose.yml).
EXPOSE 8085
STOPSIGNAL SIGTERM
ENTRYPOINT ["syncd"]
CMD ["--config", "/etc/syncd/syncd.toml", "run"]
