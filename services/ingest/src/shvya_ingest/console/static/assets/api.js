// The console's one way to the platform: the public /v1 API, with the session cookie (sent by
// the browser, never readable here) and the CSRF token on every unsafe request.
let csrf = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : (detail && detail.message) || JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

export function setCsrf(token) { csrf = token; }
export function whenSignedOut(fn) { onSignedOut = fn; }

export async function api(method, path, body, { headers = {}, raw = false } = {}) {
  const h = { Accept: "application/json", ...headers };
  let payload;
  if (body !== undefined) {
    if (typeof body === "string") payload = body;
    else { payload = JSON.stringify(body); h["Content-Type"] = "application/json"; }
  }
  if (!["GET", "HEAD"].includes(method) && csrf) h["X-CSRF-Token"] = csrf;
  const r = await fetch(path, { method, headers: h, body: payload, credentials: "same-origin" });
  if (r.status === 204) return null;
  if (raw && r.ok) return r;
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    if (r.status === 401 && path !== "/v1/session") onSignedOut();
    throw new ApiError(r.status, data && data.detail !== undefined ? data.detail : data);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body, opts) => api("POST", path, body === undefined ? {} : body, opts);
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.append(k, x)); else u.append(k, v);
  }
  const s = u.toString();
  return s ? `?${s}` : "";
}

// Routes other branches add later (campaigns, reports): the console shows their pages only when
// the server's OpenAPI document has them.
let paths = null;
export async function hasRoute(path) {
  if (paths === null) {
    try { paths = new Set(Object.keys((await get("/openapi.json")).paths || {})); }
    catch { paths = new Set(); }
  }
  return paths.has(path);
}
