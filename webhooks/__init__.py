"""tivis webhook worker: delivers job events (``celery_app``); the logic is ``core.webhooks``."""
