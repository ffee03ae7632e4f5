"""Google App Engine entry point: ``gunicorn -k uvicorn_worker.UvicornWorker handler.gae:app`` (see app.yaml)."""

from dpmsf_core import create_app

app = create_app()
