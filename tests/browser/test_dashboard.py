"""The dashboard in headless Chromium against the real service (Redis, Celery worker, API).

Each test drives the page the way a person would (forms, clicks, the mouse) and saves
screenshots under ``test-artifacts/browser/``. Waiting is polling with deadlines.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from browser.conftest import API_KEY, SLOW, LiveService, Shots
from integration.harness import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# A short schedule keeps the tiny model's job to a few seconds, long enough to watch.
ROUNDS = 12


def _pick_only_model(page: Any, form: str, name: str) -> None:
    page.wait_for_selector(f"{form} [data-field] input[value='{name}']")
    box = page.locator(f"{form} .field").filter(has_text="Models").first
    for inp in box.locator("input:checked").all():
        if inp.get_attribute("value") != name:
            inp.uncheck()
    box.locator(f"input[value='{name}']").check()


def _pick_class(page: Any, form: str, query: str, label: str) -> None:
    search = page.locator(f"{form} input[type=search]").first
    search.fill(query)
    page.wait_for_selector(f"{form} .suggest li:has-text('{label}')")
    search.press("Enter")
    page.wait_for_selector(f"{form} .chip:has-text('{label}')")


def _image_mean(page: Any, selector: str) -> float:
    """Mean of the R, G, B values of a loaded <img>, drawn on a canvas in the page."""
    return float(
        page.evaluate(
            """(sel) => {
              const img = document.querySelector(sel);
              const c = document.createElement('canvas');
              c.width = img.naturalWidth; c.height = img.naturalHeight;
              const ctx = c.getContext('2d');
              ctx.drawImage(img, 0, 0);
              const d = ctx.getImageData(0, 0, c.width, c.height).data;
              let s = 0, n = 0;
              for (let i = 0; i < d.length; i += 4) { s += d[i] + d[i + 1] + d[i + 2]; n += 3; }
              return s / n;
            }""",
            selector,
        )
    )


def _wait_image(page: Any, selector: str, previous_src: str | None = None) -> str:
    page.wait_for_function(
        """([sel, prev]) => {
          const i = document.querySelector(sel);
          return i && i.src && i.src !== prev && i.complete && i.naturalWidth > 0;
        }""",
        arg=[selector, previous_src],
    )
    return str(page.locator(selector).first.get_attribute("src"))


_RECORDER = """
(() => {
  // What the page observes: the job's SSE events (a tee of the stream the page reads) and every
  // value its progress bar takes (a MutationObserver), recorded in order.
  const rec = { events: [], bar: [] };
  window.__tivis = rec;
  const fetch0 = window.fetch;
  window.fetch = async (...args) => {
    const res = await fetch0(...args);
    const url = String((args[0] && args[0].url) || args[0]);
    if (!/\\/events$/.test(url) || !res.body) return res;
    const [mine, theirs] = res.body.tee();
    (async () => {
      const reader = mine.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\\n\\n")) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: (.*)$/m.exec(chunk);
          const data = /^data: (.*)$/m.exec(chunk);
          if (ev && data) rec.events.push([ev[1], JSON.parse(data[1])]);
        }
      }
    })();
    return new Response(theirs, { status: res.status, statusText: res.statusText,
                                  headers: res.headers });
  };
  new MutationObserver((muts) => {
    for (const m of muts) {
      if (m.target.id === "job-progress") {
        rec.bar.push(Number(m.target.getAttribute("aria-valuenow")));
      }
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["aria-valuenow"] });
})();
"""


def _recorded(page: Any) -> dict[str, Any]:
    """The page's record: SSE events, the progress percents they carried and the bar's values
    (both without repeats), and whether the stream ended."""
    rec = page.evaluate("() => window.__tivis")

    def dedup(values: list[float]) -> list[float]:
        return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]

    progress = [float(d["percent"]) for e, d in rec["events"] if e == "progress"]
    return {
        "events": rec["events"],
        "progress": dedup(progress),
        "bar": dedup([float(v) for v in rec["bar"]]),
        "ended": any(e == "end" for e, _ in rec["events"]),
    }


def test_visualize_through_the_form(page: Any, live: LiveService, shots: Shots) -> None:
    """Submit on the tiny model, watch the bar move, see the image, toggle the inversion."""
    page.add_init_script(_RECORDER)
    page.goto(live.url + "/")
    form = "#form-visualize"
    _pick_only_model(page, form, "tiny")
    _pick_class(page, form, "socc", "soccer ball")
    page.fill(f"{form} .schedule-row input[name=repeat]", str(ROUNDS))
    page.fill(f"{form} input[name=seed]", "7")
    # Every round runs its full 30 steps (an unreachable q target): long enough to watch the bar
    # move (about a second), however fast the tiny model reaches 0.99 on this machine.
    page.click(f"{form} details.advanced summary")
    page.fill(f"{form} input[name=q_target]", "0.999999")
    page.fill(f"{form} input[name=max_steps_per_round]", "30")
    shots("01-form")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]

    # Wait on what the page observes, not on the clock: every event its SSE stream delivered and
    # every value the bar took were recorded in the page (see _RECORDER), however slow the
    # machine or this test's own polling.
    page.wait_for_function(
        """() => window.__tivis.bar.some(v => v > 0 && v < 100)
                 || window.__tivis.events.some(([e]) => e === 'end')""",
        timeout=180_000 * SLOW,
    )
    if not _recorded(page)["ended"]:
        shots("02-job-running")
    page.wait_for_function(
        "() => window.__tivis.events.some(([e]) => e === 'end')", timeout=180_000 * SLOW
    )
    page.wait_for_function(
        """() => ['succeeded', 'failed', 'canceled'].includes(
                   document.querySelector('#job-status').innerText)"""
    )
    status = page.locator("#job-status").inner_text()
    assert status == "succeeded", live.job(job_id)
    rec = _recorded(page)
    seen, progress = rec["bar"], rec["progress"]
    assert progress, f"no progress event reached the page: {rec['events']}"
    events_mid = [p for p in progress if 0 < p < 100]
    bar_mid = [v for v in seen if 0 < v < 100]
    # the bar moved to every intermediate value the stream delivered, in order
    assert [v for v in bar_mid if v in events_mid] == events_mid, (seen, progress)
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    assert seen[-1] == 100
    assert page.locator("#stat-round").inner_text().endswith(f"/ {ROUNDS + 1}")
    assert re.fullmatch(r"0\.\d{4}|1\.0000", page.locator("#stat-q").inner_text())

    # The image appears, large, with its tables.
    img = "img.result-image"
    src = _wait_image(page, img)
    assert page.locator(img).evaluate("i => i.naturalWidth") == 64
    assert page.locator(img).bounding_box()["width"] >= 300  # shown large
    card = page.locator(".target-card")
    assert card.locator("table.top5 tbody tr").count() == 5
    assert card.locator("table.tests tbody tr").count() == 14  # 12 rotations, 2 scales
    assert "soccer ball" in card.locator("table.top5").inner_text()
    assert card.locator("table.quality tbody tr").count() == 1
    mean = _image_mean(page, img)
    shots("03-job-succeeded")

    # Toggle the color-inverted view: another PNG, every pixel 255 - P.
    page.click("label.switch")
    inv_src = _wait_image(page, img, src)
    assert page.locator(img).get_attribute("data-view") == "inverted"
    assert abs(_image_mean(page, img) - (255 - mean)) < 0.01
    shots("04-job-inverted")
    page.click("label.switch")
    _wait_image(page, img, inv_src)
    assert page.locator(img).get_attribute("data-view") == "image"

    # Every artifact has a download link; the parameters are the job's exact spec.
    links = page.locator(".artifacts-card a.download")
    assert links.count() == 3
    assert sorted(links.all_inner_texts()) == sorted(
        a["name"] for a in live.job(job_id)["artifacts"]
    )
    params = page.locator("#params-json").inner_text()
    assert '"model": "tiny"' in params and '"seed": 7' in params
    assert '"repeat": 12' in params
    assert not page.console_errors, page.console_errors


def test_cancel_from_the_job_list(page: Any, live: LiveService, shots: Shots) -> None:
    """A long job shows up in the live list; its Cancel button stops it."""
    long = {
        "model": "tiny",
        "targets": ["class 3", "class 5"],
        "schedule": [{"op": "rotate", "value": 1, "repeat": 360}],
    }
    job_id = live.submit(long)
    page.goto(live.url + "/")
    row = page.locator(f"tr.job-row[data-id='{job_id}']")
    row.wait_for()
    page.wait_for_selector(f"tr.job-row[data-id='{job_id}'][data-status=running]")
    # The bar moves in the list too.
    page.wait_for_function(
        """(id) => {
          const bar = document.querySelector(`tr[data-id="${id}"] [role=progressbar]`);
          return bar && Number(bar.getAttribute('aria-valuenow')) > 0;
        }""",
        arg=job_id,
    )
    assert "class 3, class 5" in row.locator("td.targets").inner_text()
    assert row.locator("td.model").inner_text() == "tiny"
    shots("01-list-running")
    row.locator("button.cancel").click()
    page.wait_for_selector(
        f"tr.job-row[data-id='{job_id}'][data-status=canceled]", timeout=30_000 * SLOW
    )
    assert live.job(job_id)["status"] == "canceled"
    assert row.locator("button.cancel").count() == 0
    shots("02-list-canceled")

    # Filters: by status and by kind.
    page.select_option("#filter-status", "canceled")
    page.wait_for_function(
        "() => [...document.querySelectorAll('tr.job-row')]"
        ".every(r => r.dataset.status === 'canceled')"
    )
    assert row.is_visible()
    page.select_option("#filter-status", "")
    page.select_option("#filter-kind", "sweep")
    page.wait_for_selector("tr.empty")
    page.select_option("#filter-kind", "")
    row.wait_for()
    assert not page.console_errors, page.console_errors


def test_the_list_searches_past_jobs_of_other_keys(page: Any, live: LiveService) -> None:
    """A page that the store's scan budget (5,000 index rows a call) cut short is followed on:
    behind 10,100 newer jobs of another key, the list first says it searched the newest jobs and
    offers to search older ones, and that button finds this key's job."""
    job_id = live.submit({"model": "tiny", "method": "vanilla", "targets": [4],
                          "optimizer": {"max_steps_per_round": 1}})  # fmt: skip
    live.wait_status(job_id, {"succeeded"})
    r, keys = live.store.r, live.store.keys
    now = time.time()
    others = [f"other-{i:05d}" for i in range(10_100)]
    pipe = r.pipeline(transaction=False)
    for i, jid in enumerate(others):  # what another key's finished jobs look like in the store
        pipe.hset(keys.job(jid), mapping={"id": jid, "kind": "visualize", "status": "succeeded",
                                          "created_at": repr(now + i), "owner": "someone-else",
                                          "spec": "{}", "attempts": "1"})  # fmt: skip
        pipe.zadd(keys.index, {jid: now + i})
    pipe.execute()
    try:
        page.goto(live.url + "/#/?status=succeeded")
        page.wait_for_selector("tr.empty")
        assert "among the newest jobs searched" in page.locator("tr.empty").inner_text()
        more = page.locator("button.more")
        assert more.is_visible() and more.inner_text() == "Search older jobs"
        more.click()
        page.locator(f"tr.job-row[data-id='{job_id}']").wait_for()
        assert page.locator("tr.job-row").first.get_attribute("data-id") == job_id
        assert not page.locator("button.more").is_visible()  # the index was read to its end
        assert not page.console_errors, page.console_errors
    finally:
        pipe = r.pipeline(transaction=False)
        pipe.zrem(keys.index, *others)
        pipe.delete(*(keys.job(jid) for jid in others))
        pipe.execute()


def test_entropy_sweep_through_the_form(page: Any, live: LiveService, shots: Shots) -> None:
    """A sweep over three gray levels: four rows of pictures, two plots, the best gray."""
    page.goto(live.url + "/")
    page.click("button[data-tab=sweep]")
    form = "#form-sweep"
    page.wait_for_selector(f"{form} input[value=tiny]")
    page.locator(f"{form} input[value=tiny]").check()
    _pick_class(page, form, "soccer", "soccer ball")
    page.fill(f"{form} input[name=gray_levels]", "0, 128, 255")
    page.fill(f"{form} .schedule-row input[name=repeat]", "3")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#best-gray", timeout=180_000 * SLOW)
    best = live.job(job_id)["result"]["best_initial_gray"]
    assert page.locator("#best-gray").inner_text() == str(best)
    for name in ("row-a-results", "row-b-gray", "row-c-entropy", "row-d-second-order",
                 "gray-change", "second-order-total"):  # fmt: skip
        _wait_image(page, f"img[data-url$='/{name}.png']")
    assert page.locator("table.levels tbody tr").count() == 3
    assert page.locator(".artifacts-card a.download").count() == 3 + 4 + 2 + 1
    shots("01-sweep", full_page=True)
    assert not page.console_errors, page.console_errors


def _png_file(tmp: Path, name: str, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    from PIL import Image

    path = tmp / name
    Image.new("RGB", size, color).save(path)
    return path


def test_classify_upload_through_the_form(
    page: Any, live: LiveService, shots: Shots, tmp_path: Path
) -> None:
    """Upload two images on the tiny model: the panel and a top-k table per image appear."""
    a = _png_file(tmp_path, "red.png", (96, 64), (220, 30, 30))
    b = _png_file(tmp_path, "blue.png", (64, 64), (30, 30, 220))
    page.goto(live.url + "/")
    page.click("button[data-tab=classify]")
    form = "#form-classify"
    _pick_only_model(page, form, "tiny")
    page.set_input_files(f"{form} input[type=file]", [str(a), str(b)])
    page.fill(f"{form} input[name=top_k]", "3")
    page.wait_for_selector(f"{form} .previews img >> nth=1")
    shots("01-form")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(".classify-image", timeout=120_000 * SLOW)
    job = live.job(job_id)
    assert job["status"] == "succeeded" and job["params"]["images"] == ["red.png", "blue.png"]
    assert job["params"]["models"] == ["tiny"] and job["params"]["top_k"] == 3
    _wait_image(page, "#debug-panel img")
    cards = page.locator(".classify-image")
    assert cards.count() == 2
    for k, im in enumerate(job["result"]["images"]):
        table = cards.nth(k).locator("[data-model=tiny] table.top5")
        assert table.locator("tbody tr").count() == 3
        assert im["predictions"]["tiny"][0]["label"] in table.inner_text()
    shots("02-result")
    assert not page.console_errors, page.console_errors


def test_screen_a_rectangle_drawn_with_the_mouse(
    page: Any, live: LiveService, shots: Shots, tmp_path: Path
) -> None:
    """Draw a rectangle on the image; the job screens it and shows before and after."""
    img = _png_file(tmp_path, "photo.png", (200, 100), (40, 160, 90))
    page.goto(live.url + "/")
    page.click("button[data-tab=screen]")
    form = "#form-screen"
    _pick_only_model(page, form, "tiny")
    page.set_input_files(f"{form} input[type=file]", str(img))
    canvas = page.locator(f"{form} canvas.screen-canvas")
    page.wait_for_function(
        "(sel) => document.querySelector(sel).width === 200", arg=f"{form} canvas.screen-canvas"
    )
    box = canvas.bounding_box()
    sx, sy = box["width"] / 200, box["height"] / 100  # canvas pixels are image pixels here
    page.mouse.move(box["x"] + 20 * sx, box["y"] + 10 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 60 * sx, box["y"] + 40 * sy, steps=5)
    page.mouse.up()
    assert page.locator(f"{form} .rect-list li").count() == 1
    shots("01-rectangle")
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector(".screen-model", timeout=120_000 * SLOW)
    job = live.job(job_id)
    (rect,) = job["params"]["rectangles"]
    assert abs(rect["x"] - 20) <= 1 and abs(rect["y"] - 10) <= 1
    assert abs(rect["width"] - 40) <= 2 and abs(rect["height"] - 30) <= 2
    card = page.locator(".screen-model[data-model=tiny]")
    assert card.locator("table.top5").count() == 2  # before and after
    _wait_image(page, ".screen-model img")
    _wait_image(page, "#debug-panel img")
    flag = "top-1 changed" if job["result"]["models"][0]["top1_changed"] else "top-1 unchanged"
    assert card.locator(".top1-flag").inner_text() == flag
    shots("02-result")
    assert not page.console_errors, page.console_errors


def test_api_errors_in_words_and_the_key_dialog(
    page: Any, live: LiveService, shots: Shots, tmp_path: Path
) -> None:
    """A refused job says why; a missing key says so; the key entered once makes it work."""
    page.goto(live.url + "/")
    form = "#form-visualize"
    _pick_only_model(page, form, "tiny")
    page.click(f"{form} button[type=submit]")  # no target
    alert = page.locator(f"{form} .alert-error")
    alert.wait_for()
    assert "targets" in alert.inner_text() and "at least 1" in alert.inner_text()
    shots("01-validation-error", full_page=False)

    # Classify (issue 4): a real upload; the page shows the job, or the API's refusal in words.
    from PIL import Image

    png = tmp_path / "photo.png"
    ramp = Image.linear_gradient("L").resize((320, 240))
    other = Image.linear_gradient("L").rotate(90).resize((320, 240))
    Image.merge("RGB", (ramp, other, Image.new("L", (320, 240), 160))).save(png)
    page.click("button[data-tab=classify]")
    page.set_input_files("#form-classify input[type=file]", str(png))
    page.locator("#form-classify input[value=tiny]").check()
    page.click("#form-classify button[type=submit]")
    page.wait_for_function(
        "() => location.hash.startsWith('#/jobs/')"
        " || document.querySelector('#form-classify .alert-error')"
    )
    if not page.url.split("#")[-1].startswith("/jobs/"):
        text = page.locator("#form-classify .alert-error").inner_text()
        assert "The API refused the job" in text and len(text) > 30, text

    # Screen: draw a rectangle on the canvas with the mouse.
    page.goto(live.url + "/#/")
    page.click("button[data-tab=screen]")
    page.set_input_files("#form-screen input[type=file]", str(png))
    canvas = page.locator("#form-screen canvas")
    page.wait_for_function("() => document.querySelector('#form-screen canvas').width === 320")
    box = canvas.bounding_box()
    sx, sy = box["width"] / 320, box["height"] / 240
    page.mouse.move(box["x"] + 100 * sx, box["y"] + 60 * sy)
    page.mouse.down()
    page.mouse.move(box["x"] + 220 * sx, box["y"] + 140 * sy, steps=8)
    page.mouse.up()
    text = page.locator("#form-screen .rect-list li").first.inner_text()
    m = re.search(r"x (\d+), y (\d+), (\d+) × (\d+) px", text)
    assert m, text
    x, y, w, h = map(int, m.groups())
    assert abs(x - 100) <= 1 and abs(y - 60) <= 1 and abs(w - 120) <= 1 and abs(h - 80) <= 1
    shots("02-screen-rectangle", full_page=False)

    # Without the key: the list says a key is needed; entering it in the dialog fixes it.
    page.goto(live.url + "/#/")
    page.wait_for_selector(".jobs-card tbody tr")
    page.click("#key-button")
    page.click("#key-dialog button[value=clear]")
    assert page.evaluate("localStorage.getItem('tivis.apiKey')") is None
    err = page.locator(".jobs-card .alert-error")
    err.wait_for()
    assert "API key is required" in err.inner_text()
    shots("03-no-key", full_page=False)
    page.click("#key-button")
    page.fill("#key-input", API_KEY)
    page.click("#key-dialog button[value=save]")
    page.wait_for_selector(".jobs-card tbody tr")
    assert page.locator(".jobs-card .alert-error").count() == 0
    assert page.evaluate("localStorage.getItem('tivis.apiKey')") == API_KEY


def test_worker_down_and_a_failed_job(page: Any, live: LiveService, shots: Shots) -> None:
    """With no live worker the page says so (and does not hang); a failed job shows its error.
    Runs last in this module: it stops the worker."""
    live.worker.stop()
    wait_for(lambda: live.http.get("/readyz").status_code == 503, 30 * SLOW, "readyz to say 503")
    job_id = live.submit({"model": "tiny", "targets": ["soccer ball"]})
    page.goto(f"{live.url}/#/jobs/{job_id}")
    page.wait_for_selector("#worker-down")
    assert "No live worker" in page.locator("#worker-down").inner_text()
    assert "no worker" in page.locator("#ready-pill").inner_text()
    assert page.locator("#job-status").inner_text() == "queued"
    shots("01-queued-no-worker", full_page=False)

    # The job fails (as a worker would record it): the open page follows and says why.
    verdict, attempt = live.store.start(job_id, 3)
    assert verdict == "run"
    error = {"type": "RuntimeError", "message": "CUDA out of memory (simulated)"}
    assert live.store.finish(job_id, attempt, "failed", {"error": error}, kind="visualize")
    page.wait_for_selector("#job-error")
    assert "RuntimeError: CUDA out of memory (simulated)" in page.locator("#job-error").inner_text()
    assert page.locator("#job-status").inner_text() == "failed"
    assert page.locator("#cancel-job").is_hidden()
    shots("02-failed", full_page=False)
