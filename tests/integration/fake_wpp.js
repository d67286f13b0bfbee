/* A fake @wppconnect/wa-js for the tests: the subset of `WPP` the channel's bridge calls, with
 * the same names, argument shapes, return shapes (ids as objects with `_serialized`, MsgKeys,
 * acks) and events, backed by the test's fake WhatsApp server (tests/integration/
 * fake_whatsapp_web.py) instead of WhatsApp. The channel injects it exactly as it injects the
 * real bundle (WHATSAPP_WEB_WA_JS_PATH), so the tests exercise the same calls as the real page.
 * Each browser profile is one linked device, known to the server by an id kept in localStorage.
 */
(() => {
  if (window.WPP) return;
  let device = localStorage.getItem('fakeDevice');
  if (!device) {
    device = 'dev-' + Math.random().toString(36).slice(2, 10);
    localStorage.setItem('fakeDevice', device);
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const wid = (s) => (s ? {_serialized: s, toString: () => s} : undefined);
  const listeners = {};
  let state = {linked: false, mode: 'QR', online: true, mainReady: false, timelocked: false};

  async function api(path, body) {
    const r = await fetch('/api/' + path, {
      method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({...(body || {}), device}),
    });
    return r.json();
  }
  function fire(name, ...args) {
    for (const fn of listeners[name] || []) {
      try { fn(...args); } catch (e) { console.error(e); }
    }
  }
  function msgKey(serialized) {
    const [fromMe, remote, id] = serialized.split('_');
    return {_serialized: serialized, fromMe: fromMe === 'true', remote: wid(remote), id};
  }
  function msgModel(m) {
    return {
      id: msgKey(m.id), from: wid(m.from), to: wid(m.to), type: m.type, body: m.body,
      caption: m.caption, t: m.t, notifyName: m.notifyName, ack: m.ack,
      quotedStanzaID: m.quotedStanzaID, quotedParticipant: wid(m.quotedParticipant),
      mimetype: m.mimetype, filename: m.filename,
      latestEditMsgKey: m.latestEditMsgKey ? msgKey(m.latestEditMsgKey) : undefined,
      latestEditSenderTimestampMs: m.latestEditSenderTimestampMs,
    };
  }
  function render() {
    let popup = document.getElementById('conflict');
    if (state.mode === 'CONFLICT' && !popup) {
      popup = document.createElement('div');
      popup.id = 'conflict';
      popup.setAttribute('data-animate-modal-popup', 'true');
      popup.innerHTML = 'WhatsApp is open in another window. <button>Use here</button>';
      popup.querySelector('button').addEventListener('click', () => api('use_here'));
      document.body.appendChild(popup);
    } else if (state.mode !== 'CONFLICT' && popup) {
      popup.remove();
    }
  }
  function applyState(next) {
    const before = state;
    state = next;
    render();
    if (before.qr !== next.qr && !next.linked) {
      fire('conn.auth_code_change', {type: 'multidevice', ref: next.qr, fullCode: next.qr});
    }
    if (!before.qrIdle && next.qrIdle) fire('conn.qrcode_idle');
    if (before.linked && !next.linked) {
      fire('conn.logout_reason', next.logoutReason);
      fire('conn.logout');
      fire('conn.require_auth');
    }
    if (!before.linked && next.linked) fire('conn.authenticated');
    if (!(before.linked && before.mainReady) && next.linked && next.mainReady) {
      fire('conn.main_ready');
    }
    if (before.online !== next.online) fire('conn.online', next.online);
    if (before.mode !== next.mode) fire('conn.stream_mode_changed', next.mode);
  }
  function apply(ev) {
    if (ev.kind === 'state') applyState(ev.state);
    else if (ev.kind === 'message') fire('chat.new_message', msgModel(ev.msg));
    else if (ev.kind === 'ack') {
      fire('chat.msg_ack_change', {ack: ev.ack, chat: wid(ev.chat), ids: ev.ids.map(msgKey)});
    } else if (ev.kind === 'reaction') {
      fire('chat.new_reaction', {
        id: msgKey(ev.id), msgId: msgKey(ev.msgId), reactionText: ev.emoji, read: false,
        sender: wid(ev.sender), orphan: 0, orphanReason: null, timestamp: ev.t,
      });
    } else if (ev.kind === 'edit') {
      fire('chat.msg_edited', {chat: wid(ev.chat), id: ev.id, msg: msgModel(ev.msg)});
    } else if (ev.kind === 'revoke') {
      fire('chat.msg_revoke', {
        from: wid(ev.from), to: wid(ev.to), id: msgKey(ev.id), refId: msgKey(ev.refId),
        type: 'revoke',
      });
    } else if (ev.kind === 'raw') {
      fire(ev.event, ev.data);
    }
  }
  async function pump(since) {
    for (;;) {
      try {
        const r = await fetch('/api/events?device=' + device + '&since=' + since);
        const body = await r.json();
        for (const ev of body.events) { since = ev.seq; apply(ev); }
      } catch (e) { await sleep(100); }
    }
  }

  const WPP = {
    isReady: false,
    version: '4.6.0-fake',
    on(name, fn) { (listeners[name] = listeners[name] || []).push(fn); },
    loader: {
      moduleRequire(name) {
        if (name === 'WAWebReachoutTimelockUtils') {
          return {isUserReachoutTimelocked: () => !!state.timelocked};
        }
        throw new Error('module not found: ' + name);
      },
    },
    conn: {
      isAuthenticated: () => !!state.linked,
      isMainReady: () => !!(state.linked && state.mainReady),
      isOnline: () => !!state.online,
      getStreamData: () => ({mode: state.mode, info: state.online ? 'NORMAL' : 'OFFLINE'}),
      getMyUserId: () => (state.linked ? wid(state.me) : undefined),
      getAuthCode: async () => (
        state.linked ? null : {type: 'multidevice', ref: state.qr, fullCode: state.qr}),
      refreshQR: async () => {
        const r = await api('refresh_qr');
        return r.qr ? {type: 'multidevice', ref: r.qr, fullCode: r.qr} : null;
      },
      genLinkDeviceCodeForPhoneNumber: async (phone, push) => (
        (await api('pairing_code', {phone, push})).code),
    },
    contact: {
      queryWidExists: async (id) => {
        const r = await api('query', {wid: typeof id === 'string' ? id : id._serialized});
        return r.exists ? {wid: wid(r.wid), biz: false} : null;
      },
      getPnLidEntry: async (id) => {
        const r = await api('lid', {lid: typeof id === 'string' ? id : id._serialized});
        return r.phone ? {lid: wid(id), phoneNumber: wid(r.phone)} : {lid: wid(id)};
      },
    },
    chat: {
      generateMessageID: async (chat) => {
        const remote = typeof chat === 'string' ? chat : chat._serialized;
        let hex = '';
        for (let i = 0; i < 16; i++) hex += Math.floor(Math.random() * 16).toString(16);
        return msgKey('true_' + remote + '_3EB0' + hex.toUpperCase());
      },
      sendTextMessage: async (chat, content, options) => {
        const opts = options || {};
        const r = await api('send', {
          wid: typeof chat === 'string' ? chat : chat._serialized, text: content,
          id: typeof opts.messageId === 'string' ? opts.messageId : opts.messageId._serialized,
          delay: opts.delay || 0, waitForAck: opts.waitForAck !== false,
          quotedMsg: opts.quotedMsg || null, linkPreview: opts.linkPreview,
        });
        // A refusal's answer carries the state it changed (the timelock), as WhatsApp's own
        // client learns it with the nack.
        if (r.state) applyState(r.state);
        if (r.error) {
          const err = new Error(r.error);
          err.code = r.code || null;
          throw err;
        }
        return {id: r.id, ack: r.ack, sendMsgResult: {messageSendResult: r.result}};
      },
      getMessageById: async (id) => {
        const r = await api('lookup', {id: typeof id === 'string' ? id : id._serialized});
        if (r.error) {
          const err = new Error(r.error);
          err.code = r.code || null;
          throw err;
        }
        if (r.msg) return msgModel(r.msg);
        // As wa-js: WPPError('msg_not_found', `Message ${id} not found`).
        const err = new Error('Message ' + (typeof id === 'string' ? id : id._serialized) + ' not found');
        err.code = 'msg_not_found';
        throw err;
      },
      list: async (options) => (await api('chats', {options})).chats.map((c) => ({
        id: wid(c.id), t: c.t, unreadCount: c.unreadCount,
      })),
      getMessages: async (chat, options) => (await api('messages', {
        chat: typeof chat === 'string' ? chat : chat._serialized,
        count: (options || {}).count || 20,
      })).msgs.map(msgModel),
    },
  };
  window.WPP = WPP;

  (async () => {
    const first = await api('hello', {userAgent: navigator.userAgent});
    state = first.state;
    render();
    WPP.isReady = true;
    pump(first.seq);
  })();
})();
