// Rendering one room's conversation: messages, date separators, grouping,
// join/leave lines (collapsed when many), the "new" divider.
//
// Safety rule: text from users or the server goes into the page only through
// textContent, never as HTML.

const GROUP_WINDOW_MS = 5 * 60 * 1000; // consecutive messages this close share one header
const COLLAPSE_AT = 3; // this many join/leave events in a row become one expandable line
const NAMES_IN_SUMMARY = 3;

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

const parseTime = (iso) => {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
};

const dayKey = (date) => `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;

/** "Today", "Yesterday", or the date ("Monday 24 November" / with the year if not this one). */
export const dayLabel = (date, now = new Date()) => {
  if (dayKey(date) === dayKey(now)) return 'Today';
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
  if (dayKey(date) === dayKey(yesterday)) return 'Yesterday';
  const options = { weekday: 'long', day: 'numeric', month: 'long' };
  if (date.getFullYear() !== now.getFullYear()) options.year = 'numeric';
  return date.toLocaleDateString(undefined, options);
};

export const formatTime = (date) => date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

/** "alice", "alice and bob", "alice, bob and carol", "alice, bob and 3 others". */
export const listNames = (names) => {
  if (names.length <= 1) return names.join('');
  if (names.length <= NAMES_IN_SUMMARY) return `${names.slice(0, -1).join(', ')} and ${names.at(-1)}`;
  const shown = names.slice(0, NAMES_IN_SUMMARY - 1);
  return `${shown.join(', ')} and ${names.length - shown.length} others`;
};

/** One line for a run of join/leave events: who is in, who is out, at the end of it. */
export const summarizeMembership = (events, nameOf) => {
  const last = new Map();
  for (const event of events) {
    const name = nameOf(event);
    last.delete(name); // re-insert: order of each person's latest event
    last.set(name, event.type);
  }
  const joined = [...last].filter(([, type]) => type === 'joined').map(([name]) => name);
  const left = [...last].filter(([, type]) => type === 'left').map(([name]) => name);
  const parts = [];
  if (joined.length) parts.push(`${listNames(joined)} joined`);
  if (left.length) parts.push(`${listNames(left)} left`);
  return parts.join('; ');
};

/**
 * The message list of the room on screen. `append` adds one item at the end;
 * `reset` renders a room from scratch.
 *
 * Items: `{type: 'message', username, name?, message, time, seq?, id?, server?}`,
 * `{type: 'joined' | 'left', username, name?, time}`, `{type: 'notice' | 'error', text, time}`.
 */
export class Conversation {
  constructor(list, { isOwn, nameOf }) {
    this.list = list;
    this.isOwn = isOwn;
    this.nameOf = nameOf;
    this.clear();
  }

  clear() {
    this.list.replaceChildren();
    this.lastDay = null;
    this.lastMessage = null; // {username, server, time} of the message rendered last, if it is last
    this.run = null; // {events, elements} of the join/leave run rendered last, if it is last
  }

  reset(items, newFrom = -1) {
    this.clear();
    items.forEach((item, index) => {
      if (index === newFrom) this.divider();
      this.append(item);
    });
  }

  divider() {
    const line = el('div', 'new-divider');
    line.setAttribute('role', 'separator');
    line.append(el('span', '', 'New'));
    this.list.append(line);
    this.lastMessage = null;
    this.run = null;
  }

  append(item) {
    const date = parseTime(item.time) ?? new Date();
    if (this.lastDay !== dayKey(date)) {
      this.lastDay = dayKey(date);
      const separator = el('div', 'date-separator');
      separator.setAttribute('role', 'separator');
      separator.append(el('span', '', dayLabel(date)));
      this.list.append(separator);
      this.lastMessage = null;
      this.run = null;
    }
    if (item.type === 'message') this.appendMessage(item, date);
    else if (item.type === 'joined' || item.type === 'left') this.appendMembership(item, date);
    else this.appendLine(item);
  }

  appendMessage(item, date) {
    const username = String(item.username ?? '');
    const server = item.server === true;
    const previous = this.lastMessage;
    const continued =
      previous !== null &&
      previous.username === username &&
      previous.server === server &&
      date - previous.time < GROUP_WINDOW_MS;

    const line = el('div', 'message');
    if (this.isOwn(username)) line.classList.add('own');
    if (continued) line.classList.add('continued');
    if (server) line.classList.add('server');
    if (Number.isInteger(item.seq)) line.dataset.seq = String(item.seq);
    if (item.id) line.dataset.id = String(item.id);

    const meta = el('div', 'meta');
    const who = el('span', 'username', this.nameOf(item));
    if (item.name && item.name !== username) who.title = username;
    meta.append(who);
    if (server) {
      const badge = el('span', 'server-badge', 'server');
      badge.title = 'Published by the server, not typed in a chat window';
      meta.append(badge);
    }
    const time = el('time', 'time', formatTime(date));
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
    meta.append(time);
    line.append(meta, el('div', 'text', String(item.message ?? '')));
    this.list.append(line);
    this.lastMessage = { username, server, time: date };
    this.run = null;
  }

  appendMembership(item, date) {
    if (this.run === null) this.run = { events: [], elements: [] };
    const run = this.run;
    run.events.push(item);
    if (run.events.length < COLLAPSE_AT) {
      const line = el('div', 'membership', `${this.nameOf(item)} ${item.type} · ${formatTime(date)}`);
      run.elements.push(line);
      this.list.append(line);
    } else {
      const wasOpen = run.elements[0]?.open === true;
      for (const element of run.elements) element.remove();
      const details = el('details', 'membership membership-run');
      details.open = wasOpen;
      details.append(el('summary', '', summarizeMembership(run.events, this.nameOf)));
      const all = el('ul');
      for (const event of run.events) {
        all.append(el('li', '', `${this.nameOf(event)} ${event.type} · ${formatTime(parseTime(event.time) ?? date)}`));
      }
      details.append(all);
      run.elements = [details];
      this.list.append(details);
    }
    this.lastMessage = null;
  }

  appendLine(item) {
    const line = el('div', item.type === 'error' ? 'error' : 'notice', String(item.text ?? ''));
    if (item.type === 'error') line.setAttribute('role', 'alert');
    this.list.append(line);
    this.lastMessage = null;
    this.run = null;
  }
}
