"""JSON shapes the API answers with: a job as clients see it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.kinds import summary


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_urls(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


URL_KEYS = ("image", "panel", "screened", "grid", "index", "contact_sheet")
"""Result keys whose value may name an artifact; each such value gets a ``<key>_url`` beside it."""


def _with_urls(node: Any, base: str, names: frozenset[str]) -> Any:
    """Add ``urls`` beside every ``artifacts: {role: name}``, and ``<key>_url`` beside every
    ``image``, ``panel``, ``screened`` or ``grid`` naming one of the job's artifacts (``names``),
    so clients need not build artifact URLs themselves."""
    if isinstance(node, list):
        return [_with_urls(v, base, names) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_urls(v, base, names) for k, v in node.items()}
    arts = node.get("artifacts")
    if isinstance(arts, dict) and all(isinstance(v, str) for v in arts.values()):
        out["urls"] = {role: f"{base}/artifacts/{name}" for role, name in arts.items()}
    for key in URL_KEYS:
        value = node.get(key)
        if isinstance(value, str) and value in names:
            out[f"{key}_url"] = f"{base}/artifacts/{value}"
    return out


def job_view(rec: dict[str, Any], *, full: bool = True) -> dict[str, Any]:
    """A job record as the API shows it; ``full=False`` leaves out the result (for lists)."""
    job_id = str(rec["id"])
    spec = rec.get("spec") or {}
    started, finished = rec.get("started_at"), rec.get("finished_at")
    out: dict[str, Any] = {
        "id": job_id,
        "kind": rec.get("kind"),
        "status": rec.get("status"),
        "summary": summary(str(rec.get("kind")), spec),
        "created_at": iso(rec.get("created_at")),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round(finished - started, 3) if started and finished else None,
        "attempts": rec.get("attempts", 0),
        "cancel_requested": rec.get("cancel_requested", False),
        "progress": rec.get("progress"),
        "error": rec.get("error"),
        "cost": rec.get("cost"),
        "urls": job_urls(job_id),
    }
    base = out["urls"]["self"]
    arts = rec.get("artifacts") or []
    if full:
        out["params"] = spec
        names = frozenset(str(a["name"]) for a in arts)
        result = rec.get("result")
        out["result"] = _with_urls(result, base, names) if result else None
        out["artifacts"] = [dict(a, url=f"{base}/artifacts/{a['name']}") for a in arts]
    return out
