// Shared pieces: data loading, live refresh, time, badges, delivery ticks, dialogs, charts.
import { html, useState, useEffect, useRef, useCallback } from "../vendor/htm-preact-standalone.module.js";
import { subscribe } from "./live.js";

export { html };

// Load with `loader()`; `reload()` again. Keeps the last data while reloading (no flicker).
export function useData(loader, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const seq = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++seq.current;
    try {
      const data = await loader();
      if (mine === seq.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => { reload(); }, [reload]);
  return { ...state, reload };
}

// Re-run `fn` (debounced) when the live stream names a matching event, or asks for a resync.
export function useLive(fn, match = () => true, deps = []) {
  useEffect(() => {
    let timer = null;
    const off = subscribe((notice) => {
      if (!notice.resync && !(notice.events || []).some(match) && !notice.truncated) return;
      clearTimeout(timer);
      timer = setTimeout(fn, 60);
    });
    return () => { off(); clearTimeout(timer); };
  }, deps);
}

export function useInterval(fn, ms, deps = []) {
  useEffect(() => { const t = setInterval(fn, ms); return () => clearInterval(t); }, deps);
}

export function when(value) {
  if (!value) return "";
  const d = new Date(value);
  const secs = (Date.now() - d.getTime()) / 1000;
  if (secs < 45 && secs > -45) return "just now";
  if (secs > 0 && secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs > 0 && secs < 86400) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export const Time = ({ at }) => at ? html`<time datetime=${at} title=${new Date(at).toLocaleString()}>${when(at)}</time>` : "";

const CHANNELS = { whatsapp_cloud: "WhatsApp", whatsapp_web: "WhatsApp Web", email: "Email", log: "Log" };
export const channelName = (c) => CHANNELS[c] || c;
export const Badge = ({ kind = "", children, title }) => html`<span class=${`badge ${kind}`} title=${title}>${children}</span>`;
export const ChannelBadge = ({ channel }) => html`<${Badge} kind=${`ch-${channel}`}>${channelName(channel)}<//>`;

// Delivery ticks as WhatsApp shows them, with the reason on a failure.
export function Ticks({ message }) {
  const m = message;
  if (m.direction !== "outbound") return "";
  const d = m.delivery_status;
  if (d === "failed" || ["dlq", "failed"].includes(m.status))
    return html`<span class="ticks failed" title=${m.error || "failed"} aria-label=${`failed: ${m.error || ""}`}>✕ failed${m.error ? `: ${m.error}` : ""}</span>`;
  if (d === "read") return html`<span class="ticks read" aria-label="read" title="read">✓✓</span>`;
  if (d === "delivered") return html`<span class="ticks" aria-label="delivered" title="delivered">✓✓</span>`;
  if (d === "sent" || ["sent", "logged"].includes(m.status))
    return html`<span class="ticks" aria-label=${m.status} title=${m.status === "logged" ? "recorded on the log channel" : "sent"}>✓</span>`;
  return html`<span class="ticks pending" aria-label=${m.status} title=${m.status}>🕓 ${m.status}</span>`;
}

// A confirmation in a real <dialog> (focus kept inside, Escape cancels).
export function Confirm({ open, title, children, confirmLabel = "Confirm", onConfirm, onCancel }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return html`<dialog ref=${ref} class="confirm" onCancel=${(e) => { e.preventDefault(); onCancel(); }} aria-labelledby="confirm-title">
    <h2 id="confirm-title">${title}</h2>
    <div>${children}</div>
    <div class="actions">
      <button type="button" onClick=${onCancel}>Cancel</button>
      <button type="button" class="primary" onClick=${onConfirm} autofocus>${confirmLabel}</button>
    </div>
  </dialog>`;
}

export const ErrorNote = ({ error }) => error ? html`<p class="error" role="alert">${error.status ? `${error.status}: ` : ""}${error.message}</p>` : "";
export const Empty = ({ children }) => html`<p class="empty">${children}</p>`;

export function Tabs({ tabs, current, onChange, label }) {
  return html`<div class="tabs" role="tablist" aria-label=${label}>
    ${tabs.map(([key, name]) => html`<button role="tab" type="button" aria-selected=${current === key ? "true" : "false"}
      class=${current === key ? "on" : ""} onClick=${() => onChange(key)}>${name}</button>`)}
  </div>`;
}

// Horizontal bar chart in SVG: rows [{label, value, note}] (one series) or values [a, b] stacked.
export function BarChart({ rows, title, unit = "", colors = ["#1f5f8b", "#7fb3d5"], legend = [] }) {
  const width = 560, bar = 22, gap = 10, left = 150;
  const max = Math.max(1, ...rows.map((r) => (Array.isArray(r.value) ? r.value.reduce((a, b) => a + b, 0) : r.value || 0)));
  const height = rows.length * (bar + gap) + 10;
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    <svg viewBox=${`0 0 ${width} ${height}`} role="img" aria-label=${title} preserveAspectRatio="xMinYMin meet">
      ${rows.map((r, i) => {
        const y = i * (bar + gap) + 5;
        const parts = Array.isArray(r.value) ? r.value : [r.value || 0];
        let x = left;
        const total = parts.reduce((a, b) => a + b, 0);
        return html`<g>
          <text x=${left - 8} y=${y + bar * 0.7} text-anchor="end" class="label">${r.label}</text>
          ${parts.map((v, j) => { const w = ((width - left - 90) * v) / max; const rect = html`<rect x=${x} y=${y} width=${Math.max(w, v ? 2 : 0)} height=${bar} fill=${colors[j % colors.length]} rx="3"><title>${`${r.label}: ${v}${unit}`}</title></rect>`; x += w; return rect; })}
          <text x=${x + 6} y=${y + bar * 0.7} class="value">${r.note !== undefined ? r.note : `${total}${unit}`}</text>
        </g>`;
      })}
    </svg>
    ${legend.length ? html`<div class="legend">${legend.map((l, j) => html`<span><i style=${`background:${colors[j]}`}></i>${l}</span>`)}</div>` : ""}
  </figure>`;
}
