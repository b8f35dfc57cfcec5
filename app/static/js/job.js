// The job view: live progress from the SSE stream, then the results, artifacts and parameters.
import * as api from "./api.js";
import {
  h, $, $$, clear, age, seconds, pct, num, listText, statusBadge, progressBar, setProgress,
  errorBox, toast, copyText,
} from "./ui.js";
import { readinessState } from "./readiness.js";

const SUBMIT_PATH = { visualize: "/visualize", sweep: "/entropy-sweep", classify: "/classify", screen: "/screen", compare: "/compare" };
const LIVE = new Set(["queued", "running"]);

/** <img> whose source is fetched with the API key; "src" set when loaded. */
function artifactImg(url, alt, cls = "") {
  const img = h(`img${cls}`, { alt, loading: "lazy", dataset: { url } });
  loadInto(img, url);
  return img;
}

function loadInto(img, url) {
  img.dataset.url = url;
  img.classList.add("loading");
  api
    .artifactBlobUrl(url)
    .then((src) => {
      if (img.dataset.url !== url) return;
      // Small models give small pictures: show strips of them at twice the size, pixel-sharp.
      if (img.classList.contains("wide-image") && img.closest(".rows")) {
        img.onload = () => {
          if (img.naturalHeight < 200) img.style.height = `${img.naturalHeight * 2}px`;
        };
      }
      img.src = src;
      img.classList.remove("loading");
    })
    .catch((err) => {
      img.classList.remove("loading");
      img.replaceWith(h("div.img-error", `could not load ${url.split("/").pop()}: ${err.message}`));
    });
}

function artifactLink(job, name, label) {
  const url = `/jobs/${job.id}/artifacts/${encodeURIComponent(name)}`;
  return h("a.download", {
    href: `${url}?download=1`,
    download: name,
    text: label || name,
    on: {
      click: (e) => {
        if (!api.apiKey()) return; // the plain link works without a key
        e.preventDefault();
        api.download(url, name).catch((err) => toast(err.message, "error"));
      },
    },
  });
}

function table(headers, rows, cls = "") {
  return h(
    `table.data${cls}`,
    h("thead", h("tr", headers.map((t) => h("th", t)))),
    h("tbody", rows.map((r) => h("tr", r.map((c) => (c instanceof Node ? h("td", c) : h("td", c ?? "–")))))),
  );
}

function probBar(p) {
  const v = Math.max(0, Math.min(1, Number(p) || 0));
  return h("div.pbar", h("div.pbar-fill", { style: `width:${(100 * v).toFixed(1)}%` }), h("span", pct(p)));
}

function top5Table(top5, targetIndex) {
  return table(
    ["#", "class", "p"],
    (top5 || []).map((t) => {
      const cells = [String(t.index), t.label, probBar(t.p)];
      return cells;
    }),
    ".top5",
  );
}

function testsTable(tests) {
  const entries = Object.entries(tests || {});
  if (!entries.length) return h("p.muted", "no transformation tests (vanilla method)");
  const label = (k) =>
    k.startsWith("rot") ? `rotate ${k.slice(3)}°` : k.startsWith("scale") ? `scale ×${k.slice(5)}` : k;
  return table(
    ["view", "target p"],
    entries.map(([k, v]) => [label(k), probBar(v)]),
    ".tests",
  );
}

function qualityTable(quality) {
  const entries = Object.entries(quality || {});
  if (!entries.length) return null;
  return table(
    ["model", "p at identity", "p under random views (mean)", "min"],
    entries.map(([m, q]) => [m, probBar(q.identity), probBar(q.views_mean), pct(q.views_min)]),
    ".quality",
  );
}

// ---------------------------------------------------------------- result sections

function visualizeResult(job, ctx) {
  const res = job.result;
  const out = [];
  const entries = res.targets || [];
  if (res.grid) {
    out.push(
      h(
        "section.card",
        h("div.card-head", h("h2", "Model × target grid"), artifactLink(job, res.grid, "download grid.png")),
        h("div.card-body.center", artifactImg(`/jobs/${job.id}/artifacts/${res.grid}`, "model × target grid", ".grid-image")),
      ),
    );
  }
  for (const [i, e] of entries.entries()) {
    const urls = e.urls || {};
    const art = e.artifacts || {};
    const img = artifactImg(urls.image, `${e.target?.label} on ${e.model}`, ".result-image");
    img.dataset.view = "image";
    img.dataset.imageUrl = urls.image;
    img.dataset.invertedUrl = urls.inverted;
    ctx.images.push(img);
    if (ctx.inverted()) ctx.apply(img);
    const q = qualityTable(e.quality);
    out.push(
      h(
        "section.card.target-card",
        { dataset: { target: e.target?.label, model: e.model } },
        h(
          "div.card-head",
          h("h2", h("span.muted", `${i + 1}. `), e.target?.label, h("span.muted", ` #${e.target?.index} · ${e.model}`)),
          h(
            "div.head-links",
            art.image ? artifactLink(job, art.image, "image") : null,
            art.inverted ? artifactLink(job, art.inverted, "inverted") : null,
            art.report ? artifactLink(job, art.report, "report") : null,
          ),
        ),
        h(
          "div.card-body.target-body",
          h(
            "figure.big",
            img,
            h(
              "figcaption",
              `q_C ${pct(e.q_final)} · ${e.total_steps} steps · stopped by ${e.stopped_by || "–"} · ${e.size} px · initial gray ${e.initial_gray}`,
            ),
          ),
          h(
            "div.target-tables",
            h("h3", "Top 5"),
            top5Table(e.top5, e.target?.index),
            h("h3", "Transformation tests", h("small.muted", ` min ${pct(e.test_min)} · mean ${pct(e.test_mean)}`)),
            testsTable(e.tests),
            q ? [h("h3", "Quality report"), q] : null,
          ),
        ),
      ),
    );
  }
  return out;
}

function sweepResult(job) {
  const res = job.result;
  const img = (name, alt) => artifactImg(`/jobs/${job.id}/artifacts/${name}`, alt, ".wide-image");
  const rows = [
    ["row-a-results.png", "a · results"],
    ["row-b-gray.png", "b · gray (BT.601)"],
    ["row-c-entropy.png", "c · 2D-entropy map"],
    ["row-d-second-order.png", "d · second-order entropy map"],
  ];
  const best = res.best_initial_gray;
  return [
    h(
      "section.card",
      h(
        "div.card-head",
        h("h2", "Entropy sweep: ", res.target?.label, h("span.muted", ` #${res.target?.index} · ${res.model}`)),
        h("div.best", "best initial gray ", h("strong#best-gray", String(best)), h("span.swatch", { style: `background:rgb(${best},${best},${best})` })),
      ),
      h(
        "div.card-body.rows",
        rows.map(([name, label]) =>
          h("figure.row-figure", h("figcaption", label, " ", artifactLink(job, name, "download")), h("div.scroll-x", img(name, label))),
        ),
      ),
    ),
    h(
      "div.plots",
      h("section.card", h("div.card-head", h("h2", "Gray change"), artifactLink(job, "gray-change.png", "download")), h("div.card-body.center", img("gray-change.png", "gray change against g"))),
      h("section.card", h("div.card-head", h("h2", "Second-order total entropy"), artifactLink(job, "second-order-total.png", "download")), h("div.card-body.center", img("second-order-total.png", "second-order total against g"))),
    ),
    h(
      "section.card",
      h("div.card-head", h("h2", "Levels"), artifactLink(job, "sweep.json", "sweep.json")),
      h(
        "div.card-body.table-wrap",
        table(
          ["g", "image", "gray change", "|gray change|", "2D entropy", "2nd-order total", "q_C", "test mean", "steps"],
          (res.levels || []).map((l) => [
            l.gray === best ? h("strong", `${l.gray} ★`) : String(l.gray),
            l.image_url ? artifactImg(l.image_url, `g=${l.gray}`, ".thumb") : "",
            num(l.gray_change_signed, 1),
            num(l.gray_change_abs, 1),
            num(l.entropy2d, 3),
            num(l.second_order_total, 1),
            pct(l.q_final),
            pct(l.test_mean),
            String(l.total_steps ?? ""),
          ]),
          ".levels",
        ),
      ),
    ),
  ];
}

/** The labelled panel PNG (Figures 6 and 7) of a classify or screen job. */
function panelCard(res, title) {
  if (!res.panel_url) return null;
  return h(
    "section.card#debug-panel",
    h("div.card-head", h("h2", title)),
    h("div.card-body.scroll-x", artifactImg(res.panel_url, title, ".wide-image.panel-image")),
  );
}

/** How an image was fitted to a model's input, in words and numbers. */
function fittedText(f) {
  if (!f) return "";
  return `resized to ${f.resized_width}×${f.resized_height}, crop ${f.crop_size}² at (${f.crop_left}, ${f.crop_top})`;
}

/** A color swatch for a pixel-space color (0..255). */
function swatch(rgb) {
  const [r, g, b] = (rgb || [0, 0, 0]).map((v) => Math.round(Number(v)));
  return h("span.swatch", { title: `rgb(${r}, ${g}, ${b})`, style: `display:inline-block;width:1em;height:1em;vertical-align:middle;border:1px solid #888;margin-right:.4em;background:rgb(${r},${g},${b})` });
}

/** Compare: the grid, the matrix image, the models (zero color, version) and every cell. */
function compareResult(job) {
  const res = job.result || {};
  const base = `/jobs/${job.id}/artifacts/`;
  const models = res.models || [];
  const mean = (res.matrix || {}).mean_p || [];
  const cells = (res.matrix || {}).cells || [];
  const names = models.map((m) => m.name);
  return [
    h(
      "section.card#compare-grid",
      h("div.card-head", h("h2", "Model × target grid"), artifactLink(job, "grid.png", "download grid.png")),
      h("div.card-body.center.scroll-x", artifactImg(base + "grid.png", "model × target grid", ".grid-image")),
    ),
    h(
      "section.card#compare-matrix",
      h("div.card-head", h("h2", "Cross-model matrix"), artifactLink(job, "matrix.png", "download matrix.png"), artifactLink(job, "compare.json", "compare.json")),
      h("div.card-body.scroll-x", artifactImg(base + "matrix.png", "cross-model matrix", ".wide-image.matrix-image")),
      h(
        "div.card-body",
        h("h3", "Mean target probability (rows: image made by; columns: classified by)"),
        table(["made by", ...names], mean.map((row, i) => [h("span", swatch(models[i]?.zero), names[i]), ...row.map((p) => (p === null ? "n/a" : probBar(p)))]), ".matrix-table"),
      ),
    ),
    h(
      "section.card#compare-models",
      h("div.card-head", h("h2", "Models")),
      h("div.card-body", table(["model", "zero color", "input", "version", "sha256"], models.map((m) => [m.name, h("span", swatch(m.zero), (m.zero || []).map((v) => Math.round(v)).join(", ")), `${m.input_size} px`, m.version, h("code", (m.sha256 || "").slice(0, 12))]))),
    ),
    h(
      "section.card#compare-cells",
      h("div.card-head", h("h2", "Every visualization under every model")),
      h("div.card-body.scroll-x", table(["made by", "classified by", "target", "p(target)", "rank", "top-1"], cells.map((c) => [c.made_by, c.classified_by, c.target, c.p === null ? "n/a" : probBar(c.p), c.rank ?? "n/a", c.top1]), ".cells-table")),
    ),
  ];
}

/** Classify: the panel, then per image a top-k table per model. */
function classifyResult(job) {
  const res = job.result || {};
  const models = Object.keys(res.models || {});
  const cards = (res.images || []).map((im, i) =>
    h(
      "section.card.classify-image",
      { dataset: { image: im.name } },
      h(
        "div.card-head",
        h("h2", `Image ${i + 1}: `, h("code", im.name)),
        h("span.muted", `${im.format} ${im.width}×${im.height}`),
      ),
      h(
        "div.card-body.pred-grid",
        models.map((m) =>
          h(
            "div.model-preds",
            { dataset: { model: m } },
            h("h3", m),
            top5Table((im.predictions || {})[m]),
            h("small.muted", fittedText((im.fitted || {})[m])),
          ),
        ),
      ),
    ),
  );
  return [panelCard(res, "Predictions panel"), ...cards].filter(Boolean);
}

/** Screen: the panel, then per model the screened image and top-k before and after. */
function screenResult(job) {
  const res = job.result || {};
  const im = res.image || {};
  const rects = ((res.spec || {}).rectangles || []).map((r) => `${r.width}×${r.height} at (${r.x}, ${r.y})`);
  const cards = (res.models || []).map((m) => {
    const orig = m.original_top1 || {};
    return h(
      "section.card.screen-model",
      { dataset: { model: m.model } },
      h(
        "div.card-head",
        h("h2", m.model),
        h(
          `span.badge.top1-flag.status-${m.top1_changed ? "failed" : "succeeded"}`,
          m.top1_changed ? "top-1 changed" : "top-1 unchanged",
        ),
      ),
      h(
        "div.card-body.screen-grid",
        m.screened_url ? h("figure", artifactImg(m.screened_url, `screened for ${m.model}`, ".gallery-image"),
          h("figcaption", `filled with ${m.model}'s zero (${(m.zero || []).map((z) => Math.round(z * 10) / 10).join(", ")}); covers ${pct(m.covered)} of its input`)) : null,
        h("div", h("h3", "before"), top5Table(m.before)),
        h("div", h("h3", "after"), top5Table(m.after)),
        h(
          "p.muted",
          `${orig.label}: p ${num(orig.p_before)} before, ${num(orig.p_after)} after. `,
          fittedText(m.fitted),
        ),
      ),
    );
  });
  const head = h(
    "section.card",
    h("div.card-head", h("h2", "Screened image"), h("span.muted", `${im.name || ""} ${im.width || ""}×${im.height || ""}`)),
    h("div.card-body", h("p", `rectangles: ${rects.join("; ") || "none"}`)),
  );
  return [panelCard(res, "Before and after"), head, ...cards].filter(Boolean);
}

/** Classify / screen (or any other kind): predictions tables where found, images, raw JSON. */
function genericResult(job) {
  const res = job.result || {};
  const out = [];
  const pngs = (job.artifacts || []).filter((a) => a.media_type === "image/png");
  if (pngs.length) {
    out.push(
      h(
        "section.card",
        h("div.card-head", h("h2", "Pictures")),
        h(
          "div.card-body.gallery",
          pngs.map((a) => h("figure", artifactImg(a.url, a.name, ".gallery-image"), h("figcaption", a.name))),
        ),
      ),
    );
  }
  const preds = [];
  const walk = (node, path) => {
    if (Array.isArray(node)) node.forEach((v, i) => walk(v, `${path}[${i}]`));
    else if (node && typeof node === "object") {
      for (const [k, v] of Object.entries(node)) {
        if (Array.isArray(v) && v.length && v.every((t) => t && "label" in t && "p" in t)) {
          preds.push([`${path}.${k}`.replace(/^\./, ""), v]);
        } else walk(v, `${path}.${k}`);
      }
    }
  };
  walk(res, "");
  if (preds.length) {
    out.push(
      h(
        "section.card",
        h("div.card-head", h("h2", "Predictions")),
        h("div.card-body.pred-grid", preds.map(([where, v]) => h("div", h("h3", where), top5Table(v)))),
      ),
    );
  }
  out.push(
    h("section.card", h("div.card-head", h("h2", "Result")), h("div.card-body", h("pre.json", JSON.stringify(res, null, 2)))),
  );
  return out;
}

// ---------------------------------------------------------------- the view

export function renderJob(root, jobId) {
  let alive = true;
  let job = null;
  let pollTimer = null;
  const abort = new AbortController();

  const title = h("h1.job-title", "Job ", h("code", jobId.slice(0, 8)));
  const badge = h("span.badge#job-status", "loading");
  const meta = h("div.job-meta");
  const cancelBtn = h("button.danger#cancel-job", { type: "button", text: "Cancel job", hidden: true, on: { click: cancel } });
  const alerts = h("div.job-alerts");
  const bar = progressBar(0, "queued");
  bar.id = "job-progress";
  const stats = {
    round: h("strong#stat-round", "–"),
    step: h("strong#stat-step", "–"),
    q: h("strong#stat-q", "–"),
    percent: h("strong#stat-percent", "0 %"),
    attempt: h("strong#stat-attempt", "–"),
  };
  const progressCard = h(
    "section.card.progress-card",
    h("div.card-body", bar, h("div.stats",
      h("div.stat", h("span", "round"), stats.round),
      h("div.stat", h("span", "step"), stats.step),
      h("div.stat", h("span", "q_C"), stats.q),
      h("div.stat", h("span", "progress"), stats.percent),
      h("div.stat", h("span", "attempt"), stats.attempt),
      h("div.stat.live-dot", h("span#stream-state", "connecting…")),
    )),
  );

  // Inversion toggle (for visualization images).
  let inverted = false;
  const ctx = {
    images: [],
    inverted: () => inverted,
    apply(img) {
      const want = inverted ? img.dataset.invertedUrl : img.dataset.imageUrl;
      if (!want) return;
      img.dataset.view = inverted ? "inverted" : "image";
      loadInto(img, want);
    },
  };
  const invertToggle = h("input#invert-toggle", {
    type: "checkbox",
    on: {
      change: () => {
        inverted = invertToggle.checked;
        ctx.images.forEach((img) => ctx.apply(img));
      },
    },
  });
  const toolbar = h(
    "div.result-toolbar",
    { hidden: true },
    h("label.switch", invertToggle, h("span.slider"), h("span", "Color-inverted view (255 − P)")),
    h("small.muted", " The inversion is easier to see; the model no longer sees the class in it."),
  );
  const results = h("div.results");
  const artifactsCard = h("section.card.artifacts-card", { hidden: true });
  const paramsCard = h("section.card.params-card", { hidden: true });

  clear(root).append(
    h(
      "div.job-page",
      h("a.back", { href: "#/" }, "← all jobs"),
      h("div.job-head", h("div", title, meta), h("div.head-right", badge, cancelBtn)),
      alerts,
      progressCard,
      toolbar,
      results,
      artifactsCard,
      paramsCard,
    ),
  );

  function showProgress(p, status) {
    const percent = status === "succeeded" ? 100 : p?.percent ?? 0;
    setProgress(bar, percent, status);
    if (p) {
      // Keep the last known values where an update leaves a field out (the final record).
      if (p.rounds) stats.round.textContent = `${p.round + 1} / ${p.rounds}`;
      if (p.step !== undefined && p.step !== null) stats.step.textContent = p.step;
      if (p.q_c !== undefined && p.q_c !== null) stats.q.textContent = Number(p.q_c).toFixed(4);
      if (p.attempt) stats.attempt.textContent = p.attempt;
    }
    stats.percent.textContent = `${Math.round(percent)} %`;
  }

  function showStatus(status) {
    badge.className = `badge status-${status || "unknown"}`;
    badge.textContent = status || "unknown";
    cancelBtn.hidden = !LIVE.has(status);
    updateAlerts();
  }

  function updateAlerts() {
    if (!job) return;
    clear(alerts);
    const status = job.status;
    if (status === "failed") {
      const e = job.error || {};
      alerts.append(
        h("div.alert.alert-error#job-error", { role: "alert" }, h("strong", "The job failed"), h("div", `${e.type || "Error"}: ${e.message || "no message"}`)),
      );
    } else if (status === "canceled") {
      alerts.append(h("div.alert.alert-warn", "The job was canceled" + (job.started_at ? " while it ran." : " before it started.")));
    } else if (LIVE.has(status)) {
      const r = readinessState();
      if (r && !r.ready) {
        const why = r.status === "unreachable" ? "the API does not answer" : `GET /readyz says ${r.status || "not ready"}: ${describeChecks(r.checks)}`;
        alerts.append(
          h("div.alert.alert-warn#worker-down", h("strong", status === "queued" ? "No live worker: the job waits in the queue. " : "The worker seems down. "), why, ". It will run when a worker is back."),
        );
      }
      if (job.cancel_requested) alerts.append(h("div.alert.alert-info", "Cancel requested; the worker stops within a few seconds."));
      if (job.attempts > 1) alerts.append(h("div.alert.alert-info", `Attempt ${job.attempts}: an earlier attempt was lost (worker restart) and the job was redelivered.`));
    }
  }

  function showMeta() {
    const s = job.summary || {};
    clear(title).append(
      h("span.kind", job.kind),
      " ",
      listText(s.targets) || job.id.slice(0, 8),
      h("span.muted", ` on ${listText(s.model)}`),
    );
    clear(meta).append(
      ...[
      h("span", "id ", h("code", job.id)),
      h("span", { title: job.created_at }, `created ${age(job.created_at)} ago`),
      job.duration_s !== null && job.duration_s !== undefined ? h("span", `ran ${seconds(job.duration_s)}`) : null,
      h("span", `attempts ${job.attempts}`),
      job.kind === "atlas" ? h("a#open-atlas", { href: `#/atlas/${job.id}` }, "open the atlas page") : null,
      ].filter(Boolean),
    );
  }

  function showFinal() {
    clear(results);
    ctx.images = [];
    toolbar.hidden = true;
    if (job.status === "succeeded" && job.result) {
      try {
        if (job.kind === "visualize") {
          results.append(...visualizeResult(job, ctx));
          toolbar.hidden = !(job.result.targets || []).length;
        } else if (job.kind === "sweep") results.append(...sweepResult(job));
        else if (job.kind === "classify") results.append(...classifyResult(job));
        else if (job.kind === "screen") results.append(...screenResult(job));
        else if (job.kind === "compare") results.append(...compareResult(job));
        else results.append(...genericResult(job));
      } catch (err) {
        results.append(errorBox(err, "Could not show this result"), ...genericResult(job));
      }
    }
    showArtifacts();
  }

  function showArtifacts() {
    const arts = job.artifacts || [];
    artifactsCard.hidden = !arts.length;
    clear(artifactsCard);
    if (arts.length) {
      artifactsCard.append(
        h("div.card-head", h("h2", `Artifacts (${arts.length})`)),
        h(
          "div.card-body.table-wrap",
          table(
            ["name", "type", "size"],
            arts.map((a) => [artifactLink(job, a.name), a.media_type, `${(a.size / 1024).toFixed(1)} KiB`]),
            ".artifacts",
          ),
        ),
      );
    }
  }

  function showParams() {
    paramsCard.hidden = false;
    const params = job.params || {};
    const path = SUBMIT_PATH[job.kind];
    const text = JSON.stringify(params, null, 2);
    clear(paramsCard).append(
      h(
        "div.card-head",
        h("h2", "Parameters"),
        h(
          "div.head-links",
          h("button.secondary.small", { type: "button", text: "Copy JSON", on: { click: async () => toast((await copyText(text)) ? "JSON copied" : "could not copy") } }),
          path && job.kind !== "classify" && job.kind !== "screen"
            ? h("button.secondary.small#copy-curl", {
                type: "button",
                text: "Copy as curl",
                on: { click: async () => toast((await copyText(api.curlFor("POST", path, params))) ? "curl command copied" : "could not copy") },
              })
            : null,
        ),
      ),
      h("div.card-body", h("pre.json#params-json", text)),
    );
  }

  function apply(view, { final = false } = {}) {
    const first = !job;
    const wasLive = job && LIVE.has(job.status);
    job = view;
    showMeta();
    showStatus(job.status);
    showProgress(job.progress, job.status);
    if (first) showParams();
    progressCard.classList.toggle("done", !LIVE.has(job.status));
    if (!LIVE.has(job.status) && (first || wasLive || final)) showFinal();
  }

  async function cancel() {
    cancelBtn.disabled = true;
    try {
      const view = await api.post(`/jobs/${jobId}/cancel`);
      apply(view);
      toast("cancel requested", "ok");
    } catch (err) {
      toast(err.message, "error");
    } finally {
      cancelBtn.disabled = false;
    }
  }

  const streamState = () => $("#stream-state", root);
  function setStream(text, cls) {
    const el = streamState();
    if (el) {
      el.textContent = text;
      el.className = cls || "";
    }
  }

  async function poll() {
    if (!alive) return;
    try {
      apply(await api.get(`/jobs/${jobId}`));
    } catch (err) {
      clear(alerts).append(errorBox(err, "Could not read the job"));
    }
    if (alive && job && LIVE.has(job.status)) pollTimer = setTimeout(poll, 2000);
    else setStream("finished", "muted");
  }

  async function follow() {
    setStream("live", "live");
    try {
      await api.followEvents(
        `/jobs/${jobId}/events`,
        (event, data) => {
          if (!alive) return;
          if (event === "progress") {
            job.progress = data;
            showProgress(data, job.status);
          } else if (event === "status") {
            job.status = data.status;
            job.attempts = data.attempts ?? job.attempts;
            showStatus(data.status);
            setProgress(bar, job.progress?.percent ?? 0, data.status);
          } else if (event === "end") {
            apply(data, { final: true });
          } else if (event === "error") {
            clear(alerts).append(errorBox(new Error(data.detail || "stream error")));
          }
        },
        abort.signal,
      );
      if (!alive) return;
      if (job && LIVE.has(job.status)) {
        setStream("reconnecting…", "muted");
        pollTimer = setTimeout(poll, 1000);
      } else setStream("finished", "muted");
    } catch (err) {
      if (!alive || err.name === "AbortError") return;
      // No stream (a proxy, an old API): poll instead, and say so.
      setStream("polling", "muted");
      pollTimer = setTimeout(poll, 1000);
    }
  }

  const onReady = () => updateAlerts();
  window.addEventListener("tivis:readiness", onReady);

  (async () => {
    try {
      apply(await api.get(`/jobs/${jobId}`));
    } catch (err) {
      clear(root).append(h("div.job-page", h("a.back", { href: "#/" }, "← all jobs"), errorBox(err, `Cannot show job ${jobId}`)));
      return;
    }
    if (LIVE.has(job.status)) follow();
    else setStream("finished", "muted");
  })();

  return () => {
    alive = false;
    abort.abort();
    clearTimeout(pollTimer);
    window.removeEventListener("tivis:readiness", onReady);
  };
}

function describeChecks(checks) {
  if (!checks) return "no details";
  return Object.entries(checks).map(([k, v]) => `${k} ${v}`).join(", ");
}
