# pgtenant: the proxy alone. Mount the config at /etc/pgtenant/config.toml and pass
# secrets as environment variables or files (the config names them; never inline).
#   docker build -t pgtenant .
#   docker run -p 6432:6432 -p 9187:9187 -v $PWD/config.toml:/etc/pgtenant/config.toml:ro \
#       -e PGTENANT_JWT_SECRET=... pgtenant
# Two stages: the wheel is compiled with mypyc (docs/building.md) where gcc is, and only the
# wheel reaches the slim image, which checks that it runs the compiled build.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY build_backend ./build_backend
COPY proxy ./proxy
COPY policies ./policies
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /wheels
RUN pip install /wheels/pgtenant-*.whl \
    && rm -rf /wheels \
    && cd / && python -m proxy.build --require-compiled \
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
