"""The Python client of the tivis service (``pip install tivis[client]``; needs httpx and pydantic,
never torch or FastAPI).

>>> from tivis_client import Client
>>> with Client("http://127.0.0.1:8000", api_key=None) as tivis:
...     job = tivis.visualize(targets=["soccer ball"]).wait(progress=True)
...     job.result["targets"][0]["top5"]
...     job.download("out/")

``AsyncClient`` is the same with ``await``. The command line ``tivis`` (``python -m tivis_client``)
is built on it.
"""

from __future__ import annotations

from tivis_client._common import JobFailed, TivisError
from tivis_client.aio import AsyncClient, AsyncJob
from tivis_client.client import Client, Job

__all__ = ["AsyncClient", "AsyncJob", "Client", "Job", "JobFailed", "TivisError"]
