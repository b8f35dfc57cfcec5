"""Webhooks without a running service: signatures, the SSRF checks, the spec field, and one
delivery at a time (``core.webhooks.deliver``) against a real Redis and a real HTTP receiver."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from integration.harness import new_prefix, wait_for
from pydantic import ValidationError
from receiver import Receiver

from core import webhooks
from core.settings import Settings
from core.store import JobStore
from specs import SweepSpec, VisualizeSpec
from specs.kinds import KINDS
from specs.webhook import WebhookSpec

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_vector() -> None:
    # the test vector of the Standard Webhooks reference libraries
    sig = webhooks.sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                        b'{"test": 2432232314}')  # fmt: skip
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "Webhook-Timestamp": "1614265330",
               "Webhook-Signature": "v1,bogus " + sig}  # fmt: skip
    body = b'{"test": 2432232314}'
    assert webhooks.verify(SECRET, headers, body, now=1614265330 + 10)
    assert not webhooks.verify(SECRET, headers, body + b" ", now=1614265330)
    assert not webhooks.verify("whsec_" + "A" * 32, headers, body, now=1614265330)
    assert not webhooks.verify(SECRET, headers, body, now=1614265330 + 3600)  # replayed late
    # a secret without the whsec_ prefix is used as its UTF-8 bytes
    plain = webhooks.sign("s3cret", "msg_1", 1, b"{}")
    assert webhooks.verify("s3cret", {"webhook-id": "msg_1", "webhook-timestamp": "1",
                                      "webhook-signature": plain}, b"{}", now=1)  # fmt: skip


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.9", "private"),
        ("169.254.169.254", "link-local"), ("::1", "loopback"), ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"), ("fc00::1", "private"), ("100.64.0.1", "not a global"),
        ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
        ("8.8.8.8", None), ("2001:4860:4860::8888", None),
    ],
)  # fmt: skip
def test_address_checks(address: str, refused: str | None) -> None:
    why = webhooks.address_problem(address, allow_private=False)
    assert (why is None) if refused is None else (refused in (why or "")), why


def test_allow_private_allows_private_but_never_unspecified() -> None:
    assert webhooks.address_problem("127.0.0.1", allow_private=True) is None
    assert webhooks.address_problem("10.0.0.1", allow_private=True) is None
    assert webhooks.address_problem("0.0.0.0", allow_private=True) is not None


def test_names_are_resolved_and_every_address_checked() -> None:
    with pytest.raises(webhooks.RefusedAddress, match="loopback"):
        webhooks.check_url("http://localhost:9/x", allow_private=False)
    with pytest.raises(webhooks.RefusedAddress, match="loopback"):
        webhooks.check_url("http://2130706433/x", allow_private=False)  # 127.0.0.1, in decimal
    with pytest.raises(webhooks.RefusedAddress, match="cannot resolve"):
        webhooks.check_url("http://no-such-host.invalid/x", allow_private=False)
    assert "127.0.0.1" in webhooks.check_url("http://localhost:9/x", allow_private=True)


def test_every_kind_accepts_a_webhook() -> None:
    for kind in KINDS.values():
        if getattr(kind, "internal", False):
            continue  # submitted by the service itself (validate_model), not by users
        assert "webhook" in kind.spec.model_fields, kind.kind
    spec = VisualizeSpec.model_validate(
        {"targets": [1], "webhook": {"url": "https://example.com/h"}}
    )
    assert spec.webhook is not None and spec.webhook.events == ["succeeded", "failed", "canceled"]
    assert SweepSpec(target=1).webhook is None


@pytest.mark.parametrize(
    ("hook", "says"),
    [
        ({"url": "ftp://example.com/x"}, "http"),
        ({"url": "https:///x"}, "no host"),
        ({"url": "https://u:p@example.com/"}, "credentials"),
        ({"url": "https://example.com:99999/"}, "port"),
        ({"url": "https://example.com/", "events": ["done"]}, "events"),
        ({"url": "https://example.com/", "events": ["failed", "failed"]}, "once"),
        ({"url": "https://example.com/", "events": []}, "events"),
    ],
)
def test_webhook_spec_is_checked(hook: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        WebhookSpec.model_validate(hook)
    assert says in str(err.value)


def test_retry_schedule_setting() -> None:
    assert Settings().webhook_retry_delays == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(Settings().webhook_retry_delays) > 24 * 3600  # retried for more than a day
    assert Settings(webhook_retry_schedule="0.1, 0.2").webhook_retry_delays == (0.1, 0.2)
    for bad in ("1,x", "-1", "nan", "inf"):
        with pytest.raises(ValidationError):
            Settings(webhook_retry_schedule=bad)


# --------------------------------------------------------------------------- delivering


def _job(store: JobStore, hook: dict[str, Any] | None, status: str = "succeeded") -> str:
    job_id = f"j{time.time_ns()}"
    spec = VisualizeSpec.model_validate({"targets": [1], "webhook": hook}).model_dump(mode="json")
    now = repr(time.time())
    store.r.hset(store.keys.job(job_id), mapping={
        "id": job_id, "kind": "visualize", "status": status, "created_at": now, "attempts": "0",
        "finished_at": now, "spec": json.dumps(spec)})  # fmt: skip
    return job_id


def _drain(r: Any, settings: Settings) -> list[str]:
    """Claim what is due and deliver it in this process (the webhook worker's two steps)."""
    out = []
    for member in webhooks.claim_due(r, settings.key_prefix, lease=60):
        out.append(webhooks.deliver(r, settings, member))
    return out


def _settings(redis_server: Any, **kw: Any) -> tuple[Settings, JobStore, webhooks.Emitter]:
    settings = Settings(redis_url=redis_server.url, key_prefix=new_prefix("wh"),
                        webhook_secret=SECRET, webhook_timeout=2, **kw)  # fmt: skip
    store = JobStore(redis_server.client(), settings.key_prefix, settings.ttl_seconds)
    return settings, store, webhooks.Emitter(store.r, settings.key_prefix, settings.ttl_seconds)


def test_deliver_signs_retries_with_the_same_id_and_logs(redis_server: Any) -> None:
    settings, store, emitter = _settings(
        redis_server, webhook_allow_private=True, webhook_retry_schedule="0,0,0"
    )
    with Receiver([500, 500]) as rx:
        job_id = _job(store, {"url": rx.url})
        assert emitter.emit(job_id, "succeeded")
        assert not emitter.emit(job_id, "succeeded")  # one delivery per (job, event)
        assert not emitter.emit(job_id, "progress")  # not asked for
        assert _drain(store.r, settings) == ["retrying"]
        assert _drain(store.r, settings) == ["retrying"]
        assert _drain(store.r, settings) == ["delivered"]
        assert _drain(store.r, settings) == []
        got = rx.snapshot()
    assert len(got) == 3
    ids = {g.headers["webhook-id"] for g in got}
    assert ids == {f"msg_{job_id}_succeeded"}
    assert len({g.body for g in got}) == 1  # the same body every time
    for g in got:
        assert webhooks.verify(SECRET, g.headers, g.body)
    body = json.loads(got[-1].body)
    assert body["type"] == "job.succeeded" and body["data"]["id"] == job_id
    assert body["data"]["status"] == "succeeded"
    raw = store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id))
    (entry,) = webhooks.shown_deliveries(raw)
    assert entry["status"] == "delivered" and entry["attempts"] == 3
    assert entry["last_status"] == 200 and entry["last_error"] is None


def test_deliver_gives_up_after_the_schedule(redis_server: Any) -> None:
    settings, store, emitter = _settings(
        redis_server, webhook_allow_private=True, webhook_retry_schedule="0"
    )
    with Receiver(default=503) as rx:
        job_id = _job(store, {"url": rx.url, "events": ["failed"]}, status="failed")
        assert emitter.emit(job_id, "failed")
        assert _drain(store.r, settings) == ["retrying"]
        assert _drain(store.r, settings) == ["failed"]
        assert _drain(store.r, settings) == []
        assert len(rx.snapshot()) == 2
    raw = store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id))
    (entry,) = webhooks.shown_deliveries(raw)
    assert entry["status"] == "failed" and entry["last_status"] == 503
    assert entry["last_error"] == "HTTP 503" and entry["attempts"] == 2


def test_send_time_check_refuses_what_submission_allowed(redis_server: Any) -> None:
    """A receiver accepted at submission (e.g. its name resolved elsewhere then) is checked
    again at send time: a loopback address is refused there, and nothing is sent."""
    settings, store, emitter = _settings(redis_server, webhook_allow_private=False)
    with Receiver() as rx:
        job_id = _job(store, {"url": rx.url.replace("127.0.0.1", "localhost")})
        assert emitter.emit(job_id, "succeeded")
        assert _drain(store.r, settings) == ["refused"]
        assert rx.snapshot() == []
    raw = store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id))
    (entry,) = webhooks.shown_deliveries(raw)
    assert entry["status"] == "refused" and "loopback" in entry["last_error"]


def test_a_timeout_is_retried_later(redis_server: Any) -> None:
    settings, store, emitter = _settings(
        redis_server, webhook_allow_private=True, webhook_retry_schedule="3600"
    )
    with Receiver(["hang"]) as rx:
        job_id = _job(store, {"url": rx.url})
        emitter.emit(job_id, "succeeded")
        t0 = time.monotonic()
        assert _drain(store.r, settings) == ["retrying"]
        assert time.monotonic() - t0 < 30
        assert _drain(store.r, settings) == []  # next attempt in an hour
    due = store.r.zrange(webhooks.due_key(settings.key_prefix), 0, -1, withscores=True)
    assert len(due) == 1 and due[0][1] > time.time() + 3000
    raw = store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id))
    (entry,) = webhooks.shown_deliveries(raw)
    assert "timed out" in entry["last_error"] and entry["status"] == "retrying"


def test_progress_is_one_attempt_and_older_unsent_ones_are_superseded(redis_server: Any) -> None:
    settings, store, emitter = _settings(
        redis_server, webhook_allow_private=True, webhook_retry_schedule="0,0"
    )
    with Receiver(default=500) as rx:
        job_id = _job(store, {"url": rx.url, "events": ["progress"]}, status="running")
        rec = store.get(job_id)
        for n in (1, 2, 3):
            assert emitter.emit(job_id, "progress", name=f"progress.1.{n}", rec=rec)
        assert sorted(_drain(store.r, settings)) == ["failed", "superseded", "superseded"]
        assert len(rx.snapshot()) == 1  # only the newest was sent, once (no retry)
    assert json.loads(rx.snapshot()[0].body)["type"] == "job.progress"
    raw = store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id))
    statuses = [e["status"] for e in webhooks.shown_deliveries(raw)]
    assert statuses == ["superseded", "superseded", "failed"]


def test_a_receiver_gets_at_most_its_share_of_sending_threads(redis_server: Any) -> None:
    settings, store, emitter = _settings(redis_server, webhook_allow_private=True,
                                         webhook_per_host=1)  # fmt: skip
    with Receiver() as rx:
        job_id = _job(store, {"url": rx.url})
        emitter.emit(job_id, "succeeded")
        slots = webhooks.slots_key(settings.key_prefix, rx.url)
        store.r.zadd(slots, {"another send": time.time() + 60})  # one send already in flight
        assert _drain(store.r, settings) == ["deferred"]
        assert rx.snapshot() == []
        due = store.r.zscore(webhooks.due_key(settings.key_prefix), f"{job_id}|succeeded")
        assert due is not None and due <= time.time() + webhooks.DEFER_SECONDS
        store.r.zadd(slots, {"another send": time.time() - 1})  # it ended (or its worker died)
        wait_for(lambda: _drain(store.r, settings) == ["delivered"], 10, "the delivery")
        assert len(rx.snapshot()) == 1 and store.r.zcard(slots) == 0
    (entry,) = webhooks.shown_deliveries(
        store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id)))  # fmt: skip
    assert entry["attempts"] == 1  # a deferral is not an attempt


def test_a_non_ascii_path_is_sent_percent_encoded(redis_server: Any) -> None:
    """A URL with a non-ASCII path or query (WebhookSpec accepts it) is sent as its UTF-8
    percent-encoding; escapes already in it are kept as they are."""
    settings, store, emitter = _settings(redis_server, webhook_allow_private=True)
    with Receiver() as rx:
        url = rx.url + "/caf\u00e9/a%20b?x=\u00e9t\u00e9&y=1"
        assert WebhookSpec(url=url).url == url
        job_id = _job(store, {"url": url})
        assert emitter.emit(job_id, "succeeded")
        assert _drain(store.r, settings) == ["delivered"]
        (got,) = rx.snapshot()
    assert got.path == "/hook/caf%C3%A9/a%20b?x=%C3%A9t%C3%A9&y=1"
    assert webhooks.verify(SECRET, got.headers, got.body)


def test_any_error_of_an_attempt_counts_and_ends_in_failed(redis_server: Any) -> None:
    """An attempt that raises something other than a network error (here a signing secret that
    is no base64, set past the settings' own checks) is a failed attempt: counted, retried on
    the schedule, then ``failed``; never left pending and due forever."""
    settings, store, emitter = _settings(
        redis_server, webhook_allow_private=True, webhook_retry_schedule="0"
    )
    settings = settings.model_copy(update={"webhook_secret": "whsec_not-base64!"})
    with Receiver() as rx:
        job_id = _job(store, {"url": rx.url})
        assert emitter.emit(job_id, "succeeded")
        assert _drain(store.r, settings) == ["retrying"]
        assert _drain(store.r, settings) == ["failed"]
        assert _drain(store.r, settings) == []
        assert rx.snapshot() == []
    assert store.r.zcard(webhooks.due_key(settings.key_prefix)) == 0
    (entry,) = webhooks.shown_deliveries(
        store.r.hgetall(webhooks.deliveries_key(settings.key_prefix, job_id)))  # fmt: skip
    assert entry["status"] == "failed" and entry["attempts"] == 2
    assert entry["last_error"].startswith("Error: ")  # binascii.Error
