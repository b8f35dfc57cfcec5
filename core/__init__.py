"""What the API and the workers share: settings, the Redis store, queue config and logging.

Torch-free and FastAPI-free, so both sides can import it (the import contracts in
``pyproject.toml`` keep it that way).
"""
