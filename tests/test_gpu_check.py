"""``scripts/gpu-check.sh --device cpu``: the prepared GPU check, run here with the tiny model.

It is the command a GPU session runs (there with ``--device cuda``); here every stage runs on the
CPU -- the CUDA tests are collected and skipped, the benchmark runs small, and a visualization and
an entropy sweep go through a real embedded service (redis-server, Celery worker, API).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIVIS_") and k != "OUT"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = {p.name: p.read_text()[-3000:] for p in out.glob("*.log")} if out.exists() else {}
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:], logs)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 7  # the device tool brings back 8, one for the caller's log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["device"] == "cpu" and summary["model"] == "tiny"
    assert summary["cuda_tests"]["ok"]
    shapes = json.loads((out / "shapes.json").read_text())
    for name in ("deterministic", "fastest", "cudnn_v8_api_disabled", "cudnn_off", "nchw"):
        assert len(shapes[name]["new_shape_first_seconds"]) == 3, shapes[name]
        assert set(shapes[name]["steady_seconds_per_image"]) == {"32", "256"}
    assert shapes["deterministic"]["deterministic"] and not shapes["fastest"]["deterministic"]
    engine = json.loads((out / "engine.json").read_text())
    assert engine["device"] == "cpu"
    assert set(engine["step_seconds_per_image"]) == {"1", "2"}
    for fig in engine["step_seconds_per_image"].values():
        assert fig["engine"] > 0 and fig["ratio"] > 0
    assert engine["sweep"]["batched_equals_one_by_one"]  # the CPU's exactness guarantee
    assert engine["default_visualization"]["steps"] > 0
    plus = engine["invariant_plus_classes"]
    assert plus["classes"] == 4
    long = engine["invariant_plus_long_classes"]  # rounds that never end early: all their steps
    assert long["classes"] == 4 and long["steps_mean"] > plus["steps_mean"]
    service = json.loads((out / "service.json").read_text())
    assert service["visualize"]["status"] == "succeeded", service
    assert service["sweep"]["status"] == "succeeded" and service["sweep"]["levels"] == 3
    assert service["device"] == "cpu"
