// What the page remembers across reloads.
//
// localStorage (this browser, all tabs): the name, the rooms in order, the room
// on screen, and per room its position ({epoch, seq}), unread count and last
// items. Items and position are saved together in one value, so after a reload
// a join with `since` brings exactly what is not on screen yet.
// sessionStorage (this tab only): a sign-in token, never the URL or localStorage.

const STATE_KEY = 'wschat.state.v1';
const LEGACY_KEY = 'wschat.identity'; // the one-room page's {username, room}
const TOKEN_KEY = 'wschat.token';
export const MAX_STORED_ITEMS = 200; // per room
const STORED_TYPES = new Set(['message', 'joined', 'left', 'notice']);

const read = (storage, key) => {
  try {
    return JSON.parse(storage.getItem(key) ?? 'null');
  } catch {
    return null; // storage disabled or corrupt: start afresh
  }
};

const isPosition = (value) =>
  value !== null && typeof value === 'object' && typeof value.epoch === 'string' && Number.isInteger(value.seq);

/** `{username, active, rooms: [{name, position, unread, items}]}`, validated. */
export const loadState = () => {
  const saved = read(localStorage, STATE_KEY);
  if (saved && Array.isArray(saved.rooms)) {
    const rooms = saved.rooms
      .filter((room) => room && typeof room.name === 'string')
      .map((room) => ({
        name: room.name,
        position: isPosition(room.position) ? { epoch: room.position.epoch, seq: room.position.seq } : null,
        unread: Number.isInteger(room.unread) && room.unread > 0 ? room.unread : 0,
        items: Array.isArray(room.items) ? room.items.filter((item) => item && STORED_TYPES.has(item.type)) : [],
      }));
    return {
      username: typeof saved.username === 'string' ? saved.username : '',
      active: typeof saved.active === 'string' ? saved.active : '',
      rooms,
    };
  }
  const legacy = read(localStorage, LEGACY_KEY) ?? {};
  const room = typeof legacy.room === 'string' ? legacy.room : '';
  return {
    username: typeof legacy.username === 'string' ? legacy.username : '',
    active: room,
    rooms: room ? [{ name: room, position: null, unread: 0, items: [] }] : [],
  };
};

/** Save the page's state; on a full storage, keep fewer items rather than nothing. */
export const saveState = ({ username, active, rooms }) => {
  for (let keep = MAX_STORED_ITEMS; keep >= 0; keep = keep > 10 ? Math.floor(keep / 2) : keep - 10) {
    const value = JSON.stringify({
      username,
      active,
      rooms: rooms.map((room) => ({
        name: room.name,
        position: room.position,
        unread: room.unread,
        items: keep > 0 ? room.items.filter((item) => STORED_TYPES.has(item.type)).slice(-keep) : [],
      })),
    });
    try {
      localStorage.setItem(STATE_KEY, value);
      return true;
    } catch {
      // Quota exceeded (or storage disabled): try again with less.
    }
  }
  return false;
};

export const loadToken = () => {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? '';
  } catch {
    return '';
  }
};

export const saveToken = (token) => {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // The token then lasts until the page is closed.
  }
};

/**
 * The claims a token shows about its holder, `{sub, name}`, if it is a JWT.
 * Only for display: the server checks the signature, the page cannot.
 */
export const tokenIdentity = (token) => {
  const payload = token.split('.')[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '='));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    if (!claims || typeof claims.sub !== 'string' || !claims.sub) return null;
    return { sub: claims.sub, name: typeof claims.name === 'string' && claims.name ? claims.name : claims.sub };
  } catch {
    return null;
  }
};
