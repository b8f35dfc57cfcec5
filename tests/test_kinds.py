"""The job kinds are one registry: every kind the API accepts has a worker runner, and back."""

from __future__ import annotations

from specs.kinds import KINDS
from worker.jobs import RUNNERS


def test_every_kind_has_a_runner_and_every_runner_a_kind() -> None:
    assert set(KINDS) == set(RUNNERS)
    assert all(k == d.kind for k, d in KINDS.items())
    assert len({d.path for d in KINDS.values()}) == len(KINDS)
