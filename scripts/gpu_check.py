"""The prepared GPU check (run by ``scripts/gpu-check.sh``; also on the CPU with the tiny model).

Stages, each timed and recorded in ``summary.json`` in the output folder:

1. ``environment``: Python, torch, the device.
2. ``cuda_tests``: ``pytest -m cuda tests/engine/test_cuda.py`` (all skipped without CUDA); the
   figures those tests measured land in ``cuda-figures.json``.
3. ``shapes``: ``benchmarks/shapes.py``, what a pass of a new shape costs under each cuDNN
   setting -> ``shapes.json``.
4. ``benchmark``: ``benchmarks/engine.py`` (full settings on CUDA, small ones on the CPU) ->
   ``engine.json``.
5. ``service``: the real service path -- ``python -m app.embedded`` (its own redis-server, a
   Celery worker with ``TIVIS_DEVICE``, the API), one ``POST /visualize`` and one
   ``POST /entropy-sweep`` through HTTP, polled to the end -> ``service.json``, ``service.log``.

The output of the first three stages goes to ``stages.log``. At most 7 files are written (the
device tool brings back 8: one is left for the caller's own log). Exit status 0 only when every
stage passed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], log: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    t = time.monotonic()
    with log.open("ab") as f:
        f.write(f"$ {' '.join(args)}\n".encode())
        f.flush()
        try:
            code = subprocess.run(
                args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return {"ok": code == 0, "exit": code, "seconds": round(time.monotonic() - t, 2)}


def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(total / 2**30, 1),
            gpu_free_gib=round(free / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
        )
    return info


def service(
    out: Path,
    env: dict[str, str],
    model: str,
    target: str,
    sweep_levels: list[int] | None,
    timeout: float,
) -> dict[str, Any]:
    """Start the embedded run, submit a visualization and a sweep over HTTP, wait, stop it."""
    import httpx

    port = _free_port()
    data = Path(tempfile.mkdtemp(prefix="tivis-check-"))
    env = {
        **env,
        "TIVIS_PORT": str(port),
        "TIVIS_DATA_DIR": str(data),
        "TIVIS_API_WORKERS": "1",
        "TIVIS_KEY_PREFIX": "gpucheck",
    }
    env.pop("TIVIS_REDIS_URL", None)  # its own redis-server, never the machine's
    log = (out / "service.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.embedded"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    result: dict[str, Any] = {"ok": False, "model": model, "device": env.get("TIVIS_DEVICE")}
    deadline = time.monotonic() + timeout
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the service exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError("the service did not become ready")
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            result["ready_seconds"] = round(time.monotonic() - t0, 2)
            jobs = {
                "visualize": ("/visualize", {"model": model, "targets": [target]}),
                "sweep": (
                    "/entropy-sweep",
                    {
                        "model": model,
                        "target": target,
                        **({"gray_levels": sweep_levels} if sweep_levels else {}),
                    },
                ),
            }
            for name, (path, body) in jobs.items():
                t = time.monotonic()
                r = http.post(path, json=body)
                if r.status_code != 202:
                    raise RuntimeError(f"{path} answered {r.status_code}: {r.text[:500]}")
                url = r.headers["location"]
                while True:
                    job = http.get(url).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the {name} job did not finish")
                    time.sleep(0.1)
                entry: dict[str, Any] = {
                    "status": job["status"],
                    "wall_seconds": round(time.monotonic() - t, 2),
                    "error": job.get("error"),
                    "artifacts": len(job.get("artifacts") or []),
                }
                res = job.get("result") or {}
                if name == "visualize" and res.get("targets"):
                    tr = res["targets"][0]
                    entry.update(
                        q_final=tr.get("q_final"),
                        total_steps=tr.get("total_steps"),
                        quality=tr.get("quality"),
                        test_min=tr.get("test_min"),
                    )
                if name == "sweep":
                    entry["best_initial_gray"] = res.get("best_initial_gray")
                    entry["levels"] = len(res.get("levels") or [])
                result[name] = entry
            result["ok"] = all(result[n]["status"] == "succeeded" for n in jobs)
    except Exception as exc:  # recorded, the check goes on to write what it has
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: API, worker, Redis in order
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        result["exit"] = proc.returncode
        result["seconds"] = round(time.monotonic() - t0, 2)
        log.close()
    (out / "service.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        help="stage to skip: cuda_tests, shapes, benchmark, service (repeatable)",
    )
    args = p.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["TIVIS_DEVICE"] = args.device
    cpu = args.device == "cpu"
    if cpu:  # the tiny random-weight model: fast, offline, the same code path
        sys.path.insert(0, str(ROOT / "tests"))
        from tinymodel import make_tiny_model

        models = Path(tempfile.mkdtemp(prefix="tivis-models-"))
        make_tiny_model(models)
        env["TIVIS_MODELS_DIR"] = str(models)
        model, target = "tiny", "soccer ball"
    else:
        model, target = "efficientnet_lite0", "soccer ball"

    summary: dict[str, Any] = {
        "device": args.device,
        "model": model,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t0 = time.monotonic()
    summary["environment"] = environment(args.device)
    py = sys.executable
    if "cuda_tests" not in args.skip:
        figures = out / "cuda-figures.json"
        figures.unlink(missing_ok=True)
        env_t = {**env, "TIVIS_CUDA_FIGURES": str(figures)}
        summary["cuda_tests"] = _run(
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-m",
                "cuda",
                "-p",
                "no:cacheprovider",
                "tests/engine/test_cuda.py",
            ],
            out / "stages.log",
            env_t,
            timeout=600 if cpu else 180,  # the GPU's stages fit 8 minutes together
        )
        # on the CPU every CUDA test is skipped: pytest then says so and exits 0
    if "shapes" not in args.skip:  # what a new pass shape costs, per cuDNN setting
        summary["shapes"] = _run(
            [py, "benchmarks/shapes.py", "--model", model, "--device", args.device,
             "--out", str(out / "shapes.json"), "--timeout", "36"],
            out / "stages.log", env, timeout=200 if cpu else 190,
        )  # fmt: skip
    if "benchmark" not in args.skip:
        bench = [
            py,
            "benchmarks/engine.py",
            "--device",
            args.device,
            "--model",
            model,
            "--out",
            str(out / "engine.json"),
        ]
        if cpu:
            bench += [
                "--batches",
                "1,2",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--sweep-levels",
                "0,128,255",
                "--sweep-rounds",
                "1",
                "--classes",
                "4",
                "--no-compile",
            ]
        else:  # no --compile: on the first GPU run it did not finish within the stage's time
            bench += ["--amp", "--skip", "long"]
        summary["benchmark"] = _run(bench, out / "stages.log", env, timeout=600 if cpu else 230)
    if "service" not in args.skip:
        summary["service"] = service(
            out, env, model, target, [0, 128, 255] if cpu else None, timeout=600 if cpu else 150
        )
    summary["seconds"] = round(time.monotonic() - t0, 1)
    stages = [k for k in ("cuda_tests", "shapes", "benchmark", "service") if k in summary]
    summary["ok"] = all(summary[k]["ok"] for k in stages)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'stage':<12} {'ok':<6} seconds")
    for k in stages:
        s = summary[k]
        print(f"{k:<12} {s['ok']!s:<6} {s.get('seconds', s.get('ready_seconds', ''))}")
    print(f"all: {summary['ok']} in {summary['seconds']} s; figures in {out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
