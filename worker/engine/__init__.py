"""The method, in torch alone: models, transforms, optimization, entropy and pictures.

Nothing here knows Celery, Redis, HTTP or files; functions take tensors and explicit
configuration (the pydantic specs in ``specs``) and return tensors or plain results.
"""
