// The atlas page (#/atlas/<id>): thumbnails in class order (pending classes as placeholders
// while chunks run), search by class name, a "quality below" filter, and a class view with the
// full image, its inversion and its figures. Polls GET /atlas/<id> until the atlas ends.
import * as api from "./api.js";
import { clear, errorBox, h, progressBar, setProgress, statusBadge } from "./ui.js";

const POLL_MS = 1500;
const ENDED = new Set(["succeeded", "failed", "canceled"]);

function fmtQ(q) {
  return typeof q === "number" ? q.toFixed(3) : "–";
}

function loadInto(img, url) {
  api.artifactBlobUrl(url).then(
    (src) => {
      img.src = src;
      img.classList.remove("loading");
    },
    () => img.classList.add("broken"),
  );
}

export function renderAtlas(root, jobId) {
  let alive = true;
  let timer = null;
  let atlas = null;
  const cells = new Map(); // class index -> {el, entry}

  const title = h("h1.job-title", "Atlas ", h("code", jobId.slice(0, 8)));
  const badge = h("span.badge#atlas-status", "loading");
  const meta = h("div.job-meta#atlas-meta");
  const bar = progressBar(0, "queued");
  bar.id = "atlas-progress";
  const count = h("span#atlas-count.muted", "");
  const links = h("div.atlas-links#atlas-links");
  const alerts = h("div.job-alerts");
  const search = h("input#atlas-search", { type: "search", placeholder: "search class name…", on: { input: filter } });
  const qOn = h("input#atlas-quality-on", { type: "checkbox", on: { change: filter } });
  const qMax = h("input#atlas-quality", { type: "number", min: "0", max: "1", step: "0.05", value: "0.5", on: { input: filter } });
  const shown = h("span#atlas-shown.muted", "");
  const grid = h("div.atlas-grid#atlas-grid");
  const viewer = h("section.card.atlas-class#atlas-class", { hidden: true });

  clear(root).append(
    h(
      "div.job-page.atlas-page",
      h("a.back", { href: "#/" }, "← all jobs"),
      h("div.job-head", title, badge),
      meta,
      alerts,
      h("section.card", h("div.card-body", bar, h("div.stats", count, links))),
      h(
        "section.card",
        h(
          "div.card-body.atlas-controls",
          search,
          h("label.atlas-qfilter", qOn, " quality below ", qMax),
          shown,
        ),
      ),
      viewer,
      grid,
    ),
  );

  function cellFor(item, done) {
    const img = h("img.atlas-thumb.loading", { alt: item.label, loading: "lazy", width: 96, height: 96 });
    const el = h(
      "figure.atlas-cell",
      {
        dataset: { index: String(item.index), label: item.label.toLowerCase(), state: done ? "done" : "pending" },
        tabindex: done ? "0" : null,
        on: { click: () => done && openClass(item.index), keydown: (e) => e.key === "Enter" && done && openClass(item.index) },
      },
      img,
      h("figcaption", h("span.atlas-idx", String(item.index)), " ", h("span.atlas-label", item.label),
        done ? h("span.atlas-q", { title: "mean target probability under random views" }, ` q ${fmtQ(item.quality)}`) : null),
    );
    if (done) {
      el.dataset.quality = String(item.quality);
      loadInto(img, item.urls.image);
    }
    return el;
  }

  function render() {
    const all = [
      ...atlas.entries.map((e) => ({ ...e, done: true })),
      ...atlas.pending.map((p) => ({ ...p, done: false })),
    ].sort((a, b) => a.index - b.index);
    let prev = null;
    for (const item of all) {
      const have = cells.get(item.index);
      if (!have || (item.done && !have.entry.done)) {
        const el = cellFor(item, item.done);
        if (have) have.el.replaceWith(el);
        else if (prev) prev.after(el);
        else grid.prepend(el);
        cells.set(item.index, { el, entry: item });
      }
      prev = cells.get(item.index).el;
    }
    filter();
  }

  function filter() {
    const q = search.value.trim().toLowerCase();
    const limit = parseFloat(qMax.value);
    let n = 0;
    for (const { el, entry } of cells.values()) {
      let ok = !q || el.dataset.label.includes(q);
      if (ok && qOn.checked) ok = entry.done && Number.isFinite(limit) && entry.quality < limit;
      el.hidden = !ok;
      if (ok) n++;
    }
    shown.textContent = `${n} shown`;
  }

  function openClass(index) {
    const entry = cells.get(index)?.entry;
    if (!entry) return;
    const full = h("img.atlas-full#atlas-full", { alt: entry.label });
    const inv = h("img.atlas-full", { alt: `${entry.label} (inverted)` });
    loadInto(full, entry.urls.image);
    loadInto(inv, entry.urls.inverted);
    clear(viewer).append(
      h(
        "div.card-body",
        h("div.atlas-class-head", h("h2#atlas-class-title", `${entry.index} · ${entry.label}`),
          h("button.secondary#atlas-class-close", { type: "button", text: "Close", on: { click: () => (viewer.hidden = true) } })),
        h("div.atlas-class-images", h("figure", full, h("figcaption", "image")), h("figure", inv, h("figcaption", "inverted (255 − P)"))),
        h("dl.atlas-figures",
          h("dt", "quality (mean q under random views)"), h("dd#atlas-class-quality", fmtQ(entry.quality)),
          h("dt", "q at identity"), h("dd", fmtQ(entry.identity)),
          h("dt", "worst random view"), h("dd", fmtQ(entry.views_min)),
          h("dt", "final q_C"), h("dd", fmtQ(entry.q_final))),
        h("button.secondary", { type: "button", text: "Download report (JSON)",
          on: { click: () => api.download(entry.urls.report, entry.artifacts.report) } }),
      ),
    );
    viewer.hidden = false;
    viewer.scrollIntoView({ block: "nearest" });
  }

  function showHead() {
    clear(title).append(h("span.kind", "atlas"), " ", atlas.model, h("span.muted", ` · ${atlas.method}`));
    badge.className = statusBadge(atlas.status).className;
    badge.textContent = atlas.status;
    const pct = atlas.progress && typeof atlas.progress.percent === "number" ? atlas.progress.percent : 0;
    setProgress(bar, atlas.status === "succeeded" ? 100 : pct, atlas.status);
    count.textContent = `${atlas.done} / ${atlas.classes} classes`;
    clear(meta).append(h("span", "id ", h("a", { href: `#/jobs/${atlas.id}` }, h("code", atlas.id))));
    clear(links);
    if (atlas.contact_sheet_url) {
      links.append(
        h("button.secondary#atlas-sheet", { type: "button", text: "Contact sheet", on: { click: () => api.download(atlas.contact_sheet_url, "contact-sheet.png") } }),
        h("button.secondary#atlas-index", { type: "button", text: "Index (JSON)", on: { click: () => api.download(atlas.index_url, "index.json") } }),
      );
    } else if (!ENDED.has(atlas.status)) {
      links.append(h("button.danger#atlas-cancel", { type: "button", text: "Cancel atlas", on: { click: cancel } }));
    }
    clear(alerts);
    if (atlas.error) alerts.append(h("div.alert.alert-error", `${atlas.error.type}: ${atlas.error.message}`));
  }

  async function cancel() {
    try {
      await api.post(`/jobs/${jobId}/cancel`);
    } catch (err) {
      alerts.append(errorBox(err, "Could not cancel"));
    }
  }

  async function poll() {
    if (!alive) return;
    try {
      atlas = await api.get(`/atlas/${jobId}`);
      showHead();
      render();
      document.body.dataset.atlasStatus = atlas.status;
      if (ENDED.has(atlas.status)) return;
    } catch (err) {
      clear(alerts).append(errorBox(err, "Could not load the atlas"));
      if (err.status === 404 || err.status === 401) return;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  poll();
  return () => {
    alive = false;
    if (timer) clearTimeout(timer);
  };
}
