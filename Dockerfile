# pgtenant: the proxy alone. Mount the config at /etc/pgtenant/config.toml and pass
# secrets as environment variables or files (the config names them; never inline).
#   docker build -t pgtenant .
#   docker run -p 6432:6432 -p 9187:9187 -v $PWD/config.toml:/etc/pgtenant/config.toml:ro \
#       -e PGTENANT_JWT_SECRET=... pgtenant
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY policies ./policies
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pgtenant

WORKDIR /
USER 10001:10001

# 6432: PostgreSQL clients; 9187: /metrics, /healthz, /readyz (server.metrics_listen).
EXPOSE 6432 9187

# /healthz answers while the process is alive; slim has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2)"]

ENTRYPOINT ["pgtenant"]
CMD ["serve", "--config", "/etc/pgtenant/config.toml"]
