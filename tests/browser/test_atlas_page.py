"""The atlas page in headless Chromium against the real service (Redis, Celery worker, API):
thumbnails in class order, search by class name, the "quality below" filter, the class view."""

from __future__ import annotations

from typing import Any

import pytest
from browser.conftest import SLOW, LiveService, Shots
from integration.harness import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ATLAS = {
    "model": "tiny",
    "method": "vanilla",
    "chunk_size": 4,
    "optimizer": {"max_steps_per_round": 5},
    "views": {"count": 2},
}


def _shown(page: Any) -> list[int]:
    cells = "#atlas-grid .atlas-cell:not([hidden])"
    found = page.eval_on_selector_all(cells, "els => els.map(e => e.dataset.index)")
    return [int(i) for i in found]


def test_atlas_page_thumbnails_search_filter_and_class_view(
    page: Any, live: LiveService, shots: Shots
) -> None:
    job_id = live.submit(ATLAS, "/atlas")
    job = live.wait_status(job_id, {"succeeded", "failed", "canceled"}, 300)
    assert job["status"] == "succeeded", job["error"]
    entries = live.http.get(f"/atlas/{job_id}").json()["entries"]
    assert [e["index"] for e in entries] == list(range(10))

    page.goto(f"{live.url}/#/atlas/{job_id}")
    page.wait_for_selector("body[data-atlas-status='succeeded']")
    wait_for(lambda: len(_shown(page)) == 10, 30 * SLOW, "ten thumbnails")
    assert _shown(page) == list(range(10))  # class order
    page.wait_for_function(
        "() => [...document.querySelectorAll('#atlas-grid img')].every(i => i.naturalWidth > 0)"
    )
    assert page.inner_text("#atlas-count") == "10 / 10 classes"
    shots("grid")

    page.fill("#atlas-search", "soccer")
    wait_for(lambda: _shown(page) == [9], 10 * SLOW, "the search to keep soccer ball")
    page.fill("#atlas-search", "")
    wait_for(lambda: len(_shown(page)) == 10, 10 * SLOW, "the search to clear")

    qs = sorted(e["quality"] for e in entries)
    limit = (qs[4] + qs[5]) / 2 if qs[4] != qs[5] else qs[5]
    want = sorted(e["index"] for e in entries if e["quality"] < limit)
    page.check("#atlas-quality-on")
    page.fill("#atlas-quality", repr(limit))
    wait_for(lambda: _shown(page) == want, 10 * SLOW, f"quality below {limit}: {want}")
    assert 0 < len(want) < 10 or qs[4] == qs[5]
    shots("filtered")
    page.uncheck("#atlas-quality-on")
    wait_for(lambda: len(_shown(page)) == 10, 10 * SLOW, "the filter to clear")

    page.click("#atlas-grid .atlas-cell[data-index='9']")
    page.wait_for_selector("#atlas-class:not([hidden])")
    assert page.inner_text("#atlas-class-title") == "9 · soccer ball"
    page.wait_for_function("() => document.querySelector('#atlas-full').naturalWidth === 64")
    assert page.inner_text("#atlas-class-quality") == f"{entries[9]['quality']:.3f}"
    shots("class")
    assert page.console_errors == []
