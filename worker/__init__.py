"""tivis worker: Celery tasks (``tasks``) around the pure engine (``engine``)."""
