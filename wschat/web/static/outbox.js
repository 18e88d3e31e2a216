// Messages on their way: sent with an `id`, listed under the conversation until
// the room's copy of the message (which carries the id) arrives.
//
// The server answers a message with an `id` with an `ack` once it is published,
// or an `error` with the same id. `unavailable` (the hub could not take it) is
// retried once, automatically; any other refusal, or a second `unavailable`, is
// shown as "Not sent: <why>" with Retry and Discard. Messages in flight when the
// connection drops wait, and go again once their room's history has shown
// whether they were published after all.

import { errorReason } from './reasons.js';

const RETRY_DELAY_MS = 1_000; // the one automatic retry of a message refused as `unavailable`

const STATUS_WORDS = {
  sending: 'sending…',
  sent: 'sent',
  retrying: 'not delivered, trying once more…',
  waiting: 'waiting for the connection…',
};

const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

export class Outbox {
  /**
   * @param {object} options
   * @param {(payload: object) => boolean} options.send - send a frame now, if connected
   * @param {(room: string) => boolean} options.joined - may messages go to this room now
   * @param {HTMLElement} options.list - where the room on screen lists its messages on their way
   * @param {(change: () => void) => void} options.update - runs a change to the list (auto-scroll)
   */
  constructor({ send, joined, list, update }) {
    this.send = send;
    this.joined = joined;
    this.list = list;
    this.update = update;
    this.entries = new Map(); // id -> {id, room, text, status, sent, retried, reason}
    this.session = Math.random().toString(36).slice(2, 10);
    this.counter = 0;
    this.room = ''; // the room on screen
  }

  /** Send `text` to `room`, with a fresh id. */
  add(room, text) {
    this.counter += 1;
    const entry = { id: `${this.session}-${this.counter}`, room, text, status: 'waiting', sent: false, retried: false };
    this.entries.set(entry.id, entry);
    this.transmit(entry);
  }

  transmit(entry) {
    if (this.joined(entry.room) && this.send({ type: 'message', room: entry.room, message: entry.text, id: entry.id })) {
      if (entry.sent) entry.retried = true; // it may have been published before the connection went
      entry.sent = true;
      entry.status = 'sending';
    } else {
      entry.status = 'waiting';
    }
    this.render();
  }

  /** The room's copy of message `id` arrived: it is delivered. */
  delivered(id) {
    if (this.entries.delete(id)) this.render();
  }

  /** The server's `ack` (may come before or after the room's copy). */
  acked(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    entry.status = 'sent';
    this.render();
  }

  /** An `error` naming message `id`; false when no such message is on its way. */
  refused(id, code, reason) {
    const entry = this.entries.get(id);
    if (!entry) return false;
    if (code === 'unavailable' && !entry.retried) {
      entry.retried = true;
      entry.status = 'retrying';
      setTimeout(() => this.entries.has(entry.id) && this.transmit(entry), RETRY_DELAY_MS);
    } else {
      entry.status = 'failed';
      entry.reason = errorReason(code, reason);
    }
    this.render();
    return true;
  }

  /** The connection dropped: what was on its way waits (or fails, for `failAll`'s reason). */
  connectionLost(failAll = '') {
    for (const entry of this.entries.values()) {
      if (entry.status === 'failed') continue;
      if (failAll) {
        entry.status = 'failed';
        entry.reason = failAll;
      } else {
        entry.status = 'waiting';
      }
    }
    this.render();
  }

  /** `room` is joined again (its history shown): send what waited for it. */
  resume(room) {
    for (const entry of this.entries.values()) {
      if (entry.room === room && entry.status === 'waiting') this.transmit(entry);
    }
  }

  /** `room` was left: nothing goes there any more. */
  forget(room) {
    for (const [id, entry] of this.entries) if (entry.room === room) this.entries.delete(id);
    this.render();
  }

  show(room) {
    this.room = room;
    this.render();
  }

  render() {
    const items = [...this.entries.values()]
      .filter((entry) => entry.room === this.room)
      .map((entry) => this.item(entry));
    this.update(() => this.list.replaceChildren(...items));
  }

  item(entry) {
    const li = el('li', `outgoing-item ${entry.status}`);
    li.dataset.id = entry.id;
    li.append(el('span', 'text', entry.text));
    if (entry.status !== 'failed') {
      li.append(el('span', 'state', STATUS_WORDS[entry.status]));
      return li;
    }
    li.append(el('span', 'state', `Not sent: ${entry.reason}`));
    const retry = el('button', 'secondary retry', 'Retry');
    retry.type = 'button';
    retry.addEventListener('click', () => {
      entry.retried = false;
      this.transmit(entry);
    });
    const discard = el('button', 'secondary discard', 'Discard');
    discard.type = 'button';
    discard.addEventListener('click', () => {
      this.entries.delete(entry.id);
      this.render();
    });
    li.append(retry, discard);
    return li;
  }
}
