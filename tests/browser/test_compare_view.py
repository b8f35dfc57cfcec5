"""The Compare tab in headless Chromium against the real service: two tiny models (the second
one smaller, another zero), a class, submit; the grid, the matrix and its tables appear."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from browser.conftest import LiveService, Shots

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (64 px) and ``tiny2`` (48 px, zero color 64, 96, 128) for this module's service."""
    from tinymodel import make_tiny_model

    d = tmp_path_factory.mktemp("compare-models")
    make_tiny_model(d)
    make_tiny_model(d, name="tiny2", size=48, seed=1)
    meta = json.loads((d / "tiny2.json").read_text())
    meta["mean"] = [64 / 255, 96 / 255, 128 / 255]
    (d / "tiny2.json").write_text(json.dumps(meta))
    return d


def test_compare_through_the_form(page: Any, live: LiveService, shots: Shots) -> None:
    page.goto(live.url + "/")
    page.click("button[data-tab=compare]")
    form = "#form-compare"
    page.wait_for_selector(f"{form} [data-field] input[value='tiny2']")
    box = page.locator(f"{form} .field").filter(has_text="Models").first
    for inp in box.locator("input").all():
        if inp.get_attribute("value") in ("tiny", "tiny2"):
            inp.check()
        else:
            inp.uncheck()
    search = page.locator(f"{form} input[type=search]").first
    search.fill("socc")
    page.wait_for_selector(f"{form} .suggest li:has-text('soccer ball')")
    search.press("Enter")
    page.wait_for_selector(f"{form} .chip:has-text('soccer ball')")
    page.select_option(f"{form} select[name=method]", "vanilla")
    shots("01-form")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = live.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert job["status"] == "succeeded", job["error"]
    assert job["params"]["models"] == ["tiny", "tiny2"]

    for card in ("#compare-grid", "#compare-matrix"):
        page.wait_for_function(
            "(sel) => { const i = document.querySelector(sel + ' img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            arg=card,
        )
    assert page.locator("#compare-cells table tbody tr").count() == 4  # 2 models × 2 judges
    assert page.locator("#compare-matrix table.matrix-table tbody tr").count() == 2
    zeros = page.locator("#compare-models .swatch").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert zeros == ["rgb(128, 128, 128)", "rgb(64, 96, 128)"], zeros
    assert page.console_errors == []
    shots("02-result")
