// wschat browser client: plain JavaScript modules, no build step, no dependencies.
//
// One WebSocket for all the rooms the user is in. It opens on /ws?room=FIRST
// (a connection is in its URL room from the start) and then sends a `join` per
// room, with `since` when the page has a position there; each join is answered
// with `history` (what was missed), `presence`, then live events.
//
// Live messages that arrive for a room between the open and its history wait
// in that room's `pending` list: showing them first would move the position
// past messages the history is about to deliver.
//
// Safety rule: text from users or the server goes into the page only through
// textContent (conversation.js, and el() below), never as HTML.

import { Conversation } from './conversation.js';
import { checkName, MAX_MESSAGE_LENGTH, messageLength } from './names.js';
import { Connection } from './connection.js';
import { errorReason } from './reasons.js';
import { Outbox } from './outbox.js';
import { loadState, loadToken, saveState, saveToken, tokenIdentity } from './store.js';
import { Typing } from './typing.js';

// -- Settings -------------------------------------------------------------------

const HISTORY_WAIT_MS = 5_000; // give up holding live messages back for a history after this
const MAX_ITEMS = 500; // per room in memory; the oldest are dropped beyond this
const STICK_TO_BOTTOM_PX = 48; // "at the bottom" tolerance for auto-scroll
// Same rule as the server: 1-128 of A-Z a-z 0-9 _ - :, not ':' first (team:dev, dm:alice:bob).
const ROOM_PATTERN = /^[A-Za-z0-9_-][A-Za-z0-9_:-]{0,127}$/;
const ROOM_RULE = 'Room names use 1-128 letters (A-Z, a-z), digits, _, - or :, not : first.';
const JOIN_RETRY_MS = 1_500; // a join dropped by the rate limit is sent again after this
const SAVE_DELAY_MS = 200;
const MISSED_NOTICE = 'Some messages were missed while you were away';
const JOIN_ERRORS = new Set([
  'bad_username', 'name_confusable', 'username_mismatch', 'bad_room', 'forbidden',
  'too_many_rooms', 'bad_since', 'unavailable', 'no_username',
]);
const NAME_ERRORS = new Set(['bad_username', 'name_confusable', 'username_mismatch', 'no_username']);
const narrow = window.matchMedia('(max-width: 47.99rem)');

// -- Elements -------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const els = Object.fromEntries(
  [
    'rooms-toggle', 'total-unread', 'status', 'sidebar', 'join-form', 'name-field', 'username',
    'username-note', 'identity', 'identity-name', 'sign-out', 'room', 'room-note', 'connect',
    'token-form', 'token-reason', 'token', 'rooms', 'no-rooms', 'room-name', 'members', 'room-title',
    'chat', 'connection', 'scroller', 'messages', 'outgoing', 'typing', 'send-form', 'message',
    'send', 'counter', 'send-hint', 'token-detail', 'token-said',
  ].map((id) => [id.replace(/-(.)/g, (_, c) => c.toUpperCase()), $(id)]),
);

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// -- State ----------------------------------------------------------------------

const state = {
  status: 'disconnected', // connecting | connected | disconnected
  username: '', // the name we join as, in the server's normal form ('' until chosen)
  token: '', // a sign-in token, when the server wants one
  identity: null, // {sub, name}: read from the token, then as the server said (`authenticated`)
  rooms: new Map(), // name -> room (see newRoom)
  order: [], // room names, in the order of the room list
  active: '', // the room on screen
  joinQueue: [], // rooms whose join is unanswered, in the order sent (errors carry no room)
  askingToken: false, // the server wants a token and the token form is shown
};

const newRoom = (name, saved = {}) => ({
  name,
  position: saved.position ?? null, // {epoch, seq} of the newest message shown
  items: saved.items ?? [], // what the conversation shows (messages, join/leave lines, notices)
  unread: saved.unread ?? 0,
  newFrom: -1, // index of the first item to mark "New" when the room is shown
  members: new Set(),
  joined: false, // its history arrived on the current connection
  awaitingHistory: false,
  pending: [],
  historyTimer: null,
});

const activeRoom = () => state.rooms.get(state.active) ?? null;
// Signed in: the token's user (as the server confirmed it); else the chosen name.
const myName = () => (state.token ? (state.identity?.sub ?? '') : state.username);
const isOwn = (username) => username !== '' && username === myName();
const displayName = (event) => String(event.name || event.username || '');

const conversation = new Conversation(els.messages, { isOwn, nameOf: displayName });
const typing = new Typing((room) => {
  if (room === state.active) els.typing.textContent = typing.text(room);
});

// -- Saving ---------------------------------------------------------------------

let saveTimer = null;
const saveNow = () => {
  clearTimeout(saveTimer);
  saveTimer = null;
  saveState({
    username: state.username,
    active: state.active,
    rooms: state.order.map((name) => state.rooms.get(name)),
  });
  const params = new URLSearchParams();
  if (state.active) params.set('room', state.active);
  if (state.username && !state.token) params.set('username', state.username);
  history.replaceState(null, '', `${location.pathname}${location.search}${params.size ? `#${params}` : ''}`);
};
const scheduleSave = () => {
  if (saveTimer === null) saveTimer = setTimeout(saveNow, SAVE_DELAY_MS);
};
window.addEventListener('pagehide', saveNow);

// -- Connection status and reasons -----------------------------------------------

const setStatus = (status) => {
  state.status = status;
  els.status.textContent = status;
  els.status.dataset.state = status;
  document.body.dataset.state = status;
};

// -- The connection ---------------------------------------------------------------

const socketUrl = () => {
  if (state.order.length === 0) return null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const params = new URLSearchParams({ room: state.order[0] });
  if (state.token) params.set('token', state.token);
  return `${scheme}//${location.host}/ws?${params}`;
};

const showConnection = (text) => {
  els.connection.textContent = text;
  els.connection.hidden = !text;
};

const connection = new Connection({
  url: socketUrl,
  opened: () => {
    els.members.classList.remove('stale');
    state.joinQueue = [];
    for (const name of state.order) sendJoin(state.rooms.get(name));
  },
  received: (event) => onEvent(event),
  lost: (failSends) => connectionLost(failSends),
  signIn: (reason, detail) => askForToken(reason, detail),
  status: setStatus,
  notice: showConnection,
});
const send = (payload) => connection.send(payload);
const isOpen = () => connection.isOpen();

const sendJoin = (room) => {
  const join = { type: 'join', room: room.name };
  // With a token, only the token's user (no stale name from before the sign-in).
  if (myName()) join.username = myName();
  if (room.position) join.since = { epoch: room.position.epoch, seq: room.position.seq };
  room.awaitingHistory = true;
  room.pending = [];
  clearTimeout(room.historyTimer);
  room.historyTimer = setTimeout(() => flushPending(room), HISTORY_WAIT_MS);
  state.joinQueue.push(room.name);
  send(join);
};

// Whatever the connection held is gone: held-back messages (the next join's
// history brings them again), typists, joins in flight; sends wait.
const connectionLost = (failSends = '') => {
  for (const room of state.rooms.values()) {
    clearTimeout(room.historyTimer);
    room.awaitingHistory = false;
    room.pending = [];
    room.joined = false;
  }
  state.joinQueue = [];
  typing.clear();
  outbox.connectionLost(failSends);
  els.members.classList.add('stale');
};

// -- Incoming events ------------------------------------------------------------

const onEvent = (event) => {
  if (event.type === 'authenticated') {
    onAuthenticated(event);
    return;
  }
  if (event.type === 'error') {
    onError(event);
    return;
  }
  if (event.type === 'ack') {
    onAck(event);
    return;
  }
  const room = state.rooms.get(typeof event.room === 'string' ? event.room : state.order[0]);
  if (!room) return; // a room we left meanwhile
  switch (event.type) {
    case 'message':
      if (room.awaitingHistory) room.pending.push(event);
      else showMessage(room, event, true);
      break;
    case 'history':
      onHistory(room, event);
      break;
    case 'presence':
      room.members = new Set(Array.isArray(event.members) ? event.members.map(String) : []);
      renderMembers();
      break;
    case 'joined':
    case 'left':
      onMembership(room, event);
      break;
    case 'typing':
      onTyping(room, event);
      break;
    default:
      console.warn('wschat: ignoring unknown event type', event.type);
  }
};

const onHistory = (room, event) => {
  connection.succeeded();
  const queued = state.joinQueue.indexOf(room.name);
  if (queued >= 0) state.joinQueue.splice(queued, 1);
  const since = room.position;
  if (since && since.epoch !== event.epoch) {
    room.position = null; // the room's history was reset (new epoch): old seqs mean nothing
  }
  const recovering = room.position !== null; // what comes now was missed, not old
  // A room we had seen nothing of (seq 0) and that the server has since forgotten
  // (it keeps no empty rooms) is simply a new room: no "missed" alarm for it.
  const forgottenEmpty = since !== null && since.seq === 0 && since.epoch !== event.epoch;
  if (event.complete === false && !forgottenEmpty) {
    addItem(room, { type: 'notice', text: MISSED_NOTICE, time: new Date().toISOString() });
  }
  const before = room.items.length;
  for (const message of Array.isArray(event.messages) ? event.messages : []) {
    showMessage(room, { room: room.name, ...message }, recovering);
  }
  if (recovering && room.items.length > before && room.newFrom < 0 && room.name === state.active) {
    room.newFrom = before; // a "New" divider above what was missed
    renderConversation();
  }
  // The history's own position covers the room up to now, even when it
  // carried no messages (e.g. nothing new since our `since`).
  if (typeof event.epoch === 'string' && Number.isInteger(event.seq)) {
    const current = room.position;
    if (!current || current.epoch !== event.epoch || current.seq < event.seq) {
      room.position = { epoch: event.epoch, seq: event.seq };
    }
  }
  room.joined = true;
  flushPending(room);
  // Messages sent before a disconnect and not in this history: send them again.
  outbox.resume(room.name);
  scheduleSave();
};

// Show live messages that arrived before the join's history (dedup applies).
const flushPending = (room) => {
  clearTimeout(room.historyTimer);
  room.historyTimer = null;
  room.awaitingHistory = false;
  const pending = room.pending;
  room.pending = [];
  for (const event of pending) showMessage(room, event, true);
};

// Show one chat message unless it was shown already; update the position.
// `counts`: a message the user has not seen (live, or missed while away).
const showMessage = (room, event, counts) => {
  if (typeof event.epoch === 'string' && Number.isInteger(event.seq)) {
    const stored = room.position;
    if (stored && stored.epoch === event.epoch && event.seq <= stored.seq) return;
    room.position = { epoch: event.epoch, seq: event.seq };
  }
  const username = String(event.username ?? '');
  if (event.id && isOwn(username)) outbox.delivered(event.id);
  typing.forget(room.name, username);
  const item = { type: 'message', username, message: String(event.message ?? ''), time: event.time };
  for (const key of ['name', 'seq', 'epoch', 'id']) if (event[key] !== undefined) item[key] = event[key];
  if (event.server === true) item.server = true;
  if (counts && !isOwn(username) && room.name !== state.active) room.unread += 1;
  addItem(room, item);
};

const onMembership = (room, event) => {
  const username = String(event.username ?? '');
  if (event.type === 'joined') room.members.add(username);
  else room.members.delete(username);
  renderMembers();
  if (isOwn(username)) return; // our own comings and goings are no news to us
  if (event.type === 'left') typing.forget(room.name, username);
  const item = { type: event.type, username, time: new Date().toISOString() };
  if (event.name) item.name = String(event.name);
  addItem(room, item);
};

const addItem = (room, item) => {
  room.items.push(item);
  if (room.items.length > MAX_ITEMS) {
    room.items.splice(0, room.items.length - MAX_ITEMS);
    if (room.name === state.active) renderConversation();
  } else if (room.name === state.active) {
    withAutoScroll(() => conversation.append(item));
  }
  renderRooms();
  scheduleSave();
};

// A line in the room on screen that is not kept (errors).
const showLine = (type, text) => {
  const room = activeRoom();
  const item = { type, text, time: new Date().toISOString() };
  if (room) room.items.push(item);
  withAutoScroll(() => conversation.append(item));
};

const onError = (event) => {
  if (event.id && outbox.refused(event.id, event.code, event.reason)) return;
  if (event.code === 'bad_type' && /typing/.test(String(event.reason))) {
    typing.supported = false; // an older server: stop sending `typing`, say nothing
    return;
  }
  const roomName = JOIN_ERRORS.has(event.code) || event.code === 'rate_limited' ? state.joinQueue.shift() : undefined;
  const room = roomName ? state.rooms.get(roomName) : undefined;
  if (room && event.code === 'rate_limited') {
    // The join itself was dropped: ask again once the server's bucket has refilled.
    setTimeout(() => state.rooms.get(room.name) === room && isOpen() && !room.joined && sendJoin(room), JOIN_RETRY_MS);
    return;
  }
  if (room) {
    onJoinRefused(room, event);
    return;
  }
  showLine('error', errorReason(event.code, event.reason));
};

const onJoinRefused = (room, event) => {
  flushPending(room);
  const reason = errorReason(event.code, event.reason);
  if (NAME_ERRORS.has(event.code)) {
    // Every join carries the name, so no room can be joined: stop and let the user fix it.
    connection.halt('');
    showNameProblem(reason);
    openSidebar(els.username);
    return;
  }
  if (event.code === 'unavailable') {
    // The hub backend is down: reconnect (with backoff) and join again, so
    // history and presence are not silently missing.
    showLine('error', reason);
    connection.rejoin();
    return;
  }
  removeRoom(room.name);
  els.roomNote.textContent = `Could not join ${room.name}: ${reason}`;
  els.roomNote.classList.add('error-text');
  showLine('error', `Could not join ${room.name}: ${reason}`);
};

// -- Typing and sending --------------------------------------------------------------

const onTyping = (room, event) => {
  const username = String(event.username ?? '');
  if (username && !isOwn(username)) typing.heard(room.name, username, displayName(event));
};

const onAck = (event) => outbox.acked(event.id);

// -- Rendering ------------------------------------------------------------------------

// Run `change` and keep the list scrolled to the bottom if it was there.
const withAutoScroll = (change) => {
  const scroller = els.scroller;
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= STICK_TO_BOTTOM_PX;
  change();
  if (atBottom) scroller.scrollTop = scroller.scrollHeight;
};

const outbox = new Outbox({
  send,
  joined: (name) => state.rooms.get(name)?.joined === true,
  list: els.outgoing,
  update: withAutoScroll,
});

// A room rendered afresh replaces every line of the live region: busy meanwhile,
// so screen readers do not read the whole room out as if it were new. (Cleared on the
// next frame: the accessibility tree is updated after this task, and must see it busy.)
const renderConversation = () => {
  const room = activeRoom();
  els.messages.setAttribute('aria-busy', 'true');
  conversation.reset(room ? room.items : [], room ? room.newFrom : -1);
  requestAnimationFrame(() => els.messages.setAttribute('aria-busy', 'false'));
  els.scroller.scrollTop = els.scroller.scrollHeight;
};

const renderMembers = () => {
  const room = activeRoom();
  const names = [...(room?.members ?? [])].sort((a, b) => a.localeCompare(b));
  els.members.replaceChildren(
    ...names.map((name) => {
      const li = el('li', isOwn(name) ? 'self' : '', name);
      return li;
    }),
  );
  els.roomName.textContent = room ? `in ${room.name}` : '';
};

const renderRooms = () => {
  let total = 0;
  const items = state.order.map((name) => {
    const room = state.rooms.get(name);
    total += room.unread;
    const li = el('li', 'room-entry');
    const open = el('button', 'room-button');
    open.type = 'button';
    open.dataset.room = name;
    if (name === state.active) open.setAttribute('aria-current', 'true');
    open.append(el('span', 'room-label', name));
    if (room.unread > 0) {
      const badge = el('span', 'unread', String(room.unread));
      badge.setAttribute('aria-label', `${room.unread} unread`);
      open.append(badge);
    }
    open.addEventListener('click', () => {
      setActive(name);
      closeSidebar();
      els.message.focus();
    });
    const leave = el('button', 'leave-button', '×');
    leave.type = 'button';
    leave.setAttribute('aria-label', `Leave ${name}`);
    leave.title = `Leave ${name}`;
    leave.dataset.leave = name;
    leave.addEventListener('click', () => leaveRoom(name));
    li.append(open, leave);
    return li;
  });
  // Rebuilt on every unread change: keep the keyboard where it was.
  const focused = els.rooms.contains(document.activeElement) ? document.activeElement : null;
  els.rooms.replaceChildren(...items);
  if (focused) {
    const again = focused.dataset.room
      ? els.rooms.querySelector(`[data-room="${focused.dataset.room}"]`)
      : els.rooms.querySelector(`[data-leave="${focused.dataset.leave}"]`);
    again?.focus();
  }
  els.noRooms.hidden = state.order.length > 0;
  els.totalUnread.hidden = total === 0;
  els.totalUnread.textContent = total ? String(total) : '';
  els.totalUnread.setAttribute('aria-label', `${total} unread`);
};

const renderHeader = () => {
  const room = activeRoom();
  els.roomTitle.textContent = room ? `# ${room.name}` : 'Choose a name and a room';
  document.title = room ? `${room.name} · wschat` : 'wschat';
};

// -- Rooms ----------------------------------------------------------------------------

const setActive = (name) => {
  const previous = activeRoom();
  if (previous && previous.name !== name) previous.newFrom = -1; // its "New" divider was seen
  const room = state.rooms.get(name);
  if (!room) return;
  state.active = name;
  if (room.unread > 0) {
    room.newFrom = firstUnread(room);
    room.unread = 0;
  }
  renderHeader();
  renderRooms();
  renderConversation();
  renderMembers();
  els.typing.textContent = typing.text(name);
  outbox.show(name);
  scheduleSave();
};

// Where the "New" divider goes: before the room's last `unread` messages from others.
const firstUnread = (room) => {
  let left = room.unread;
  for (let index = room.items.length - 1; index >= 0; index -= 1) {
    const item = room.items[index];
    if (item.type === 'message' && !isOwn(item.username)) left -= 1;
    if (left === 0) return index;
  }
  return 0;
};

const addRoom = (name) => {
  if (state.rooms.has(name)) return state.rooms.get(name);
  const room = newRoom(name);
  state.rooms.set(name, room);
  state.order.push(name);
  return room;
};

const removeRoom = (name) => {
  const room = state.rooms.get(name);
  if (!room) return;
  clearTimeout(room.historyTimer);
  typing.clear(name);
  state.rooms.delete(name);
  state.order = state.order.filter((other) => other !== name);
  outbox.forget(name);
  if (state.active === name) state.active = state.order[0] ?? '';
  setActive(state.active);
  if (!state.active) {
    renderHeader();
    renderConversation();
    renderMembers();
    renderRooms();
    outbox.show('');
  }
  scheduleSave();
};

const leaveRoom = (name) => {
  send({ type: 'leave', room: name });
  removeRoom(name);
  if (state.order.length === 0) {
    connection.disconnect();
    showConnection('');
    openSidebar(els.room);
  }
};

// -- Identity ---------------------------------------------------------------------------

const showNameProblem = (text) => {
  els.usernameNote.textContent = text;
  els.usernameNote.classList.toggle('error-text', Boolean(text));
  els.username.setAttribute('aria-invalid', text ? 'true' : 'false');
};

const checkNameField = () => {
  if (!els.username.value) {
    showNameProblem('');
    return null;
  }
  const result = checkName(els.username.value);
  if (!result.ok) {
    showNameProblem(result.reason);
    return null;
  }
  showNameProblem('');
  if (result.changed) {
    els.usernameNote.textContent = `You will appear as “${result.name}” (the standard form of what you typed).`;
  }
  return result.name;
};

const renderIdentity = () => {
  const signedIn = state.identity !== null || state.token !== '';
  // A server that wants a token takes the name from it: a name field would only mislead.
  els.nameField.hidden = signedIn || state.askingToken;
  els.username.required = !els.nameField.hidden;
  els.identity.hidden = !signedIn;
  els.identityName.textContent = state.identity ? state.identity.name : 'a token';
  els.identityName.title = state.identity && state.identity.name !== state.identity.sub ? state.identity.sub : '';
};

// The server accepted the token: who it says the user is wins over what the
// page read from the token (an opaque token says nothing; a hook may rename).
const onAuthenticated = (event) => {
  const sub = String(event.username ?? '');
  if (!sub) return;
  const changed = state.identity?.sub !== sub;
  state.identity = { sub, name: String(event.name || sub) };
  renderIdentity();
  if (changed) {
    renderConversation(); // which messages are one's own
    renderMembers();
  }
};

const askForToken = (reason, detail = '') => {
  connection.halt(reason);
  els.tokenReason.textContent = state.token ? `${reason}. Enter a new token.` : `${reason}.`;
  // What the server said is for developers: there on request, not in the way.
  els.tokenSaid.textContent = detail;
  els.tokenDetail.hidden = !detail;
  els.tokenForm.hidden = false;
  state.askingToken = true;
  renderIdentity();
  openSidebar(els.token);
};

const useToken = (token) => {
  state.token = token;
  state.identity = token ? tokenIdentity(token) : null;
  saveToken(token);
  renderIdentity();
};

// -- Sidebar (a drawer on narrow screens) ----------------------------------------------

// While the drawer is open, the chat it covers is inert: the keyboard cannot land
// on a field hidden under it (WCAG 2.4.11) and screen readers skip it. On a wide
// screen the sidebar is a column beside the chat, whatever data-sidebar says.
const coverChat = () => {
  els.chat.inert = document.body.dataset.sidebar === 'open' && narrow.matches;
};
narrow.addEventListener('change', coverChat);

const openSidebar = (focus) => {
  if (narrow.matches) {
    document.body.dataset.sidebar = 'open';
    els.roomsToggle.setAttribute('aria-expanded', 'true');
    coverChat();
  }
  focus?.focus();
};

const closeSidebar = () => {
  if (document.body.dataset.sidebar !== 'open') return;
  document.body.dataset.sidebar = 'closed';
  els.roomsToggle.setAttribute('aria-expanded', 'false');
  coverChat();
};

els.roomsToggle.addEventListener('click', () => {
  if (document.body.dataset.sidebar === 'open') {
    closeSidebar();
    els.roomsToggle.focus();
  } else {
    openSidebar(els.sidebar.querySelector('.room-button, input:not([hidden])'));
  }
});

document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && document.body.dataset.sidebar === 'open') {
    closeSidebar();
    els.roomsToggle.focus();
  }
});

// -- Forms ------------------------------------------------------------------------------

els.username.addEventListener('input', checkNameField);

const showRoomProblem = (text) => {
  els.roomNote.textContent = text;
  els.roomNote.classList.toggle('error-text', Boolean(text));
  els.room.setAttribute('aria-invalid', text ? 'true' : 'false');
};

els.room.addEventListener('input', () => {
  const room = els.room.value.trim();
  showRoomProblem(room !== '' && !ROOM_PATTERN.test(room) ? ROOM_RULE : '');
});

els.joinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  let username = myName();
  if (state.askingToken) {
    els.token.focus(); // no room can be joined without one
    return;
  }
  if (!state.token) {
    if (!els.username.value.trim()) {
      showNameProblem('Type a name first.');
      els.username.focus();
      return;
    }
    username = checkNameField();
    if (username === null) {
      els.username.focus();
      return;
    }
  }
  const roomName = els.room.value.trim() || 'lobby';
  if (!ROOM_PATTERN.test(roomName)) {
    showRoomProblem(ROOM_RULE);
    els.room.focus();
    return;
  }
  showRoomProblem('');
  const renamed = !state.token && username !== state.username;
  if (!state.token) {
    state.username = username;
    els.username.value = username;
  }
  const isNew = !state.rooms.has(roomName);
  const room = addRoom(roomName);
  setActive(roomName);
  els.room.value = '';
  els.room.placeholder = 'Another room';
  if (renamed || connection.halted || connection.socket === null) {
    connection.restart();
  } else if (isNew && isOpen()) {
    sendJoin(room);
  }
  saveNow();
  closeSidebar();
  els.message.focus();
});

els.tokenForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const token = els.token.value.trim();
  if (!token) {
    els.token.focus();
    return;
  }
  els.token.value = '';
  els.tokenForm.hidden = true;
  state.askingToken = false;
  useToken(token);
  connection.restart();
  closeSidebar();
});

els.signOut.addEventListener('click', () => {
  // Signing out also ends a pending "sign in" (after a 401 or 4408): a server that takes
  // guests lets the name field back.
  state.askingToken = false;
  els.tokenForm.hidden = true;
  useToken('');
  connection.disconnect();
  els.username.focus();
});

const updateCounter = () => {
  const { count, over, warn } = messageLength(els.message.value);
  const limit = MAX_MESSAGE_LENGTH.toLocaleString('en');
  els.counter.classList.toggle('over', over > 0);
  if (over > 0) {
    els.counter.textContent = `${count.toLocaleString('en')} of ${limit} characters: remove ${over.toLocaleString('en')} to send this message.`;
  } else if (warn) {
    els.counter.textContent = `${count.toLocaleString('en')} of ${limit} characters.`;
  } else {
    els.counter.textContent = '';
  }
};

const showHint = (text) => {
  els.sendHint.textContent = text;
  els.sendHint.hidden = false;
};

const hideHint = () => {
  els.sendHint.hidden = true;
  els.sendHint.textContent = '';
};

els.message.addEventListener('input', () => {
  updateCounter();
  const room = activeRoom();
  if (room?.joined && els.message.value.trim()) typing.typed(room.name, send);
});

els.message.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.sendForm.requestSubmit();
  }
});

els.sendForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = els.message.value;
  if (!text.trim()) return;
  const room = activeRoom();
  if (!room) {
    showHint('Join a room first; your message was kept.');
    openSidebar(state.username || state.token ? els.room : els.username);
    return;
  }
  const { over } = messageLength(text);
  if (over > 0) {
    showHint(`This message is ${over.toLocaleString('en')} characters over the limit of ${MAX_MESSAGE_LENGTH.toLocaleString('en')}; shorten it to send. Nothing was cut.`);
    return;
  }
  // Not connected: keep the text in the input so nothing is lost.
  if (!room.joined) {
    showHint('Not connected. Your message was kept; send it again once reconnected.');
    return;
  }
  outbox.add(room.name, text);
  typing.sent(room.name); // typing again right away is news again
  room.newFrom = -1;
  els.message.value = '';
  updateCounter();
  hideHint();
});

// -- Start ------------------------------------------------------------------------------

const start = () => {
  // A token can come in the page's URL (a login flow sends the user here with it).
  const query = new URLSearchParams(location.search);
  const fromUrl = query.get('token');
  if (fromUrl) {
    query.delete('token'); // out of the address bar and the history
    history.replaceState(null, '', `${location.pathname}${query.size ? `?${query}` : ''}${location.hash}`);
  }
  useToken(fromUrl || loadToken());

  const saved = loadState();
  const hash = new URLSearchParams(location.hash.slice(1));
  const hashName = hash.get('username');
  const hashRoom = hash.get('room');
  state.username = (hashName ? checkName(hashName) : null)?.name ?? (saved.username ? checkName(saved.username).name ?? '' : '');
  for (const room of saved.rooms) {
    if (!ROOM_PATTERN.test(room.name) || state.rooms.has(room.name)) continue;
    state.rooms.set(room.name, newRoom(room.name, room));
    state.order.push(room.name);
  }
  if (hashRoom && ROOM_PATTERN.test(hashRoom)) addRoom(hashRoom);
  const active = hashRoom && state.rooms.has(hashRoom) ? hashRoom : saved.active;
  els.username.value = state.username;
  els.room.value = state.order.length ? '' : 'lobby';
  if (state.order.length) els.room.placeholder = 'Another room';
  setActive(state.rooms.has(active) ? active : (state.order[0] ?? ''));
  if (!state.active) {
    renderHeader();
    renderRooms();
  }
  setStatus('disconnected');

  if (state.order.length && (myName() || state.token)) {
    // Name and rooms known: rejoin at once, from where the page left off.
    connection.connect();
    els.message.focus();
  } else {
    // Start where there is something to fill in (on a phone: in the open drawer).
    let first = els.username;
    if (state.token) first = els.room;
    else if (els.username.value) first = els.connect;
    openSidebar(first);
  }
};

start();

// For tests and debugging.
window.wschat = {
  state: () => state.status,
  get positions() {
    return Object.fromEntries(state.order.map((name) => [name, state.rooms.get(name).position]));
  },
  members: () => [...(activeRoom()?.members ?? [])],
  room: () => state.active,
  rooms: () => [...state.order],
  unread: (name) => state.rooms.get(name)?.unread ?? 0,
  joined: (name) => state.rooms.get(name)?.joined ?? false,
  username: () => myName(),
};
