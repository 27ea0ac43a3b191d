# The worker image: `docker build -t mindscript-worker .`
#   serve mode (one process, both deployments, /health on HEALTH_PORT):
#     docker run -e PREFECT_API_URL=... -e DATABASE_URL=... -p 8080:8080 mindscript-worker
#   work pool mode (prefect.yaml; Prefect's worker healthcheck on 8080):
#     docker run -e PREFECT_API_URL=... -e DATABASE_URL=... mindscript-worker \
#       prefect worker start --pool mindscript --limit 2 --with-healthcheck
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    WORK_DIR=/tmp/mindscript/work \
    TTS_CACHE_DIR=/var/cache/mindscript/tts \
    STORAGE_DIR=/data/output \
    HEALTH_PORT=8080 \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    PREFECT_WORKER_WEBSERVER_HOST=0.0.0.0 \
    PREFECT_WORKER_WEBSERVER_PORT=8080

# libsndfile for soundfile; ffmpeg, LAME and espeak-ng come as Python wheels (imageio-ffmpeg, lameenc, espeakng-loader)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mindscript ./mindscript
RUN pip install .
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
COPY supabase ./supabase
COPY prefect.yaml ./

RUN useradd --create-home --uid 10001 worker \
    && mkdir -p /tmp/mindscript /var/cache/mindscript /data/output /app/.mindscript \
    && chown -R worker /tmp/mindscript /var/cache/mindscript /data /app/.mindscript
USER worker

EXPOSE 8080
# docker stop sends SIGTERM to PID 1: serve.py drains (SHUTDOWN_GRACE ms) and exits 0. Give it that long:
# `docker stop -t 130` (or terminationGracePeriodSeconds on Kubernetes).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEALTH_PORT', '8080'), timeout=4)"
CMD ["python", "deployments/serve.py"]
