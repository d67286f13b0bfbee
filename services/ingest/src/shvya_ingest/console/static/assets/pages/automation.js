// Automation: sequences (steps editable, enrolments), campaigns (when the server has the
// campaigns API), outbound webhook endpoints with their delivery log.
import { html, useState } from "../../vendor/htm-preact-standalone.module.js";
import { get, post, patch, hasRoute } from "../api.js";
import { useData, useLive, ErrorNote, Empty, Time, Badge, Tabs } from "../ui.js";

function StepEditor({ sequenceId, step, onSaved }) {
  const editable = step.kind === "send" ? "text" : step.kind === "wait" && step.seconds !== undefined ? "seconds" : null;
  const [value, setValue] = useState(editable ? String(step[editable] ?? "") : "");
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(false);
  async function save(e) {
    e.preventDefault(); setError(null); setSaved(false);
    try {
      await patch(`/v1/sequences/${sequenceId}/steps/${step.id}`, { [editable]: editable === "seconds" ? Number(value) : value });
      setSaved(true); onSaved();
    } catch (err) { setError(err); }
  }
  return html`<li class="step">
    <strong>${step.position}. ${step.kind}</strong> <code>${step.key}</code> <span class="small">v${step.version}</span>
    ${editable ? html`<form onSubmit=${save} class="inline">
      <label class="sr" for=${`step-${step.id}`}>${editable}</label>
      ${editable === "text" ? html`<textarea id=${`step-${step.id}`} rows="2" value=${value} onInput=${(e) => setValue(e.target.value)}></textarea>`
        : html`<input id=${`step-${step.id}`} type="number" min="1" value=${value} onInput=${(e) => setValue(e.target.value)} /> s`}
      <button type="submit">Save</button> ${saved && html`<span class="small">saved</span>`}
    </form>` : html`<span class="small">${JSON.stringify(Object.fromEntries(Object.entries(step).filter(([k]) => !["id", "key", "kind", "position", "version"].includes(k))))}</span>`}
    <${ErrorNote} error=${error} />
  </li>`;
}

function Sequences({ selected }) {
  const list = useData(() => get("/v1/sequences?limit=100"), []);
  const [open, setOpen] = useState(selected);
  const detail = useData(() => (open ? Promise.all([get(`/v1/sequences/${open}`), get(`/v1/sequences/${open}/enrolments?limit=100`)]) : Promise.resolve(null)), [open]);
  useLive(() => { list.reload(); detail.reload(); }, (e) => e.type.startsWith("sequence."), [open]);
  const items = (list.data && list.data.sequences) || [];
  return html`<div class="split">
    <ul class="picker">${items.map((s) => html`<li><button type="button" class=${open === s.id ? "on" : ""} onClick=${() => setOpen(s.id)}>
      ${s.name} <span class="small">${s.channel} · ${Object.entries(s.enrolments).map(([k, v]) => `${v} ${k}`).join(", ") || "no enrolments"}</span></button></li>`)}
      ${!list.loading && !items.length && html`<${Empty}>No sequences yet (POST /v1/sequences).<//>`}</ul>
    <div>
      <${ErrorNote} error=${list.error || detail.error} />
      ${detail.data && html`<h2>${detail.data[0].name}</h2>
        <p class="small">On reply: ${detail.data[0].on_reply} · version ${detail.data[0].version}${detail.data[0].archived_at ? " · archived" : ""}</p>
        <h3>Steps</h3>
        <ol class="plain steps">${detail.data[0].steps.map((st) => html`<${StepEditor} key=${`${st.id}:${st.version}`} sequenceId=${open} step=${st} onSaved=${detail.reload} />`)}</ol>
        <h3>Enrolments</h3>
        <table><thead><tr><th>Lead</th><th>Status</th><th>Next step</th><th>Next run</th><th>Stop reason</th></tr></thead>
        <tbody>${detail.data[1].enrolments.map((en) => html`<tr><td><a href=${`#/leads/${en.lead_id}`}>${en.lead_id.slice(0, 8)}</a></td>
          <td><${Badge}>${en.status}<//></td><td>${en.current_step ? en.current_step.key : "—"}</td><td><${Time} at=${en.next_run_at} /></td><td>${en.stop_reason || ""}</td></tr>`)}</tbody></table>`}
    </div>
  </div>`;
}

function Campaigns() {
  const data = useData(async () => {
    if (!(await hasRoute("/v1/campaigns"))) return { missing: true };
    const list = await get("/v1/campaigns?limit=50");
    const full = await Promise.all(list.campaigns.map((c) => get(`/v1/campaigns/${c.id}`).catch(() => c)));
    return { campaigns: full };
  }, []);
  if (data.error) return html`<${ErrorNote} error=${data.error} />`;
  if (!data.data) return html`<p>Loading…</p>`;
  if (data.data.missing) return html`<${Empty}>Campaigns are not installed on this server yet: this page appears when the API has <code>/v1/campaigns</code>.<//>`;
  const cols = ["sent", "opened", "clicked", "bounced", "unsubscribed"];
  return html`<table><thead><tr><th>Campaign</th><th>Status</th><th>Audience</th>${cols.map((c) => html`<th>${c}</th>`)}</tr></thead>
    <tbody>${data.data.campaigns.map((c) => html`<tr><td>${c.name}</td><td><${Badge}>${c.status}<//></td><td>${c.audience_size ?? "—"}</td>
      ${cols.map((k) => html`<td>${c.counts ? c.counts[k] : "—"}</td>`)}</tr>`)}</tbody></table>`;
}

function Webhooks() {
  const list = useData(() => get("/v1/webhooks/endpoints"), []);
  const [open, setOpen] = useState(null);
  const log = useData(() => (open ? get(`/v1/webhooks/endpoints/${open}/deliveries?limit=50`) : Promise.resolve(null)), [open]);
  const [error, setError] = useState(null);
  const items = (list.data && list.data.endpoints) || [];
  async function redeliver(id) {
    setError(null);
    try { await post(`/v1/webhooks/deliveries/${id}/redeliver`); log.reload(); } catch (err) { setError(err); }
  }
  return html`<div class="split">
    <ul class="picker">${items.map((ep) => html`<li><button type="button" class=${open === ep.id ? "on" : ""} onClick=${() => setOpen(ep.id)}>
      ${ep.url} <span class="small"><${Badge} kind=${ep.status === "active" ? "ok" : "warn"}>${ep.status}<//> ${ep.event_types.join(", ")}</span></button></li>`)}
      ${!list.loading && !items.length && html`<${Empty}>No webhook endpoints (POST /v1/webhooks/endpoints).<//>`}</ul>
    <div>
      <${ErrorNote} error=${error || list.error || log.error} />
      ${log.data && html`<h2>Delivery log</h2><table><thead><tr><th>Event</th><th>Status</th><th>Attempts</th><th>Code</th><th>Latency</th><th>When</th><th></th></tr></thead>
        <tbody>${log.data.deliveries.map((d) => html`<tr><td>${d.event_type}</td><td><${Badge} kind=${d.status === "succeeded" ? "ok" : d.status === "failed" ? "warn" : ""}>${d.status}<//></td>
          <td>${d.attempts}</td><td>${d.last_status_code ?? "—"}</td><td>${d.last_latency_ms != null ? `${d.last_latency_ms} ms` : "—"}</td><td><${Time} at=${d.last_attempt_at || d.created_at} /></td>
          <td><button type="button" onClick=${() => redeliver(d.id)}>Redeliver</button></td></tr>`)}</tbody></table>`}
    </div>
  </div>`;
}

export function Automation({ tab, ctx }) {
  const current = tab || "sequences";
  const parts = location.hash.split("/");
  return html`<section aria-labelledby="auto-title"><h1 id="auto-title">Automation</h1>
    <${Tabs} label="Automation" current=${current} onChange=${(k) => { location.hash = `#/automation/${k}`; }}
      tabs=${[["sequences", "Sequences"], ["campaigns", "Campaigns"], ["webhooks", "Webhook endpoints"]]} />
    ${current === "sequences" && html`<${Sequences} selected=${parts[3] || null} />`}
    ${current === "campaigns" && html`<${Campaigns} />`}
    ${current === "webhooks" && html`<${Webhooks} ctx=${ctx} />`}
  </section>`;
}
