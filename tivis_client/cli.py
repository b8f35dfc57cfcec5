"""The ``tivis`` command line (also ``python -m tivis_client``), on :class:`tivis_client.Client`.

::

    tivis visualize --target "soccer ball" --wait --out out/
    tivis sweep --target "soccer ball" --gray-levels 0,128,255 --wait
    tivis classify --image cat.jpg --model efficientnet_lite0 --model resnet50 --wait
    tivis screen --image coffee.png --rect 150,0,300,300 --wait --out scr/
    tivis jobs --status running
    tivis cancel JOB_ID

The server and key come from ``--url`` / ``--api-key`` or ``TIVIS_URL`` / ``TIVIS_API_KEY``.
A submission prints the job as JSON on stdout; ``--wait`` follows it with a progress bar on
stderr (``--no-progress``: none) and prints the finished job; ``--out DIR`` downloads its
artifacts. Exit status: 0 done, 1 the job failed or was canceled, 2 the service refused the
request (its problem+json detail and fields on stderr), 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from specs import target_from_text
from tivis_client._common import JobFailed, TivisError
from tivis_client.client import Client, Job

EVENTS = ("succeeded", "failed", "canceled", "progress")


_target = target_from_text  # the service says what is wrong with a name


def _rect(text: str) -> dict[str, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rectangle is x,y,width,height; got {text!r}") from None
    return {"x": x, "y": y, "width": w, "height": h}


def _levels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"gray levels are integers: {text!r}") from None


def _spec(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--spec is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tivis", description="Talk to a tivis server.")
    p.add_argument("--url", help="the server (default: $TIVIS_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: $TIVIS_API_KEY)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    sub = p.add_subparsers(dest="command", required=True)

    def job_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--spec", type=_spec, help="more spec fields as JSON (the API's body)")
        sp.add_argument("--webhook", help="announce the job's events to this URL")
        sp.add_argument("--webhook-event", action="append", choices=EVENTS, dest="events",
                        help="events to announce (repeatable; default: the job's end)")  # fmt: skip
        sp.add_argument("--wait", action="store_true", help="follow the job until it ends")
        sp.add_argument("--out", help="download the artifacts into this folder (implies --wait)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--wait-timeout", type=float, help="give up waiting after this many s")

    v = sub.add_parser("visualize", help="visualize classes (Algorithm 1)")
    v.add_argument("--target", action="append", type=_target, required=True,
                   help="class name or index (repeatable)")  # fmt: skip
    v.add_argument("--model", action="append", help="model name (repeatable: a grid)")
    v.add_argument("--method", choices=("invariant", "vanilla", "invariant+"))
    v.add_argument("--seed", type=int)
    v.add_argument("--size", type=int)
    v.add_argument("--initial-gray", type=int)
    job_options(v)

    s = sub.add_parser("sweep", help="entropy sweep over initial gray levels")
    s.add_argument("--target", type=_target, required=True)
    s.add_argument("--model")
    s.add_argument("--method", choices=("invariant", "vanilla", "invariant+"))
    s.add_argument("--gray-levels", type=_levels, help="comma-separated, e.g. 0,128,255")
    s.add_argument("--seed", type=int)
    job_options(s)

    c = sub.add_parser("classify", help="top-k of images under one or more models")
    c.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    c.add_argument("--model", action="append", help="model name (repeatable)")
    c.add_argument("--top-k", type=int)
    job_options(c)

    r = sub.add_parser("screen", help="fill rectangles with each model's zero, classify again")
    r.add_argument("--image", required=True, help="image file")
    r.add_argument("--rect", action="append", type=_rect, required=True,
                   help="x,y,width,height in image pixels (repeatable)")  # fmt: skip
    r.add_argument("--model", action="append", help="model name (repeatable)")
    r.add_argument("--top-k", type=int)
    job_options(r)

    j = sub.add_parser("jobs", help="list jobs, newest first")
    j.add_argument("--status", action="append", help="filter (repeatable)")
    j.add_argument("--kind", action="append", help="filter (repeatable)")
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true", help="the API's JSON instead of a table")

    g = sub.add_parser("job", help="show one job as JSON")
    g.add_argument("id")
    w = sub.add_parser("wait", help="wait for a job; --out downloads its artifacts")
    w.add_argument("id")
    w.add_argument("--out")
    w.add_argument("--no-progress", action="store_true")
    w.add_argument("--wait-timeout", type=float)
    x = sub.add_parser("cancel", help="cancel a job")
    x.add_argument("id")
    return p


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = dict(args.spec or {})
    if args.webhook:
        hook: dict[str, Any] = {"url": args.webhook}
        if args.events:
            hook["events"] = args.events
        fields["webhook"] = hook
    return fields


def _submit(client: Client, args: argparse.Namespace) -> Job:
    fields = _fields(args)
    cmd = args.command
    if cmd == "visualize":
        model = args.model[0] if args.model and len(args.model) == 1 else args.model
        return client.visualize(fields, targets=args.target, model=model, method=args.method,
                                seed=args.seed, size=args.size,
                                initial_gray=args.initial_gray)  # fmt: skip
    if cmd == "sweep":
        return client.entropy_sweep(fields, target=args.target, model=args.model,
                                    method=args.method, gray_levels=args.gray_levels,
                                    seed=args.seed)  # fmt: skip
    if cmd == "classify":
        return client.classify(args.image, fields, models=args.model, top_k=args.top_k)
    return client.screen(args.image, fields, rectangles=args.rect, models=args.model,
                         top_k=args.top_k)  # fmt: skip


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def _finish(job: Job, args: argparse.Namespace) -> int:
    job.wait(progress=not args.no_progress, timeout=args.wait_timeout)
    job.refresh()
    _print(job.data)
    if job.status != "succeeded":
        err = job.data.get("error") or {}
        why = f": {err.get('type')}: {err.get('message')}" if err else ""
        sys.stderr.write(f"job {job.id} {job.status}{why}\n")
        return 1
    if args.out:
        for path in job.download(args.out):
            sys.stderr.write(f"wrote {path}\n")
    return 0


def _table(items: Sequence[dict[str, Any]]) -> str:
    rows = [("ID", "KIND", "STATUS", "CREATED", "MODEL", "TARGETS")]
    for it in items:
        summ = it.get("summary") or {}
        rows.append((str(it["id"]), str(it.get("kind")), str(it.get("status")),
                     str(it.get("created_at")), json.dumps(summ.get("model")),
                     json.dumps(summ.get("targets"))))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
        for r in rows
    )


def run(args: argparse.Namespace) -> int:
    with Client(args.url, args.api_key, timeout=args.timeout) as client:
        cmd = args.command
        if cmd in ("visualize", "sweep", "classify", "screen"):
            job = _submit(client, args)
            if not (args.wait or args.out):
                _print(job.data)
                return 0
            sys.stderr.write(f"job {job.id} queued\n")
            return _finish(job, args)
        if cmd == "jobs":
            page = client.jobs(status=args.status, kind=args.kind, limit=args.limit)
            if args.json:
                _print(page)
            else:
                sys.stdout.write(_table(page["items"]) + "\n")
            return 0
        if cmd == "job":
            _print(client.job(args.id).data)
            return 0
        if cmd == "wait":
            return _finish(client.job(args.id), args)
        if cmd == "cancel":
            _print(client.cancel(args.id))
            return 0
    raise AssertionError(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except JobFailed as exc:
        sys.stderr.write(f"tivis: {exc}\n")
        return 1
    except TivisError as exc:
        sys.stderr.write(f"tivis: {exc}\n")
        return 2 if exc.status else 3
    except TimeoutError as exc:
        sys.stderr.write(f"tivis: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
