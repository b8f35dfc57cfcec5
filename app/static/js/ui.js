// Small DOM helpers shared by the views: element builder, formatting, messages.

/** h("div.card#id", {attrs, on: {click}}, ...children) */
export function h(tag, attrs, ...children) {
  const m = /^([a-z0-9-]+)((?:[.#][\w-]+)*)$/i.exec(tag);
  const el = document.createElement(m ? m[1] : tag);
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === ".") el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "html") el.innerHTML = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** "3 s", "4 min", "2 h", "5 d" since an ISO time. */
export function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export function seconds(x) {
  if (x === null || x === undefined) return "";
  return x < 60 ? `${x.toFixed(1)} s` : `${Math.floor(x / 60)} min ${Math.round(x % 60)} s`;
}

export const pct = (p) => (p === null || p === undefined ? "–" : `${(100 * p).toFixed(1)} %`);
export const num = (x, d = 3) =>
  x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d);

export function listText(v) {
  if (v === null || v === undefined) return "";
  return Array.isArray(v) ? v.join(", ") : String(v);
}

export function statusBadge(status) {
  return h(`span.badge.status-${status || "unknown"}`, { text: status || "unknown" });
}

/** A progress bar; value 0..100; a "state" class colours it by job status. */
export function progressBar(percent, status) {
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  const shown = status === "succeeded" ? 100 : p;
  return h(
    `div.progress.state-${status || "queued"}`,
    {
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(shown),
    },
    h("div.progress-fill", { style: `width:${shown}%` }),
  );
}

export function setProgress(bar, percent, status) {
  const shown = status === "succeeded" ? 100 : Math.max(0, Math.min(100, Number(percent) || 0));
  bar.className = `progress state-${status || "queued"}`;
  bar.setAttribute("aria-valuenow", String(shown));
  bar.firstChild.style.width = `${shown}%`;
}

/** A message box for an error (ApiError lines or any Error). */
export function errorBox(err, title) {
  const lines = typeof err?.lines === "function" ? err.lines() : [String(err?.message || err)];
  return h(
    "div.alert.alert-error",
    { role: "alert" },
    title ? h("strong", title) : null,
    lines.length === 1 && !title
      ? h("div", lines[0])
      : h(
          "ul",
          lines.map((l) => h("li", l)),
        ),
  );
}

let toastTimer = null;
export function toast(text, kind = "info") {
  const el = $("#toast");
  if (!el) return;
  el.textContent = text;
  el.className = `toast show toast-${kind}`;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.className = "toast"), 3500);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h("textarea", { style: "position:fixed;opacity:0" });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok;
  }
}
