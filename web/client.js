// @ts-check
/**
 * natsgate browser client: a dependency-free ES module speaking the
 * gateway's WebSocket protocol (README, "WebSocket protocol"), plus
 * subscribeStream for GET /v1/subscribe over fetch().
 *
 * The token is sent only in connect frames, {"op":"connect","token":…}.
 * It never goes into a URL and is never stored (no localStorage, no
 * sessionStorage, no cookie): the client keeps it in a private field so
 * that it can authenticate again after a reconnect.
 *
 * A short-lived token (an OIDC access token) is given as an async
 * function returning a fresh one: the client calls it at connect, at
 * each reconnect and when the gateway says the token expires soon
 * ({"op":"status","auth":"expiring"}); it then sends the fresh token on
 * the open session, which keeps every subscription, and resolves the
 * refresh on the gateway's new "connected". A refresh that fails (the
 * function throws, or the gateway refuses the token) is an 'error' event
 * and the session goes on with the old token until it expires.
 *
 *   import { connect } from '/client.js';
 *   const nc = await connect({ token });
 *   const unsubscribe = await nc.subscribe('orders.>', (m) => console.log(m.subject, m.data));
 *   await nc.publish('orders.eu', 'hello');           // resolves once the NATS server has it
 *   const reply = await nc.request('svc.echo', 'hi', { timeout: 2000 });
 *   await unsubscribe();
 *
 *   // JetStream: a stored publish (over HTTP), and a subscription that
 *   // resumes by stream sequence after any reconnect
 *   const ack = await nc.jsPublish('orders.eu', 'stored', { msgId: 'order-17' }); // {stream, seq, duplicate}
 *   await nc.subscribe('orders.>', (m) => console.log(m.seq, m.data), { deliver: 'all' });
 *   nc.on('gap', (g) => console.warn(`messages before ${g.first_seq} are gone`));
 *   nc.close();
 *
 *   // a token from your identity provider, fetched afresh whenever needed
 *   const oc = await connect({ token: async () => (await auth.getAccessToken()) });
 *
 * @module natsgate-client
 */

/**
 * Close codes after which the client reconnects by itself.
 * 1001 gateway shutting down, 1006 connection lost, 1008 slow consumer,
 * 1011 internal error, 1012 service restart, 1013 try again later,
 * 4429 too many failed authentications (after authLimitedDelay).
 */
export const RECONNECT_CODES = Object.freeze([1001, 1006, 1008, 1011, 1012, 1013, 4429]);

/**
 * Close codes that end the client for good: 1009 frame too large, 4400
 * protocol misuse, 4401 token rejected or revoked (or expired, unless the
 * token option is a function, which then gives a fresh one to reconnect
 * with), 4408 no connect frame in time.
 */
export const FINAL_CODES = Object.freeze([1009, 4400, 4401, 4408]);

/**
 * An error from the gateway or the connection. `status` is the HTTP-like
 * status of the README's error table (403, 503, 504 …) when there is one;
 * `code` is the WebSocket close code when the error comes from a close.
 */
export class NatsgateError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: number, reason?: string, kind?: string}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = 'NatsgateError';
    /** @type {number|undefined} */
    this.status = info.status;
    /** @type {number|undefined} */
    this.code = info.code;
    /** @type {string|undefined} */
    this.reason = info.reason;
    /** The problem kind of an HTTP error (conflict, no-stream …). @type {string|undefined} */
    this.kind = info.kind;
  }
}

/**
 * @typedef {Record<string, string|string[]>} HeadersInit
 * NATS headers: a name to one value or several.
 */

/**
 * @typedef {object} Message
 * @property {string} subject
 * @property {string|undefined} reply
 * @property {Record<string, string[]>} headers
 * @property {string|undefined} data the payload when it is valid UTF-8
 * @property {Uint8Array} bytes the payload's bytes, from data or data_base64
 * @property {() => any} json parses the payload as JSON
 * @property {string} [stream] JetStream subscriptions: the stream holding the message
 * @property {number} [seq] JetStream subscriptions: its stream sequence
 * @property {string} [time] JetStream subscriptions: when the stream stored it (RFC 3339, ns)
 */

/**
 * @typedef {(() => Promise<void>) & {sid: string, subject: string}} Unsubscribe
 * Ends a subscription (resolves on the gateway's ok); carries its sid and subject.
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string|(() => string|Promise<string>)} token the bearer token (required), or a
 *   function resolving to a fresh one, called at connect, at each reconnect and on the
 *   gateway's expiring notice (then the session moves to the fresh token, subscriptions kept)
 * @property {string} [url] the gateway's WebSocket URL, or its base; default
 *   ws(s)://<this page's host>/v1/ws. An http(s) URL is turned into ws(s); a URL
 *   whose path does not end in /v1/ws is the gateway's base (a bare origin, or
 *   the prefix it is mounted under: "/nats", "https://app.example.com/nats/")
 *   and gets /v1/ws appended.
 * @property {boolean} [reconnect=true] reconnect after a reconnectable close
 * @property {number} [reconnectDelay=500] first backoff delay, ms
 * @property {number} [maxReconnectDelay=30000] backoff cap, ms
 * @property {number} [authLimitedDelay=30000] least wait after close code 4429, ms
 * @property {number} [maxReconnectAttempts=Infinity] attempts per outage before giving up
 * @property {number} [backoffResetAfter=10000] ms a session must stay connected before the
 *   next reconnect starts the backoff from reconnectDelay again; sessions that end sooner
 *   (a gateway that closes right after "connected") keep backing off
 * @property {number} [pingInterval=20000] ms between liveness pings of a connected session; 0 disables them
 * @property {number} [pingTimeout=10000] ms a liveness ping may wait for its pong; past it the
 *   link is taken for dead: the socket is dropped and handled as close code 1006 (reconnect)
 * @property {number} [connectTimeout=10000] ms an attempt may take from opening the socket to the
 *   gateway's "connected"; past it the attempt is dropped as 1006
 * @property {number} [timeout=10000] ms publish, subscribe, unsubscribe and ping wait for the
 *   gateway's answer before rejecting with status 504 (request: its own timeout plus this); 0 waits for ever
 */

/**
 * @typedef {object} PublishOptions
 * @property {HeadersInit} [headers]
 * @property {string} [reply]
 */

/**
 * @typedef {object} RequestOptions
 * @property {number} [timeout] ms; sent as timeout_ms (the gateway's default is 5 s, its bound 60 s)
 * @property {HeadersInit} [headers]
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string} [queue] queue group (core subscriptions only)
 * @property {'all'|'last'|'new'|'last_per_subject'} [deliver] makes it a JetStream subscription
 *   of the stream holding the subject, starting there
 * @property {number} [start_seq] a JetStream subscription from this stream sequence on
 * @property {string|Date} [start_time] a JetStream subscription from the first message stored
 *   at or after this time (RFC 3339, or a Date)
 * @property {(gap: Gap) => void} [onGap] called when the stream no longer holds messages the
 *   subscription asked for (expired or purged); the 'gap' event fires too
 */

/**
 * @typedef {object} Gap
 * A JetStream subscription's start (the original one, or one past the last
 * seq delivered, on a resume) is older than its stream's first message:
 * the messages in between are gone, delivery goes on from first_seq.
 * @property {string} sid
 * @property {string} subject
 * @property {number} first_seq
 * @property {number} [requested_seq]
 * @property {string} [requested_time]
 */

/**
 * @typedef {object} JSPublishOptions
 * @property {HeadersInit} [headers] NATS headers, sent as NatsH-<Name> (several values of a
 *   name reach NATS as one, joined with ", ")
 * @property {string} [msgId] the Idempotency-Key (Nats-Msg-Id): a repeat within the stream's
 *   duplicate window stores nothing new and resolves with duplicate: true
 * @property {number} [timeout] ms; default options.timeout
 */

/**
 * @typedef {object} PubAck
 * @property {string} stream
 * @property {number} seq
 * @property {boolean} duplicate
 */

/** @typedef {'connecting'|'connected'|'reconnecting'|'closed'} ClientState */

const te = new TextEncoder();
const td = new TextDecoder();

/** @param {Uint8Array} bytes */
function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, /** @type {any} */ (bytes.subarray(i, i + 0x8000)));
  }
  return btoa(s);
}

/** @param {string} b64 */
function fromBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * Builds a message object from a wire message (README, "Message object").
 * @param {any} f
 * @returns {Message}
 */
export function toMessage(f) {
  /** @type {string|undefined} */
  const data = typeof f.data === 'string' ? f.data : undefined;
  const bytes = data !== undefined ? te.encode(data)
    : typeof f.data_base64 === 'string' ? fromBase64(f.data_base64) : new Uint8Array(0);
  /** @type {Message} */
  const m = {
    subject: f.subject,
    reply: f.reply || undefined,
    headers: f.headers || {},
    data,
    bytes,
    json() { return JSON.parse(data !== undefined ? data : td.decode(bytes)); },
  };
  if (typeof f.seq === 'number') {
    m.stream = f.stream;
    m.seq = f.seq;
    m.time = f.time;
  }
  return m;
}

/**
 * Puts a payload into a frame: undefined → empty, a string → data,
 * a Uint8Array / ArrayBuffer / other view → data_base64, anything else
 * (numbers, objects, arrays, null) → JSON.stringify into data.
 * @param {Record<string, any>} frame
 * @param {any} data
 */
function setPayload(frame, data) {
  if (data === undefined) return;
  if (typeof data === 'string') frame.data = data;
  else if (data instanceof Uint8Array) frame.data_base64 = toBase64(data);
  else if (data instanceof ArrayBuffer) frame.data_base64 = toBase64(new Uint8Array(data));
  else if (ArrayBuffer.isView(data)) frame.data_base64 = toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  else frame.data = JSON.stringify(data);
}

/**
 * A payload as an HTTP request body, by the same rules as setPayload.
 * @param {any} data
 * @returns {string|Uint8Array}
 */
function bodyOf(data) {
  if (data === undefined) return '';
  if (typeof data === 'string' || data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return JSON.stringify(data);
}

/**
 * @param {any} h
 * @returns {HeadersInit|undefined}
 */
function normHeaders(h) {
  if (h == null) return undefined;
  /** @type {Record<string, string[]>} */
  const out = {};
  const add = (/** @type {string} */ k, /** @type {any} */ v) => {
    (out[k] ||= []).push(...(Array.isArray(v) ? v.map(String) : [String(v)]));
  };
  if (typeof h.forEach === 'function' && !Array.isArray(h)) h.forEach((/** @type {any} */ v, /** @type {string} */ k) => add(k, v)); // Map, Headers
  else for (const [k, v] of Object.entries(h)) add(k, v);
  return Object.keys(out).length ? out : undefined;
}

const URL_TOKEN_PARAMS = ['token', 'access_token', 'auth_token', 'bearer'];

/**
 * @param {string|undefined} url
 * @param {string} path
 * @param {boolean} ws
 */
function resolveURL(url, path, ws) {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const u = new URL(url || path, base);
  if (ws && (u.protocol === 'http:' || u.protocol === 'https:')) u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  if (!ws && (u.protocol === 'ws:' || u.protocol === 'wss:')) u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  if (url && !u.pathname.endsWith(path)) u.pathname = u.pathname.replace(/\/+$/, '') + path;
  if (u.username || u.password || [...u.searchParams.keys()].some((k) => URL_TOKEN_PARAMS.includes(k.toLowerCase()))) {
    throw new TypeError('natsgate: never put a token in a URL; pass it as the token option');
  }
  return u;
}

/** @returns {string} the token, checked */
function checkToken(/** @type {unknown} */ token) {
  if (typeof token !== 'string' || token === '') throw new TypeError('natsgate: a token is required');
  return token;
}

/**
 * fetch() throws a TypeError, indistinguishable from a network error, for
 * a header value with control characters or characters beyond U+00FF.
 * @param {string} token
 */
function headerSafe(token) {
  return !/[^\x20-\x7e\x80-\xff]/.test(token);
}

/**
 * Turns a failed HTTP answer (problem+json, or not) into a NatsgateError
 * with its status, the problem's detail as the message and its kind.
 * @param {Response} resp
 */
async function httpError(resp) {
  let detail = resp.statusText;
  /** @type {string|undefined} */
  let kind;
  try {
    const p = await resp.json();
    detail = p.detail || p.title || detail;
    if (typeof p.type === 'string') kind = p.type.replace(/^urn:natsgate:problem:/, '');
  } catch { /* not problem+json */ }
  return new NatsgateError(`natsgate: ${resp.status} ${detail}`, { status: resp.status, kind });
}

/**
 * @typedef {object} Sub
 * @property {string} sid
 * @property {string} subject
 * @property {string|undefined} queue
 * @property {(m: Message) => void} handler
 * @property {{resolve: () => void, reject: (e: Error) => void} | null} waiter
 * @property {JSState} [js] set for a JetStream subscription
 */

/**
 * @typedef {object} JSState
 * @property {Record<string, any>} start the original start position: {deliver}, {start_seq} or {start_time}
 * @property {number} lastSeq the last seq delivered to the handler (0: none yet)
 * @property {number} [after] the seq the gateway's ok said the subscription starts after
 * @property {((g: Gap) => void)|undefined} onGap
 * @property {number} failures feeds ended by the gateway in a row (for the resume backoff)
 * @property {ReturnType<typeof setTimeout>|null} retry a scheduled resume in the same session
 * @property {(() => void)|null} [now] runs that resume at once
 */

/**
 * @typedef {object} Pending
 * @property {'sub'|'unsub'|'pub'|'req'|'connect'} kind
 * @property {(v: any, f?: any) => void} resolve given the answering frame too
 * @property {(e: Error) => void} reject
 * @property {ReturnType<typeof setTimeout>} [timer]
 */

/**
 * @typedef {object} PendingPing
 * @property {() => void} resolve
 * @property {(e: Error) => void} reject
 * @property {boolean} settled the deadline passed; its pong, if it comes, is swallowed
 * @property {ReturnType<typeof setTimeout>} [timer]
 */

/**
 * A pending entry that swallows its answer: what an abandoned call leaves
 * behind, so that a late ok or error is not reported as news.
 * @param {Pending['kind']} kind
 * @returns {Pending}
 */
function quiet(kind) {
  return { kind, resolve() {}, reject() {} };
}

/**
 * Where a JetStream subscription made again resumes: one past the last
 * seq delivered; before any, one past the seq the gateway said it starts
 * after (so deliver 'new' skips nothing stored meanwhile); undefined, from
 * its original start (a gateway that did not say, or last_per_subject).
 * @param {JSState} js
 * @returns {number|undefined} the seq it resumes after
 */
function resumeAfter(js) {
  return js.lastSeq > 0 ? js.lastSeq : js.after;
}

/**
 * A WebSocket session with the gateway that reconnects by itself.
 * Events (EventTarget; each a CustomEvent whose detail is described here,
 * or use on(type, fn), which passes the detail):
 * - connect: {info, reconnected} once the gateway sent "connected"
 * - disconnect: {code, reason, willReconnect} the socket closed
 * - reconnecting: {attempt, delay, code} a reconnect is scheduled
 * - subscribed: {sid, subject, resubscribed} the gateway confirmed a
 *   subscription (resubscribed: made again after a reconnect)
 * - closed: {code, reason} the client is done for good
 * - error: {error} an error frame without a pending call, a failed
 *   re-subscription, or a handler that threw
 * - status: the {"op":"status","nats":…} frame: the token's NATS
 *   connection went away ("disconnected") or came back ("reconnected");
 *   or {"op":"status","auth":"expiring","expires_in_ms":…}: the token
 *   expires soon (with a token function, a refresh follows by itself)
 * - refresh: {info} the session moved to a fresh token (refresh());
 *   a refresh that failed is an 'error' whose error has refresh: true
 * - slowconsumer: {dropped, message} the gateway dropped messages
 * - gap: {sid, subject, first_seq, requested_seq | requested_time} a
 *   JetStream subscription's stream no longer holds messages it asked
 *   for (expired or purged); delivery goes on from first_seq
 * - resuming: {sid, subject, delay, error, start_seq} a JetStream
 *   subscription whose feed the gateway ended, or whose re-subscription
 *   it refused for the time being (503 …), is made again in delay ms
 *   (at once if NATS comes back first), from start_seq
 */
export class NatsgateClient extends EventTarget {
  /** @type {string} */
  #token = '';
  /** @type {(() => string|Promise<string>)|null} the token option, when it is a function */
  #tokenFn = null;
  /** @type {Promise<void>|null} the refresh under way */
  #refreshing = null;
  /** @type {WebSocket|null} */
  #ws = null;
  #seq = 0;
  #sidSeq = 0;
  #attempt = 0;
  #everConnected = false;
  #userClosed = false;
  /** When the current session got "connected" (Date.now()). */
  #connectedAt = 0;
  /** @type {ReturnType<typeof setTimeout>|null} the reconnect backoff */
  #timer = null;
  /** @type {ReturnType<typeof setTimeout>|null} the current attempt's connect deadline */
  #openTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} the next liveness ping */
  #pingTimer = null;
  /** @type {Map<string, Sub>} */
  #subs = new Map();
  /** @type {Map<string, Pending>} */
  #pending = new Map();
  /** @type {PendingPing[]} pings in the order sent; pongs answer them in order */
  #pings = [];
  /** @type {{resolve: (c: NatsgateClient) => void, reject: (e: Error) => void}|null} */
  #start = null;

  /** @param {ConnectOptions} options */
  constructor(options) {
    super();
    const o = options || /** @type {ConnectOptions} */ ({});
    if (typeof o.token === 'function') this.#tokenFn = o.token;
    else this.#token = checkToken(o.token);
    /** The WebSocket URL. */
    this.url = resolveURL(o.url, '/v1/ws', true).href;
    this.options = {
      reconnect: o.reconnect !== false,
      reconnectDelay: o.reconnectDelay ?? 500,
      maxReconnectDelay: o.maxReconnectDelay ?? 30000,
      authLimitedDelay: o.authLimitedDelay ?? 30000,
      maxReconnectAttempts: o.maxReconnectAttempts ?? Infinity,
      backoffResetAfter: o.backoffResetAfter ?? 10000,
      pingInterval: o.pingInterval ?? 20000,
      pingTimeout: o.pingTimeout ?? 10000,
      connectTimeout: o.connectTimeout ?? 10000,
      timeout: o.timeout ?? 10000,
    };
    /** @type {ClientState} */
    this.state = 'connecting';
    /** The gateway's "connected" frame (max_payload, max_frame_bytes …), once connected. @type {any} */
    this.info = null;
  }

  /**
   * Opens the first session. connect() calls it.
   * @returns {Promise<NatsgateClient>}
   */
  start() {
    return new Promise((resolve, reject) => {
      this.#start = { resolve, reject };
      this.#open();
    });
  }

  /**
   * Listens for an event; fn gets the event's detail. Returns a function
   * that removes the listener.
   * @param {string} type
   * @param {(detail: any) => void} fn
   */
  on(type, fn) {
    const l = (/** @type {Event} */ e) => fn(/** @type {CustomEvent} */ (e).detail);
    this.addEventListener(type, l);
    return () => this.removeEventListener(type, l);
  }

  /** @param {string} type @param {any} detail */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Opens a socket, with a fresh token first when the token is a function. */
  #open() {
    if (!this.#tokenFn) {
      this.#openSocket();
      return;
    }
    this.#freshToken().then(
      (token) => {
        if (this.state === 'closed' || this.#userClosed) return;
        this.#token = token;
        this.#openSocket();
      },
      (/** @type {NatsgateError} */ error) => {
        if (this.state === 'closed' || this.#userClosed) return;
        this.#emit('error', { error });
        // A first attempt fails as a rejected token would; later ones back off and try again.
        if (!this.#everConnected) this.#finish(0, error.message, error);
        else this.#onClose(1006, error.message);
      },
    );
  }

  /**
   * Calls the token function; rejects with a NatsgateError (status 401) if
   * it throws or gives no token.
   * @returns {Promise<string>}
   */
  async #freshToken() {
    const fn = /** @type {() => string|Promise<string>} */ (this.#tokenFn);
    try {
      return checkToken(await fn());
    } catch (e) {
      throw new NatsgateError(`natsgate: the token function failed: ${e instanceof Error ? e.message : e}`, { status: 401 });
    }
  }

  /**
   * Moves the open session to a fresh token from the token function: the
   * gateway keeps every subscription. Resolves on its new "connected";
   * rejects (and emits 'error') with the gateway's refusal (401, 403,
   * 429), a failing token function (401) or no answer in time (504), the
   * session going on with the old token. The client calls it by itself on
   * the gateway's expiring notice; one refresh at a time.
   * @returns {Promise<void>}
   */
  refresh() {
    if (!this.#tokenFn) return Promise.reject(new TypeError('natsgate: refresh needs token as a function'));
    if (this.#refreshing) return this.#refreshing;
    const ws = this.#ws;
    const p = this.#freshToken()
      .then((token) => {
        if (ws !== this.#ws || this.state !== 'connected') return undefined; // the reconnect takes a fresh one
        return this.#call('connect', { op: 'connect', token }).then(() => {
          this.#token = token;
          this.#emit('refresh', { info: this.info });
        });
      })
      .catch((/** @type {NatsgateError} */ error) => {
        Object.assign(error, { refresh: true });
        this.#emit('error', { error });
        throw error;
      })
      .finally(() => {
        if (this.#refreshing === p) this.#refreshing = null;
      });
    this.#refreshing = p;
    return p;
  }

  #openSocket() {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.#finish(0, String(e), new NatsgateError(`natsgate: ${e}`));
      return;
    }
    this.#ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ op: 'connect', token: this.#token }));
    ws.onmessage = (ev) => { if (ws === this.#ws) this.#onFrame(ev.data); };
    ws.onclose = (ev) => { if (ws === this.#ws) this.#onClose(ev.code, ev.reason); };
    const ms = this.options.connectTimeout;
    if (ms > 0) {
      this.#openTimer = setTimeout(() => {
        this.#openTimer = null;
        this.#drop(ws, `no "connected" from the gateway within ${ms} ms`);
      }, ms);
    }
  }

  /**
   * Gives up on a socket that stopped answering (a frozen proxy, a dead
   * link): the browser would notice only after minutes, so the client
   * handles it now as a lost connection, close code 1006, and reconnects.
   * @param {WebSocket} ws
   * @param {string} reason
   */
  #drop(ws, reason) {
    if (ws !== this.#ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000, 'unresponsive');
    } catch { /* already closing */ }
    this.#onClose(1006, reason);
  }

  /** Stops the connect deadline and the liveness pings of the current socket. */
  #stopTimers() {
    if (this.#openTimer) clearTimeout(this.#openTimer);
    if (this.#pingTimer) clearTimeout(this.#pingTimer);
    this.#openTimer = this.#pingTimer = null;
  }

  /** Schedules the next liveness ping of the current session. */
  #schedulePing() {
    const every = this.options.pingInterval;
    const ws = this.#ws;
    if (!(every > 0) || !ws) return;
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = null;
      if (ws !== this.#ws || this.state !== 'connected') return;
      const wait = this.options.pingTimeout;
      this.#ping(wait).then(
        () => { if (ws === this.#ws && this.state === 'connected') this.#schedulePing(); },
        (/** @type {NatsgateError} */ e) => { if (e.status === 504) this.#drop(ws, `no pong within ${wait} ms`); },
      );
    }, every);
  }

  /** @param {Record<string, any>} f */
  #send(f) {
    const s = JSON.stringify(f);
    const max = this.info && this.info.max_frame_bytes;
    if (max && s.length * 3 > max && te.encode(s).length > max) {
      // Sending it would close the session with 1009.
      throw new NatsgateError(`frame of ${te.encode(s).length} bytes is over the gateway's max_frame_bytes (${max})`, { status: 413 });
    }
    /** @type {WebSocket} */ (this.#ws).send(s);
  }

  /** @param {any} raw */
  #onFrame(raw) {
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      this.#emit('error', { error: new NatsgateError('frame is not JSON') });
      return;
    }
    if (f.sid !== undefined && this.#watches.has(f.sid) && this.#onWatchFrame(f)) return;
    switch (f.op) {
      case 'connected': {
        const p = this.#take(f.id);
        if (!p) return this.#onConnected(f);
        // The answer to a refresh: the same session, on a fresh token.
        if (p.kind === 'connect') this.info = f;
        p.resolve(undefined);
        return;
      }
      case 'msg': {
        const sub = this.#subs.get(f.sid);
        if (!sub) return;
        if (sub.js && typeof f.seq === 'number') {
          // Every stored message once, in order: never one at or below
          // the last delivered (a resume that overlapped, whatever the cause).
          if (f.seq <= sub.js.lastSeq) return;
          sub.js.lastSeq = f.seq;
          sub.js.failures = 0;
        }
        try {
          sub.handler(toMessage(f));
        } catch (error) {
          this.#emit('error', { error });
        }
        return;
      }
      case 'ok':
      case 'reply':
      case 'error': {
        const p = this.#take(f.id);
        if (!p) {
          if (f.op !== 'error') return;
          const sub = f.id === undefined && f.sid !== undefined ? this.#subs.get(f.sid) : undefined;
          if (sub && sub.js && !sub.waiter) {
            this.#feedEnded(sub, new NatsgateError(f.message || 'error', { status: f.status }));
            return;
          }
          const m = /^slow consumer: (\d+) dropped/.exec(f.message || '');
          if (m && f.status === 429) this.#emit('slowconsumer', { dropped: Number(m[1]), message: f.message });
          else this.#emit('error', { error: new NatsgateError(f.message || 'error', { status: f.status }) });
          return;
        }
        if (f.op === 'error') p.reject(new NatsgateError(f.message || 'error', { status: f.status }));
        else p.resolve(f.op === 'reply' ? toMessage(f) : undefined, f);
        return;
      }
      case 'status': {
        if (f.gap && f.sid !== undefined) return this.#onGap(f);
        if (f.nats === 'reconnected') {
          // JetStream subscriptions waiting to be made again need not wait longer.
          for (const sub of this.#subs.values()) if (sub.js && sub.js.now) sub.js.now();
        }
        if (f.auth === 'expiring' && this.#tokenFn) this.refresh().catch(() => {}); // told as an 'error'
        return this.#emit('status', f);
      }
      case 'pong': {
        const p = this.#pings.shift();
        if (p && !p.settled) {
          if (p.timer) clearTimeout(p.timer);
          p.resolve();
        }
        return;
      }
    }
  }

  /** @param {any} info */
  #onConnected(info) {
    const reconnected = this.#everConnected;
    this.info = info;
    this.state = 'connected';
    this.#everConnected = true;
    this.#connectedAt = Date.now();
    if (this.#openTimer) clearTimeout(this.#openTimer);
    this.#openTimer = null;
    this.#schedulePing();
    for (const sub of this.#subs.values()) {
      if (sub.js && sub.js.retry) {
        // Made again here, from one past its last seq: a resume scheduled in the old session is moot.
        clearTimeout(sub.js.retry);
        sub.js.retry = sub.js.now = null;
      }
      try {
        this.#sendSub(sub);
      } catch (error) {
        this.#emit('error', { error, sid: sub.sid, subject: sub.subject });
      }
    }
    this.#resendWatches();
    if (this.#start) {
      this.#start.resolve(this);
      this.#start = null;
    }
    this.#emit('connect', { info, reconnected });
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #onClose(code, reason) {
    this.#ws = null;
    this.#stopTimers();
    const wasConnected = this.state === 'connected';
    this.#failPending(new NatsgateError(`connection closed (${code}${reason ? `: ${reason}` : ''})`, { status: 503, code, reason }));
    if (wasConnected) {
      this.state = 'reconnecting';
      // Only a session that lived a while ends an outage: one closed right
      // after "connected" (1008, 1013) keeps the backoff growing.
      if (Date.now() - this.#connectedAt >= this.options.backoffResetAfter) this.#attempt = 0;
    }
    // An expired token is final, unless the token function can give a fresh one.
    const expired = code === 4401 && /token expired/.test(reason) && this.#tokenFn !== null;
    const canRetry = !this.#userClosed && this.#everConnected && this.options.reconnect &&
      (RECONNECT_CODES.includes(code) || expired) && this.#attempt < this.options.maxReconnectAttempts;
    if (wasConnected || this.#userClosed) this.#emit('disconnect', { code, reason, willReconnect: canRetry });
    if (this.#userClosed) return; // a disconnect listener called close()
    if (!canRetry) {
      this.#finish(code, reason, new NatsgateError(closeMessage(code, reason), { status: closeStatus(code), code, reason }));
      return;
    }
    this.#attempt++;
    let delay = Math.min(this.options.maxReconnectDelay, this.options.reconnectDelay * 2 ** (this.#attempt - 1));
    delay = delay / 2 + Math.random() * delay / 2; // jitter: [delay/2, delay)
    if (code === 4429) delay = Math.max(delay, this.options.authLimitedDelay);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (!this.#userClosed) this.#open();
    }, delay);
    this.#emit('reconnecting', { attempt: this.#attempt, delay, code });
  }

  /**
   * Ends the client for good.
   * @param {number} code
   * @param {string} reason
   * @param {NatsgateError} err
   */
  #finish(code, reason, err) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.#ws = null;
    this.#token = '';
    this.#tokenFn = null;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#stopTimers();
    this.#failPending(err);
    for (const sub of this.#subs.values()) {
      if (sub.js && sub.js.retry) clearTimeout(sub.js.retry);
      if (sub.waiter) sub.waiter.reject(err);
    }
    this.#subs.clear();
    this.#endWatches(err);
    if (this.#start) {
      this.#start.reject(err);
      this.#start = null;
    }
    this.#emit('closed', { code, reason, error: err });
  }

  /**
   * Rejects what waits on the current session. Subscriptions stay: they
   * are sent again on reconnect.
   * @param {Error} err
   */
  #failPending(err) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      if (p.kind !== 'sub') p.reject(err);
    }
    for (const p of this.#pings.splice(0)) {
      if (p.settled) continue;
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
  }

  /**
   * Takes the call waiting for the answer with this id out of the
   * pending ones, its timer stopped.
   * @param {string|undefined} id
   */
  #take(id) {
    const p = id !== undefined ? this.#pending.get(id) : undefined;
    if (p) {
      this.#pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
    }
    return p;
  }

  #nextId() {
    return `i${++this.#seq}`;
  }

  /**
   * Sends a frame with a fresh id and waits for its answer.
   * @param {'unsub'|'pub'|'req'|'connect'} kind
   * @param {Record<string, any>} f
   * @param {number} [guardMs] rejects with 504 if nothing comes back in time (0: never); default options.timeout
   */
  #call(kind, f, guardMs = this.options.timeout) {
    if (this.state !== 'connected') {
      return Promise.reject(new NatsgateError(`not connected (${this.state})`, { status: 503 }));
    }
    const id = this.#nextId();
    return new Promise((resolve, reject) => {
      /** @type {Pending} */
      const p = { kind, resolve, reject };
      if (guardMs) {
        p.timer = setTimeout(() => {
          this.#pending.set(id, quiet(kind)); // a late answer is not news
          reject(new NatsgateError(`natsgate: no answer from the gateway within ${guardMs} ms`, { status: 504 }));
        }, guardMs);
      }
      this.#pending.set(id, p);
      try {
        this.#send({ ...f, id });
      } catch (e) {
        this.#take(id);
        reject(e);
      }
    });
  }

  /**
   * Sends a sub frame; without the gateway's answer within options.timeout
   * the subscription is given up (504) and an unsub sent after it, in case
   * the gateway made it after all.
   * @param {Sub} sub
   */
  #sendSub(sub) {
    const id = this.#nextId();
    /** @type {Record<string, any>} */
    const f = { op: 'sub', sid: sub.sid, subject: sub.subject, id };
    if (sub.queue) f.queue = sub.queue;
    if (sub.js) {
      const after = resumeAfter(sub.js);
      if (after !== undefined) f.start_seq = after + 1;
      else Object.assign(f, sub.js.start);
    }
    this.#send(f); // answers arrive asynchronously, after the pending entry is set
    const ms = this.options.timeout;
    const ws = this.#ws;
    const timer = ms > 0 ? setTimeout(() => {
      const p = this.#pending.get(id);
      if (!p) return;
      this.#pending.set(id, quiet('sub'));
      if (ws === this.#ws && this.state === 'connected') {
        const uid = this.#nextId();
        this.#pending.set(uid, quiet('unsub'));
        try {
          this.#send({ op: 'unsub', sid: sub.sid, id: uid });
        } catch { /* the session is going anyway */ }
      }
      p.reject(new NatsgateError(`natsgate: no answer from the gateway within ${ms} ms to subscribing ${sub.subject}`, { status: 504 }));
    }, ms) : undefined;
    this.#pending.set(id, {
      kind: 'sub',
      timer,
      resolve: (_, ok) => {
        if (sub.js && sub.js.lastSeq === 0 && typeof ok.seq === 'number') sub.js.after = ok.seq;
        const resubscribed = !sub.waiter;
        if (sub.waiter) sub.waiter.resolve();
        sub.waiter = null;
        this.#emit('subscribed', { sid: sub.sid, subject: sub.subject, resubscribed });
      },
      reject: (err) => {
        // A JetStream subscription made again (after a reconnect, or a
        // feed the gateway ended) and refused for the time being (NATS
        // away: 503 …) is tried again, from where it was.
        if (!sub.waiter && sub.js && this.#subs.get(sub.sid) === sub && retryable(err)) {
          this.#retryJS(sub, /** @type {NatsgateError} */ (err));
          return;
        }
        if (this.#subs.get(sub.sid) === sub) this.#subs.delete(sub.sid);
        if (sub.waiter) sub.waiter.reject(err);
        else this.#emit('error', { error: err, sid: sub.sid, subject: sub.subject });
        sub.waiter = null;
      },
    });
  }

  /**
   * Subscribes. Resolves, once the gateway confirmed the subscription,
   * to a function that unsubscribes. The subscription is made again, with
   * the same sid, after every reconnect. If called while reconnecting, it
   * is sent once connected. Without the gateway's answer within
   * options.timeout of being sent it rejects with 504 and is given up.
   *
   * With deliver, start_seq or start_time (at most one, and no queue) it
   * is a JetStream subscription of the stream holding the subject: each
   * message has stream, seq and time, and after any reconnect (or a feed
   * the gateway ended, see README) it is made again from start_seq one
   * past the last seq delivered (before any, from where the gateway said
   * it started, or the original start), so the handler sees every stored
   * message once, in order; a seq at or below the last delivered is never
   * passed on. Rejects with 404 when no stream holds the subject.
   * @param {string} subject may use * and a final >
   * @param {(m: Message) => void} handler
   * @param {SubscribeOptions} [opts]
   * @returns {Promise<Unsubscribe>}
   */
  subscribe(subject, handler, opts = {}) {
    if (this.state === 'closed') return Promise.reject(new NatsgateError('client is closed', { status: 503 }));
    if (typeof handler !== 'function') return Promise.reject(new TypeError('natsgate: subscribe needs a handler'));
    /** @type {Record<string, any>} */
    const start = {};
    if (opts.deliver !== undefined) start.deliver = opts.deliver;
    if (opts.start_seq !== undefined) start.start_seq = opts.start_seq;
    if (opts.start_time !== undefined) {
      start.start_time = opts.start_time instanceof Date ? opts.start_time.toISOString() : opts.start_time;
    }
    const isJS = Object.keys(start).length > 0;
    if (Object.keys(start).length > 1) {
      return Promise.reject(new TypeError('natsgate: give at most one of deliver, start_seq and start_time'));
    }
    if (isJS && opts.queue) return Promise.reject(new TypeError('natsgate: a JetStream subscription takes no queue group'));
    const sid = `s${++this.#sidSeq}`;
    /** @type {Sub} */
    const sub = { sid, subject, queue: opts.queue, handler, waiter: null };
    if (isJS) sub.js = { start, lastSeq: 0, onGap: opts.onGap, failures: 0, retry: null, now: null };
    return this.#register(this.#subs, sub, () => sub.js && sub.js.retry, () => this.#sendSub(sub), { subject });
  }

  /**
   * Publishes, and resolves once the NATS server has the message (the
   * gateway's ok); rejects with a NatsgateError carrying .status (400, 403,
   * 413, 503 …) if it was refused or the connection dropped first, 504
   * without an answer within options.timeout.
   * data: a string is sent as is; a Uint8Array/ArrayBuffer as data_base64;
   * anything else is JSON.stringify-ed; undefined is an empty payload.
   * @param {string} subject
   * @param {any} [data]
   * @param {PublishOptions} [opts]
   * @returns {Promise<void>}
   */
  publish(subject, data, opts = {}) {
    /** @type {Record<string, any>} */
    const f = { op: 'pub', subject };
    setPayload(f, data);
    const headers = normHeaders(opts.headers);
    if (headers) f.headers = headers;
    if (opts.reply) f.reply = opts.reply;
    return this.#call('pub', f);
  }

  /**
   * Publishes a value as JSON (a string, too, is JSON-encoded).
   * @param {string} subject
   * @param {any} value
   * @param {PublishOptions} [opts]
   */
  publishJSON(subject, value, opts = {}) {
    return this.publish(subject, JSON.stringify(value), opts);
  }

  /**
   * Sends a request and resolves to the reply message; rejects with
   * .status 503 (no responders), 504 (timeout, or no answer at all within
   * its timeout, default 60 s, plus options.timeout), 403 (forbidden) …
   * @param {string} subject
   * @param {any} [data] as for publish
   * @param {RequestOptions} [opts]
   * @returns {Promise<Message>}
   */
  request(subject, data, opts = {}) {
    /** @type {Record<string, any>} */
    const f = { op: 'req', subject };
    setPayload(f, data);
    const headers = normHeaders(opts.headers);
    if (headers) f.headers = headers;
    if (opts.timeout !== undefined) f.timeout_ms = Math.round(opts.timeout);
    const guard = this.options.timeout > 0 ? (opts.timeout ?? 60000) + this.options.timeout : 0;
    return this.#call('req', f, guard);
  }

  /**
   * Round trip to the gateway; rejects with 504 without a pong within
   * options.timeout, with 503 if not connected or the connection drops.
   * @returns {Promise<void>}
   */
  ping() {
    return this.#ping(this.options.timeout);
  }

  /** @param {number} ms the deadline (0: none) */
  #ping(ms) {
    if (this.state !== 'connected') return Promise.reject(new NatsgateError(`not connected (${this.state})`, { status: 503 }));
    return new Promise((resolve, reject) => {
      /** @type {PendingPing} */
      const p = { resolve, reject, settled: false };
      if (ms > 0) {
        p.timer = setTimeout(() => {
          p.settled = true; // stays queued: its pong, if late, must not answer a later ping
          reject(new NatsgateError(`natsgate: no pong from the gateway within ${ms} ms`, { status: 504 }));
        }, ms);
      }
      this.#pings.push(p);
      try {
        this.#send({ op: 'ping' });
      } catch (e) {
        this.#pings.splice(this.#pings.indexOf(p), 1);
        if (p.timer) clearTimeout(p.timer);
        reject(e);
      }
    });
  }

  /**
   * A gap notice: {"op":"status","sid":…,"gap":{first_seq, requested_seq|requested_time}}.
   * @param {any} f
   */
  #onGap(f) {
    const sub = this.#subs.get(f.sid);
    if (!sub) return;
    /** @type {Gap} */
    const gap = { sid: sub.sid, subject: sub.subject, ...f.gap };
    // Nothing below first_seq exists any more: a resume before the next
    // message starts there and is not told the same gap again.
    if (sub.js && typeof gap.first_seq === 'number') sub.js.lastSeq = Math.max(sub.js.lastSeq, gap.first_seq - 1);
    if (sub.js && sub.js.onGap) {
      try {
        sub.js.onGap(gap);
      } catch (error) {
        this.#emit('error', { error, sid: sub.sid, subject: sub.subject });
      }
    }
    this.#emit('gap', gap);
  }

  /**
   * The gateway ended a JetStream subscription's feed on its own (an error
   * frame with its sid and no id: its consumer failed) while the session
   * goes on. It is reported with an 'error' event; then, unless refused
   * for good (a 4xx other than 429: the subscription is dropped), it is
   * made again from one past the last seq delivered (#retryJS).
   * @param {Sub} sub
   * @param {NatsgateError} err
   */
  #feedEnded(sub, err) {
    this.#emit('error', { error: err, sid: sub.sid, subject: sub.subject });
    if (!retryable(err)) {
      this.#subs.delete(sub.sid);
      if (sub.js && sub.js.retry) clearTimeout(sub.js.retry);
      this.#releaseSid(sub.sid);
      return;
    }
    this.#retryJS(sub, err);
  }

  /**
   * Makes a JetStream subscription again in this session, after a delay
   * growing with each failure in a row (reconnectDelay doubled, up to
   * maxReconnectDelay, with jitter), or at once when the token's NATS
   * connection comes back ("reconnected"). Its sid is released with an
   * unsub first, as the gateway may still hold it. A reconnect meanwhile
   * makes it again by itself.
   * @param {Sub} sub
   * @param {NatsgateError} err
   */
  #retryJS(sub, err) {
    const js = /** @type {JSState} */ (sub.js);
    if (js.retry) return;
    js.failures++;
    let delay = Math.min(this.options.maxReconnectDelay, this.options.reconnectDelay * 2 ** (js.failures - 1));
    delay = delay / 2 + Math.random() * delay / 2;
    const ws = this.#ws;
    const run = () => {
      if (js.retry) clearTimeout(js.retry);
      js.retry = null;
      js.now = null;
      if (this.#subs.get(sub.sid) !== sub || ws !== this.#ws || this.state !== 'connected') return;
      try {
        this.#releaseSid(sub.sid);
        this.#sendSub(sub);
      } catch (error) {
        this.#emit('error', { error, sid: sub.sid, subject: sub.subject });
      }
    };
    js.retry = setTimeout(run, delay);
    js.now = run;
    const after = resumeAfter(js);
    this.#emit('resuming', { sid: sub.sid, subject: sub.subject, delay, error: err, start_seq: after === undefined ? undefined : after + 1 });
  }

  /**
   * Sends an unsub whose answer nobody waits for (a subscription's or a
   * watch's sid).
   * @param {string} sid
   */
  #releaseSid(sid) {
    if (this.state !== 'connected') return;
    const id = this.#nextId();
    this.#pending.set(id, quiet('unsub'));
    try {
      this.#send({ op: 'unsub', sid, id });
    } catch {
      this.#pending.delete(id);
    }
  }

  /**
   * Stores a message in the stream that holds the subject, over HTTP
   * (POST /v1/js/publish/{subject} with the Authorization header, so it
   * works while the session reconnects), and resolves to the stream's
   * acknowledgement {stream, seq, duplicate} once the stream has it.
   * With msgId (the Idempotency-Key, Nats-Msg-Id), a repeat within the
   * stream's duplicate window (2 min by default) stores nothing new and
   * resolves with duplicate: true: retrying after a failure with the same
   * msgId stores a message at most once.
   * Rejects with a NatsgateError carrying .status and .kind: 404 no
   * stream holds the subject, 409 a Nats-Expected-* header not met, 403,
   * 413, 503 (gateway or NATS unreachable), 504 no acknowledgement in
   * time (it may have been stored: retry with the same msgId) …
   * data as for publish.
   * @param {string} subject
   * @param {any} [data]
   * @param {JSPublishOptions} [opts]
   * @returns {Promise<PubAck>}
   */
  async jsPublish(subject, data, opts = {}) {
    if (this.state === 'closed') throw new NatsgateError('client is closed', { status: 503 });
    if (!headerSafe(this.#token)) {
      throw new NatsgateError('natsgate: the token has characters an Authorization header cannot carry (control characters, or beyond U+00FF)', { status: 401 });
    }
    const u = new URL(this.url);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    u.pathname = `${u.pathname.replace(/\/v1\/ws\/?$/, '').replace(/\/+$/, '')}/v1/js/publish/${encodeURIComponent(subject)}`;
    u.search = '';
    const headers = new Headers({ Authorization: `Bearer ${this.#token}`, 'Content-Type': 'application/octet-stream' });
    const nh = normHeaders(opts.headers);
    if (nh) {
      for (const [k, vs] of Object.entries(nh)) for (const v of vs) headers.append(`NatsH-${k}`, v);
    }
    if (opts.msgId !== undefined) headers.set('Idempotency-Key', String(opts.msgId));
    const ms = opts.timeout ?? this.options.timeout;
    const late = () => new NatsgateError(`natsgate: no answer from the gateway within ${ms} ms to storing on ${subject}`, { status: 504 });
    const ac = new AbortController();
    const timer = ms > 0 ? setTimeout(() => ac.abort(), ms) : undefined;
    try {
      const resp = await fetch(u.href, { method: 'POST', headers, body: bodyOf(data), signal: ac.signal, cache: 'no-store', credentials: 'omit' })
        .catch((e) => { throw ac.signal.aborted ? late() : new NatsgateError(`natsgate: cannot reach the gateway: ${e}`, { status: 503 }); });
      if (!resp.ok) throw await httpError(resp);
      const ack = await resp.json();
      return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate === true };
    } catch (e) {
      if (ac.signal.aborted && !(e instanceof NatsgateError)) throw late();
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** The sids and subjects of the active subscriptions. */
  get subscriptions() {
    return [...this.#subs.values()].map((s) => ({
      sid: s.sid, subject: s.subject, queue: s.queue,
      jetstream: s.js ? { ...s.js.start, last_seq: s.js.lastSeq } : undefined,
    }));
  }

  /** Closes the session for good (no reconnect). */
  close() {
    if (this.state === 'closed') return;
    this.#userClosed = true;
    const ws = this.#ws;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      ws.close(1000, 'client closed');
      // Don't wait for the close handshake: end now.
      this.#ws = null;
      if (this.state === 'connected') this.#emit('disconnect', { code: 1000, reason: 'client closed', willReconnect: false });
    }
    this.#finish(1000, 'client closed', new NatsgateError('client closed', { code: 1000 }));
  }

  // ---- Key-value buckets: entries over HTTP, watches over the session ----

  /** @type {Map<string, Watch>} the watches by sid, made again after every reconnect */
  #watches = new Map();

  /**
   * A key-value bucket (README, "Key-value buckets"). Entries go over
   * HTTP (fetch with the Authorization header, to the gateway this client
   * connects to, under its prefix), so they work while the session
   * reconnects; watches go over the session and resume by revision.
   * @param {string} bucket
   * @returns {KV}
   */
  kv(bucket) {
    if (typeof bucket !== 'string' || bucket === '') throw new TypeError('natsgate: kv needs a bucket name');
    const b = encodeURIComponent(bucket);
    const entry = (/** @type {string} */ key) => `/v1/kv/${b}/${encodeURIComponent(key)}`;
    const revisionOf = async (/** @type {Response} */ resp) => Number(await resp.text());
    return {
      bucket,
      get: async (key) => {
        try {
          const resp = await this.#kvFetch('GET', entry(key), { headers: { Accept: 'application/json' } });
          return toEntry(await resp.json());
        } catch (e) {
          if (/** @type {NatsgateError} */ (e).kind === 'no-key') return null;
          throw e;
        }
      },
      put: async (key, value, opts = {}) => {
        /** @type {Record<string, string>} */
        const headers = { 'Content-Type': 'application/octet-stream' };
        if (opts.revision !== undefined && opts.revision !== null) {
          // Only over that revision; 0: only where the key has no value.
          if (opts.revision === 0) headers['If-None-Match'] = '*';
          else headers['If-Match'] = `"${opts.revision}"`;
        }
        return revisionOf(await this.#kvFetch('PUT', entry(key), { headers, body: bodyOf(value) }));
      },
      create: async (key, value) => revisionOf(await this.#kvFetch('POST', entry(key), {
        headers: { 'Content-Type': 'application/octet-stream' }, body: bodyOf(value),
      })),
      delete: async (key, opts = {}) => {
        /** @type {Record<string, string>} */
        const headers = {};
        if (opts.revision) headers['If-Match'] = `"${opts.revision}"`;
        await this.#kvFetch('DELETE', entry(key) + (opts.purge ? '?purge=true' : ''), { headers });
      },
      keys: async (filter) => {
        const q = new URLSearchParams();
        for (const f of filter === undefined ? [] : [filter].flat()) q.append('filter', f);
        const qs = q.toString();
        const resp = await this.#kvFetch('GET', `/v1/kvm/buckets/${b}/keys${qs ? `?${qs}` : ''}`, {});
        return /** @type {string[]} */ (await resp.json());
      },
      watch: (onEntry, opts = {}) => this.#watch(bucket, onEntry, opts),
    };
  }

  /**
   * One HTTP call to the gateway with the token, within options.timeout;
   * resolves to the response when it is a success, else rejects with a
   * NatsgateError carrying .status and .kind (412 precondition-failed,
   * 404 no-bucket …), 503 when the gateway cannot be reached, 504 in time.
   * @param {string} method
   * @param {string} path under the gateway's base (its prefix included)
   * @param {{headers?: Record<string, string>, body?: string|Uint8Array}} init
   * @returns {Promise<Response>}
   */
  async #kvFetch(method, path, init) {
    if (this.state === 'closed') throw new NatsgateError('client is closed', { status: 503 });
    if (!headerSafe(this.#token)) {
      throw new NatsgateError('natsgate: the token has characters an Authorization header cannot carry (control characters, or beyond U+00FF)', { status: 401 });
    }
    const u = new URL(this.url);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    const [p, q] = path.split('?');
    u.pathname = `${u.pathname.replace(/\/v1\/ws\/?$/, '').replace(/\/+$/, '')}${p}`;
    u.search = q ? `?${q}` : '';
    const ms = this.options.timeout;
    const late = () => new NatsgateError(`natsgate: no answer from the gateway within ${ms} ms to ${method} ${p}`, { status: 504 });
    const ac = new AbortController();
    const timer = ms > 0 ? setTimeout(() => ac.abort(), ms) : undefined;
    try {
      const resp = await fetch(u.href, {
        method, body: init.body, signal: ac.signal, cache: 'no-store', credentials: 'omit',
        headers: { ...init.headers, Authorization: `Bearer ${this.#token}` },
      }).catch((e) => { throw ac.signal.aborted ? late() : new NatsgateError(`natsgate: cannot reach the gateway: ${e}`, { status: 503 }); });
      if (!resp.ok) throw await httpError(resp);
      return resp;
    } catch (e) {
      if (ac.signal.aborted && !(e instanceof NatsgateError)) throw late();
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /**
   * Registers a subscription or watch (`entry`, with its `sid` and
   * `waiter`) in `map`, sends it now if connected (`send`; later
   * connections resend what the map holds), and resolves, once the
   * gateway has it, to the function that ends it: it forgets the entry,
   * clears its retry timer (`retry()` returns it) and unsubscribes. `props`
   * are set on that function.
   * @template {{sid: string, waiter: any}} T
   * @param {Map<string, T>} map
   * @param {T} entry
   * @param {() => any} retry
   * @param {() => void} send
   * @param {Object<string, any>} props
   * @returns {Promise<any>}
   */
  #register(map, entry, retry, send, props) {
    const sid = entry.sid;
    const stop = Object.assign(async () => {
      if (map.get(sid) !== entry) return;
      map.delete(sid);
      const timer = retry();
      if (timer) clearTimeout(timer);
      if (this.state !== 'connected') return;
      try {
        await this.#call('unsub', { op: 'unsub', sid });
      } catch (e) {
        if (/** @type {NatsgateError} */ (e).code === undefined) throw e; // a close ended the session, and this with it
      }
    }, { sid }, props);
    return new Promise((resolve, reject) => {
      entry.waiter = { resolve: () => resolve(stop), reject };
      map.set(sid, entry);
      if (this.state === 'connected') {
        try {
          send();
        } catch (e) {
          map.delete(sid);
          reject(e);
        }
      }
    });
  }

  /**
   * Starts a watch; resolves, once the gateway confirmed it, to a function
   * that stops it. After a reconnect (or a watch the gateway ended on its
   * own) it is made again from one past the last revision delivered, and
   * onEntry never sees a revision at or below one it saw.
   * @param {string} bucket
   * @param {(e: KVEntry) => void} onEntry
   * @param {WatchOptions} opts
   * @returns {Promise<StopWatch>}
   */
  #watch(bucket, onEntry, opts) {
    if (this.state === 'closed') return Promise.reject(new NatsgateError('client is closed', { status: 503 }));
    if (typeof onEntry !== 'function') return Promise.reject(new TypeError('natsgate: watch needs an onEntry function'));
    const sid = `w${++this.#sidSeq}`;
    /** @type {Watch} */
    const w = {
      sid, bucket, filter: opts.filter, include: opts.include, ignoreDeletes: !!opts.ignoreDeletes,
      onEntry, onCurrent: opts.onCurrent, lastRevision: 0, waiter: null, retry: null, failures: 0,
    };
    return this.#register(this.#watches, w, () => w.retry, () => this.#sendWatch(w), {});
  }

  /**
   * Sends a watch frame: resumeRevision one past the last revision
   * delivered, once there is one. Without the gateway's answer within
   * options.timeout the watch is given up (504), as a subscription is.
   * @param {Watch} w
   */
  #sendWatch(w) {
    const id = this.#nextId();
    /** @type {Record<string, any>} */
    const f = { op: 'watch', sid: w.sid, bucket: w.bucket, id };
    if (w.filter) f.filter = w.filter;
    if (w.ignoreDeletes) f.ignoreDeletes = true;
    if (w.lastRevision > 0) f.resumeRevision = w.lastRevision + 1;
    else if (w.include) f.include = w.include;
    this.#send(f);
    const ms = this.options.timeout;
    const timer = ms > 0 ? setTimeout(() => {
      const p = this.#pending.get(id);
      if (!p) return;
      this.#pending.set(id, quiet('sub'));
      this.#releaseSid(w.sid);
      p.reject(new NatsgateError(`natsgate: no answer from the gateway within ${ms} ms to watching ${w.bucket}`, { status: 504 }));
    }, ms) : undefined;
    this.#pending.set(id, {
      kind: 'sub', // kept across a close: the watch is made again on reconnect
      timer,
      resolve: () => {
        if (w.waiter) w.waiter.resolve();
        w.waiter = null;
      },
      reject: (err) => {
        if (!w.waiter && this.#watches.get(w.sid) === w && watchRetryable(err)) {
          this.#retryWatch(w);
          return;
        }
        if (this.#watches.get(w.sid) === w) this.#watches.delete(w.sid);
        if (w.waiter) w.waiter.reject(err);
        else this.#emit('error', { error: err, sid: w.sid, bucket: w.bucket });
        w.waiter = null;
      },
    });
  }

  /**
   * Handles a frame of a watch: its entries, its caught-up notice, and an
   * error frame without id (the gateway ended the watch on its own, which
   * is then made again). Returns false for frames it leaves to #onFrame.
   * @param {any} f
   */
  #onWatchFrame(f) {
    const w = /** @type {Watch} */ (this.#watches.get(f.sid));
    switch (f.op) {
      case 'kv':
        if (typeof f.revision !== 'number' || f.revision <= w.lastRevision) return true; // seen: a resume overlapped
        w.lastRevision = f.revision;
        w.failures = 0;
        try {
          w.onEntry(toEntry(f));
        } catch (error) {
          this.#emit('error', { error, sid: w.sid, bucket: w.bucket });
        }
        return true;
      case 'status':
        if (f.kv !== 'current') return false;
        try {
          w.onCurrent?.();
        } catch (error) {
          this.#emit('error', { error, sid: w.sid, bucket: w.bucket });
        }
        return true;
      case 'error': {
        if (f.id !== undefined || w.waiter) return false;
        const err = new NatsgateError(f.message || 'error', { status: f.status });
        this.#emit('error', { error: err, sid: w.sid, bucket: w.bucket });
        if (watchRetryable(err)) this.#retryWatch(w);
        else this.#watches.delete(w.sid);
        return true;
      }
    }
    return false;
  }

  /**
   * Makes a watch again in this session, after a delay growing with each
   * failure in a row (reconnectDelay doubled, up to maxReconnectDelay,
   * with jitter); its sid is released first, as the gateway may still
   * hold it. A reconnect meanwhile makes it again by itself.
   * @param {Watch} w
   */
  #retryWatch(w) {
    if (w.retry) return;
    w.failures++;
    let delay = Math.min(this.options.maxReconnectDelay, this.options.reconnectDelay * 2 ** (w.failures - 1));
    delay = delay / 2 + Math.random() * delay / 2;
    const ws = this.#ws;
    w.retry = setTimeout(() => {
      w.retry = null;
      if (this.#watches.get(w.sid) !== w || ws !== this.#ws || this.state !== 'connected') return;
      try {
        this.#releaseSid(w.sid);
        this.#sendWatch(w);
      } catch (error) {
        this.#emit('error', { error, sid: w.sid, bucket: w.bucket });
      }
    }, delay);
  }

  /** Makes every watch again in a new session. */
  #resendWatches() {
    for (const w of this.#watches.values()) {
      if (w.retry) clearTimeout(w.retry);
      w.retry = null;
      try {
        this.#sendWatch(w);
      } catch (error) {
        this.#emit('error', { error, sid: w.sid, bucket: w.bucket });
      }
    }
  }

  /**
   * Ends every watch with the client.
   * @param {Error} err
   */
  #endWatches(err) {
    for (const w of this.#watches.values()) {
      if (w.retry) clearTimeout(w.retry);
      if (w.waiter) w.waiter.reject(err);
    }
    this.#watches.clear();
  }
}

/**
 * The status of the README's error table that a close code means: 4xxx →
 * xxx (4401 → 401), 1009 → 413, 1008 → 429, 1011 → 500, and 503 for the
 * gateway being away or unreachable (1001, 1006, 1012, 1013).
 * @param {number} code
 */
function closeStatus(code) {
  if (code >= 4400 && code < 4500) return code - 4000;
  if (code === 1009) return 413;
  if (code === 1008) return 429;
  if (code === 1011) return 500;
  if (code === 1001 || code === 1006 || code === 1012 || code === 1013) return 503;
  return undefined;
}

/**
 * Whether a refusal may pass: no status (the connection), 429, 5xx.
 * @param {any} err
 */
function retryable(err) {
  const st = err && err.status;
  return st === undefined || st === 429 || st >= 500;
}

/** @param {number} code @param {string} reason */
function closeMessage(code, reason) {
  const what = {
    1000: 'closed',
    1001: 'gateway shutting down',
    1006: 'connection lost or refused',
    1008: 'slow consumer',
    1009: 'frame over the size limit',
    1013: 'try again later',
    4400: 'malformed frame or protocol misuse',
    4401: 'token rejected',
    4408: 'no connect frame in time',
    4429: 'too many failed authentications',
  }[code] || 'connection closed';
  return `natsgate: ${what} (${code})${reason ? `: ${reason}` : ''}`;
}

/**
 * Opens a session; resolves once the gateway answered "connected", or
 * rejects (a NatsgateError with .code, the close code, and .status: 401
 * for a rejected token …) if the first attempt fails.
 * @param {ConnectOptions} options
 * @returns {Promise<NatsgateClient>}
 */
export function connect(options) {
  try {
    return new NatsgateClient(options).start();
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * @typedef {object} StreamOptions
 * @property {string} token
 * @property {string} subject may use * and a final >
 * @property {string} [url] the gateway's base URL; default this page's origin
 * @property {string} [queue]
 * @property {(m: Message) => void} onMessage
 * @property {() => void} [onOpen] the gateway confirmed the subscription
 * @property {(status: any) => void} [onStatus] an "event: status" ({"op":"status",…})
 * @property {(comment: string) => void} [onComment] any other comment (e.g. "slow consumer: 3 dropped")
 * @property {AbortSignal} [signal] aborting ends the stream (the promise resolves)
 */

/**
 * Streams GET /v1/subscribe/{subject} as Server-Sent Events over fetch(),
 * which, unlike EventSource, can send the Authorization header. Resolves
 * when the stream ends (or is aborted). Rejects with a NatsgateError
 * carrying .status if the gateway refuses it (its status), the gateway is
 * unreachable or the stream breaks (503), or the token cannot be sent in a
 * header at all (401: control characters or characters beyond U+00FF);
 * rejects with the callback's own error, having ended the stream, if a
 * callback throws.
 * @param {StreamOptions} opts
 * @returns {Promise<void>}
 */
export async function subscribeStream(opts) {
  checkToken(opts.token);
  if (!headerSafe(opts.token)) {
    // fetch() would throw a TypeError, indistinguishable from a network error.
    throw new NatsgateError('natsgate: the token has characters an Authorization header cannot carry (control characters, or beyond U+00FF)', { status: 401 });
  }
  const u = resolveURL(opts.url, '/', false);
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/subscribe/${encodeURIComponent(opts.subject)}`;
  if (opts.queue) u.searchParams.set('queue', opts.queue);
  const signal = opts.signal;
  if (signal && signal.aborted) return;
  // Our own controller ends the request whichever way the stream ends
  // (a throwing callback included): the gateway then drops the
  // subscription at once.
  const ac = new AbortController();
  const onAbort = () => ac.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await readStream(u.href, opts, ac.signal);
  } catch (e) {
    if (signal && signal.aborted) return;
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    ac.abort();
  }
}

/**
 * @param {string} href
 * @param {StreamOptions} opts
 * @param {AbortSignal} signal
 */
async function readStream(href, opts, signal) {
  let resp;
  try {
    resp = await fetch(href, {
      headers: { Authorization: `Bearer ${opts.token}`, Accept: 'text/event-stream' },
      signal,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new NatsgateError(`natsgate: cannot reach the gateway: ${e}`, { status: 503 });
  }
  if (!resp.ok || !resp.body) throw await httpError(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = '';
  /** @type {string[]} */
  let data = [];
  const dispatch = () => {
    if (data.length) {
      const payload = JSON.parse(data.join('\n'));
      if (event === 'status') opts.onStatus?.(payload);
      else if (event === '' || event === 'message') opts.onMessage(toMessage(payload));
    }
    event = '';
    data = [];
  };
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new NatsgateError(`natsgate: the stream broke: ${e}`, { status: 503 });
      }
      const { value, done } = chunk;
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
        if (buf[i] === '\r' && i === buf.length - 1) break; // a \r\n may be split across chunks
        const line = buf.slice(0, i);
        buf = buf.slice(buf[i] === '\r' && buf[i + 1] === '\n' ? i + 2 : i + 1);
        if (line === '') {
          dispatch();
        } else if (line[0] === ':') {
          const c = line.slice(1).trim();
          if (c === 'subscribed') opts.onOpen?.();
          else if (c !== 'keep-alive') opts.onComment?.(c);
        } else {
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'data') data.push(val);
          else if (field === 'event') event = val;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => { /* already ended */ });
  }
}

// ---- Key-value buckets: types and entries ----

/**
 * @typedef {object} KVEntry
 * A key's entry at one revision (README, "Key-value buckets").
 * @property {string} bucket
 * @property {string} key
 * @property {number} revision
 * @property {string} created when it was stored (RFC 3339)
 * @property {number} delta in a watch, how many entries it had yet to deliver after this one; 0 for get
 * @property {'PUT'|'DEL'|'PURGE'} operation DEL and PURGE (watches only) carry no value
 * @property {string|undefined} data the value when it is valid UTF-8
 * @property {Uint8Array} bytes the value's bytes, from data or data_base64 (empty for DEL/PURGE)
 * @property {() => any} json parses the value as JSON
 */

/**
 * @typedef {object} WatchOptions
 * @property {string} [filter] keys to watch (`*` a token, a final `>` the rest); default every key
 * @property {'lastValue'|'allHistory'|'updatesOnly'} [include] what comes first: each key's latest
 *   entry (default), every entry kept, or nothing old
 * @property {boolean} [ignoreDeletes] leave out DEL and PURGE entries
 * @property {() => void} [onCurrent] called when the watch has delivered the values current when it
 *   started (again after each resume, once caught up)
 */

/**
 * @typedef {(() => Promise<void>) & {sid: string}} StopWatch
 * Ends a watch (resolves on the gateway's ok); carries its sid.
 */

/**
 * @typedef {object} KV
 * @property {string} bucket
 * @property {(key: string) => Promise<KVEntry|null>} get the latest value, or null (no value)
 * @property {(key: string, value: any, opts?: {revision?: number}) => Promise<number>} put stores and
 *   resolves to the new revision; with revision, only over that one (0: only where the key has no
 *   value), else rejects with status 412
 * @property {(key: string, value: any) => Promise<number>} create stores only where the key has no
 *   value, else rejects with status 409
 * @property {(key: string, opts?: {revision?: number, purge?: boolean}) => Promise<void>} delete
 *   deletes (with purge: its history too); with revision, only over that one (else 412)
 * @property {(filter?: string|string[]) => Promise<string[]>} keys the keys with a value, sorted
 * @property {(onEntry: (e: KVEntry) => void, opts?: WatchOptions) => Promise<StopWatch>} watch
 */

/**
 * @typedef {object} Watch
 * @property {string} sid
 * @property {string} bucket
 * @property {string|undefined} filter
 * @property {string|undefined} include
 * @property {boolean} ignoreDeletes
 * @property {(e: KVEntry) => void} onEntry
 * @property {(() => void)|undefined} onCurrent
 * @property {number} lastRevision the last revision delivered to onEntry (0: none yet)
 * @property {{resolve: () => void, reject: (e: Error) => void} | null} waiter
 * @property {ReturnType<typeof setTimeout>|null} retry a scheduled re-watch in the same session
 * @property {number} failures watches ended by the gateway in a row (for the retry backoff)
 */

/**
 * Builds an entry from the wire's entry object.
 * @param {any} f
 * @returns {KVEntry}
 */
function toEntry(f) {
  /** @type {string|undefined} */
  const data = typeof f.data === 'string' ? f.data : undefined;
  const bytes = data !== undefined ? te.encode(data)
    : typeof f.data_base64 === 'string' ? fromBase64(f.data_base64) : new Uint8Array(0);
  return {
    bucket: f.bucket,
    key: f.key,
    revision: f.revision,
    created: f.created,
    delta: f.delta,
    operation: f.operation,
    data,
    bytes,
    json() { return JSON.parse(data !== undefined ? data : td.decode(bytes)); },
  };
}

/**
 * Whether a refused watch is worth making again later: NATS away (503),
 * too busy (429), no answer (504) or an unknown failure.
 * @param {any} err
 */
function watchRetryable(err) {
  const st = err && err.status;
  return st === undefined || st === 429 || st >= 500;
}
