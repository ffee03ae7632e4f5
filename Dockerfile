# Cloud Run, or any container platform: the same app as App Engine (app.yaml's entrypoint and env_variables).
#   gcloud run deploy dpmsf --source . --region=REGION      (Cloud Build builds this file)
#   docker build -t dpmsf . && docker run -p 8080:8080 dpmsf
# tests/test_docker.py keeps this file in step with app.yaml and checks it statically.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY dpmsf_core/ ./dpmsf_core/
COPY handler/ ./handler/
COPY plugins/ ./plugins/
COPY my_plugins/ ./my_plugins/
RUN python -m compileall -q dpmsf_core handler plugins my_plugins \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dpmsf \
    && install -d -o dpmsf -g dpmsf /tmp/dpmsf

# app.yaml's env_variables (my_plugins/ only: the bundled demos in plugins/ are opt-in, -e DPMSF_PLUGINS=my_plugins:.).
# The image's own: PORT (Cloud Run sets it; 8080 elsewhere), PYTHONPATH (the app is not pip-installed, as on
# App Engine).
ENV DPMSF_PLUGINS="my_plugins" \
    DPMSF_REQUIRE_TOKENS="0" \
    DPMSF_TENANTS="firestore://dpmsf-tenants" \
    DPMSF_REPLAY_STORE="firestore://dpmsf-replay" \
    DPMSF_STORE="firestore://dpmsf-store" \
    DPMSF_STATE_DIR="/tmp/dpmsf" \
    PYTHONPATH=/app \
    PORT=8080

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# app.yaml's entrypoint, run by a shell so that $PORT expands (exec: gunicorn is PID 1 and gets SIGTERM).
CMD ["/bin/sh", "-c", "exec gunicorn -c dpmsf_core/gunicorn_conf.py -k dpmsf_core.gunicorn_worker.UvicornWorker -w 2 -b :$PORT handler.gae:app"]
