"""One runner per job kind, one signature: ``run(spec, ctx: JobContext) -> JobOutput``.

The kinds and their specs are ``specs.kinds.KINDS``; :data:`RUNNERS` has a runner for each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.jobs.atlas import run_atlas
from worker.jobs.base import Artifact, JobContext, JobOutput
from worker.jobs.classify import run_classify, run_screen
from worker.jobs.compare import run_compare
from worker.jobs.models import run_validate_model
from worker.jobs.sweep import run_sweep
from worker.jobs.visualize import run_visualize

Runner = Callable[[Any, JobContext], JobOutput]

RUNNERS: dict[str, Runner] = {
    "visualize": run_visualize,
    "sweep": run_sweep,
    "classify": run_classify,
    "screen": run_screen,
    "compare": run_compare,
    "validate_model": run_validate_model,
    "atlas": run_atlas,  # in one process; the service fans atlases out (worker.atlas_tasks)
}

__all__ = ["RUNNERS", "Artifact", "JobContext", "JobOutput", "Runner"]
