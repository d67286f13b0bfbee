"""A fake WhatsApp Web for the adapter's tests: a small aiohttp app whose page implements the DOM
contract in `shvya_dispatch.channels.whatsapp_web_selectors` (QR login screen, chat list, the
"Starting chat" and invalid-number popups, a compose box and send button, outgoing bubbles with
ids), and records what the browser did so tests can check it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>WhatsApp</title>
<style>body{margin:0;background:#fff;font-family:sans-serif}
.landing{padding:40px}div[data-ref]{display:inline-block;padding:8px;background:#fff}
footer{display:flex;gap:8px;padding:8px}
footer div[contenteditable]{flex:1;min-height:24px;border:1px solid #ccc;white-space:pre-wrap}
.message-out{background:#d9fdd3;margin:4px;padding:4px}</style></head>
<body><div id="app">loading…</div>
<script>
const app = document.getElementById('app');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (!window.name) window.name = 'tab-' + Math.random().toString(36).slice(2);
const post = (path, body) => fetch(path, {
  method: 'POST', headers: {'content-type': 'application/json'},
  body: JSON.stringify({...body, tab: window.name})});
async function state() { return (await fetch('/api/state')).json(); }

function drawQr(canvas, ref) {
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = '#000';
  let seed = 0; for (const ch of ref) seed = (seed * 31 + ch.charCodeAt(0)) >>> 0;
  const cell = canvas.width / 33;
  for (let y = 0; y < 33; y++) for (let x = 0; x < 33; x++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const finder = (x < 7 || x > 25) && y < 7 || x < 7 && y > 25;
    const ring = x % 6 === 0 || y % 6 === 0;
    const eye = x % 6 > 1 && x % 6 < 5 && y % 6 > 1 && y % 6 < 5;
    if (finder ? ring || eye : (seed >> 16) & 1) ctx.fillRect(x * cell, y * cell, cell, cell);
  }
}

async function showLogin(st) {
  app.innerHTML = '<div class="landing"><h1>Use WhatsApp on your computer</h1>' +
    '<div data-ref="' + st.qr_ref + '">' +
    '<canvas aria-label="Scan me!" width="264" height="264"></canvas></div></div>';
  drawQr(app.querySelector('canvas'), st.qr_ref);
  while (true) {
    await sleep(100);
    const now = await state();
    if (now.logged_in) { showChatList(); return; }
    if (now.qr_ref !== st.qr_ref) { showLogin(now); return; }  // the QR refreshed
  }
}

function showChatList() {
  app.innerHTML = '<div id="side"><div id="pane-side" aria-label="Chat list">Chats</div></div>';
}

async function openChat(phone) {
  showChatList();
  const popup = document.createElement('div');
  popup.setAttribute('data-animate-modal-popup', 'true');
  popup.textContent = 'Starting chat';
  document.body.appendChild(popup);
  await post('/api/opened', {phone});
  await sleep(120);
  const contact = await (await fetch('/api/contact?phone=' + encodeURIComponent(phone))).json();
  if (!contact.exists) {
    popup.innerHTML = '<div>Phone number shared via url is invalid.</div><button>OK</button>';
    return;
  }
  popup.remove();
  const main = document.createElement('div');
  main.id = 'main';
  main.innerHTML = '<div id="messages"><div data-id="true_' + phone + '@c.us_OLD1">' +
    '<div class="message-out">an earlier message</div></div></div>' +
    '<footer><div contenteditable="true" role="textbox" data-tab="10"></div>' +
    '<button aria-label="Send">Send</button></footer>';
  app.appendChild(main);
  const messages = main.querySelector('#messages');
  const box = main.querySelector('footer div[contenteditable]');
  let keys = 0;
  box.addEventListener('keydown', (e) => {
    keys++;
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); }
  });
  main.querySelector('button[aria-label="Send"]').addEventListener('click', send);
  // Older history arrives after the chat opens, above what is shown.
  setTimeout(() => {
    const old = document.createElement('div');
    old.setAttribute('data-id', 'true_' + phone + '@c.us_OLD0');
    old.innerHTML = '<div class="message-out">an even earlier message</div>';
    messages.prepend(old);
  }, 30);
  async function send() {
    const text = box.innerText.replace(/\n$/, '');
    if (!text) return;
    box.innerHTML = '';
    if (contact.swallow) return;  // the network ate it: no bubble ever appears
    const suffix = Math.random().toString(16).slice(2, 12).toUpperCase();
    const id = 'true_' + phone + '@c.us_3EB0' + suffix;
    await sleep(80);
    const row = document.createElement('div');
    row.setAttribute('data-id', id);
    const bubble = document.createElement('div');
    bubble.className = 'message-out';
    bubble.textContent = text;
    row.appendChild(bubble);
    messages.appendChild(row);
    await post('/api/sent', {phone, text, keys, id});
    keys = 0;
  }
}

(async () => {
  const st = await state();
  if (!st.logged_in) return showLogin(st);
  const phone = new URLSearchParams(location.search).get('phone');
  if (location.pathname === '/send' && phone) return openChat(phone);
  showChatList();
})();
</script></body></html>"""


@dataclass
class FakeWhatsAppWeb:
    """The fake's state: whether the session is linked, which numbers exist, what happened."""

    logged_in: bool = True
    unknown_numbers: set[str] = field(default_factory=set)
    # Numbers whose sends never show an outgoing bubble.
    swallowing_numbers: set[str] = field(default_factory=set)
    qr_ref: str = "2@fakeQrRef1"
    # ("opened" | "sent", payload) in the order the page reported them.
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    url: str = ""

    def sent(self) -> list[dict[str, Any]]:
        return [payload for kind, payload in self.events if kind == "sent"]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/send", self._page)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/contact", self._contact)
        app.router.add_post("/api/opened", self._record("opened"))
        app.router.add_post("/api/sent", self._record("sent"))
        return app

    async def _page(self, request: web.Request) -> web.Response:
        self.user_agents.append(request.headers.get("User-Agent", ""))
        return web.Response(text=PAGE, content_type="text/html")

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({"logged_in": self.logged_in, "qr_ref": self.qr_ref})

    async def _contact(self, request: web.Request) -> web.Response:
        phone = request.query["phone"]
        return web.json_response(
            {
                "exists": phone not in self.unknown_numbers,
                "swallow": phone in self.swallowing_numbers,
            }
        )

    def _record(self, kind: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            self.events.append((kind, json.loads(await request.text())))
            return web.json_response({"ok": True})

        return handler
