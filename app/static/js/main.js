// Entry point: hash routing (#/, #/jobs/<id> and #/atlas/<id>), the API-key dialog, the readiness pill.
import * as api from "./api.js";
import { renderAtlas } from "./atlas.js";
import { renderHome } from "./home.js";
import { renderJob } from "./job.js";
import { startReadiness } from "./readiness.js";
import { $, toast } from "./ui.js";

let teardown = null;

function route() {
  if (teardown) teardown();
  teardown = null;
  const root = $("#view");
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const m = /^\/jobs\/([\w-]+)$/.exec(path);
  const atlas = /^\/atlas\/([\w-]+)$/.exec(path);
  document.body.dataset.view = atlas ? "atlas" : m ? "job" : "home";
  if (atlas) {
    document.title = `atlas ${atlas[1].slice(0, 8)} · tivis`;
    teardown = renderAtlas(root, atlas[1]);
  } else if (m) {
    document.title = `job ${m[1].slice(0, 8)} · tivis`;
    teardown = renderJob(root, m[1]);
  } else {
    document.title = "tivis";
    teardown = renderHome(root, params);
  }
  window.scrollTo(0, 0);
}

function keyDialog() {
  const dialog = $("#key-dialog");
  const input = $("#key-input");
  const button = $("#key-button");
  const show = () => {
    button.classList.toggle("has-key", !!api.apiKey());
    button.title = api.apiKey() ? "API key set (stored in this browser)" : "No API key set";
    $("#key-state").textContent = api.apiKey() ? "key set" : "API key";
  };
  button.addEventListener("click", () => {
    input.value = api.apiKey();
    dialog.showModal();
    input.focus();
  });
  $("#key-form").addEventListener("submit", (e) => {
    const action = e.submitter?.value;
    if (action === "save") {
      api.setApiKey(input.value.trim());
      toast(api.apiKey() ? "API key saved in this browser" : "API key removed", "ok");
      show();
      route();
    } else if (action === "clear") {
      api.setApiKey("");
      toast("API key removed", "ok");
      show();
      route();
    }
  });
  show();
}

window.addEventListener("hashchange", route);
keyDialog();
startReadiness($("#ready-pill"));
route();
