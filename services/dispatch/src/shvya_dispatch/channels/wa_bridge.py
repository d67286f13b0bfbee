"""The JavaScript the WhatsApp Web channel runs in the page, next to the injected wa-js (`WPP`).

`WPP_CONFIG_JS` runs before any page script (an init script): wa-js reads `window.WPPConfig`
when it loads, and we turn off what it would otherwise do on its own (Google Analytics, its own
link-preview servers, a device name of its choosing).

`BRIDGE_JS` is evaluated once wa-js is ready. It defines `window.__shvya`, the only functions
Python calls, and forwards wa-js's events to Python through `window.__shvyaEmit(kind, data)` (a
Playwright binding). Every WhatsApp call is a `WPP.<area>.<function>` of wa-js's public API: the
contract test (`tests/unit/test_wa_js_contract.py`) checks each one against the vendored
bundle's TypeScript declarations, and the tests' fake WhatsApp Web implements the same subset.
The one call outside that API, the reach-out timelock probe, goes through wa-js's module loader
and is guarded: when WhatsApp renames the module it answers "unknown", never an error.

Items forwarded to Python are plain JSON: ids as WhatsApp's serialized strings
(`false_919812345678@c.us_3EB0...`), times in seconds.
"""

from __future__ import annotations

WPP_CONFIG_JS = """
window.WPPConfig = Object.assign(window.WPPConfig || {}, {
  disableGoogleAnalytics: true,
  googleAnalyticsId: null,
  linkPreviewApiServers: null,
  poweredBy: null,
  sendStatusToDevice: false,
  syncAllStatus: false,
});
"""

BRIDGE_JS = r"""
(() => {
  if (window.__shvya) return true;
  const emit = (kind, data) => {
    try { window.__shvyaEmit(kind, data === undefined ? null : data); } catch (e) { /* gone */ }
  };
  const ser = (w) => {
    if (w === null || w === undefined) return null;
    if (typeof w === 'string') return w;
    if (w._serialized) return w._serialized;
    return typeof w.toString === 'function' ? w.toString() : null;
  };
  const isUser = (wid) => typeof wid === 'string' && /@(c\.us|lid)$/.test(wid);
  const memo = { logoutReason: null };

  // WhatsApp Web's reach-out timelock (server error 463) as its own client sees it; null when
  // the module cannot be found in this build.
  function timelocked() {
    try {
      const mod = WPP.loader.moduleRequire('WAWebReachoutTimelockUtils');
      if (mod && typeof mod.isUserReachoutTimelocked === 'function') {
        return !!mod.isUserReachoutTimelocked();
      }
    } catch (e) { /* not in this build */ }
    return null;
  }

  async function phoneOf(wid) {
    if (!wid || !wid.endsWith('@lid')) return wid;
    try {
      const entry = await WPP.contact.getPnLidEntry(wid);
      return entry && entry.phoneNumber ? ser(entry.phoneNumber) : null;
    } catch (e) { return null; }
  }

  async function messageItem(m) {
    const id = ser(m.id);
    const chat = ser(m.id && m.id.remote) || ser(m.from);
    const quotedId = m.quotedStanzaID || null;
    return {
      id, chat, from: ser(m.from), phone: await phoneOf(chat),
      fromMe: !!(m.id && m.id.fromMe), type: m.type || 'chat',
      body: typeof m.body === 'string' && (m.type === 'chat' || !m.type) ? m.body : null,
      caption: typeof m.caption === 'string' ? m.caption : null,
      filename: m.filename || null, mimetype: m.mimetype || null,
      t: m.t || Math.floor(Date.now() / 1000), notifyName: m.notifyName || null,
      quoted: quotedId ? {id: quotedId, participant: ser(m.quotedParticipant)} : null,
    };
  }

  WPP.on('chat.new_message', async (m) => {
    try {
      const item = await messageItem(m);
      if (!isUser(item.chat) || m.isStatusV3 || m.broadcast) return;
      emit(item.fromMe ? 'own_message' : 'message', item);
    } catch (e) { emit('bridge_error', {where: 'new_message', error: String(e)}); }
  });
  // Items naming a message carry its chat's number too (chatPhone, phone): in a chat addressed
  // by a privacy id (@lid) the id names the chat by that id, while the message may have been
  // sent, or filed, under the number.
  const remoteOf = (key) => (key && key.remote ? ser(key.remote) : null);
  WPP.on('chat.new_reaction', async (r) => {
    const sender = ser(r.sender);
    emit('reaction', {
      id: ser(r.id), msgId: ser(r.msgId), emoji: r.reactionText || '', sender,
      phone: await phoneOf(sender), chatPhone: await phoneOf(remoteOf(r.msgId)),
      t: r.timestamp || Math.floor(Date.now() / 1000),
    });
  });
  WPP.on('chat.msg_ack_change', async (a) => {
    const chat = ser(a.chat);
    emit('ack', {ack: a.ack, chat, phone: await phoneOf(chat), ids: (a.ids || []).map(ser)});
  });
  // wa-js reports an edit as the original message model changed in place: its `t` stays the
  // original's, the edit has its own key and time (latestEditMsgKey, ...SenderTimestampMs), and
  // the event's `chat` is the message's `to` (this account, for a lead's message).
  WPP.on('chat.msg_edited', async (e) => {
    const m = e.msg || {};
    const chat = ser(m.id && m.id.remote) || ser(e.chat);
    if (!isUser(chat)) return;
    const text = m.type === 'chat' || !m.type ? m.body : m.caption;
    const editedMs = m.latestEditSenderTimestampMs;
    emit('edit', {
      id: ser(e.id), editId: ser(m.latestEditMsgKey), chat, phone: await phoneOf(chat),
      body: typeof text === 'string' ? text : null,
      t: editedMs ? Math.floor(editedMs / 1000) : Math.floor(Date.now() / 1000),
    });
  });
  WPP.on('chat.msg_revoke', async (r) => {
    emit('revoke', {
      id: ser(r.id), refId: ser(r.refId), from: ser(r.from), type: r.type,
      phone: await phoneOf(remoteOf(r.refId)),
    });
  });
  WPP.on('conn.auth_code_change', (code) => emit('auth_code', {code: code ? code.fullCode : null}));
  WPP.on('conn.qrcode_idle', () => emit('qr_idle', null));
  WPP.on('conn.logout_reason', (reason) => { memo.logoutReason = reason; });
  WPP.on('conn.logout', () => emit('logout', {reason: memo.logoutReason}));
  WPP.on('conn.require_auth', () => emit('require_auth', null));
  WPP.on('conn.authenticated', () => emit('authenticated', null));
  WPP.on('conn.main_ready', () => emit('main_ready', null));
  WPP.on('conn.online', (online) => emit('online', {online: !!online}));
  WPP.on('conn.stream_mode_changed', (mode) => emit('stream_mode', {mode}));

  window.__shvya = {
    status() {
      const stream = WPP.conn.getStreamData();
      return {
        ready: !!WPP.isReady,
        authenticated: !!WPP.conn.isAuthenticated(),
        mainReady: !!WPP.conn.isMainReady(),
        online: !!WPP.conn.isOnline(),
        mode: stream ? stream.mode : null,
        info: stream ? stream.info || null : null,
        me: ser(WPP.conn.getMyUserId()),
        logoutReason: memo.logoutReason,
        timelocked: timelocked(),
        version: WPP.version || null,
      };
    },
    async prepare(digits) {
      const found = await WPP.contact.queryWidExists(digits + '@c.us');
      if (!found) return {exists: false};
      const wid = ser(found.wid);
      const key = await WPP.chat.generateMessageID(wid);
      return {exists: true, wid, id: ser(key)};
    },
    async send(req) {
      try {
        const r = await WPP.chat.sendTextMessage(req.wid, req.text, {
          messageId: req.id, waitForAck: true, delay: req.typingMs, markIsRead: true,
          detectMentioned: false, linkPreview: false,
          quotedMsg: req.quoted || undefined,
        });
        const result = r.sendMsgResult ? r.sendMsgResult.messageSendResult || null : null;
        return {id: r.id, ack: r.ack, result, timelocked: r.ack >= 1 ? null : timelocked()};
      } catch (e) {
        return {error: {code: (e && e.code) || null, message: String((e && e.message) || e)},
                timelocked: timelocked()};
      }
    },
    async lookup(id) {
      try {
        const m = await WPP.chat.getMessageById(id);
        return m ? {found: true, ack: m.ack} : {found: false};
      } catch (e) {
        // Only wa-js's own "no such message" proves the send never left; any other failure
        // of the lookup says nothing, and must not make the message be sent again.
        if (e && e.code === 'msg_not_found') return {found: false};
        return {error: {code: (e && e.code) || null, message: String((e && e.message) || e)}};
      }
    },
    async authCode() {
      const code = await WPP.conn.getAuthCode();
      return code ? code.fullCode : null;
    },
    async refreshQR() {
      const code = await WPP.conn.refreshQR();
      return code ? code.fullCode : null;
    },
    async pairingCode(phone) {
      return await WPP.conn.genLinkDeviceCodeForPhoneNumber(phone, true);
    },
    async recent(since, perChat, floor) {
      const out = [];
      for (const chat of await WPP.chat.list({onlyUsers: true})) {
        const cid = ser(chat.id);
        if (!isUser(cid) || !(chat.unreadCount > 0 || (chat.t || 0) > since)) continue;
        const msgs = await WPP.chat.getMessages(cid, {count: perChat});
        const unreadFrom = msgs.length - (chat.unreadCount || 0);
        for (let i = 0; i < msgs.length; i++) {
          const item = await messageItem(msgs[i]);
          // Unread counts too, but nothing from before the account was linked.
          if (item.fromMe || item.t < floor) continue;
          if (item.t >= since || i >= unreadFrom) out.push(item);
        }
      }
      return out;
    },
  };
  return true;
})()
"""
