// Channels and settings: channel accounts (WhatsApp Web's QR on the page), the AI model, the
// knowledge base (upload, list, search preview), API keys and users.
import { html, useState, useEffect } from "../../vendor/htm-preact-standalone.module.js";
import { get, post, put, patch, del, api, qs } from "../api.js";
import { useData, useInterval, ErrorNote, Empty, Time, Badge, Tabs, channelName } from "../ui.js";

function Form({ onSubmit, children, label }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(e) {
    e.preventDefault(); setError(null); setBusy(true);
    try { await onSubmit(new FormData(e.target), e.target); } catch (err) { setError(err); } finally { setBusy(false); }
  }
  return html`<form class="form" onSubmit=${submit} aria-label=${label}><fieldset disabled=${busy}>${children}</fieldset><${ErrorNote} error=${error} /></form>`;
}

function WebLogin({ account }) {
  const state = useData(() => get(`/v1/channel-accounts/${account.id}/whatsapp-web`), [account.id]);
  const [tick, setTick] = useState(0);
  const [error, setError] = useState(null);
  useInterval(() => { state.reload(); setTick((t) => t + 1); }, 3000, [account.id]);
  const s = state.data;
  if (!s) return "";
  async function link(method, phone) {
    setError(null);
    try { await post(`/v1/channel-accounts/${account.id}/whatsapp-web/link`, { method, phone }); state.reload(); }
    catch (err) { setError(err); }
  }
  function byCode(e) { e.preventDefault(); link("code", new FormData(e.target).get("phone")); }
  return html`<div class="weblogin" data-status=${s.status}>
    <p>Link state: <${Badge} kind=${s.status === "linked" ? "ok" : "warn"}>${s.status.replace("_", " ")}<//> ${s.updated_at && html`<${Time} at=${s.updated_at} />`}
      ${s.health && html` · health <${Badge} kind=${s.health === "connected" ? "ok" : "warn"}>${s.health}<//>`}
      ${s.paused && html` · <${Badge} kind="bad">paused<//> ${s.pause_reason}`}</p>
    ${s.qr ? html`<figure><img src=${`/v1/channel-accounts/${account.id}/whatsapp-web/qr.png?v=${s.updated_at}`} alt="WhatsApp Web QR code: scan it from the phone (Linked devices)" width="240" height="240" data-tick=${tick} />
      <figcaption>On the phone: WhatsApp → Settings → Linked devices → Link a device, and scan.</figcaption></figure>` : ""}
    ${s.pairing_code ? html`<p>Pairing code: <strong class="code" data-pairing>${s.pairing_code}</strong><br /><span class="small">On the phone: Linked devices → Link a device → Link with phone number instead.</span></p>` : ""}
    ${s.status !== "linked" && (s.driven
      ? html`<div class="row"><button type="button" onClick=${() => link("qr")}>Link with a QR code</button>
          <form class="inline" onSubmit=${byCode} aria-label="Link with a pairing code"><input name="phone" placeholder="+919812345678" required /><button>Pairing code</button></form></div>`
      : html`<p class="small">No dispatch replica drives this account yet (dispatch with <code>WHATSAPP_WEB_ENABLED=true</code>). From a shell: <code>${s.login_command}</code>; its code appears here.</p>`)}
    <${ErrorNote} error=${error} />
  </div>`;
}

function Channels() {
  const list = useData(() => get("/v1/channel-accounts"), []);
  const [channel, setChannel] = useState("whatsapp_cloud");
  const fields = { whatsapp_cloud: [["phone_number_id", "config"], ["waba_id", "config"], ["access_token", "secret"], ["app_secret", "secret"]],
    email: [["smtp_host", "config"], ["smtp_port", "config"], ["smtp_user", "config"], ["from_address", "config"], ["smtp_password", "secret"]],
    whatsapp_web: [] }[channel];
  async function add(form, el) {
    const config = {}, secrets = {};
    for (const [name, kind] of fields) { const v = form.get(name); if (v) (kind === "secret" ? secrets : config)[name] = name === "smtp_port" ? Number(v) : v; }
    await post("/v1/channel-accounts", { channel, name: form.get("name"), config, secrets });
    el.reset(); list.reload();
  }
  return html`<div>
    <${ErrorNote} error=${list.error} />
    ${list.data && (list.data.length ? html`<ul class="accounts">${list.data.map((a) => html`<li class="panel">
      <h3>${channelName(a.channel)} · ${a.name} ${a.is_default && html`<${Badge} kind="ok">default<//>`}</h3>
      <p class="small">${Object.entries(a.config).map(([k, v]) => `${k}: ${v}`).join(" · ")} ${a.secrets_set.length ? ` · secrets set: ${a.secrets_set.join(", ")}` : ""}</p>
      ${a.channel === "whatsapp_web" && html`<${WebLogin} account=${a} />`}
      <button type="button" onClick=${async () => { if (confirm(`Delete ${a.name}?`)) { await del(`/v1/channel-accounts/${a.id}`); list.reload(); } }}>Delete</button>
    </li>`)}</ul>` : html`<${Empty}>No channel accounts: sends use the platform's settings (or the log channel).<//>`)}
    <h3>Add an account</h3>
    <${Form} onSubmit=${add} label="Add a channel account">
      <label>Channel <select value=${channel} onChange=${(e) => setChannel(e.target.value)}>
        ${["whatsapp_cloud", "email", "whatsapp_web"].map((c) => html`<option value=${c}>${channelName(c)}</option>`)}</select></label>
      <label>Name <input name="name" required /></label>
      ${fields.map(([name, kind]) => html`<label>${name}${kind === "secret" ? " (write-only)" : ""} <input name=${name} type=${kind === "secret" ? "password" : "text"} autocomplete="off" /></label>`)}
      <button class="primary" type="submit">Add</button>
    <//>
  </div>`;
}

function AiModel() {
  const model = useData(() => get("/v1/ai-model"), []);
  const [saved, setSaved] = useState(false);
  if (!model.data) return html`<${ErrorNote} error=${model.error} />`;
  const m = model.data;
  return html`<${Form} label="AI model" onSubmit=${async (f) => {
    setSaved(false);
    await put("/v1/ai-model", { provider: f.get("provider"), model: f.get("model"), temperature: Number(f.get("temperature")), max_tokens: Number(f.get("max_tokens")), system_prompt: f.get("system_prompt") });
    setSaved(true); model.reload();
  }}>
    <label>Provider <input name="provider" value=${m.provider} required /></label>
    <label>Model <input name="model" value=${m.model} required /></label>
    <label>Temperature <input name="temperature" type="number" step="0.1" min="0" max="2" value=${m.temperature} /></label>
    <label>Max tokens <input name="max_tokens" type="number" min="1" value=${m.max_tokens} /></label>
    <label>System prompt <textarea name="system_prompt" rows="5" value=${m.system_prompt}></textarea></label>
    <button class="primary" type="submit">Save</button> ${saved && html`<span class="ok">Saved.</span>`}
    <p class="small">Updated <${Time} at=${m.updated_at} /></p>
  <//>`;
}

function Knowledge() {
  const docs = useData(() => get("/v1/kb/documents?limit=100"), []);
  const [results, setResults] = useState(null);
  return html`<div>
    <h3>Documents</h3>
    <${ErrorNote} error=${docs.error} />
    ${docs.data && (docs.data.documents.length ? html`<table><thead><tr><th>Title</th><th>Format</th><th>Chunks</th><th>Embedded</th><th>Updated</th><th></th></tr></thead>
      <tbody>${docs.data.documents.map((d) => html`<tr><td>${d.title}</td><td>${d.format}</td><td>${d.chunks}</td><td>${d.embedded_chunks}</td><td><${Time} at=${d.updated_at} /></td>
        <td><button type="button" onClick=${async () => { await del(`/v1/kb/documents/${d.id}`); docs.reload(); }}>Delete</button></td></tr>`)}</tbody></table>` : html`<${Empty}>No documents yet.<//>`)}
    <h3>Upload</h3>
    <${Form} label="Upload a document" onSubmit=${async (f, el) => {
      const file = f.get("file");
      const content = file && file.size ? await file.text() : f.get("content");
      const format = file && file.name && /\.md$/i.test(file.name) ? "markdown" : f.get("format");
      await post("/v1/kb/documents", { title: f.get("title") || (file && file.name) || undefined, format, content });
      el.reset(); docs.reload();
    }}>
      <label>Title <input name="title" /></label>
      <label>Format <select name="format"><option value="markdown">markdown</option><option value="text">text</option><option value="html">html</option></select></label>
      <label>File <input name="file" type="file" accept=".md,.txt,.html,text/*" /></label>
      <label>…or paste the text <textarea name="content" rows="4"></textarea></label>
      <button class="primary" type="submit">Upload</button>
    <//>
    <h3>Search preview</h3>
    <${Form} label="Search the knowledge base" onSubmit=${async (f) => setResults(await post("/v1/kb/search", { query: f.get("query"), k: 5 }))}>
      <label>Question <input name="query" required /></label><button type="submit">Search</button>
    <//>
    ${results && html`<p class="small">Mode: ${results.mode}${results.note ? ` — ${results.note}` : ""}</p>
      <ol>${results.chunks.map((c) => html`<li><strong>${c.title}</strong> <span class="small">score ${c.score.toFixed(3)}</span><p>${c.content.slice(0, 300)}</p></li>`)}</ol>`}
  </div>`;
}

function Keys() {
  const keys = useData(() => get("/v1/api-keys"), []);
  const [shown, setShown] = useState(null);
  return html`<div>
    ${shown && html`<p class="ok" role="status">New key (shown once, copy it now): <code data-testid="new-key">${shown}</code></p>`}
    <${ErrorNote} error=${keys.error} />
    ${keys.data && html`<table><thead><tr><th>Name</th><th>Role</th><th>Prefix</th><th>Created</th><th>Last used</th><th></th></tr></thead>
      <tbody>${keys.data.map((k) => html`<tr class=${k.revoked_at ? "revoked" : ""}><td>${k.name}</td><td>${k.role}</td><td><code>${k.prefix}</code></td><td><${Time} at=${k.created_at} /></td><td><${Time} at=${k.last_used_at} /></td>
        <td>${k.revoked_at ? html`revoked <${Time} at=${k.revoked_at} />` : html`<button type="button" onClick=${async () => { if (confirm(`Revoke ${k.name}?`)) { await del(`/v1/api-keys/${k.id}`); keys.reload(); } }}>Revoke</button>`}</td></tr>`)}</tbody></table>`}
    <h3>New key</h3>
    <${Form} label="Create an API key" onSubmit=${async (f, el) => { const k = await post("/v1/api-keys", { name: f.get("name"), role: f.get("role") }); setShown(k.key); el.reset(); keys.reload(); }}>
      <label>Name <input name="name" required /></label>
      <label>Role <select name="role"><option>agent</option><option>ingest</option><option>admin</option></select></label>
      <button class="primary" type="submit">Create</button>
    <//>
  </div>`;
}

function Users({ session }) {
  const users = useData(() => get("/v1/users"), []);
  return html`<div>
    <${ErrorNote} error=${users.error} />
    ${users.data && html`<table><thead><tr><th>Email</th><th>Name</th><th>Role</th><th>Last sign-in</th><th></th></tr></thead>
      <tbody>${users.data.map((u) => html`<tr><td>${u.email}</td><td>${u.full_name || ""}</td>
        <td><select aria-label=${`Role of ${u.email}`} value=${u.role} disabled=${u.id === session.user.id} onChange=${async (e) => { await patch(`/v1/users/${u.id}`, { role: e.target.value }); users.reload(); }}>
          ${["admin", "agent", "viewer"].map((r) => html`<option value=${r}>${r}</option>`)}</select></td>
        <td><${Time} at=${u.last_login_at} /></td>
        <td>${u.id !== session.user.id && html`<button type="button" onClick=${async () => { await patch(`/v1/users/${u.id}`, { disabled: !u.disabled_at }); users.reload(); }}>${u.disabled_at ? "Enable" : "Disable"}</button>`}</td></tr>`)}</tbody></table>`}
    <h3>Invite a user</h3>
    <${Form} label="Add a user" onSubmit=${async (f, el) => { await post("/v1/users", { email: f.get("email"), full_name: f.get("full_name") || undefined, role: f.get("role"), password: f.get("password") }); el.reset(); users.reload(); }}>
      <label>Email <input name="email" type="email" required /></label>
      <label>Name <input name="full_name" /></label>
      <label>Role <select name="role"><option>agent</option><option>viewer</option><option>admin</option></select></label>
      <label>Password (12+ characters) <input name="password" type="password" minlength="12" required autocomplete="new-password" /></label>
      <button class="primary" type="submit">Add</button>
    <//>
  </div>`;
}

export function Settings({ ctx, tab }) {
  const current = tab || "channels";
  return html`<section aria-labelledby="settings-title"><h1 id="settings-title">Channels & settings</h1>
    <${Tabs} label="Settings" current=${current} onChange=${(k) => { location.hash = `#/settings/${k}`; }}
      tabs=${[["channels", "Channels"], ["ai", "AI model"], ["kb", "Knowledge base"], ["keys", "API keys"], ["users", "Users"]]} />
    ${current === "channels" && html`<${Channels} />`}
    ${current === "ai" && html`<${AiModel} />`}
    ${current === "kb" && html`<${Knowledge} />`}
    ${current === "keys" && html`<${Keys} />`}
    ${current === "users" && html`<${Users} session=${ctx.session} />`}
  </section>`;
}
