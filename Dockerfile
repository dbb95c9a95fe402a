# TRACER proxy: runs `tracer serve` as a non-root user; mount your config at /config/config.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY router ./router
COPY training ./training
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 tracer \
    && mkdir -p /data && chown tracer /data

USER tracer
WORKDIR /data
EXPOSE 8000
# Bind to all interfaces inside the container: the config must then set server.api_keys.
CMD ["tracer", "serve", "--config", "/config/config.yaml", "--host", "0.0.0.0"]
