// wschat browser client: plain JavaScript, no build step, no dependencies.
//
// One WebSocket per page, opened on /ws?room=NAME. After every open the client
// sends a `join` for the room (with `since` when it has a stored position) and
// the server answers with `history`, `presence`, then live events.
//
// Safety rule for this file: text that came from users or the server
// (usernames, messages, error reasons) is only ever put into the page with
// textContent / createTextNode, never as HTML.
'use strict';

(() => {
  // -- Settings ---------------------------------------------------------------

  const BACKOFF_BASE_MS = 500; // first retry within 0..500 ms
  const BACKOFF_CAP_MS = 10_000; // retries never wait longer than 10 s
  // How long to hold back live messages after a join while waiting for its
  // history (see `pending` below) before giving up and showing them anyway.
  const HISTORY_WAIT_MS = 5_000;
  const MAX_RENDERED = 2_000; // oldest lines are dropped beyond this
  const STICK_TO_BOTTOM_PX = 48; // "at the bottom" tolerance for auto-scroll
  const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/; // same rule as the server
  const MAX_USERNAME_LENGTH = 32;
  const STORAGE_KEY = 'wschat.identity';
  const MISSED_NOTICE = 'Some messages were missed while you were away';

  // -- Elements ---------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const els = {
    joinForm: $('join-form'),
    username: $('username'),
    room: $('room'),
    connect: $('connect'),
    status: $('status'),
    roomName: $('room-name'),
    members: $('members'),
    messages: $('messages'),
    sendForm: $('send-form'),
    message: $('message'),
    sendHint: $('send-hint'),
  };

  // -- State ------------------------------------------------------------------

  const state = {
    status: 'disconnected', // connecting | connected | disconnected
    username: '', // who we join as ('' until the join form is submitted)
    room: '', // the room we are in
    socket: null, // the current WebSocket; events from older sockets are ignored
    attempt: 0, // consecutive failed connects, for the backoff
    retryTimer: null,
    // Between open and the join's `history`, live messages can already arrive
    // (a connection is in its URL room from the start). Showing them first
    // would advance the stored position past messages the history is about to
    // deliver, so they wait here and are shown after the history.
    awaitingHistory: false,
    pending: [],
    historyTimer: null,
    members: new Set(),
  };

  // Per room, the position of the newest message shown: { epoch, seq }.
  // Used as `since` when (re)joining and to never show a message twice.
  const positions = {};

  // -- Connection status ------------------------------------------------------

  const setStatus = (status) => {
    state.status = status;
    els.status.textContent = status;
    els.status.dataset.state = status;
    document.body.dataset.state = status;
  };

  // -- Connecting and reconnecting --------------------------------------------

  const socketUrl = (room) => {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws?room=${encodeURIComponent(room)}`;
  };

  const isOpen = () => state.socket !== null && state.socket.readyState === WebSocket.OPEN;

  const send = (payload) => {
    if (!isOpen()) return false;
    state.socket.send(JSON.stringify(payload));
    return true;
  };

  const clearTimer = (name) => {
    if (state[name] !== null) {
      clearTimeout(state[name]);
      state[name] = null;
    }
  };

  const connect = () => {
    clearTimer('retryTimer');
    setStatus('connecting');
    let socket;
    try {
      socket = new WebSocket(socketUrl(state.room));
    } catch (err) {
      // Only a malformed URL throws here; treat it like any failed attempt.
      console.error('wschat: cannot open WebSocket', err);
      setStatus('disconnected');
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    // Every handler first checks that this socket is still the current one,
    // so a socket we replaced or closed on purpose cannot touch the page.
    socket.addEventListener('open', () => socket === state.socket && onOpen());
    socket.addEventListener('message', (e) => socket === state.socket && onFrame(e.data));
    socket.addEventListener('close', (e) => socket === state.socket && onClose(e));
    // 'error' is always followed by 'close', which does the work.
  };

  // Close the current socket on purpose (switching room or name): no reconnect.
  const disconnect = () => {
    clearTimer('retryTimer');
    clearTimer('historyTimer');
    const socket = state.socket;
    state.socket = null; // detaches the handlers above
    state.awaitingHistory = false;
    state.pending = [];
    if (socket !== null && socket.readyState <= WebSocket.OPEN) socket.close(1000, 'bye');
    setStatus('disconnected');
  };

  // Exponential backoff with full jitter: random(0, min(cap, base * 2^attempt)).
  const scheduleReconnect = () => {
    clearTimer('retryTimer');
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    const delay = Math.random() * ceiling;
    state.attempt += 1;
    state.retryTimer = setTimeout(connect, delay);
  };

  const onOpen = () => {
    // The backoff resets only once a join succeeds (onHistory): a server that
    // accepts and then closes at once (hub down, draining) is not hammered.
    setStatus('connected');
    els.members.parentElement.classList.remove('stale');
    hideHint();
    const join = { type: 'join', room: state.room, username: state.username };
    const since = positions[state.room];
    if (since) join.since = { epoch: since.epoch, seq: since.seq };
    state.awaitingHistory = true;
    state.pending = [];
    clearTimer('historyTimer');
    state.historyTimer = setTimeout(flushPending, HISTORY_WAIT_MS);
    send(join);
  };

  const onClose = (event) => {
    state.socket = null;
    clearTimer('historyTimer');
    // Live messages held back for a history that never came are dropped: the
    // stored position was not advanced past them, so the next join's history
    // brings them back (or reports them missed).
    state.awaitingHistory = false;
    state.pending = [];
    els.members.parentElement.classList.add('stale');
    setStatus('disconnected');
    console.info(`wschat: closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`);
    // Reconnect after any close: clean, server restart (1001), errors (1011,
    // 1013), network loss (1006)...
    scheduleReconnect();
  };

  // Back online after a network loss: don't wait out a long backoff.
  window.addEventListener('online', () => {
    if (state.retryTimer !== null) connect();
  });

  // -- Incoming events --------------------------------------------------------

  const onFrame = (data) => {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      console.warn('wschat: ignoring a frame that is not JSON');
      return;
    }
    if (event === null || typeof event !== 'object') return;
    // Room events for a room we are not showing (should not happen) are ignored.
    if (typeof event.room === 'string' && event.room !== state.room) return;

    switch (event.type) {
      case 'message':
        if (state.awaitingHistory) state.pending.push(event);
        else showMessage(event);
        break;
      case 'history':
        onHistory(event);
        break;
      case 'presence':
        state.members = new Set(Array.isArray(event.members) ? event.members : []);
        renderMembers();
        break;
      case 'joined':
        state.members.add(String(event.username));
        renderMembers();
        break;
      case 'left':
        state.members.delete(String(event.username));
        renderMembers();
        break;
      case 'error':
        appendLine('error', `Error${event.code ? ` (${event.code})` : ''}: ${event.reason ?? ''}`);
        // A rejected join never gets its history: stop holding messages back.
        if (state.awaitingHistory) {
          flushPending();
          // The hub backend is down: reconnect (with backoff) and join again, so
          // history and presence are not silently missing.
          if (event.code === 'unavailable' && state.socket) state.socket.close(4000, 'rejoin');
        }
        break;
      default:
        console.warn('wschat: ignoring unknown event type', event.type);
    }
  };

  const onHistory = (event) => {
    state.attempt = 0;
    const room = state.room;
    const stored = positions[room];
    if (stored && stored.epoch !== event.epoch) {
      // The room's history was reset (new epoch): old seqs mean nothing now.
      delete positions[room];
    }
    if (event.complete === false) appendLine('notice', MISSED_NOTICE);
    for (const message of Array.isArray(event.messages) ? event.messages : []) {
      showMessage({ room, ...message });
    }
    // The history's own position covers the room up to now, even when it
    // carried no messages (e.g. nothing new since our `since`).
    if (typeof event.epoch === 'string' && Number.isInteger(event.seq)) {
      const current = positions[room];
      if (!current || current.epoch !== event.epoch || current.seq < event.seq) {
        positions[room] = { epoch: event.epoch, seq: event.seq };
      }
    }
    flushPending();
  };

  // Show live messages that arrived before the join's history (dedup applies).
  const flushPending = () => {
    clearTimer('historyTimer');
    state.awaitingHistory = false;
    const pending = state.pending;
    state.pending = [];
    pending.forEach(showMessage);
  };

  // Show one chat message unless it was shown already; update the position.
  const showMessage = (event) => {
    const room = event.room ?? state.room;
    const hasPosition = typeof event.epoch === 'string' && Number.isInteger(event.seq);
    if (hasPosition) {
      const stored = positions[room];
      if (stored && stored.epoch === event.epoch && event.seq <= stored.seq) return;
      // Same epoch: newer seq. Different epoch: the room was reset; start over.
      positions[room] = { epoch: event.epoch, seq: event.seq };
    }
    renderMessage(event);
  };

  // -- Rendering (textContent only) -------------------------------------------

  const span = (className, text) => {
    const el = document.createElement('span');
    el.className = className;
    el.textContent = text;
    return el;
  };

  const formatTime = (iso) => {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso ?? '');
    return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  };

  // Run `append` and keep the list scrolled to the bottom if it was there.
  const withAutoScroll = (append) => {
    const list = els.messages;
    const atBottom =
      list.scrollHeight - list.scrollTop - list.clientHeight <= STICK_TO_BOTTOM_PX;
    append();
    while (list.childElementCount > MAX_RENDERED) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  };

  const renderMessage = (event) => {
    const line = document.createElement('div');
    line.className = 'message';
    const username = String(event.username ?? '');
    if (username === state.username) line.classList.add('own');
    if (Number.isInteger(event.seq)) line.dataset.seq = String(event.seq);

    const time = span('time', formatTime(event.time));
    if (event.time) time.title = String(event.time);
    line.append(time, span('username', username), span('text', String(event.message ?? '')));
    withAutoScroll(() => els.messages.append(line));
  };

  // A one-line notice or error inside the message list.
  const appendLine = (className, text) => {
    const line = document.createElement('div');
    line.className = className;
    if (className === 'error') line.setAttribute('role', 'alert');
    line.textContent = text;
    withAutoScroll(() => els.messages.append(line));
  };

  const renderMembers = () => {
    const names = [...state.members].sort((a, b) => a.localeCompare(b));
    const items = names.map((name) => {
      const li = document.createElement('li');
      li.textContent = name;
      if (name === state.username) li.classList.add('self');
      return li;
    });
    els.members.replaceChildren(...items);
  };

  const showHint = (text) => {
    els.sendHint.textContent = text;
    els.sendHint.hidden = false;
  };

  const hideHint = () => {
    els.sendHint.hidden = true;
    els.sendHint.textContent = '';
  };

  // -- Remembering name and room (URL hash, then localStorage) ----------------

  const loadIdentity = () => {
    const fromHash = new URLSearchParams(location.hash.slice(1));
    let stored = {};
    try {
      stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '{}') ?? {};
    } catch {
      // Storage disabled or corrupt: the hash (if any) still works.
    }
    return {
      username: fromHash.get('username') ?? stored.username ?? '',
      room: fromHash.get('room') ?? stored.room ?? '',
    };
  };

  const saveIdentity = (username, room) => {
    const params = new URLSearchParams({ room, username });
    history.replaceState(null, '', `#${params}`);
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ username, room }));
    } catch {
      // Not fatal: only the prefill is lost.
    }
  };

  // -- Forms --------------------------------------------------------------------

  els.joinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const username = els.username.value.trim();
    const room = els.room.value.trim() || 'lobby';
    if (!username || username.length > MAX_USERNAME_LENGTH) {
      appendLine('error', `Please enter a name of 1-${MAX_USERNAME_LENGTH} characters.`);
      els.username.focus();
      return;
    }
    if (!ROOM_PATTERN.test(room)) {
      appendLine('error', 'Room names use 1-64 letters, digits, _ or -.');
      els.room.focus();
      return;
    }
    saveIdentity(username, room);

    if (room !== state.room) {
      // New room: the list only ever shows one room, so start it afresh (the
      // join without `since` brings the room's recent history).
      els.messages.replaceChildren();
      for (const key of Object.keys(positions)) delete positions[key];
      state.members = new Set();
      renderMembers();
    }
    state.username = username;
    state.room = room;
    els.roomName.textContent = `in ${room}`;
    document.title = `${room} · wschat`;

    disconnect();
    state.attempt = 0;
    connect();
    els.message.focus();
  });

  els.sendForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = els.message.value;
    if (!text.trim()) return;
    if (!state.room) {
      showHint('Join a room first; your message was kept.');
      return;
    }
    // Not connected: keep the text in the input so nothing is lost.
    if (!send({ type: 'message', room: state.room, message: text })) {
      showHint('Not connected. Your message was kept; send it again once reconnected.');
      return;
    }
    els.message.value = '';
    hideHint();
  });

  // -- Start --------------------------------------------------------------------

  const identity = loadIdentity();
  if (identity.username) els.username.value = identity.username;
  if (identity.room) els.room.value = identity.room;
  setStatus('disconnected');
  // Prefilled name: one Enter/click on Join; otherwise start at the name.
  (els.username.value ? els.connect : els.username).focus();

  // For tests and debugging.
  window.wschat = {
    state: () => state.status,
    get positions() {
      return positions;
    },
    members: () => [...state.members],
    room: () => state.room,
    username: () => state.username,
  };
})();
