# pinwatch in a slim image, run as a non-root user.
#   docker build -t pinwatch .
#   docker run -p 8080:8080 -v $PWD/config.yaml:/config/config.yaml:ro -v pinwatch-data:/data \
#     -e META_APP_SECRET -e META_VERIFY_TOKEN -e SLACK_BOT_TOKEN -e SLACK_SIGNING_SECRET pinwatch
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install . \
    && useradd --create-home --uid 10001 pinwatch \
    && mkdir -p /data /config \
    && chown pinwatch /data

USER pinwatch
# The store (`store.path` in the routing file, relative) is created in this volume.
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"

ENTRYPOINT ["pinwatch", "serve", "--host", "0.0.0.0"]
CMD ["--config", "/config/config.yaml"]
