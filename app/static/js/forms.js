// The "new job" forms: visualize, entropy sweep, classify, screen, compare, atlas; and the
// model registration form with the catalog of models.
import * as api from "./api.js";
import { h, $, $$, clear, errorBox, toast, copyText, progressBar, setProgress, statusBadge } from "./ui.js";

// Defaults from specs.py / SPEC.md; the API echoes what a job really ran with.
const DEFAULT_SCHEDULE = [{ op: "rotate", value: 10, repeat: 36 }];
const DEFAULT_LEVELS = [...Array.from({ length: 26 }, (_, i) => i * 10), 255];

// The multipart contract of POST /classify and POST /screen (app/uploads.py): file parts named
// "images" (repeatable; each file's name is how the spec refers to it) and one part "spec"
// holding the JSON spec (ClassifySpec / ScreenSpec).
export const UPLOAD_FIELDS = {
  images: "images",
  spec: "spec",
};

// The multipart contract of POST /models (app/modelupload.py): one file part "file" (its name's
// extension gives the format) and one part "metadata" holding the JSON metadata (ModelMetadata).
export const MODEL_FIELDS = {
  images: "file",
  spec: "metadata",
};
const MODEL_EXTENSIONS = [".safetensors", ".pt2", ".pth", ".pt"]; // longest match first
const STATE_DICTS = new Set([".pth", ".safetensors"]);

/** The multipart body: the files, then the spec as a JSON part. */
function uploadForm(files, spec) {
  const fd = new FormData();
  for (const f of files) fd.append(UPLOAD_FIELDS.images, f, f.name);
  fd.append(UPLOAD_FIELDS.spec, new Blob([JSON.stringify(spec)], { type: "application/json" }));
  return fd;
}

let catalogPromise = null;
let methodsPromise = null;

/** GET /models (cached for the page's life; refreshed on failure). */
export function catalog() {
  if (!catalogPromise) {
    catalogPromise = api.get("/models").then((r) => r.items || []);
    catalogPromise.catch(() => (catalogPromise = null));
  }
  return catalogPromise;
}

/** Forget the cached GET /models (after a registration or a removal). */
export function refreshCatalog() {
  catalogPromise = null;
  return catalog();
}

/** The visualize methods the API accepts, read from its OpenAPI schema (e.g. "invariant+"). */
function methods() {
  if (!methodsPromise) {
    methodsPromise = fetch("/openapi.json")
      .then((r) => r.json())
      .then((doc) => {
        const schemas = doc?.components?.schemas || {};
        const spec = schemas.VisualizeSpec || {};
        const m = spec.properties?.method || {};
        const found = m.enum || (m.anyOf || []).flatMap((x) => x.enum || []);
        return found.length ? found : ["invariant", "vanilla"];
      })
      .catch(() => ["invariant", "vanilla"]);
  }
  return methodsPromise;
}

const METHOD_HELP = {
  invariant: "the paper's Algorithm 1: optimize, rotate, repeat",
  vanilla: "one long optimize round, no transformations",
  "invariant+": "preset: quarter-turn rounds, Fourier colour, four random crops per step",
};

// ---------------------------------------------------------------- components

function field(label, control, hint) {
  // A <label> only around a single control; composite widgets get a div (no nested labels).
  const single = ["INPUT", "SELECT", "TEXTAREA"].includes(control.tagName);
  return h(
    single ? "label.field" : "div.field",
    single ? null : { role: "group", "aria-label": label },
    h("span.field-label", label),
    control,
    hint ? h("small.hint", hint) : null,
  );
}

function numberInput(name, value, { min, max, step = 1, placeholder } = {}) {
  return h("input", { type: "number", name, value: value ?? "", min, max, step, placeholder });
}

/** Checkbox chips for models; returns {el, values(), onChange(fn)}. */
function modelPicker(name, { multiple = true } = {}) {
  const box = h("div.chips", { dataset: { field: name } }, h("span.muted", "loading models…"));
  const listeners = [];
  catalog()
    .then((models) => {
      clear(box);
      if (!models.length) {
        box.append(h("span.muted", "no models published yet: is a worker running?"));
        return;
      }
      const preferred = models.find((m) => m.name === "efficientnet_lite0") || models[0];
      for (const m of models) {
        const input = h("input", {
          type: multiple ? "checkbox" : "radio",
          name,
          value: m.name,
          checked: m === preferred,
          on: { change: () => listeners.forEach((fn) => fn()) },
        });
        box.append(
          h(
            "label.chip-option",
            { title: `${m.architecture || ""} · ${m.input_size} px · ${m.num_classes} classes` },
            input,
            h("span", m.name),
          ),
        );
      }
      listeners.forEach((fn) => fn());
    })
    .catch((err) => {
      clear(box).append(errorBox(err, "Could not load the models"));
    });
  return {
    el: box,
    values: () => $$("input:checked", box).map((i) => i.value),
    onChange: (fn) => listeners.push(fn),
  };
}

/**
 * Class search as you type: suggestions from GET /models/<model>/classes?q=. Picked classes
 * become chips (several when multiple). Enter takes the first suggestion (or the typed index).
 */
function classPicker(modelOf, { multiple = true, name = "targets" } = {}) {
  const chosen = [];
  const chips = h("div.chips.chosen");
  const input = h("input", {
    type: "search",
    name: `${name}-search`,
    placeholder: "search classes, e.g. soccer ball",
    autocomplete: "off",
    spellcheck: false,
  });
  const list = h("ul.suggest", { role: "listbox", hidden: true });
  const wrap = h("div.class-picker", { dataset: { field: name } }, chips, h("div.suggest-wrap", input, list));
  let active = 0;
  let seq = 0;

  function render() {
    clear(chips);
    for (const c of chosen) {
      chips.append(
        h(
          "span.chip",
          { dataset: { index: c.index } },
          h("span.chip-index", `#${c.index}`),
          c.label,
          h("button.chip-x", {
            type: "button",
            title: "remove",
            text: "×",
            on: { click: () => remove(c) },
          }),
        ),
      );
    }
    input.placeholder = chosen.length && !multiple ? "replace the class…" : "search classes, e.g. soccer ball";
  }
  function remove(c) {
    chosen.splice(chosen.indexOf(c), 1);
    render();
  }
  function pick(c) {
    if (!multiple) chosen.length = 0;
    if (!chosen.some((x) => x.index === c.index)) chosen.push(c);
    input.value = "";
    list.hidden = true;
    render();
  }
  function highlight() {
    $$("li", list).forEach((li, i) => li.classList.toggle("active", i === active));
  }
  async function search() {
    const model = modelOf();
    const q = input.value.trim();
    const my = ++seq;
    if (!model || !q) {
      list.hidden = true;
      return;
    }
    try {
      const res = await api.get(
        `/models/${encodeURIComponent(model)}/classes?q=${encodeURIComponent(q)}&limit=12`,
      );
      if (my !== seq) return;
      clear(list);
      active = 0;
      const items = res.items || [];
      if (!items.length) list.append(h("li.empty", `no class matches “${q}” in ${model}`));
      for (const it of items) {
        list.append(
          h(
            "li",
            { role: "option", on: { mousedown: (e) => (e.preventDefault(), pick(it)) } },
            h("span.chip-index", `#${it.index}`),
            it.label,
          ),
        );
      }
      list.hidden = false;
      highlight();
    } catch (err) {
      if (my !== seq) return;
      clear(list).append(h("li.empty.error-text", err.message));
      list.hidden = false;
    }
  }
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 120);
  });
  input.addEventListener("blur", () => setTimeout(() => (list.hidden = true), 150));
  input.addEventListener("keydown", (e) => {
    const items = $$("li:not(.empty)", list);
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!items.length) return;
      active = (active + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      highlight();
    } else if (e.key === "Enter") {
      e.preventDefault();
      const text = input.value.trim();
      if (!list.hidden && items[active]) {
        items[active].dispatchEvent(new MouseEvent("mousedown"));
      } else if (/^\d+$/.test(text)) {
        pick({ index: Number(text), label: `class ${text}` });
      }
    } else if (e.key === "Backspace" && !input.value && chosen.length) {
      remove(chosen[chosen.length - 1]);
    }
  });
  return {
    el: wrap,
    input,
    values: () => chosen.map((c) => c.label),
    clear: () => ((chosen.length = 0), render()),
  };
}

/** Rows of schedule operations: op, value, repeat. */
function scheduleEditor(initial = DEFAULT_SCHEDULE) {
  const rows = h("div.schedule-rows");
  function row(op = { op: "rotate", value: 10, repeat: 1 }) {
    const sel = h(
      "select",
      { name: "op" },
      ["rotate", "scale", "flip_h", "flip_v"].map((o) => h("option", { value: o, selected: o === op.op }, o)),
    );
    const value = numberInput("value", op.value ?? "", { step: "any", placeholder: "°" });
    const repeat = numberInput("repeat", op.repeat ?? 1, { min: 1, max: 360 });
    const unit = h("span.unit");
    const sync = () => {
      const needs = sel.value === "rotate" || sel.value === "scale";
      value.disabled = !needs;
      unit.textContent = sel.value === "rotate" ? "degrees" : sel.value === "scale" ? "factor" : "";
      if (!needs) value.value = "";
      else if (value.value === "") value.value = sel.value === "rotate" ? 10 : 1.1;
    };
    sel.addEventListener("change", sync);
    const el = h(
      "div.schedule-row",
      sel,
      value,
      unit,
      h("span.times", "×"),
      repeat,
      h("button.icon-button", {
        type: "button",
        title: "remove this step",
        text: "×",
        on: { click: () => el.remove() },
      }),
    );
    sync();
    return el;
  }
  for (const op of initial) rows.append(row(op));
  const el = h(
    "div.schedule",
    rows,
    h(
      "div.row-actions",
      h("button.link-button", { type: "button", text: "+ add step", on: { click: () => rows.append(row()) } }),
      h("button.link-button", {
        type: "button",
        text: "paper default (rotate 10° × 36)",
        on: {
          click: () => {
            clear(rows);
            DEFAULT_SCHEDULE.forEach((op) => rows.append(row(op)));
          },
        },
      }),
    ),
  );
  return {
    el,
    values: () =>
      $$(".schedule-row", rows).map((r) => {
        const op = $("select", r).value;
        const out = { op, repeat: Number($("[name=repeat]", r).value || 1) };
        if (op === "rotate" || op === "scale") out.value = Number($("[name=value]", r).value);
        return out;
      }),
  };
}

function grayControl(name = "initial_gray", value = 0) {
  const range = h("input", { type: "range", min: 0, max: 255, value, name: `${name}-range` });
  const num = numberInput(name, value, { min: 0, max: 255 });
  const swatch = h("span.swatch");
  const sync = (src) => {
    const v = Math.max(0, Math.min(255, Number(src.value) || 0));
    range.value = v;
    num.value = v;
    swatch.style.background = `rgb(${v},${v},${v})`;
  };
  range.addEventListener("input", () => sync(range));
  num.addEventListener("input", () => sync(num));
  sync(num);
  return { el: h("div.gray-control", range, num, swatch), value: () => Number(num.value) };
}

/** Optimizer and stopping settings (shared by visualize and sweep). */
function advancedOptimizer() {
  const f = {
    objective: h(
      "select",
      { name: "objective" },
      h("option", { value: "logit" }, "logit"),
      h("option", { value: "log_prob" }, "log-probability"),
    ),
    lr: numberInput("lr", 4, { min: 0, max: 64, step: "any" }),
    q_target: numberInput("q_target", 0.99, { min: 0, max: 1, step: "any" }),
    max_steps_per_round: numberInput("max_steps_per_round", 100, { min: 1, max: 5000 }),
    max_total_steps: numberInput("max_total_steps", 3000, { min: 1, max: 100000 }),
    skip_gradient: numberInput("skip_gradient", "", { min: 0, max: 1, step: "any", placeholder: "method's" }),
    bn_prior: numberInput("bn_prior", "", { min: 0, max: 1, step: "any", placeholder: "method's" }),
    bn_prior_every: numberInput("bn_prior_every", "", { min: 1, max: 64, placeholder: "method's" }),
    stochastic_depth: numberInput("stochastic_depth", "", { min: 0, max: 0.99, step: "any", placeholder: "method's" }),
    cos_power: numberInput("cos_power", "", { min: 0, max: 8, step: "any", placeholder: "method's" }),
    size: numberInput("size", "", { min: 32, max: 512, placeholder: "model's" }),
    criterion: h(
      "select",
      { name: "criterion" },
      h("option", { value: "off" }, "off (whole schedule)"),
      h("option", { value: "min" }, "min test p ≥ threshold"),
      h("option", { value: "mean" }, "mean test p ≥ threshold"),
    ),
    threshold: numberInput("threshold", 0.9, { min: 0, max: 1, step: "any" }),
  };
  const el = h(
    "div.grid-3",
    field("Objective", f.objective),
    field("Adam lr (pixels)", f.lr),
    field("q target", f.q_target),
    field("Max steps / round", f.max_steps_per_round),
    field("Max total steps", f.max_total_steps),
    field("Skip gradients (SGM γ)", f.skip_gradient, "residual branches' gradient × γ; 1 = plain"),
    field("BatchNorm prior", f.bn_prior, "weight of the features' distance to the model's statistics; 0 = off"),
    field("Prior layers", f.bn_prior_every, "the prior on every k-th BatchNorm layer; 1 = all"),
    field("Stochastic depth", f.stochastic_depth, "chance a view drops each residual branch per step; 0 = off"),
    field("Cosine power", f.cos_power, "logit objective × cos(features, class weights)^p; 0 = plain logit"),
    field("Image size (px)", f.size),
    field("Early stop", f.criterion),
    field("Threshold", f.threshold),
  );
  return {
    el,
    apply(body) {
      body.optimizer = {
        objective: f.objective.value,
        lr: Number(f.lr.value),
        q_target: Number(f.q_target.value),
        max_steps_per_round: Number(f.max_steps_per_round.value),
        max_total_steps: Number(f.max_total_steps.value),
      };
      if (f.skip_gradient.value !== "") body.optimizer.skip_gradient = Number(f.skip_gradient.value);
      if (f.bn_prior.value !== "") body.optimizer.bn_prior = Number(f.bn_prior.value);
      if (f.bn_prior_every.value !== "") body.optimizer.bn_prior_every = Number(f.bn_prior_every.value);
      if (f.stochastic_depth.value !== "") body.optimizer.stochastic_depth = Number(f.stochastic_depth.value);
      if (f.cos_power.value !== "") body.optimizer.cos_power = Number(f.cos_power.value);
      if (f.size.value) body.size = Number(f.size.value);
      if (f.criterion.value !== "off") {
        body.criterion = { kind: f.criterion.value, threshold: Number(f.threshold.value) };
      }
    },
  };
}

/** The submit row: submit button, "copy as curl", the message area. ``build`` gives the JSON
 * body, or with ``multipart`` {files, spec} (the curl command then uploads the files by name). */
function submitRow(label, path, build, { multipart = false, fields = UPLOAD_FIELDS } = {}) {
  const msg = h("div.form-message", { "aria-live": "polite" });
  const btn = h("button.primary", { type: "submit", text: label });
  const command = () => {
    if (!multipart) return api.curlFor("POST", path, build());
    const { files, spec } = build();
    return api.curlForm(path, [...files].map((f) => f.name), spec, fields);
  };
  const curl = h("button.secondary", {
    type: "button",
    text: "Copy as curl",
    on: {
      click: async () => {
        try {
          const ok = await copyText(command());
          toast(ok ? "curl command copied" : "could not copy", ok ? "ok" : "error");
        } catch (err) {
          clear(msg).append(errorBox(err));
        }
      },
    },
  });
  return { el: h("div.submit-row", btn, curl, msg), msg, btn };
}

/** Send, then open the job's page (``pageOf``: another page, e.g. the atlas view). */
async function submitJob(row, path, send, pageOf = (job) => `#/jobs/${job.id}`) {
  clear(row.msg);
  row.btn.disabled = true;
  row.btn.classList.add("busy");
  try {
    const job = await send();
    toast(`${job.kind || "job"} ${job.id.slice(0, 8)} queued`, "ok");
    location.hash = pageOf(job);
  } catch (err) {
    row.msg.append(errorBox(err, "The API refused the job"));
  } finally {
    row.btn.disabled = false;
    row.btn.classList.remove("busy");
  }
}

// ---------------------------------------------------------------- forms

function visualizeForm() {
  const models = modelPicker("model");
  const targets = classPicker(() => models.values()[0]);
  const method = h("select", { name: "method" });
  const methodHelp = h("small.hint");
  methods().then((ms) => {
    for (const m of ms) method.append(h("option", { value: m }, m));
    methodHelp.textContent = METHOD_HELP[method.value] || "";
  });
  method.addEventListener("change", () => (methodHelp.textContent = METHOD_HELP[method.value] || ""));
  const gray = grayControl();
  const schedule = scheduleEditor();
  const seed = numberInput("seed", 0, { min: 0 });
  const judges = modelPicker("judges");
  judges.onChange(() => {});
  const adv = advancedOptimizer();

  const build = () => {
    const ms = models.values();
    const body = {
      model: ms.length === 1 ? ms[0] : ms,
      targets: targets.values(),
      method: method.value,
      initial_gray: gray.value(),
      schedule: schedule.values(),
      seed: Number(seed.value || 0),
    };
    adv.apply(body);
    const js = judges.values().filter((j) => !ms.includes(j));
    if (js.length) body.judges = js;
    return body;
  };
  const row = submitRow("Visualize", "/visualize", build);
  const form = h(
    "form#form-visualize.job-form",
    {
      novalidate: true,
      on: {
        submit: (e) => {
          e.preventDefault();
          submitJob(row, "/visualize", () => api.post("/visualize", build()));
        },
      },
    },
    field("Models", models.el, "several models give a model × target grid"),
    field("Target classes", targets.el, "type to search; Enter picks; several targets run as one batch"),
    h("div.grid-2", field("Method", method, methodHelp), field("Seed", seed)),
    field("Initial gray", gray.el, "0 = black (the paper's default)"),
    field("Schedule", schedule.el, "one transformation per round"),
    h(
      "details.advanced",
      h("summary", "Optimizer, stopping, size and judges"),
      adv.el,
      field("Judges", judges.el, "other models whose view of the result goes into the quality report"),
    ),
    row.el,
  );
  // judges start unchecked
  judges.onChange(() => {});
  catalog().then(() => $$("input", judges.el).forEach((i) => (i.checked = false))).catch(() => {});
  return form;
}

function sweepForm() {
  const models = modelPicker("sweep-model", { multiple: false });
  const target = classPicker(() => models.values()[0], { multiple: false, name: "target" });
  const levels = h("input", {
    type: "text",
    name: "gray_levels",
    value: "",
    placeholder: "default: 0, 10, …, 250, 255 (27 levels)",
  });
  const schedule = scheduleEditor();
  const seed = numberInput("seed", 0, { min: 0 });
  const adv = advancedOptimizer();
  const ent = {
    window: numberInput("window", 16, { min: 2, max: 128 }),
    stride: numberInput("stride", 4, { min: 1, max: 128 }),
    window2: numberInput("window2", 8, { min: 2, max: 128 }),
    stride2: numberInput("stride2", 2, { min: 1, max: 128 }),
  };
  const build = () => {
    const body = {
      model: models.values()[0],
      target: target.values()[0],
      schedule: schedule.values(),
      seed: Number(seed.value || 0),
    };
    const text = levels.value.trim();
    if (text) body.gray_levels = text.split(/[\s,;]+/).filter(Boolean).map(Number);
    adv.apply(body);
    body.entropy = Object.fromEntries(Object.entries(ent).map(([k, v]) => [k, Number(v.value)]));
    return body;
  };
  const row = submitRow("Run sweep", "/entropy-sweep", build);
  return h(
    "form#form-sweep.job-form",
    {
      novalidate: true,
      on: {
        submit: (e) => {
          e.preventDefault();
          submitJob(row, "/entropy-sweep", () => api.post("/entropy-sweep", build()));
        },
      },
    },
    h("p.form-intro", "Visualize one class from many initial gray levels in one batch and measure the 2D and second-order entropy of each result (paper section 2.2)."),
    field("Model", models.el),
    field("Target class", target.el),
    field("Gray levels", levels, "comma-separated 0..255; empty for the 27 default levels"),
    field("Schedule", schedule.el),
    field("Seed", seed),
    h(
      "details.advanced",
      h("summary", "Optimizer, stopping, size and entropy windows"),
      adv.el,
      h(
        "div.grid-4",
        field("Window", ent.window),
        field("Stride", ent.stride),
        field("2nd window", ent.window2),
        field("2nd stride", ent.stride2),
      ),
    ),
    row.el,
  );
}

function fileDrop(name, { multiple }) {
  const input = h("input", { type: "file", name, accept: "image/png,image/jpeg,image/webp", multiple });
  const previews = h("div.previews");
  input.addEventListener("change", () => {
    clear(previews);
    for (const f of input.files) {
      const url = URL.createObjectURL(f);
      previews.append(h("figure.preview", h("img", { src: url, alt: f.name }), h("figcaption", f.name)));
    }
  });
  return { el: h("div.file-drop", input, previews), input };
}

function classifyForm() {
  const files = fileDrop("images", { multiple: true });
  const models = modelPicker("classify-models");
  const topk = numberInput("top_k", 5, { min: 1, max: 20 });
  const build = () => {
    if (!files.input.files.length) throw new api.ApiError(0, { title: "Choose at least one image" });
    const spec = { models: models.values(), top_k: Number(topk.value || 5) };
    return { files: files.input.files, spec };
  };
  const row = submitRow("Classify", "/classify", build, { multipart: true });
  const send = () => {
    const { files: chosen, spec } = build();
    return api.request("POST", "/classify", { form: uploadForm(chosen, spec) });
  };
  return h(
    "form#form-classify.job-form",
    {
      novalidate: true,
      on: { submit: (e) => (e.preventDefault(), submitJob(row, "/classify", send)) },
    },
    h("p.form-intro", "Top predictions of one or more images under one or more models, side by side (PNG, JPEG or WebP)."),
    field("Images", files.el),
    field("Models", models.el),
    field("Top k", topk),
    row.el,
  );
}

/** Draw rectangles on the image with the mouse; coordinates in image pixels. */
function rectCanvas() {
  const canvas = h("canvas.screen-canvas", { width: 480, height: 320 });
  const list = h("ul.rect-list");
  const rects = [];
  let img = null;
  let scale = 1;
  let drag = null;

  function draw(extra) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!img) {
      ctx.fillStyle = "#f1f4f8";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#7a8699";
      ctx.font = "14px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("choose an image, then drag to draw rectangles", canvas.width / 2, canvas.height / 2);
      return;
    }
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    for (const [i, r] of [...rects, ...(extra ? [extra] : [])].entries()) {
      ctx.fillStyle = "rgba(220, 53, 69, 0.35)";
      ctx.strokeStyle = "#dc3545";
      ctx.lineWidth = 2;
      ctx.fillRect(r.x * scale, r.y * scale, r.width * scale, r.height * scale);
      ctx.strokeRect(r.x * scale, r.y * scale, r.width * scale, r.height * scale);
      if (i < rects.length) {
        ctx.fillStyle = "#fff";
        ctx.font = "bold 13px system-ui, sans-serif";
        ctx.fillText(String(i + 1), r.x * scale + 5, r.y * scale + 15);
      }
    }
  }
  function renderList() {
    clear(list);
    rects.forEach((r, i) =>
      list.append(
        h(
          "li",
          h("span.rect-no", String(i + 1)),
          `x ${r.x}, y ${r.y}, ${r.width} × ${r.height} px`,
          h("button.icon-button", {
            type: "button",
            text: "×",
            title: "remove",
            on: { click: () => (rects.splice(i, 1), renderList(), draw()) },
          }),
        ),
      ),
    );
    if (!rects.length) list.append(h("li.muted", "no rectangle yet"));
  }
  function toImage(e) {
    const b = canvas.getBoundingClientRect();
    const x = ((e.clientX - b.left) * canvas.width) / b.width / scale;
    const y = ((e.clientY - b.top) * canvas.height) / b.height / scale;
    return { x: Math.max(0, Math.min(img.naturalWidth, x)), y: Math.max(0, Math.min(img.naturalHeight, y)) };
  }
  const rectOf = (a, b) => ({
    x: Math.round(Math.min(a.x, b.x)),
    y: Math.round(Math.min(a.y, b.y)),
    width: Math.round(Math.abs(a.x - b.x)),
    height: Math.round(Math.abs(a.y - b.y)),
  });
  canvas.addEventListener("mousedown", (e) => {
    if (!img) return;
    drag = toImage(e);
  });
  canvas.addEventListener("mousemove", (e) => {
    if (drag) draw(rectOf(drag, toImage(e)));
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const r = rectOf(drag, toImage(e));
    drag = null;
    if (r.width >= 2 && r.height >= 2) rects.push(r);
    renderList();
    draw();
  });
  draw();
  renderList();
  return {
    el: h("div.rect-editor", canvas, list),
    canvas,
    rects,
    setImage(file) {
      rects.length = 0;
      renderList();
      if (!file) {
        img = null;
        draw();
        return;
      }
      const im = new Image();
      im.onload = () => {
        img = im;
        const maxW = 640;
        scale = Math.min(1, maxW / im.naturalWidth);
        canvas.width = Math.round(im.naturalWidth * scale);
        canvas.height = Math.round(im.naturalHeight * scale);
        draw();
      };
      im.src = URL.createObjectURL(file);
    },
  };
}

function screenForm() {
  const input = h("input", { type: "file", name: "image", accept: "image/png,image/jpeg,image/webp" });
  const canvas = rectCanvas();
  input.addEventListener("change", () => canvas.setImage(input.files[0]));
  const models = modelPicker("screen-models");
  const topk = numberInput("top_k", 5, { min: 1, max: 20 });
  const build = () => {
    if (!input.files.length) throw new api.ApiError(0, { title: "Choose an image" });
    if (!canvas.rects.length) throw new api.ApiError(0, { title: "Draw at least one rectangle on the image" });
    const spec = {
      models: models.values(),
      top_k: Number(topk.value || 5),
      rectangles: canvas.rects.map((r) => ({ ...r })),
    };
    return { files: [input.files[0]], spec };
  };
  const row = submitRow("Screen", "/screen", build, { multipart: true });
  const send = () => {
    const { files: chosen, spec } = build();
    return api.request("POST", "/screen", { form: uploadForm(chosen, spec) });
  };
  return h(
    "form#form-screen.job-form",
    {
      novalidate: true,
      on: { submit: (e) => (e.preventDefault(), submitJob(row, "/screen", send)) },
    },
    h("p.form-intro", "Fill rectangles of an image with each model's zero and compare the predictions before and after (paper section 3.3)."),
    field("Image", input),
    field("Rectangles", canvas.el, "drag on the image; coordinates are in image pixels"),
    h("div.grid-2", field("Models", models.el), field("Top k", topk)),
    row.el,
  );
}

/** Compare models: every model visualizes every target; every model classifies every result. */
function compareForm() {
  const models = modelPicker("compare-models");
  const targets = classPicker(() => models.values()[0]);
  const method = h("select", { name: "method" });
  methods().then((ms) => {
    for (const m of ms) method.append(h("option", { value: m, selected: m === "invariant+" }, m));
  });
  const schedule = scheduleEditor();
  const seed = numberInput("seed", 0, { min: 0 });
  const adv = advancedOptimizer();
  const build = () => {
    const body = {
      models: models.values(),
      targets: targets.values(),
      method: method.value,
      seed: Number(seed.value || 0),
    };
    if (method.value !== "invariant+") body.schedule = schedule.values();
    adv.apply(body);
    return body;
  };
  const row = submitRow("Compare", "/compare", build);
  // every published model starts checked (a comparison needs two or more)
  catalog().then(() => $$("input", models.el).forEach((i) => (i.checked = true))).catch(() => {});
  return h(
    "form#form-compare.job-form",
    {
      novalidate: true,
      on: {
        submit: (e) => {
          e.preventDefault();
          submitJob(row, "/compare", () => api.post("/compare", build()));
        },
      },
    },
    h("p.form-intro", "Each model visualizes each class (the model × target grid, with each model's zero color), then every model classifies every visualization: the cross-model matrix of the target's probability and rank (paper Figures 5 and 6)."),
    field("Models", models.el, "two to four"),
    field("Target classes", targets.el, "type to search; Enter picks"),
    h("div.grid-2", field("Method", method), field("Seed", seed)),
    h("details.advanced", h("summary", "Schedule and optimizer"), field("Schedule", schedule.el, "ignored by invariant+ (its own rounds)"), adv.el),
    row.el,
  );
}

/** An atlas: every class of one model (or a list / ranges of them), in chunks over all workers;
 * submitted, the page goes to the atlas view (#/atlas/<id>), which fills in as chunks finish. */
function atlasForm() {
  const models = modelPicker("atlas-model", { multiple: false });
  const method = h("select", { name: "method" });
  const methodHelp = h("small.hint");
  methods().then((ms) => {
    for (const m of ms) method.append(h("option", { value: m, selected: m === "invariant+" }, m));
    methodHelp.textContent = METHOD_HELP[method.value] || "";
  });
  method.addEventListener("change", () => (methodHelp.textContent = METHOD_HELP[method.value] || ""));
  const all = h("input", { type: "radio", name: "atlas-scope", value: "all", checked: true });
  const some = h("input", { type: "radio", name: "atlas-scope", value: "some" });
  const classes = h("input", {
    type: "text",
    name: "classes",
    placeholder: "e.g. 0-99, 400, soccer ball",
    autocomplete: "off",
    spellcheck: false,
    on: { input: () => (some.checked = true) },
  });
  const allLabel = h("span", "all classes");
  const scope = h(
    "div.atlas-scope",
    h("label.chip-option", all, allLabel),
    h("label.chip-option", some, h("span", "these:")),
    classes,
  );
  const chunk = numberInput("chunk_size", 8, { min: 1, max: 64 });
  const seed = numberInput("seed", 0, { min: 0 });
  const steps = numberInput("max_steps_per_round", "", { min: 1, max: 5000, placeholder: "method's" });
  const views = numberInput("views", "", { min: 1, max: 256, placeholder: "16" });
  const gray = numberInput("initial_gray", "", { min: 0, max: 255, placeholder: "method's" });
  models.onChange(async () => {
    const name = models.values()[0];
    const m = (await catalog().catch(() => [])).find((x) => x.name === name);
    allLabel.textContent = m ? `all ${m.num_classes} classes` : "all classes";
  });

  const build = () => {
    const body = { model: models.values()[0], method: method.value, chunk_size: Number(chunk.value || 8) };
    // One string as POST /atlas takes it: indices, names and ranges, comma-separated.
    if (some.checked) body.classes = classes.value.trim();
    if (seed.value !== "") body.seed = Number(seed.value);
    if (steps.value !== "") body.optimizer = { max_steps_per_round: Number(steps.value) };
    if (views.value !== "") body.views = { count: Number(views.value) };
    if (gray.value !== "") body.initial_gray = Number(gray.value);
    return body;
  };
  const row = submitRow("Start atlas", "/atlas", build);
  return h(
    "form#form-atlas.job-form",
    {
      novalidate: true,
      on: {
        submit: (e) => {
          e.preventDefault();
          submitJob(row, "/atlas", () => api.post("/atlas", build()), (job) => `#/atlas/${job.id}`);
        },
      },
    },
    h("p.form-intro", "The picture of every class of a model, or of a list of classes, in chunks that all workers share; browse it while it runs."),
    field("Model", models.el),
    field("Classes", scope, "indices, names and inclusive ranges, comma-separated: 0-9, 400, soccer ball"),
    h("div.grid-2", field("Method", method, methodHelp), field("Chunk size", chunk, "classes per chunk (1 to 64)")),
    h(
      "details.advanced",
      h("summary", "Seed, steps and quality views"),
      h(
        "div.grid-2",
        field("Seed", seed),
        field("Max steps / round", steps),
        field("Quality views", views, "random views each class is judged under"),
        field("Initial gray", gray),
      ),
    ),
    row.el,
  );
}

// ---------------------------------------------------------------- models

const NORMALIZATIONS = {
  imagenet: { label: "ImageNet (torchvision)", mean: "123.675, 116.28, 103.53", std: "58.395, 57.12, 57.375" },
  unit: { label: "0..1 inputs", mean: "0", std: "255" },
  symmetric: { label: "-1..1 inputs", mean: "127.5", std: "127.5" },
  custom: { label: "custom" },
};

function extensionOf(fileName) {
  const lower = String(fileName || "").toLowerCase();
  return MODEL_EXTENSIONS.find((e) => lower.endsWith(e)) || null;
}

/** "1, 2, 3" or "7" (every channel) as three numbers; throws a message naming the field. */
function color(text, fieldName) {
  const parts = String(text).split(/[\s,;]+/).filter(Boolean).map(Number);
  if (parts.length === 1) parts.push(parts[0], parts[0]);
  if (parts.length !== 3 || parts.some((x) => !Number.isFinite(x))) {
    throw new api.ApiError(0, { title: `${fieldName}: give one number or three (R, G, B), in pixel units 0..255` });
  }
  return parts;
}

const shortSha = (sha) => (sha ? `${sha.slice(0, 12)}…` : "–");
const ms = (s) => (typeof s === "number" ? `${(1000 * s).toFixed(1)} ms` : "–");
const MODEL_STATES = { ready: "succeeded", pending: "running", failed: "failed" };

/** A registered model's status (pending, ready, failed) coloured like a job's. */
function modelBadge(status) {
  return h(`span.badge.status-${MODEL_STATES[status] || "unknown"}`, { text: status || "unknown" });
}

/** GET /models as a table: registered models with their checksum, validation timing and a
 * Remove button (DELETE /models/<name>, admin key). */
function modelCatalog() {
  const tbody = h("tbody");
  const msg = h("div.list-message");
  const el = h(
    "section.model-catalog",
    h(
      "div.catalog-head",
      h("h3", "Catalog"),
      h("button.link-button#catalog-refresh", { type: "button", text: "refresh", on: { click: () => load() } }),
    ),
    msg,
    h(
      "div.table-wrap",
      h(
        "table.jobs-table.catalog-table#model-catalog",
        h("thead", h("tr", ["Model", "Checksum", "Validation", ""].map((t) => h("th", t)))),
        tbody,
      ),
    ),
  );
  let seq = 0;

  async function remove(name, button) {
    if (!window.confirm(`Remove ${name} (every version) from the catalog?`)) return;
    button.disabled = true;
    try {
      const res = await api.request("DELETE", `/models/${encodeURIComponent(name)}`);
      toast(`removed ${(res?.deleted || [name]).join(", ")}`, "ok");
      await load();
    } catch (err) {
      clear(msg).append(errorBox(err, `Could not remove ${name}`));
      button.disabled = false;
    }
  }

  function row(m) {
    const registered = !!m.version;
    const validation = h("td.validation", registered ? "…" : h("span.muted", "built in"));
    const tr = h(
      "tr.model-row",
      { dataset: { model: m.name, registered: registered ? "yes" : "no", status: registered ? "loading" : "ready" } },
      h(
        "td.model-name",
        h("strong", m.name),
        h("small.muted", [m.architecture || m.format, `${m.input_size} px`, `${m.num_classes} classes`].filter(Boolean).join(" · ")),
      ),
      h("td.sha", registered ? h("code", { title: m.sha256 }, shortSha(m.sha256)) : h("span.muted", "–")),
      validation,
      h(
        "td.actions",
        registered
          ? h("button.danger.small.remove-model", { type: "button", text: "Remove", on: { click: (e) => remove(m.name, e.target) } })
          : null,
      ),
    );
    if (registered) {
      // The registration view: status, version and the worker's timing of one step.
      api.get(`/models/${encodeURIComponent(m.name)}`).then(
        (info) => {
          const v = info.validation || {};
          tr.dataset.status = info.status;
          clear(validation).append(
            modelBadge(info.status),
            h("span.step-time", { title: "one forward+backward step at validation" }, ` ${ms(v.step_seconds)}`),
            h("small.muted", ` ${info.version || ""}${v.device ? ` · ${v.device}` : ""}`),
          );
        },
        (err) => {
          tr.dataset.status = "error";
          clear(validation).append(h("span.error-text", err.message));
        },
      );
    }
    return tr;
  }

  async function load() {
    const my = ++seq;
    try {
      const models = await refreshCatalog();
      if (my !== seq) return;
      clear(msg);
      clear(tbody);
      // A registered model is listed as "name" (its newest version) and as "name@v": one row.
      const shown = models.filter((m) => !m.name.includes("@"));
      for (const m of shown) tbody.append(row(m));
      if (!shown.length) tbody.append(h("tr.empty", h("td", { colSpan: 4 }, "No models yet.")));
      el.dataset.loaded = String(my);
    } catch (err) {
      if (my !== seq) return;
      clear(msg).append(errorBox(err, "Could not load the models"));
    }
  }
  load();
  return { el, load };
}

/** Follow a registration: its validation job's status and progress (the job's event stream,
 * polling when there is none), then the model's status: ready with its checksum and timing, or
 * failed with the reason. ``panel.dataset.status`` says where it is (pending, ready, failed). */
function followRegistration(panel, reg, onDone) {
  const job = reg.job || {};
  const badge = statusBadge(job.status || "queued");
  badge.id = "registration-job-status";
  const bar = progressBar(0, job.status || "queued");
  const result = h("div.registration-result");
  panel.dataset.status = "pending";
  panel.dataset.version = reg.version;
  clear(panel).append(
    h(
      "div.registration-head",
      h("strong", `Validating ${reg.version}`),
      badge,
      job.id ? h("a.small", { href: `#/jobs/${job.id}` }, "validation job") : null,
    ),
    bar,
    h("small.muted", `${reg.format} · ${(reg.size / 1024).toFixed(1)} KiB · sha256 ${shortSha(reg.sha256)}`),
    result,
  );
  let status = job.status || "queued";
  const show = (s, percent) => {
    status = s || status;
    badge.className = statusBadge(status).className;
    badge.textContent = status;
    setProgress(bar, percent ?? (status === "succeeded" ? 100 : 0), status);
  };
  const sleep = (t) => new Promise((r) => setTimeout(r, t));

  async function settle() {
    // The job ended (or its stream is unavailable): read the model until it is no longer pending.
    for (let tries = 0; tries < 900; tries++) {
      let info;
      try {
        info = await api.get(`/models/${encodeURIComponent(reg.version)}`);
      } catch (err) {
        clear(result).append(errorBox(err, "Could not read the model"));
        panel.dataset.status = "error";
        return;
      }
      if (info.status !== "pending") return finish(info);
      await sleep(1000);
    }
    clear(result).append(h("div.alert.alert-warn", `${reg.version} is still pending: see its validation job.`));
  }

  function finish(info) {
    panel.dataset.status = info.status;
    if (info.status === "ready") {
      const v = info.validation || {};
      show("succeeded", 100);
      clear(result).append(
        h(
          "dl.registration-figures",
          h("dt", "version"), h("dd#registration-version", info.version),
          h("dt", "sha256"), h("dd", h("code#registration-sha", info.sha256)),
          h("dt", "validation step"), h("dd#registration-step", ms(v.step_seconds)),
          h("dt", "outputs"), h("dd", String(v.outputs ?? "–")),
          h("dt", "device"), h("dd", v.device || "–"),
        ),
        h("div.alert.alert-info", `${info.version} is ready: listed in the catalog below and usable by every form.`),
      );
      toast(`${info.version} is ready`, "ok");
    } else {
      const e = info.error || {};
      show(status === "canceled" ? "canceled" : "failed");
      clear(result).append(
        h(
          "div.alert.alert-error#registration-error",
          { role: "alert" },
          h("strong", `${info.version || reg.version} failed validation`),
          h("div", `${e.type ? `${e.type}: ` : ""}${e.message || "no reason given"}`),
        ),
      );
    }
    onDone(info);
  }

  (async () => {
    if (job.id) {
      try {
        await api.followEvents(`/jobs/${job.id}/events`, (event, data) => {
          if (event === "status") show(data.status);
          else if (event === "progress") show(null, data.percent);
          else if (event === "end") show(data.status, data.status === "succeeded" ? 100 : data.progress?.percent);
        });
      } catch {
        // no stream (a proxy, another key's job): the model's own status says the same
      }
    }
    await settle();
  })();
}

/** Register a model (POST /models, multipart: the file and its JSON metadata), follow its
 * validation, and the catalog of models below. */
function modelForm() {
  const file = h("input", { type: "file", name: "file", accept: MODEL_EXTENSIONS.join(",") });
  const FILE_HINT = ".pt2 (torch.export), .pt (TorchScript), .pth or .safetensors (a torchvision state dict)";
  const fileHint = h("small.hint", FILE_HINT);
  const name = h("input", { type: "text", name: "name", placeholder: "my_resnet", autocomplete: "off", spellcheck: false });
  const architecture = h("input", { type: "text", name: "architecture", placeholder: "resnet18", autocomplete: "off", spellcheck: false });
  const archField = field("Architecture", architecture, "the torchvision.models classification architecture of the state dict");
  archField.hidden = true;
  const inputSize = numberInput("input_size", 224, { min: 16, max: 1024 });
  const resizeTo = numberInput("resize_to", "", { min: 16, max: 2048, placeholder: "none" });
  const interpolation = h(
    "select",
    { name: "interpolation" },
    h("option", { value: "bilinear" }, "bilinear"),
    h("option", { value: "bicubic" }, "bicubic"),
  );
  const norm = h(
    "select",
    { name: "normalization" },
    Object.entries(NORMALIZATIONS).map(([k, v]) => h("option", { value: k }, v.label)),
  );
  const mean = h("input", { type: "text", name: "mean", value: NORMALIZATIONS.imagenet.mean, autocomplete: "off" });
  const std = h("input", { type: "text", name: "std", value: NORMALIZATIONS.imagenet.std, autocomplete: "off" });
  norm.addEventListener("change", () => {
    const n = NORMALIZATIONS[norm.value];
    if (n.mean !== undefined) {
      mean.value = n.mean;
      std.value = n.std;
    }
  });
  for (const input of [mean, std]) input.addEventListener("input", () => (norm.value = "custom"));
  const labelsMode = h(
    "select",
    { name: "labels_mode" },
    h("option", { value: "list" }, "a list, one per line"),
    h("option", { value: "count" }, "a count (class 0, class 1, …)"),
    h("option", { value: "imagenet" }, "ImageNet's 1,000"),
  );
  const labelsText = h("textarea", { name: "labels", rows: 5, placeholder: "one label per line, in output order", spellcheck: false });
  const labelsCount = numberInput("labels_count", "", { min: 1, max: 100000, placeholder: "number of outputs" });
  const syncLabels = () => {
    labelsText.hidden = labelsMode.value !== "list";
    labelsCount.hidden = labelsMode.value !== "count";
  };
  labelsMode.addEventListener("change", syncLabels);
  syncLabels();
  const description = h("input", { type: "text", name: "description", maxLength: 1000, placeholder: "optional" });

  file.addEventListener("change", () => {
    const f = file.files[0];
    const ext = f ? extensionOf(f.name) : null;
    archField.hidden = !STATE_DICTS.has(ext);
    fileHint.textContent = f && !ext ? `${f.name}: not a .pt2, .pt, .pth or .safetensors file` : FILE_HINT;
    fileHint.classList.toggle("error-text", !!(f && !ext));
    if (f && !name.value.trim()) {
      // a name from the file's: lower case, [a-z0-9_.-], a letter first
      const stem = f.name.replace(/\.[^.]*$/, "").toLowerCase().replace(/[^a-z0-9_.-]+/g, "_").replace(/^[^a-z]+/, "");
      name.value = stem.slice(0, 63);
    }
  });

  const build = () => {
    if (!file.files.length) throw new api.ApiError(0, { title: "Choose a model file" });
    const f = file.files[0];
    const meta = {
      name: name.value.trim(),
      input_size: Number(inputSize.value),
      mean: color(mean.value, "mean"),
      std: color(std.value, "std"),
      interpolation: interpolation.value,
    };
    if (resizeTo.value !== "") meta.resize_to = Number(resizeTo.value);
    if (labelsMode.value === "imagenet") meta.labels = "imagenet";
    else if (labelsMode.value === "count") {
      const n = Number(labelsCount.value);
      if (!Number.isInteger(n) || n < 1) throw new api.ApiError(0, { title: "labels: give the number of outputs (1 or more)" });
      meta.labels = Array.from({ length: n }, (_, i) => `class ${i}`);
    } else {
      meta.labels = labelsText.value.split("\n").map((s) => s.trim()).filter(Boolean);
    }
    if (STATE_DICTS.has(extensionOf(f.name)) || architecture.value.trim()) {
      meta.architecture = architecture.value.trim() || null;
    }
    if (description.value.trim()) meta.description = description.value.trim();
    return { files: [f], spec: meta };
  };
  const row = submitRow("Register model", "/models", build, { multipart: true, fields: MODEL_FIELDS });
  const panel = h("div.registration#model-registration", { hidden: true });
  const cat = modelCatalog();

  async function send() {
    clear(row.msg);
    row.btn.disabled = true;
    row.btn.classList.add("busy");
    try {
      const { files, spec } = build();
      const fd = new FormData();
      fd.append(MODEL_FIELDS.images, files[0], files[0].name);
      fd.append(MODEL_FIELDS.spec, JSON.stringify(spec));
      const reg = await api.request("POST", "/models", { form: fd });
      toast(`${reg.version} uploaded; a worker validates it`, "ok");
      panel.hidden = false;
      followRegistration(panel, reg, () => cat.load());
    } catch (err) {
      row.msg.append(errorBox(err, "The API refused the model"));
    } finally {
      row.btn.disabled = false;
      row.btn.classList.remove("busy");
    }
  }

  const form = h(
    "form#form-model.job-form",
    { novalidate: true, on: { submit: (e) => (e.preventDefault(), send()) } },
    h("p.form-intro", "Register your own classifier (admin key when keys are on): a worker loads and checks it, then every form can use it."),
    field("Model file", file, fileHint),
    h("div.grid-2", field("Name", name, "lower case: letters, digits, _ . -"), archField),
    h("div.grid-3", field("Input size (px)", inputSize), field("Resize to (px)", resizeTo, "shorter side, then center crop"), field("Interpolation", interpolation)),
    field("Normalization", norm, "input = (pixel − mean) / std, in pixel units 0..255"),
    h("div.grid-2", field("Mean (R, G, B)", mean), field("Std (R, G, B)", std)),
    h("div.field", { role: "group", "aria-label": "Labels" }, h("span.field-label", "Labels"), labelsMode, labelsText, labelsCount),
    field("Description", description),
    row.el,
  );
  return h("div.models-tab", form, panel, cat.el);
}

export const FORMS = [
  { id: "visualize", label: "Visualize", make: visualizeForm },
  { id: "sweep", label: "Sweep", make: sweepForm },
  { id: "classify", label: "Classify", make: classifyForm },
  { id: "screen", label: "Screen", make: screenForm },
  { id: "compare", label: "Compare", make: compareForm },
  { id: "atlas", label: "Atlas", make: atlasForm },
  { id: "models", label: "Models", make: modelForm },
];
