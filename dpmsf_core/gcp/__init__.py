"""Google Cloud specifics: plugins from Cloud Storage (``gcs``), Cloud Logging's JSON lines (``logging``).

Nothing is imported here: google-cloud-storage loads only when a ``gs://`` plugin path is used.
"""
