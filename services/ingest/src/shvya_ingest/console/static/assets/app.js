// The console's shell: the session, the navigation (hash routes), the live indicator.
import { html, render, useState, useEffect } from "../vendor/htm-preact-standalone.module.js";
import { get, post, del, setCsrf, whenSignedOut, ApiError } from "./api.js";
import { startLive, stopLive, onLiveState, liveState } from "./live.js";
import { Inbox } from "./pages/inbox.js";
import { Board } from "./pages/board.js";
import { LeadPage } from "./pages/lead.js";
import { Automation } from "./pages/automation.js";
import { Operations } from "./pages/operations.js";
import { Settings } from "./pages/settings.js";
import { Reports } from "./pages/reports.js";

const PAGES = [
  ["inbox", "Inbox", ["admin", "agent", "viewer"]],
  ["board", "Pipeline", ["admin", "agent", "viewer"]],
  ["automation", "Automation", ["admin"]],
  ["reports", "Reports", ["admin"]],
  ["operations", "Operations", ["admin"]],
  ["settings", "Channels & settings", ["admin"]],
];

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { page: parts[0] || "inbox", arg: parts[1] || null, sub: parts[2] || null };
}

function SignIn({ onSignedIn }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [companies, setCompanies] = useState(null);
  const [company, setCompany] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  async function submit(e) {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      const s = await post("/v1/session", { email, password, company_id: company || undefined });
      onSignedIn(s);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409 && err.detail.companies) {
        setCompanies(err.detail.companies); setCompany(err.detail.companies[0].id);
        setError(new Error("This email signs in to several companies: choose one."));
      } else setError(err);
    } finally { setBusy(false); }
  }
  return html`<main class="signin">
    <form onSubmit=${submit} aria-labelledby="signin-title">
      <h1 id="signin-title">SHVYA console</h1>
      <label>Email <input type="email" name="email" autocomplete="username" required value=${email} onInput=${(e) => setEmail(e.target.value)} /></label>
      <label>Password <input type="password" name="password" autocomplete="current-password" required value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
      ${companies && html`<label>Company <select value=${company} onChange=${(e) => setCompany(e.target.value)}>
        ${companies.map((c) => html`<option value=${c.id}>${c.name}</option>`)}</select></label>`}
      ${error && html`<p class="error" role="alert">${error.message}</p>`}
      <button class="primary" type="submit" disabled=${busy}>Sign in</button>
      <p class="hint">First start? <code>make up</code> printed the admin's email; the password is <code>CONSOLE_ADMIN_PASSWORD</code> in <code>.env</code>.</p>
    </form>
  </main>`;
}

function LiveDot() {
  const [state, setState] = useState(liveState());
  useEffect(() => onLiveState(setState), []);
  const label = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", off: "Offline" }[state];
  return html`<span class=${`live ${state}`} role="status" aria-live="polite" data-live=${state}>● ${label}</span>`;
}

function Shell({ session, onSignOut }) {
  const [where, setWhere] = useState(route());
  const [menu, setMenu] = useState(false);
  useEffect(() => {
    const f = () => { setWhere(route()); setMenu(false); };
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  const role = session.user.role;
  const allowed = PAGES.filter(([, , roles]) => roles.includes(role));
  let page;
  const ctx = { session, role, canWrite: role !== "viewer", isAdmin: role === "admin" };
  switch (where.page) {
    case "inbox": page = html`<${Inbox} ctx=${ctx} leadId=${where.arg} />`; break;
    case "board": page = html`<${Board} ctx=${ctx} />`; break;
    case "leads": page = html`<${LeadPage} ctx=${ctx} leadId=${where.arg} />`; break;
    case "automation": page = html`<${Automation} ctx=${ctx} tab=${where.arg} />`; break;
    case "operations": page = html`<${Operations} ctx=${ctx} />`; break;
    case "settings": page = html`<${Settings} ctx=${ctx} tab=${where.arg} />`; break;
    case "reports": page = html`<${Reports} ctx=${ctx} />`; break;
    default: page = html`<p>Unknown page.</p>`;
  }
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <button class="menu" type="button" aria-expanded=${menu ? "true" : "false"} aria-controls="nav" onClick=${() => setMenu(!menu)}>☰<span class="sr">Menu</span></button>
      <strong class="brand">SHVYA</strong>
      <span class="company" title="Company">${session.company.name}</span>
      <${LiveDot} />
      <span class="user">${session.user.full_name || session.user.email} · ${role}</span>
      <button type="button" onClick=${onSignOut}>Sign out</button>
    </header>
    <nav id="nav" class=${menu ? "open" : ""} aria-label="Pages">
      ${allowed.map(([key, name]) => html`<a href=${`#/${key}`} aria-current=${where.page === key ? "page" : undefined}>${name}</a>`)}
    </nav>
    <main id="main" tabindex="-1">${page}</main>
  </div>`;
}

function App() {
  const [session, setSession] = useState(undefined);
  useEffect(() => {
    whenSignedOut(() => { stopLive(); setSession(null); });
    get("/v1/session").then((s) => { setCsrf(s.csrf_token); setSession(s); }).catch(() => setSession(null));
  }, []);
  useEffect(() => { if (session) startLive(); }, [session]);
  if (session === undefined) return html`<p class="boot">Loading the console…</p>`;
  if (session === null) return html`<${SignIn} onSignedIn=${(s) => { setCsrf(s.csrf_token); setSession(s); }} />`;
  async function signOut() {
    try { await del("/v1/session"); } catch { /* signed out already */ }
    stopLive(); setCsrf(null); setSession(null);
  }
  return html`<${Shell} session=${session} onSignOut=${signOut} />`;
}

render(html`<${App} />`, document.getElementById("app"));
