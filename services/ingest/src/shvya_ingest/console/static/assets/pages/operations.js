// Operations: the company's queue by task and priority, the shared consumers' backlog, dead
// letters with replay (after a confirmation), paused channels.
import { html, useState } from "../../vendor/htm-preact-standalone.module.js";
import { get, post } from "../api.js";
import { useData, useLive, useInterval, ErrorNote, Empty, Time, Badge, Confirm, channelName } from "../ui.js";

const STATUSES = ["queued", "scheduled", "processing", "failed", "dlq", "completed"];

// The shared consumers as a matrix: a row per service, a column per priority level,
// "pending / running" in each cell.
function Lag({ consumers }) {
  if (!consumers) return html`<p class="note">NATS does not answer: the backlog is unknown (accepted work waits in PostgreSQL).</p>`;
  const cells = {};
  const levels = new Set();
  for (const c of consumers) {
    const m = /^(.*)-p(\d+)$/.exec(c.consumer);
    if (!m) continue;
    (cells[m[1]] = cells[m[1]] || {})[m[2]] = c;
    levels.add(Number(m[2]));
  }
  const cols = [...levels].sort((a, b) => b - a);
  return html`<table class="lag" data-testid="lag"><thead><tr><th>Service</th>${cols.map((l) => html`<th>P${l}</th>`)}</tr></thead>
    <tbody>${Object.keys(cells).sort().map((svc) => html`<tr><td>${svc}</td>${cols.map((l) => { const c = cells[svc][l]; return html`<td title="pending / running / waiting pulls">${c ? `${c.pending} / ${c.ack_pending}` : "—"}</td>`; })}</tr>`)}</tbody></table>
    <p class="small">Each cell: messages waiting / running, for every company (the workers are shared).</p>`;
}

export function Operations() {
  const queue = useData(() => get("/v1/operations/queue"), []);
  const dlq = useData(() => get("/v1/operations/dlq?limit=100"), []);
  const pauses = useData(() => get("/v1/operations/pauses"), []);
  const [confirm, setConfirm] = useState(null);
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const reload = () => { queue.reload(); dlq.reload(); pauses.reload(); };
  useInterval(reload, 5000, []);
  useLive(reload, (e) => /dead_lettered|channel\.|message\.sent/.test(e.type), []);
  async function replay(entry) {
    setConfirm(null); setError(null);
    try {
      const done = await post("/v1/operations/dlq/replay", { ids: [entry.id] });
      setResult(`Replayed ${done.replayed} (${done.jobs} job, ${done.sends} send).`);
      reload();
    } catch (err) { setError(err); }
  }
  const q = queue.data;
  return html`<section aria-labelledby="ops-title"><h1 id="ops-title">Operations</h1>
    <${ErrorNote} error=${error || queue.error} />
    ${result && html`<p class="ok" role="status">${result}</p>`}
    <h2>Queue by task and priority</h2>
    ${q && html`<table data-testid="queue"><thead><tr><th>Task</th><th>Priority</th>${STATUSES.map((s) => html`<th>${s}</th>`)}<th>Oldest waiting</th></tr></thead>
      <tbody>${q.tasks.map((t) => html`<tr><td>${t.task}</td><td>P${t.priority_level}</td>${STATUSES.map((s) => html`<td>${t.counts[s] || 0}</td>`)}
        <td>${t.oldest_waiting_seconds != null ? `${t.oldest_waiting_seconds} s` : "—"}</td></tr>`)}</tbody></table>
      <p class="small">Sends: ${Object.entries(q.sends).map(([k, v]) => `${v} ${k}`).join(" · ") || "none"} · as of <${Time} at=${q.computed_at} /></p>`}
    <h2>Dead letters ${dlq.data && html`<span class="count">${dlq.data.total}</span>`}</h2>
    <${ErrorNote} error=${dlq.error} />
    ${dlq.data && (dlq.data.items.length ? html`<table data-testid="dlq"><thead><tr><th>Task</th><th>Lead</th><th>Attempts</th><th>Error</th><th>Dead since</th><th></th></tr></thead>
      <tbody>${dlq.data.items.map((d) => html`<tr data-dead=${d.id}><td>${d.task}${d.detail ? html`<div class="small">${d.detail}</div>` : ""}</td>
        <td>${d.lead_id ? html`<a href=${`#/leads/${d.lead_id}`}>${d.lead_id.slice(0, 8)}</a>` : "—"}</td><td>${d.attempts}</td>
        <td class="err">${d.error || "—"}</td><td><${Time} at=${d.dead_at} /></td>
        <td><button type="button" onClick=${() => setConfirm(d)}>Replay</button></td></tr>`)}</tbody></table>` : html`<${Empty}>No dead letters.<//>`)}
    <h2>Paused channels</h2>
    ${pauses.data && (pauses.data.length ? html`<ul class="plain">${pauses.data.map((p) => html`<li><${Badge} kind="warn">${channelName(p.channel)}<//> ${p.reason}
      ${p.error_code ? `(code ${p.error_code})` : ""} since <${Time} at=${p.paused_at} /> — ${p.paused_until ? html`until <${Time} at=${p.paused_until} />` : "until an operator lifts it"}</li>`)}</ul>` : html`<${Empty}>No channel is paused.<//>`)}
    <h2>Consumer lag (shared workers)</h2>
    ${q && html`<${Lag} consumers=${q.consumers} />`}
    <${Confirm} open=${!!confirm} title="Replay this dead letter?" confirmLabel="Replay"
      onConfirm=${() => replay(confirm)} onCancel=${() => setConfirm(null)}>
      ${confirm && html`<p>${confirm.task} — ${confirm.error || "no error recorded"}</p><p class="small">It goes back on the queue with its attempts reset.</p>`}
    <//>
  </section>`;
}
