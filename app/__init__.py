"""tivis API: FastAPI front end over Redis and Celery. Imports no torch and no worker module."""
