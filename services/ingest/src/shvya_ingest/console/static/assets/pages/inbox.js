// Inbox: conversations by last activity (live), the thread with delivery ticks and received
// files, the AI summary, hand-off and the composer (free text inside WhatsApp's window,
// approved templates outside).
import { html, useState, useEffect, useRef } from "../../vendor/htm-preact-standalone.module.js";
import { get, post, del, qs } from "../api.js";
import { useData, useLive, Time, Badge, ChannelBadge, Ticks, ErrorNote, Empty, channelName } from "../ui.js";

const VIEWS = [["all", "All"], ["unread", "Unread"], ["needs_human", "Needs a human"]];
const REASONS = { handoff: "taken over", held: "send held", dlq: "send failed", unknown: "send unknown", unanswered: "unanswered" };
const MESSAGE_EVENTS = /^(message\.|lead\.handoff|lead\.stage|lead\.summary|ai\.)/;

function ConversationList({ selected }) {
  const [view, setView] = useState("all");
  const [channel, setChannel] = useState("");
  const [q, setQ] = useState("");
  const list = useData(() => get(`/v1/conversations${qs({ view, channel, q, limit: 100 })}`), [view, channel, q]);
  useLive(list.reload, (e) => MESSAGE_EVENTS.test(e.type) || e.type === "lead.created", [list.reload]);
  const items = (list.data && list.data.items) || [];
  return html`<section class="conversations" aria-label="Conversations">
    <div class="filters">
      <div class="seg" role="group" aria-label="Show">
        ${VIEWS.map(([k, n]) => html`<button type="button" aria-pressed=${view === k ? "true" : "false"} onClick=${() => setView(k)}>${n}</button>`)}
      </div>
      <div class="row">
        <label class="sr" for="inbox-channel">Channel</label>
        <select id="inbox-channel" value=${channel} onChange=${(e) => setChannel(e.target.value)}>
          <option value="">All channels</option>
          ${["whatsapp_cloud", "whatsapp_web", "email", "log"].map((c) => html`<option value=${c}>${channelName(c)}</option>`)}
        </select>
        <label class="sr" for="inbox-q">Search</label>
        <input id="inbox-q" type="search" placeholder="Search name, phone, email" value=${q} onInput=${(e) => setQ(e.target.value)} />
      </div>
    </div>
    <${ErrorNote} error=${list.error} />
    ${!list.loading && !items.length && html`<${Empty}>No conversations here yet.<//>`}
    <ul class="convo-list" data-testid="conversation-list">
      ${items.map((c) => html`<li key=${c.lead_id}>
        <a href=${`#/inbox/${c.lead_id}`} class=${`convo ${selected === c.lead_id ? "on" : ""}`} aria-current=${selected === c.lead_id ? "true" : undefined} data-lead=${c.lead_id}>
          <span class="who">${c.contact_name || c.phone_e164 || c.email || "Unknown"}</span>
          <${Time} at=${c.last_activity_at} />
          <span class="preview">${c.last_message ? `${c.last_message.direction === "outbound" ? "↪ " : ""}${c.last_message.preview}` : ""}</span>
          <span class="badges">
            ${c.channels.map((ch) => html`<${ChannelBadge} channel=${ch} />`)}
            ${c.stage && html`<${Badge} kind="stage">${c.stage}<//>`}
            ${c.needs_human && html`<${Badge} kind="warn">${REASONS[c.needs_human_reason] || "needs a human"}<//>`}
            ${c.unread > 0 && html`<${Badge} kind="unread" title="unread">${c.unread}<//>`}
          </span>
        </a>
      </li>`)}
    </ul>
  </section>`;
}

function who(m) {
  if (m.direction === "inbound") return "Lead";
  if (m.purpose === "agent") return `Agent${m.meta && m.meta.by ? ` (${m.meta.by})` : ""}`;
  if (m.meta && (m.meta.template || m.meta.template_name)) return "Template";
  if (m.responder) return `AI (${m.responder})`;
  return m.purpose ? m.purpose.replace(/_/g, " ") : "Bot";
}

// What the message said of its media, before (or without) the list of its stored files.
const described = (media) => `${media.kind}${media.filename ? `: ${media.filename}` : ""}${media.mime_type ? ` (${media.mime_type})` : ""}`;

function Structured({ meta }) {
  if (!meta) return "";
  if (meta.media) return html`<div class="attach">📎 ${described(meta.media)}</div>`;
  if (meta.location) return html`<div class="attach">📍 ${meta.location.name || ""} ${meta.location.latitude}, ${meta.location.longitude}</div>`;
  if (meta.interactive) return html`<div class="attach">☑ ${meta.interactive.title || meta.interactive.id || meta.interactive.type}</div>`;
  if (meta.button) return html`<div class="attach">☑ ${meta.button.text || meta.button.payload}</div>`;
  return "";
}

const hasFiles = (meta) => Boolean(meta && (meta.media || (Array.isArray(meta.attachments) && meta.attachments.length)));
const NOT_STORED = { pending: "downloading…", failed: "download failed", rejected: "refused", skipped: "not kept", not_downloaded: "not downloaded" };

function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// One received file: a safe image as a thumbnail (opens full size), audio and video in a
// player, anything else as a download; one not stored says why. The API serves only safe
// types inline (`inline`), so an HTML or SVG file is never shown here, only downloaded.
function File({ f }) {
  const name = html`<span class="name">${f.filename}</span>${f.size !== null ? html` <span class="small">${bytes(f.size)}</span>` : ""}`;
  if (f.status !== "stored")
    return html`<li class="file missing" data-file=${f.status} title=${f.reason || ""}>📎 ${name} <span class="small">— ${NOT_STORED[f.status] || f.status}${f.reason ? `: ${f.reason}` : ""}</span></li>`;
  const type = (f.inline && f.mime_type) || "";
  if (type.startsWith("image/"))
    return html`<li class="file image" data-file="image"><a href=${f.url} target="_blank" rel="noopener" title="Open full size"><img src=${f.url} alt=${f.filename} /></a><div>${name}</div></li>`;
  if (type.startsWith("audio/") || type.startsWith("video/")) {
    const player = type.startsWith("audio/")
      ? html`<audio controls preload="metadata" src=${f.url}></audio>`
      : html`<video controls preload="metadata" src=${f.url}></video>`;
    return html`<li class="file player" data-file=${type.split("/")[0]}>${player}<div>${name} · <a href=${f.url} download=${f.filename}>Download</a></div></li>`;
  }
  return html`<li class="file download" data-file="download"><a href=${f.url} download=${f.filename}>⬇ ${name}</a></li>`;
}

function Files({ m, leadId }) {
  const files = useData(() => get(`/v1/messages/${m.id}/media`), [m.id]);
  // A download finishing (or failing) writes media.* for the lead, without changing the message.
  useLive(files.reload, (e) => e.lead_id === leadId && /^media\./.test(e.type), [files.reload, leadId]);
  const items = files.data && files.data.items;
  if (!items) return m.meta.media ? html`<div class="attach">📎 ${described(m.meta.media)}</div>` : "";
  return html`<ul class="files" aria-label="Files">${items.map((f) => html`<${File} key=${f.index} f=${f} />`)}</ul>`;
}

function Message({ m, leadId }) {
  const deferred = m.status === "scheduled" && m.meta && m.meta.deferred_until;
  return html`<li class=${`msg ${m.direction} ${m.purpose === "agent" ? "agent" : ""}`} data-message=${m.id} data-status=${m.status}>
    <div class="meta"><span>${who(m)}</span> · <span>${channelName(m.channel)}</span> · <${Time} at=${m.created_at} /></div>
    <div class="body">${m.body}</div>
    ${hasFiles(m.meta) ? html`<${Files} m=${m} leadId=${leadId} />` : html`<${Structured} meta=${m.meta} />`}
    <div class="status"><${Ticks} message=${m} /></div>
    ${deferred && html`<p class="note">Deferred: ${m.meta.deferred_reason} — goes at ${new Date(m.meta.deferred_until).toLocaleString()}</p>`}
    ${m.status === "held" && html`<p class="note warn">Held: ${m.error || (m.meta && m.meta.held_reason) || "not allowed on this channel now"}</p>`}
  </li>`;
}

function Summary({ lead, canWrite }) {
  const [asked, setAsked] = useState(false);
  const s = lead.summary;
  return html`<aside class="summary" aria-label="AI summary">
    <h3>AI summary</h3>
    ${s ? html`<p>${s.summary}</p>
      ${s.key_points && s.key_points.length ? html`<ul>${s.key_points.map((p) => html`<li>${p}</li>`)}</ul>` : ""}
      <p class="small">Sentiment: ${s.sentiment || "—"} · Next: ${s.next_action || "—"}</p>` : html`<p class="small">No summary yet.</p>`}
    ${canWrite && html`<button type="button" disabled=${asked} onClick=${async () => { await post(`/v1/leads/${lead.id}/summary`); setAsked(true); }}>${asked ? "Summary requested" : "Summarise now"}</button>`}
    <p><a href=${`#/leads/${lead.id}`}>Open the lead page</a></p>
  </aside>`;
}

function Composer({ leadId, composer, onSent }) {
  const [text, setText] = useState("");
  const [template, setTemplate] = useState("");
  const [params, setParams] = useState([]);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const key = useRef(crypto.randomUUID());
  const chosen = composer.templates.find((t) => t.id === template);
  async function send(e) {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      const body = composer.free_text && !chosen ? { text, channel: composer.channel }
        : { text: chosen.body, template_id: chosen.id, template_params: params.slice(0, chosen.parameters), channel: composer.channel };
      await post(`/v1/leads/${leadId}/messages`, body, { headers: { "Idempotency-Key": key.current } });
      key.current = crypto.randomUUID();
      setText(""); setParams([]);
      onSent();
    } catch (err) { setError(err); } finally { setBusy(false); }
  }
  return html`<form class="composer" onSubmit=${send} aria-label="Reply">
    ${!composer.free_text && html`<p class="note">${composer.reason}</p>`}
    ${composer.window_closes_at && composer.free_text && html`<p class="small">WhatsApp window open until ${new Date(composer.window_closes_at).toLocaleString()}</p>`}
    ${composer.templates.length > 0 && html`<label>Template
      <select value=${template} onChange=${(e) => { setTemplate(e.target.value); setParams([]); }}>
        <option value="">${composer.free_text ? "— free text —" : "Choose an approved template"}</option>
        ${composer.templates.map((t) => html`<option value=${t.id}>${t.name} (${t.language})</option>`)}
      </select></label>`}
    ${chosen && html`<p class="small">${chosen.body}</p>
      ${Array.from({ length: chosen.parameters }, (_, i) => html`<label>Parameter ${i + 1}
        <input value=${params[i] || ""} onInput=${(e) => { const p = [...params]; p[i] = e.target.value; setParams(p); }} /></label>`)}`}
    ${composer.free_text && !chosen && html`<label class="sr" for="reply-text">Message</label>
      <textarea id="reply-text" rows="3" placeholder=${`Reply on ${channelName(composer.channel)}…`} value=${text}
        onInput=${(e) => setText(e.target.value)}
        onKeyDown=${(e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); }}></textarea>`}
    <${ErrorNote} error=${error} />
    <button class="primary" type="submit" disabled=${busy || (!chosen && (!composer.free_text || !text.trim()))}>Send</button>
    <span class="small">Ctrl+Enter sends · goes through dispatch and the channel's rules</span>
  </form>`;
}

function Thread({ leadId, ctx }) {
  const lead = useData(() => get(`/v1/leads/${leadId}`), [leadId]);
  // The latest 200, newest first from the API, shown oldest first; earlier pages on request,
  // so a long conversation still shows its end and every live message.
  const thread = useData(() => get(`/v1/leads/${leadId}/messages?limit=200&order=newest`), [leadId]);
  const [older, setOlder] = useState({ items: [], cursor: undefined, busy: false });
  const composer = useData(() => get(`/v1/leads/${leadId}/composer`), [leadId]);
  const [error, setError] = useState(null);
  const end = useRef(null);
  const reloadAll = () => { lead.reload(); thread.reload(); composer.reload(); };
  useLive(() => { reloadAll(); if (ctx.canWrite) post(`/v1/leads/${leadId}/seen`).catch(() => {}); },
    (e) => e.lead_id === leadId, [leadId]);
  useEffect(() => { if (ctx.canWrite) post(`/v1/leads/${leadId}/seen`).catch(() => {}); }, [leadId]);
  useEffect(() => { if (end.current) end.current.scrollIntoView({ block: "end" }); }, [thread.data]);
  if (lead.error) return html`<${ErrorNote} error=${lead.error} />`;
  if (!lead.data) return html`<p>Loading…</p>`;
  const l = lead.data;
  const latest = ((thread.data && thread.data.items) || []).slice().reverse();
  const messages = [...older.items, ...latest.filter((m) => !older.items.some((o) => o.id === m.id))];
  const earlier = older.cursor === undefined ? thread.data && thread.data.next_cursor : older.cursor;
  async function loadEarlier() {
    setOlder((o) => ({ ...o, busy: true }));
    try {
      const page = await get(`/v1/leads/${leadId}/messages?limit=200&order=newest&cursor=${encodeURIComponent(earlier)}`);
      setOlder((o) => ({ items: [...page.items.slice().reverse(), ...o.items], cursor: page.next_cursor || null, busy: false }));
    } catch (err) { setOlder((o) => ({ ...o, busy: false })); setError(err); }
  }
  async function handoff(on) {
    setError(null);
    try { await (on ? post(`/v1/leads/${leadId}/handoff`) : del(`/v1/leads/${leadId}/handoff`)); reloadAll(); }
    catch (err) { setError(err); }
  }
  return html`<section class="thread" aria-label="Conversation">
    <header class="thread-head">
      <div>
        <a class="back" href="#/inbox">← Conversations</a>
        <h2>${l.contact_name || l.phone_e164 || l.email}</h2>
        <p class="small">${[l.phone_e164, l.email].filter(Boolean).join(" · ")} ${l.stage && html`<${Badge} kind="stage">${l.stage}<//>`}</p>
      </div>
      <div class="handoff" data-handoff=${l.handoff_at ? "on" : "off"}>
        ${l.handoff_at ? html`<span class="small">Taken over by ${l.handoff_by} <${Time} at=${l.handoff_at} /> — the AI is not answering</span>` : html`<span class="small">The AI answers this lead</span>`}
        ${ctx.canWrite && (l.handoff_at
          ? html`<button type="button" onClick=${() => handoff(false)}>Hand back to the AI</button>`
          : html`<button type="button" class="primary" onClick=${() => handoff(true)}>Take over</button>`)}
      </div>
    </header>
    <${ErrorNote} error=${error || thread.error} />
    <div class="thread-body">
      <ol class="messages" aria-live="polite" data-testid="messages">
        ${earlier && html`<li class="earlier"><button type="button" disabled=${older.busy} onClick=${loadEarlier}>Earlier messages</button></li>`}
        ${messages.map((m) => html`<${Message} key=${m.id} m=${m} leadId=${leadId} />`)}
        <li ref=${end} class="end" aria-hidden="true"></li>
      </ol>
      <${Summary} lead=${l} canWrite=${ctx.canWrite} />
    </div>
    ${ctx.canWrite && composer.data && html`<${Composer} leadId=${leadId} composer=${composer.data} onSent=${reloadAll} />`}
  </section>`;
}

export function Inbox({ ctx, leadId }) {
  return html`<div class=${`inbox ${leadId ? "has-thread" : ""}`}>
    <${ConversationList} selected=${leadId} />
    ${leadId ? html`<${Thread} key=${leadId} leadId=${leadId} ctx=${ctx} />`
      : html`<section class="thread empty-thread"><p>Choose a conversation.</p></section>`}
  </div>`;
}
