// "alice is typing…": who is typing in which room, and when to say that we are.
//
// The page sends `{"type": "typing", "room"}` at most once per TYPING_INTERVAL_MS
// while the user types (and again at once after a send); the server relays it
// to the room's other members (issue 10). A typist is forgotten when their
// message arrives, when they leave, or TYPING_TIMEOUT_MS after their last one.
// Typists are kept by user id (`username`) and shown by display name (`name`,
// which signed-in users' events carry).

const TYPING_INTERVAL_MS = 3_000;
const TYPING_TIMEOUT_MS = 6_000;

export class Typing {
  /** @param {(room: string) => void} changed - called when a room's typists change */
  constructor(changed) {
    this.changed = changed;
    this.typists = new Map(); // room -> Map(username -> {timer, name})
    this.announced = new Map(); // room -> when we last sent `typing`
    this.supported = true; // false once the server said it does not know `typing`
  }

  /** `username` (shown as `name`) is typing in `room`. */
  heard(room, username, name = username) {
    const typists = this.typists.get(room) ?? new Map();
    this.typists.set(room, typists);
    clearTimeout(typists.get(username)?.timer);
    const timer = setTimeout(() => this.forget(room, username), TYPING_TIMEOUT_MS);
    typists.set(username, { timer, name });
    this.changed(room);
  }

  forget(room, username) {
    const typists = this.typists.get(room);
    if (!typists?.has(username)) return;
    clearTimeout(typists.get(username).timer);
    typists.delete(username);
    this.changed(room);
  }

  /** Forget everyone (the connection dropped), or everyone in `room`. */
  clear(room) {
    for (const [name, typists] of this.typists) {
      if (room !== undefined && name !== room) continue;
      for (const { timer } of typists.values()) clearTimeout(timer);
      typists.clear();
      this.changed(name);
    }
  }

  /** "alice is typing…", "alice and bob are typing…", "3 people are typing…", or ''. */
  text(room) {
    const names = [...(this.typists.get(room)?.values() ?? [])].map(({ name }) => name);
    if (names.length === 1) return `${names[0]} is typing…`;
    if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
    if (names.length > 2) return `${names.length} people are typing…`;
    return '';
  }

  /** The user typed in `room`: send `typing` through `send` unless it was sent lately. */
  typed(room, send) {
    if (!this.supported) return;
    const now = Date.now();
    if (now - (this.announced.get(room) ?? 0) < TYPING_INTERVAL_MS) return;
    if (send({ type: 'typing', room })) this.announced.set(room, now);
  }

  /** The user sent a message in `room`: typing after it is news again. */
  sent(room) {
    this.announced.delete(room);
  }
}
