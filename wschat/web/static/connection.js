// The page's one WebSocket: connecting, reconnecting with backoff, and saying
// in words why it is not connected (reasons.js).
//
// After every open the page (app.js) joins its rooms. Any close that was not
// asked for is followed by a reconnect: exponential backoff with full jitter,
// reset by the page once a join succeeds (`succeeded`), so a server that
// accepts and closes at once (hub down, draining) is not hammered. A close
// before the open is a refused handshake: the page probes the URL to learn why.

import { AUTH_CLOSE_CODES, closeReason, describeProbe, probeHandshake } from './reasons.js';

const BACKOFF_BASE_MS = 500; // first retry within 0..500 ms
const BACKOFF_CAP_MS = 10_000; // retries never wait longer than 10 s
const RECONNECTED_NOTICE_MS = 10_000; // how long "Reconnected (why it dropped)" stays

const retryText = (delay) => (delay >= 1000 ? ` Trying again in ${Math.round(delay / 1000)} s.` : ' Trying again…');

export class Connection {
  /**
   * @param {object} hooks
   * @param {() => string | null} hooks.url - where to connect; null: nowhere (no rooms)
   * @param {() => void} hooks.opened - the socket is open: join the rooms
   * @param {(event: object) => void} hooks.received - one decoded server event
   * @param {(reason: string) => void} hooks.lost - the socket is gone (reason: sends fail)
   * @param {(reason: string, detail?: string) => void} hooks.signIn - the server wants a
   *   (new) token; detail: the server's own words, if any
   * @param {(status: string) => void} hooks.status - connecting | connected | disconnected
   * @param {(text: string) => void} hooks.notice - why it is not connected ('' to hide)
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.socket = null; // events from older sockets are ignored
    this.opened = false; // did the current socket open (else its close is a refused handshake)
    this.attempt = 0; // consecutive failed connects, for the backoff
    this.retryTimer = null;
    this.halted = false; // no reconnecting until the user acts (name refused, sign-in needed)
    this.lastDrop = ''; // why the connection last ended, until it is back
    this.noticeTimer = null;
    // Back online after a network loss: don't wait out a long backoff.
    window.addEventListener('online', () => this.retryTimer !== null && this.connect());
  }

  isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(payload) {
    if (!this.isOpen()) return false;
    this.socket.send(JSON.stringify(payload));
    return true;
  }

  /** A join succeeded: the server is really there, so the backoff starts over. */
  succeeded() {
    this.attempt = 0;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const url = this.hooks.url();
    if (url === null || this.halted) return;
    this.hooks.status('connecting');
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      this.notice(`cannot open a connection: ${error.message}`);
      this.hooks.status('disconnected');
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    this.opened = false;
    // Every handler first checks that this socket is still the current one, so a
    // socket replaced or closed on purpose cannot touch the page.
    socket.addEventListener('open', () => socket === this.socket && this.onOpen());
    socket.addEventListener('message', (e) => socket === this.socket && this.onMessage(e.data));
    socket.addEventListener('close', (e) => socket === this.socket && this.onClose(e, url));
  }

  /** Close on purpose (new name, last room left, sign-in): no reconnect. */
  disconnect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const socket = this.socket;
    this.socket = null; // detaches the handlers above
    if (socket !== null && socket.readyState <= WebSocket.OPEN) socket.close(1000, 'bye');
    this.hooks.lost('');
    this.hooks.status('disconnected');
  }

  /** Connect again, afresh: after the user changed what stopped it. */
  restart() {
    this.halted = false;
    this.attempt = 0;
    this.disconnect();
    this.connect();
  }

  /** Stop (and say why) until the user acts. */
  halt(reason) {
    this.halted = true;
    this.disconnect();
    if (reason) this.notice(reason);
  }

  /** Drop the socket so that a fresh one rejoins everything (with backoff). */
  rejoin() {
    this.socket?.close(4000, 'rejoin');
  }

  notice(text) {
    clearTimeout(this.noticeTimer);
    this.hooks.notice(text);
  }

  // Exponential backoff with full jitter: random(0, min(cap, base * 2^attempt)).
  scheduleReconnect() {
    clearTimeout(this.retryTimer);
    if (this.halted || this.hooks.url() === null) return 0;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.random() * ceiling;
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    return delay;
  }

  onOpen() {
    this.opened = true;
    this.hooks.status('connected');
    if (this.lastDrop) {
      // Say why it dropped: a reconnect can be quicker than reading.
      this.notice(`Reconnected (${this.lastDrop}).`);
      this.lastDrop = '';
      this.noticeTimer = setTimeout(() => this.hooks.notice(''), RECONNECTED_NOTICE_MS);
    } else {
      this.notice('');
    }
    this.hooks.opened();
  }

  onMessage(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      console.warn('wschat: ignoring a frame that is not JSON');
      return;
    }
    if (event !== null && typeof event === 'object') this.hooks.received(event);
  }

  async onClose(event, url) {
    const opened = this.opened;
    this.socket = null;
    // Closed for flooding: sending everything again at once would only do it again.
    this.hooks.lost(event.code === 1008 ? closeReason(event.code, event.reason) : '');
    this.hooks.status('disconnected');
    console.info(`wschat: closed (${event.code}${event.reason ? ` ${event.reason}` : ''})`);
    if (opened) {
      if (AUTH_CLOSE_CODES.has(event.code)) {
        this.hooks.signIn(closeReason(event.code, event.reason));
        return;
      }
      this.lastDrop = closeReason(event.code, event.reason);
      this.notice(`${this.lastDrop}.${retryText(this.scheduleReconnect())}`);
      return;
    }
    // Closed before it opened: the handshake failed, and the browser hides why.
    this.notice('could not connect: asking the server why…');
    const { kind, text, detail } = describeProbe(await probeHandshake(url));
    if (this.socket !== null || this.halted) return; // the user moved on meanwhile
    if (kind === 'auth') {
      this.hooks.signIn(text, detail);
      return;
    }
    this.lastDrop = text;
    this.notice(`${text}.${retryText(this.scheduleReconnect())}`);
  }
}
