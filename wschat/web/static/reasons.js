// Why a connection failed or ended, in words (README: "Bad input and its answer").
//
// A browser never shows a page the HTTP answer to a refused WebSocket
// handshake: the socket just closes with 1006. So after a socket closes
// without having opened, the page asks the same URL again with `fetch`
// (`probeHandshake`) and reads the status and body. A plain `fetch` sends no
// Origin (same-origin GET) and the page sends no Referer (the server's
// Referrer-Policy), so the Origin check, which only a real upgrade meets, is
// asked about first, with the page's origin in a header of ours; then the
// plain request brings what the rest of the upgrade would meet: a proxy that
// refuses the path, a 401 for a missing token, a 404 or a 503. Only what
// neither shows (a proxy that drops upgrades, a restart in between) is told as
// the usual causes (`REFUSED_UNSEEN`).

const PROBE_TIMEOUT_MS = 4000;
const MAX_BODY = 300;

// The page's origin, for the server's Origin check (wschat/protocol/handshake.py).
const PROBE_ORIGIN_HEADER = 'X-Wschat-Probe-Origin';

export const REFUSED_UNSEEN =
  'server refused the connection, and the browser does not say why. ' +
  'Usual causes: a proxy does not forward WebSocket upgrades, or the server is restarting';

const SIGN_IN_NEEDED = 'this server needs you to sign in';

// Close codes: RFC 6455 7.4.1, IANA registry, and wschat's own (README).
const CLOSE_WORDS = {
  1000: 'the connection was closed',
  1001: 'the server is shutting down or restarting',
  1002: 'the server saw a protocol error',
  1003: 'the server refused data it cannot accept',
  1005: 'the connection was closed without a reason',
  1006: 'the connection was lost',
  1007: 'the server received text that is not valid UTF-8',
  1008: 'the server’s policy closed the connection',
  1009: 'a message was too big for the server',
  1011: 'the server hit an error or stopped hearing from this page',
  1012: 'the server is restarting',
  1013: 'the server is overloaded: try again later',
  1015: 'the secure connection (TLS) failed',
  4401: 'the server requires you to sign in',
  4403: 'you are not allowed here',
  4408: 'your sign-in expired',
};

/** Close codes after which reconnecting with the same credentials is pointless. */
export const AUTH_CLOSE_CODES = new Set([4401, 4408]);

/** "you were disconnected: rate limit exceeded repeatedly" for a close event. */
export const closeReason = (code, reason) => {
  const words = CLOSE_WORDS[code] ?? `the connection closed (code ${code})`;
  const detail = reason ? `${reason}` : words;
  return `you were disconnected: ${detail}`;
};

const bodyText = (body) => body.trim().replace(/\s+/g, ' ').slice(0, MAX_BODY);

/**
 * What a failed handshake's probe says, as `{kind, text, detail}`; `kind` is one
 * of unreachable, auth, origin, refused, unseen, busy, missing. `detail`, for
 * `auth`, is the server's own words (for developers, shown on request).
 */
export const describeProbe = (probe) => {
  if (probe.error) {
    return { kind: 'unreachable', text: 'cannot reach the server: it is stopped, or the network is down' };
    // (a `fetch` that fails outright: no HTTP answer at all)
  }
  const body = bodyText(probe.body ?? '');
  const said = body ? `: ${body}` : '';
  const { status } = probe;
  if (status === 401) return { kind: 'auth', text: SIGN_IN_NEEDED, detail: body };
  if (isOriginRefusal(probe)) {
    return {
      kind: 'origin',
      text: `server refused the connection: ${body} (the server’s operator can allow it with --allow-origin)`,
    };
  }
  if (status === 426 || (status === 400 && /upgrade/i.test(body)) || (status >= 200 && status < 300)) {
    return { kind: 'unseen', text: REFUSED_UNSEEN };
  }
  if (status === 404) {
    return { kind: 'missing', text: `server refused the connection: there is no chat endpoint at this address (HTTP 404)${said}` };
  }
  if (status === 503 || status === 429) {
    return { kind: 'busy', text: `server refused the connection: it is busy or restarting (HTTP ${status})${said}` };
  }
  return { kind: 'refused', text: `server refused the connection (HTTP ${status})${said}` };
};

const isOriginRefusal = (probe) => probe.status === 403 && /^origin not allowed/.test(probe.body ?? '');

const ask = async (url, headers) => {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), PROBE_TIMEOUT_MS);
  try {
    const response = await fetch(url, {
      cache: 'no-store',
      credentials: 'same-origin',
      headers,
      redirect: 'manual',
      signal: controller.signal,
    });
    return { status: response.status, body: await response.text() };
  } catch (error) {
    return { error: String(error) };
  } finally {
    clearTimeout(timer);
  }
};

/** Ask `wsUrl` again over HTTP(S) to learn why its handshake failed. */
export const probeHandshake = async (wsUrl) => {
  const url = wsUrl.replace(/^ws/, 'http');
  // Same-origin with a non-CORS-safelisted header is fine: no preflight for our
  // own origin. Safe for the server to believe: the header can only turn its
  // answer into the Origin check's refusal, never admit anything.
  const origin = await ask(url, { [PROBE_ORIGIN_HEADER]: location.origin });
  if (origin.error || isOriginRefusal(origin)) return origin;
  return ask(url, {});
};

// `error` events (README table), in words; the server's own reason follows.
const ERROR_WORDS = {
  bad_message: 'the message was refused',
  rate_limited: 'you are sending too fast',
  not_joined: 'you are not in that room',
  no_username: 'choose a name first',
  unavailable: 'the server could not deliver it right now',
  forbidden: 'you are not allowed to do that',
  bad_username: 'that name cannot be used',
  name_confusable: 'that name looks like someone else’s',
  username_mismatch: 'this connection already speaks under another name',
  too_many_rooms: 'you are in too many rooms',
  bad_room: 'that room name cannot be used',
};

/** "you are sending too fast (over 10 messages/s …)" for an `error` event. */
export const errorReason = (code, reason) => {
  const words = ERROR_WORDS[code];
  if (!words) return reason || `error ${code}`;
  return reason ? `${words}: ${reason}` : words;
};
