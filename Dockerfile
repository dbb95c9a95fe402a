# TRACER proxy: runs `tracer serve` as a non-root user; mount your config at /config/config.yaml.
# With a PostgreSQL store (docker-compose.yaml), set store.url to postgresql+asyncpg://...:
# asyncpg is installed for it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY router ./router
COPY training ./training
RUN pip install --no-cache-dir ".[postgres]" \
    && useradd --create-home --uid 10001 tracer \
    && mkdir -p /data && chown tracer /data

USER tracer
WORKDIR /data
EXPOSE 8000
# Liveness: /healthz answers without a key. The slim image has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Bind to all interfaces inside the container: the config must then set server.api_keys.
# The port is pinned to the one EXPOSEd and checked above, whatever server.port says.
CMD ["tracer", "serve", "--config", "/config/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
