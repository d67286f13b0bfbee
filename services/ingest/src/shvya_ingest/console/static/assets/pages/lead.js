// Lead page: contact data, attributes, stage history, sequences, opt-out per channel, timeline.
import { html } from "../../vendor/htm-preact-standalone.module.js";
import { get, qs } from "../api.js";
import { useData, useLive, ErrorNote, Time, Badge, ChannelBadge } from "../ui.js";

async function loadLead(id) {
  const lead = await get(`/v1/leads/${id}`);
  const [events, enrolments] = await Promise.all([
    // Newest first: a lead with a long history shows its latest events, not its first 200.
    get(`/v1/events${qs({ lead_id: id, limit: 200, order: "newest" })}`),
    get(`/v1/leads/${id}/enrolments`).catch(() => []),
  ]);
  const addresses = [["whatsapp_cloud", lead.phone_e164], ["whatsapp_web", lead.phone_e164], ["email", lead.email]].filter(([, a]) => a);
  const optouts = await Promise.all(addresses.map(async ([channel, address]) => {
    const found = await get(`/v1/suppressions${qs({ channel, address })}`);
    return { channel, address, suppressions: found.items };
  }));
  return { lead, events: events.items, enrolments, optouts };
}

function describe(e) {
  const p = e.payload || {};
  switch (e.type) {
    case "lead.stage_changed": return `${p.from || "—"} → ${p.to} (by ${p.by || "system"})`;
    case "message.received": return "wrote in";
    case "message.sent": return `sent on ${p.channel || ""}`;
    case "lead.handoff_started": return `taken over by ${p.by}`;
    case "lead.handoff_ended": return "handed back to the AI";
    case "message.held": return `send held on ${p.channel || ""}: ${p.reason || "no reason given"}`;
    case "message.deferred": return `send deferred on ${p.channel || ""}: ${p.reason || ""}${p.deferred_until ? ` — goes at ${new Date(p.deferred_until).toLocaleString()}` : ""}`;
    default: return Object.entries(p).slice(0, 3).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  }
}

export function LeadPage({ ctx, leadId }) {
  const page = useData(() => loadLead(leadId), [leadId]);
  useLive(page.reload, (e) => e.lead_id === leadId, [page.reload]);
  if (page.error) return html`<${ErrorNote} error=${page.error} />`;
  if (!page.data) return html`<p>Loading…</p>`;
  const { lead: l, events, enrolments, optouts } = page.data;
  const stages = events.filter((e) => e.type === "lead.stage_changed");
  return html`<article class="lead-page" aria-labelledby="lead-title">
    <div class="page-head">
      <h1 id="lead-title">${l.contact_name || l.phone_e164 || l.email}</h1>
      <a class="button" href=${`#/inbox/${l.id}`}>Open the conversation</a>
    </div>
    <div class="grid">
      <section class="panel"><h2>Contact</h2>
        <dl>
          <dt>Phone</dt><dd>${l.phone_e164 || "—"}</dd>
          <dt>Email</dt><dd>${l.email || "—"}</dd>
          <dt>Time zone</dt><dd>${l.timezone || "company's"}</dd>
          <dt>Stage</dt><dd>${l.stage || "—"}</dd>
          <dt>Channels</dt><dd>${l.channels.map((c) => html`<${ChannelBadge} channel=${c} />`)}</dd>
          <dt>Created</dt><dd><${Time} at=${l.created_at} /></dd>
          <dt>Hand-off</dt><dd>${l.handoff_at ? `taken over by ${l.handoff_by}` : "the AI answers"}</dd>
        </dl>
      </section>
      <section class="panel"><h2>Attributes</h2>
        ${Object.keys(l.attributes).length ? html`<dl>${Object.entries(l.attributes).map(([k, v]) => html`<dt>${k}</dt><dd>${typeof v === "object" ? JSON.stringify(v) : String(v)}</dd>`)}</dl>` : html`<p class="small">None.</p>`}
      </section>
      <section class="panel"><h2>Opt-out per channel</h2>
        <ul class="plain">${optouts.map((o) => html`<li><${ChannelBadge} channel=${o.channel} /> ${o.address}:
          ${o.suppressions.length ? o.suppressions.map((s) => html`<${Badge} kind="warn" title=${s.reason}>suppressed (${s.scope})<//>`) : html`<${Badge} kind="ok">may be contacted<//>`}</li>`)}</ul>
      </section>
      <section class="panel"><h2>Sequences</h2>
        ${enrolments.length ? html`<ul class="plain">${enrolments.map((en) => html`<li><a href=${`#/automation/sequences/${en.sequence_id}`}>${en.sequence_name || en.sequence_id.slice(0, 8)}</a>
          <${Badge}>${en.status}<//> ${en.current_step ? `next: ${en.current_step.key || en.current_step.kind}` : ""} ${en.stop_reason ? `(${en.stop_reason})` : ""}</li>`)}</ul>` : html`<p class="small">Not in any sequence.</p>`}
      </section>
      <section class="panel"><h2>Stage history</h2>
        ${stages.length ? html`<ol class="plain">${stages.map((e) => html`<li><${Time} at=${e.created_at} /> ${describe(e)}</li>`)}</ol>` : html`<p class="small">No moves yet.</p>`}
      </section>
    </div>
    <section class="panel"><h2>Timeline</h2>
      <ol class="timeline" data-testid="timeline">${events.map((e) => html`<li data-type=${e.type}><${Time} at=${e.created_at} /> <code>${e.type}</code> ${describe(e)}</li>`)}</ol>
    </section>
  </article>`;
}
