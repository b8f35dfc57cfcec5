// The home view: "new job" forms (tabs) beside the live job list.
import * as api from "./api.js";
import { FORMS } from "./forms.js";
import { h, $, $$, clear, age, listText, statusBadge, progressBar, errorBox, toast } from "./ui.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const KINDS = ["visualize", "sweep", "classify", "screen", "compare", "validate_model", "atlas"];
const POLL_MS = 1500;

let formCache = null; // keep the forms (and what was typed) across views

function formsCard(active) {
  if (!formCache) formCache = new Map();
  const body = h("div.card-body");
  const tabs = h("div.tabs", { role: "tablist" });
  function show(id) {
    for (const b of $$("button", tabs)) b.classList.toggle("active", b.dataset.tab === id);
    if (!formCache.has(id)) formCache.set(id, FORMS.find((f) => f.id === id).make());
    clear(body).append(formCache.get(id));
    sessionStorage.setItem("tivis.tab", id);
  }
  for (const f of FORMS) {
    tabs.append(h("button", { type: "button", role: "tab", dataset: { tab: f.id }, text: f.label, on: { click: () => show(f.id) } }));
  }
  show(active || sessionStorage.getItem("tivis.tab") || "visualize");
  return h("section.card.forms-card", h("div.card-head", h("h2", "New job"), tabs), body);
}

function jobsCard(state) {
  const statusSel = h(
    "select#filter-status",
    { name: "status", on: { change: () => ((state.status = statusSel.value), state.refresh(true)) } },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s)),
  );
  const kindSel = h(
    "select#filter-kind",
    { name: "kind", on: { change: () => ((state.kind = kindSel.value), state.refresh(true)) } },
    h("option", { value: "" }, "all kinds"),
    KINDS.map((k) => h("option", { value: k, selected: k === state.kind }, k)),
  );
  const tbody = h("tbody");
  const table = h(
    "table.jobs-table",
    h(
      "thead",
      h("tr", ["Kind", "Targets", "Model", "Status", "Progress", "Age", ""].map((t) => h("th", t))),
    ),
    tbody,
  );
  const msg = h("div.list-message");
  const more = h("button.secondary.more", { type: "button", hidden: true, text: "Older jobs", on: { click: () => state.more() } });
  const card = h(
    "section.card.jobs-card",
    h("div.card-head", h("h2", "Jobs"), h("div.filters", statusSel, kindSel)),
    msg,
    h("div.table-wrap", table),
    h("div.card-foot", more),
  );
  return { card, tbody, msg, more };
}

function jobRow(job, onCancel) {
  const s = job.summary || {};
  const p = job.progress || {};
  const live = job.status === "queued" || job.status === "running";
  const page = job.kind === "atlas" ? `#/atlas/${job.id}` : `#/jobs/${job.id}`;
  const open = () => (location.hash = page);
  const percent = job.status === "succeeded" ? 100 : p.percent || 0;
  return h(
    "tr.job-row",
    { dataset: { id: job.id, status: job.status, kind: job.kind }, on: { click: (e) => !e.target.closest("button,a") && open() } },
    h("td", h("span.kind", job.kind)),
    h("td.targets", { title: listText(s.targets) }, listText(s.targets)),
    h("td.model", listText(s.model)),
    h("td", statusBadge(job.status), job.cancel_requested && live ? h("small.muted", " stopping…") : null),
    h(
      "td.progress-cell",
      progressBar(percent, job.status),
      h("small.muted", job.status === "running" && p.rounds ? `round ${p.round + 1}/${p.rounds}` : `${Math.round(percent)} %`),
    ),
    h("td.age", { title: job.created_at }, age(job.created_at)),
    h(
      "td.actions",
      live
        ? h("button.danger.small.cancel", { type: "button", text: "Cancel", disabled: job.cancel_requested, on: { click: () => onCancel(job) } })
        : h("a.small", { href: page }, "open"),
    ),
  );
}

export function renderHome(root, params) {
  const state = {
    status: params.get("status") || "",
    kind: params.get("kind") || "",
    items: [],
    cursor: null,
    pages: 1,
    timer: null,
    alive: true,
  };
  const list = jobsCard(state);

  async function cancel(job) {
    try {
      await api.post(`/jobs/${job.id}/cancel`);
      toast(`cancel requested for ${job.id.slice(0, 8)}`, "ok");
    } catch (err) {
      toast(err.message, "error");
    }
    state.refresh();
  }

  // A page that the store's scan budget cut short (few or no matches among many jobs) comes
  // with a cursor: follow it, a few calls per page shown, until the page is full.
  async function load() {
    const want = 25 * state.pages;
    const items = [];
    let cursor = null;
    for (let calls = 0; calls < 2 * state.pages; calls++) {
      const q = new URLSearchParams({ limit: String(want - items.length) });
      if (state.status) q.set("status", state.status);
      if (state.kind) q.set("kind", state.kind);
      if (cursor) q.set("cursor", cursor);
      const res = await api.get(`/jobs?${q}`);
      items.push(...res.items);
      cursor = res.next_cursor;
      if (!cursor || items.length >= want) break;
    }
    return { items, next_cursor: cursor, short: Boolean(cursor) && items.length < want };
  }

  state.refresh = async (reset) => {
    if (reset) {
      state.pages = 1;
      const q = new URLSearchParams();
      if (state.status) q.set("status", state.status);
      if (state.kind) q.set("kind", state.kind);
      history.replaceState(null, "", `#/${q.toString() ? "?" + q : ""}`);
    }
    clearTimeout(state.timer);
    try {
      const res = await load();
      if (!state.alive) return;
      clear(list.msg);
      clear(list.tbody);
      for (const job of res.items) list.tbody.append(jobRow(job, cancel));
      if (!res.items.length) {
        const text = res.short
          ? "No job matches the filters among the newest jobs searched."
          : state.status || state.kind
            ? "No job matches the filters."
            : "No jobs yet: submit one with the form.";
        list.tbody.append(h("tr.empty", h("td", { colSpan: 7 }, text)));
      }
      list.more.hidden = !res.next_cursor;
      list.more.textContent = res.short ? "Search older jobs" : "Older jobs";
    } catch (err) {
      if (!state.alive) return;
      clear(list.msg).append(errorBox(err, "Could not load the jobs"));
    }
    if (state.alive) state.timer = setTimeout(() => state.refresh(), POLL_MS);
  };
  state.more = () => {
    state.pages += 1;
    state.refresh();
  };

  clear(root).append(h("div.home", formsCard(params.get("tab")), list.card));
  state.refresh();
  return () => {
    state.alive = false;
    clearTimeout(state.timer);
  };
}
