// The live stream (GET /v1/stream): notices that events were written, never the data. Pages
// re-read through the API on a notice, and re-read everything on `hello` (every connect and
// reconnect) and `resync` (NATS came back, a buffer overflowed), so nothing is ever missed.
const listeners = new Set();
const watchers = new Set();
let source = null;
let state = "off";

function setState(next) { state = next; watchers.forEach((fn) => fn(state)); }
function emit(message) { listeners.forEach((fn) => { try { fn(message); } catch (e) { console.error(e); } }); }

export function startLive() {
  if (source) return;
  setState("connecting");
  source = new EventSource("/v1/stream");
  source.addEventListener("hello", () => { setState("live"); emit({ resync: true, reason: "hello" }); });
  source.addEventListener("resync", (e) => emit({ resync: true, reason: JSON.parse(e.data).reason }));
  source.addEventListener("events", (e) => emit(JSON.parse(e.data)));
  source.addEventListener("bye", (e) => {
    if (JSON.parse(e.data).reason === "signed_out") { stopLive(); location.reload(); }
  });
  source.onerror = () => setState(source && source.readyState === 2 ? "off" : "reconnecting");
}

export function stopLive() { if (source) source.close(); source = null; setState("off"); }
export function liveState() { return state; }
export function onLiveState(fn) { watchers.add(fn); return () => watchers.delete(fn); }

// fn(notice): notice.resync (re-read all) or notice.events [{type, lead_id, id, created_at}].
export function subscribe(fn) { listeners.add(fn); return () => listeners.delete(fn); }
