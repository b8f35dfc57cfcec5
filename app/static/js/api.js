// The API client: one place that knows the API key, problem+json errors and the SSE stream.
// Everything goes through fetch() so the X-API-Key header travels with every request
// (including images and the event stream, which <img> and EventSource could not send).

const KEY_STORAGE = "tivis.apiKey";

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  blobCache.clear();
}

function headers(extra = {}) {
  const h = { Accept: "application/json, application/problem+json", ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

/** An API error in words: status, title, detail and each field at fault. */
export class ApiError extends Error {
  constructor(status, problem, fallback) {
    const p = problem && typeof problem === "object" ? problem : {};
    const title = p.title || fallback || `HTTP ${status}`;
    super(p.detail ? `${title}: ${p.detail}` : title);
    this.status = status;
    this.problem = p;
    this.errors = Array.isArray(p.errors) ? p.errors : [];
  }

  /** Lines for display: the message, then one per field error (with suggestions). */
  lines() {
    const out = [this.message];
    for (const e of this.errors) {
      let line = `${e.field || "request"}: ${e.message || "invalid"}`;
      if (Array.isArray(e.suggestions) && e.suggestions.length && !line.includes("closest")) {
        line += ` (did you mean ${e.suggestions.join(", ")}?)`;
      }
      if (out.includes(line)) continue;
      if (!this.message.endsWith(e.message)) out.push(line);
      else if (e.field && !out[0].includes(e.field)) out[0] += ` (${e.field})`; // said: name the field
    }
    if (this.status === 401) out.push("Set the API key with the key button at the top right.");
    if (this.status === 404 && this.problem.type && this.problem.type.endsWith("/not-found")) {
      out.push("This API does not offer that endpoint (yet).");
    }
    return out;
  }
}

async function errorFrom(res) {
  let body = null;
  const type = res.headers.get("content-type") || "";
  try {
    body = type.includes("json") ? await res.json() : { detail: (await res.text()).slice(0, 300) };
  } catch {
    body = null;
  }
  return new ApiError(res.status, body, `HTTP ${res.status} ${res.statusText}`.trim());
}

/** fetch with the key; JSON in, JSON out; throws ApiError (network failures too). */
export async function request(method, path, { json, form, signal, extraHeaders } = {}) {
  const init = { method, headers: headers(extraHeaders), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser sets the multipart boundary
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { title: "Cannot reach the API", detail: String(err.message || err) });
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, json, opts = {}) => request("POST", path, { ...opts, json });

/** GET /readyz without throwing: {ready, status, checks} or {ready:false, error}. */
export async function readiness() {
  try {
    const res = await fetch("/readyz", { headers: headers(), cache: "no-store" });
    const body = await res.json().catch(() => ({}));
    return { ready: res.ok, ...body };
  } catch (err) {
    return { ready: false, status: "unreachable", error: String(err.message || err) };
  }
}

// Artifacts are fetched with the key and shown from object URLs; cached per URL.
const blobCache = new Map();

export function artifactBlobUrl(url) {
  if (!blobCache.has(url)) {
    const p = fetch(url, { headers: headers({ Accept: "*/*" }) }).then(async (res) => {
      if (!res.ok) throw await errorFrom(res);
      return URL.createObjectURL(await res.blob());
    });
    p.catch(() => blobCache.delete(url));
    blobCache.set(url, p);
  }
  return blobCache.get(url);
}

/** Save an artifact as a file (works with API keys, unlike a plain link). */
export async function download(url, name) {
  const href = await artifactBlobUrl(url);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
}

/**
 * Follow GET /jobs/<id>/events. Calls onEvent(name, data) per event; resolves when the
 * stream ends (after the "end" event), rejects on errors. Uses fetch so the key is sent.
 */
export async function followEvents(path, onEvent, signal) {
  const res = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok) throw await errorFrom(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let idx;
    while ((idx = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      let event = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      let parsed;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        parsed = data.join("\n");
      }
      onEvent(event, parsed);
    }
  }
}

/** A shell command that makes the same request (for "copy as curl"). */
export function curlFor(method, path, body) {
  const q = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
  const parts = ["curl", "-X", method, q(location.origin + path)];
  if (apiKey()) parts.push("-H", q(`X-API-Key: ${apiKey()}`));
  if (body !== undefined) {
    parts.push("-H", q("content-type: application/json"), "-d", q(JSON.stringify(body)));
  }
  return parts.join(" ");
}

/** A curl command for a multipart upload: one ``-F images=@<file>`` per file, then the spec. */
export function curlForm(path, fileNames, spec, fields = { images: "images", spec: "spec" }) {
  const q = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
  const parts = ["curl", "-X", "POST", q(location.origin + path)];
  if (apiKey()) parts.push("-H", q(`X-API-Key: ${apiKey()}`));
  for (const name of fileNames) parts.push("-F", q(`${fields.images}=@${name}`));
  parts.push("-F", q(`${fields.spec}=${JSON.stringify(spec)}`));
  return parts.join(" ");
}
