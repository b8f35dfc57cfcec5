"""The atlas form and the model registration form in headless Chromium against the real service
(Redis, Celery worker, API with keys and an admin key): an atlas started from the form fills in
its page; a model file registered from the form is validated by the worker and listed in the
catalog (and removed from it); the API's refusals are shown next to the forms. Nothing in the
job path is mocked; waiting is on what the page records (status attributes), never on sleeps."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from browser.conftest import ADMIN_KEY, SLOW, LiveService, Shots

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def _real_errors(page: Any) -> list[str]:
    """Console errors other than the browser's own line for a refused request (4xx)."""
    return [e for e in page.console_errors if "Failed to load resource" not in e]


def _open_tab(page: Any, live: LiveService, tab: str) -> None:
    page.goto(live.url + "/")
    page.click(f"button[data-tab={tab}]")


def _fill_atlas(page: Any, classes: str) -> None:
    form = "#form-atlas"
    page.wait_for_selector(f"{form} input[value=tiny]")
    page.locator(f"{form} input[value=tiny]").check()
    page.wait_for_selector(f"{form} select[name=method] option[value=vanilla]", state="attached")
    page.select_option(f"{form} select[name=method]", "vanilla")
    page.fill(f"{form} input[name=classes]", classes)
    page.fill(f"{form} input[name=chunk_size]", "2")
    page.click(f"{form} details.advanced summary")
    page.fill(f"{form} input[name=max_steps_per_round]", "5")  # a fast spec, as in the atlas test
    page.fill(f"{form} input[name=views]", "2")


def test_atlas_form_starts_an_atlas_and_its_page_fills_in(
    page: Any, live: LiveService, shots: Shots
) -> None:
    _open_tab(page, live, "atlas")
    form = "#form-atlas"
    # The method defaults to invariant+ and "all classes" counts the model's.
    method = f"{form} select[name=method]"
    page.wait_for_selector(f"{method} option[value='invariant+']", state="attached")
    assert page.locator(method).input_value() == "invariant+"
    _fill_atlas(page, "0-1, soccer ball")
    page.wait_for_function(
        "(f) => document.querySelector(`${f} .atlas-scope`).innerText.includes('all 10 classes')",
        arg=form,
    )
    assert page.locator(f"{form} input[name=atlas-scope][value=some]").is_checked()
    shots("01-form")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/atlas/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]

    # The atlas page: three cells in class order (placeholders until their chunk is published),
    # then every one done once the atlas succeeded.
    page.wait_for_selector("#atlas-grid .atlas-cell >> nth=2")
    cells = "#atlas-grid .atlas-cell"
    assert page.eval_on_selector_all(cells, "els => els.map(e => e.dataset.index)") == [
        "0",
        "1",
        "9",
    ]
    page.wait_for_selector(
        "body[data-atlas-status='succeeded'], body[data-atlas-status='failed']",
        timeout=300_000 * SLOW,
    )
    job = live.job(job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["params"]["classes"] == "0-1, soccer ball"
    assert job["params"]["method"] == "vanilla" and job["params"]["chunk_size"] == 2
    assert job["params"]["optimizer"]["max_steps_per_round"] == 5
    assert job["params"]["views"]["count"] == 2
    page.wait_for_function(
        """() => {
          const cells = [...document.querySelectorAll('#atlas-grid .atlas-cell')];
          return cells.length === 3 && cells.every(c => c.dataset.state === 'done')
            && [...document.querySelectorAll('#atlas-grid img')].every(i => i.naturalWidth > 0);
        }"""
    )
    assert page.inner_text("#atlas-count") == "3 / 3 classes"
    assert "soccer ball" in page.inner_text("#atlas-grid .atlas-cell[data-index='9']")
    shots("02-atlas")
    assert not page.console_errors, page.console_errors


def test_atlas_form_shows_an_unknown_class(page: Any, live: LiveService, shots: Shots) -> None:
    _open_tab(page, live, "atlas")
    _fill_atlas(page, "0, socer ball")
    page.click("#form-atlas button[type=submit]")
    alert = page.locator("#form-atlas .alert-error")
    alert.wait_for()
    text = alert.inner_text()
    assert "The API refused the job" in text
    assert "tiny has no class 'socer ball'" in text and "soccer ball" in text  # the suggestion
    assert "classes[1]" in text  # the field at fault
    assert "#/atlas/" not in page.url
    shots("01-unknown-class", full_page=False)
    assert not _real_errors(page), page.console_errors


def _fill_model(page: Any, path: Path) -> None:
    from tinymodel import TINY_LABELS

    form = "#form-model"
    page.set_input_files(f"{form} input[type=file]", str(path))
    page.fill(f"{form} input[name=input_size]", "64")
    page.fill(f"{form} input[name=mean]", "127.5")
    page.fill(f"{form} input[name=std]", "63.75, 63.75, 63.75")
    page.select_option(f"{form} select[name=labels_mode]", "list")
    page.fill(f"{form} textarea[name=labels]", "\n".join(TINY_LABELS))


def _use_key(page: Any, key: str) -> None:
    page.click("#key-button")
    page.fill("#key-input", key)
    page.click("#key-dialog button[value=save]")


def test_register_a_model_from_the_form(
    page: Any, live: LiveService, shots: Shots, tmp_path: Path
) -> None:
    """An API key that is not an admin key is refused in words; with the admin key the upload is
    validated by the worker, shows its checksum and timing, is listed, and can be removed."""
    import modelfiles as mf

    path = mf.torchscript(tmp_path / "Tiny Upload.pt")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    _open_tab(page, live, "models")
    form = "#form-model"
    _fill_model(page, path)
    name = page.locator(f"{form} input[name=name]")
    assert name.input_value() == "tiny_upload"  # from the file's name
    assert page.locator(f"{form} input[name=architecture]").is_hidden()  # not a state dict
    page.wait_for_selector("#model-catalog tr[data-model=tiny]")  # the built-in model
    assert page.locator("#model-catalog tr[data-model=tiny] button.remove-model").count() == 0

    page.click(f"{form} button[type=submit]")  # the page's key is not an admin key
    alert = page.locator(f"{form} .alert-error")
    alert.wait_for()
    assert "The API refused the model" in alert.inner_text()
    assert "needs an admin key" in alert.inner_text(), alert.inner_text()
    shots("01-not-admin", full_page=False)

    _use_key(page, ADMIN_KEY)  # the view is drawn again; the form keeps what was entered
    page.wait_for_selector(f"{form} button[type=submit]")
    assert page.locator(f"{form} input[name=name]").input_value() == "tiny_upload"
    page.click(f"{form} button[type=submit]")
    panel = page.locator("#model-registration")
    page.wait_for_selector("#model-registration[data-version='tiny_upload@1']")
    assert page.locator(f"{form} .alert-error").count() == 0
    page.wait_for_selector(
        "#model-registration[data-status=ready], #model-registration[data-status=failed]",
        timeout=180_000 * SLOW,
    )
    assert panel.get_attribute("data-status") == "ready", panel.inner_text()
    assert page.inner_text("#registration-sha") == sha
    assert re.fullmatch(r"\d+\.\d ms", page.inner_text("#registration-step"))
    assert page.inner_text("#registration-job-status") == "succeeded"
    model = live.http.get("/models/tiny_upload").json()
    assert model["status"] == "ready" and model["sha256"] == sha
    assert model["input_size"] == 64 and model["num_classes"] == 10

    # Listed in the catalog with its checksum and validation timing.
    row = page.locator("#model-catalog tr[data-model=tiny_upload][data-status=ready]")
    row.wait_for()
    assert row.locator("td.sha code").get_attribute("title") == sha
    assert re.search(r"\d+\.\d ms", row.locator("td.validation").inner_text())
    assert "tiny_upload@1" in row.locator("td.validation").inner_text()
    shots("02-ready")

    # Removed from the catalog (DELETE /models/<name>, confirmed in the browser's dialog).
    page.once("dialog", lambda d: d.accept())
    row.locator("button.remove-model").click()
    page.wait_for_selector("#model-catalog tr[data-model=tiny_upload]", state="detached")
    names = {m["name"] for m in live.http.get("/models").json()["items"]}
    assert "tiny_upload" not in names and "tiny" in names
    assert live.http.get("/models/tiny_upload").status_code == 404
    assert not _real_errors(page), page.console_errors


def test_a_model_that_fails_validation_says_why(
    page: Any, live: LiveService, shots: Shots, tmp_path: Path
) -> None:
    """A model whose outputs are NaN passes the API's checks and fails the worker's: the form
    follows the validation and shows the reason."""
    import modelfiles as mf

    path = mf.nan_model(tmp_path / "nan_net.pt")
    page.add_init_script(f"localStorage.setItem('tivis.apiKey', {ADMIN_KEY!r})")
    _open_tab(page, live, "models")
    _fill_model(page, path)
    page.click("#form-model button[type=submit]")
    page.wait_for_selector(
        "#model-registration[data-status=ready], #model-registration[data-status=failed]",
        timeout=180_000 * SLOW,
    )
    assert page.locator("#model-registration").get_attribute("data-status") == "failed"
    error = page.inner_text("#registration-error")
    assert "nan_net@1 failed validation" in error and "not finite" in error, error
    assert page.inner_text("#registration-job-status") == "failed"
    assert page.locator("#model-catalog tr[data-model=nan_net]").count() == 0
    shots("01-failed", full_page=False)
    assert not _real_errors(page), page.console_errors
