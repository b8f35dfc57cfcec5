// Polls GET /readyz and shows the service state in the header; views listen for
// "tivis:readiness" events to warn when no worker is live.
import * as api from "./api.js";

let last = null;
const POLL_MS = 5000;

export const readinessState = () => last;

export function startReadiness(pill) {
  async function tick() {
    const r = await api.readiness();
    last = r;
    const workers = r.checks?.workers;
    if (r.ready) {
      pill.className = "pill pill-ok";
      pill.textContent = `ready · ${workers} worker${workers === 1 ? "" : "s"}`;
      pill.title = "GET /readyz: Redis reachable and a live worker";
    } else if (r.status === "unreachable") {
      pill.className = "pill pill-bad";
      pill.textContent = "API unreachable";
      pill.title = r.error || "";
    } else {
      pill.className = "pill pill-bad";
      pill.textContent = r.checks?.redis && r.checks.redis !== "ok" ? "Redis down" : "no worker";
      pill.title = `GET /readyz: ${JSON.stringify(r.checks || r)}`;
    }
    window.dispatchEvent(new CustomEvent("tivis:readiness", { detail: r }));
    setTimeout(tick, POLL_MS);
  }
  tick();
}
