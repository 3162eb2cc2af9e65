// Types for client.js, the natsgate browser client (served at /client.js).

/** NATS headers to send: a name to one value or several. */
export type HeadersInit = Record<string, string | string[]> | Map<string, string | string[]> | Headers;

/** A message as the gateway delivers it (README, "Message object"). */
export interface Message {
  subject: string;
  reply: string | undefined;
  headers: Record<string, string[]>;
  /** The payload when it is valid UTF-8; undefined when it came as data_base64. */
  data: string | undefined;
  /** The payload's bytes, from data or data_base64. */
  bytes: Uint8Array;
  /** Parses the payload as JSON. */
  json(): any;
  /** JetStream subscriptions: the stream that stored the message. */
  stream?: string;
  /** JetStream subscriptions: its stream sequence (what a resume starts one past). */
  seq?: number;
  /** JetStream subscriptions: when the stream stored it, RFC 3339 with nanoseconds. */
  time?: string;
}

/** Ends a subscription (resolves on the gateway's ok); carries its sid and subject. */
export type Unsubscribe = (() => Promise<void>) & { readonly sid: string; readonly subject: string };

export interface ConnectOptions {
  /**
   * The bearer token, sent only in connect frames; never in a URL, never stored. Or a function resolving to a fresh
   * one (an OIDC access token), called at connect, at each reconnect and on the gateway's expiring notice, when the
   * client moves the open session to it (refresh()), subscriptions kept.
   */
  token: string | (() => string | Promise<string>);
  /** WebSocket URL or the gateway's base; default ws(s)://<page host>/v1/ws. http(s) URLs become ws(s); a path not ending in /v1/ws (a bare origin, or a mount prefix such as "/nats") gets /v1/ws appended. */
  url?: string;
  /** Reconnect after a reconnectable close (RECONNECT_CODES). Default true. */
  reconnect?: boolean;
  /** First backoff delay in ms (doubled per attempt, with jitter). Default 500. */
  reconnectDelay?: number;
  /** Backoff cap in ms. Default 30000. */
  maxReconnectDelay?: number;
  /** Least wait in ms after close code 4429. Default 30000. */
  authLimitedDelay?: number;
  /** Attempts per outage before giving up. Default Infinity. */
  maxReconnectAttempts?: number;
  /**
   * How long in ms a session must stay connected for the next reconnect to start the backoff
   * from reconnectDelay again; sessions that end sooner (a gateway closing right after
   * "connected", 1008/1013) keep it growing and count as the same outage. Default 10000.
   */
  backoffResetAfter?: number;
  /** Interval in ms of liveness pings while connected; 0 disables them. Default 20000. */
  pingInterval?: number;
  /**
   * How long in ms a liveness ping waits for its pong; past it the link is taken for dead,
   * the socket dropped and handled as close code 1006 (disconnect, then reconnect). Default 10000.
   */
  pingTimeout?: number;
  /** How long in ms an attempt may take from opening the socket to "connected"; past it, handled as 1006. Default 10000. */
  connectTimeout?: number;
  /**
   * How long in ms publish, subscribe, unsubscribe and ping wait for the gateway's answer
   * before rejecting with status 504; request waits its own timeout (or 60 s) plus this.
   * 0 waits for ever. Default 10000.
   */
  timeout?: number;
}

export interface PublishOptions {
  headers?: HeadersInit;
  reply?: string;
}

export interface RequestOptions {
  /** Timeout in ms, sent as timeout_ms. */
  timeout?: number;
  headers?: HeadersInit;
}

export interface SubscribeOptions {
  /** Queue group; core subscriptions only. */
  queue?: string;
  /**
   * Makes it a JetStream subscription of the stream holding the subject, starting at the stream's first
   * message (all), the subject's last (last), the next one stored (new) or the last of each subject.
   * Give at most one of deliver, start_seq and start_time.
   */
  deliver?: 'all' | 'last' | 'new' | 'last_per_subject';
  /** A JetStream subscription from this stream sequence (at least 1). */
  start_seq?: number;
  /** A JetStream subscription from the first message stored at or after this time (RFC 3339, or a Date). */
  start_time?: string | Date;
  /** Called when the stream no longer holds messages the subscription asked for; the 'gap' event fires too. */
  onGap?: (gap: Gap) => void;
}

/**
 * A JetStream subscription's start (the original, or one past the last seq delivered on a resume) is older than
 * its stream's first message: the messages in between expired or were purged; delivery goes on from first_seq.
 */
export interface Gap {
  sid: string;
  subject: string;
  first_seq: number;
  requested_seq?: number;
  requested_time?: string;
}

export interface JSPublishOptions {
  /** NATS headers, sent as NatsH-<Name>; several values of one name reach NATS as one, joined with ", ". */
  headers?: HeadersInit;
  /**
   * The Idempotency-Key (NATS message id, Nats-Msg-Id): a repeat within the stream's duplicate window (2 min by
   * default) stores nothing new and resolves with duplicate: true. Retry a failed publish with the same msgId.
   */
  msgId?: string;
  /** Timeout in ms for the whole HTTP exchange; past it, status 504. Default options.timeout. */
  timeout?: number;
}

/** A stream's acknowledgement of a stored message. */
export interface PubAck {
  stream: string;
  seq: number;
  /** True when msgId repeated one within the duplicate window: nothing new was stored; seq is the original's. */
  duplicate: boolean;
}

export type ClientState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** The gateway's {"op":"connected",…} frame. */
export interface ConnectedInfo {
  op: 'connected';
  /** The token's NATS connection state when the session opened. */
  nats: 'connected' | 'disconnected';
  max_payload: number;
  max_frame_bytes: number;
  max_subscriptions: number;
  queue_bytes: number;
}

export interface ClientEvents {
  connect: { info: ConnectedInfo; reconnected: boolean };
  disconnect: { code: number; reason: string; willReconnect: boolean };
  reconnecting: { attempt: number; delay: number; code: number };
  /** The gateway confirmed a subscription; resubscribed when it was made again after a reconnect. */
  subscribed: { sid: string; subject: string; resubscribed: boolean };
  closed: { code: number; reason: string; error: NatsgateError };
  error: { error: Error; sid?: string; subject?: string; bucket?: string };
  /** The NATS connection's changes, or auth 'expiring' (the token expires in expires_in_ms; a token function is called). */
  status: { op: 'status'; nats?: 'disconnected' | 'reconnected' | string; gateway?: string; auth?: 'expiring'; expires_in_ms?: number };
  /** The session moved to a fresh token (refresh()); a failed refresh is an 'error'. */
  refresh: { info: ConnectedInfo };
  slowconsumer: { dropped: number; message: string };
  /** A JetStream subscription's stream no longer holds messages it asked for. */
  gap: Gap;
  /**
   * A JetStream subscription whose feed the gateway ended (also reported as an 'error'), or whose re-subscription
   * it refused for the time being (503 …), is made again in delay ms (at once if NATS reconnects first) from
   * start_seq (undefined: from its original start, nothing having been delivered and the gateway not having said
   * which seq that start is).
   */
  resuming: { sid: string; subject: string; delay: number; error: NatsgateError; start_seq: number | undefined };
}

/** Close codes after which the client reconnects by itself. */
export const RECONNECT_CODES: readonly number[];
/** Close codes that end the client for good. */
export const FINAL_CODES: readonly number[];

/** An error from the gateway or the connection. */
export class NatsgateError extends Error {
  constructor(message: string, info?: { status?: number; code?: number; reason?: string; kind?: string });
  /**
   * HTTP-like status (400, 401, 403, 413, 429, 503, 504 …), when there is one. From a close:
   * 4xxx → xxx, 1009 → 413, 1008 → 429, 1011 → 500, 1001/1006/1012/1013 → 503 (an
   * unreachable gateway is 1006, 503); a call without an answer in time → 504.
   */
  status: number | undefined;
  /** WebSocket close code, when the error comes from a close. */
  code: number | undefined;
  reason: string | undefined;
  /** The problem kind of an HTTP error (conflict, no-stream, …): its type without urn:natsgate:problem:. */
  kind: string | undefined;
}

/** A WebSocket session with the gateway that reconnects by itself. Events are CustomEvents whose detail is ClientEvents[type]. */
export class NatsgateClient extends EventTarget {
  constructor(options: ConnectOptions);
  readonly url: string;
  state: ClientState;
  /** The gateway's connected frame, once connected. */
  info: ConnectedInfo | null;
  readonly options: Required<Omit<ConnectOptions, 'token' | 'url'>>;
  /** Opens the first session (connect() calls it). */
  start(): Promise<NatsgateClient>;
  /** Listens for an event; fn gets the detail. Returns a function removing the listener. */
  on<K extends keyof ClientEvents>(type: K, fn: (detail: ClientEvents[K]) => void): () => void;
  /**
   * Resolves, once the gateway confirmed it, to a function that unsubscribes. Re-made (same sid) after every reconnect.
   * Called while reconnecting, it is sent once connected. Rejects with 504 (and is given up) without the gateway's
   * answer within options.timeout of being sent.
   *
   * With deliver, start_seq or start_time it is a JetStream subscription: messages carry stream, seq and time, and
   * after any reconnect it is re-made from start_seq one past the last seq delivered (before any, from its original
   * start), so the handler sees every stored message once, in order (a seq at or below the last delivered is never
   * passed on). Rejects with 404 when no stream holds the subject, 400 for a bad start, TypeError for two starts
   * or a queue with one.
   */
  subscribe(subject: string, handler: (m: Message) => void, opts?: SubscribeOptions): Promise<Unsubscribe>;
  /**
   * Stores a message over HTTP (POST /v1/js/publish/{subject}, Authorization header) and resolves to the stream's
   * acknowledgement. Rejects with a NatsgateError (.status, .kind): 404 no stream holds the subject, 409 an
   * expectation (NatsH-Nats-Expected-* headers) not met, 403, 413, 401, 503 gateway or NATS unreachable, 504 no
   * answer in time (it may have been stored: retry with the same msgId).
   */
  jsPublish(subject: string, data?: unknown, opts?: JSPublishOptions): Promise<PubAck>;
  /**
   * Resolves once the NATS server has the message; rejects with a NatsgateError (.status) otherwise:
   * 504 without an answer within options.timeout, 503 if not connected or the connection drops.
   * data: string as is; Uint8Array/ArrayBuffer/views as data_base64; anything else JSON.stringify-ed; undefined = empty.
   */
  publish(subject: string, data?: unknown, opts?: PublishOptions): Promise<void>;
  /** Publishes JSON.stringify(value). */
  publishJSON(subject: string, value: unknown, opts?: PublishOptions): Promise<void>;
  /** Resolves to the reply; rejects with .status 503 (no responders), 504 (timeout; also without an answer within opts.timeout + options.timeout), 403 … */
  request(subject: string, data?: unknown, opts?: RequestOptions): Promise<Message>;
  /** Round trip to the gateway; rejects with 504 without a pong within options.timeout, 503 if not connected. */
  ping(): Promise<void>;
  /**
   * With token as a function: moves the open session to a fresh token from it, every subscription kept; resolves on
   * the gateway's new connected frame. Rejects (also an 'error' event, error.refresh true) with 401 (refused, or the
   * function failed), 403 (the fresh token may not keep a subscription), 429, 504; the session goes on with the old
   * token. Called by the client itself on the expiring notice.
   */
  refresh(): Promise<void>;
  /** The active subscriptions; jetstream: the original start and the last seq delivered. */
  readonly subscriptions: Array<{
    sid: string;
    subject: string;
    queue: string | undefined;
    jetstream:
      | { deliver?: string; start_seq?: number; start_time?: string; last_seq: number }
      | undefined;
  }>;
  /** Closes for good (no reconnect). */
  close(): void;

  /**
   * A key-value bucket: entries over HTTP (fetch with the Authorization header, to this client's gateway and
   * prefix; each call within options.timeout, else 504), watches over the session.
   */
  kv(bucket: string): KV;
}

/** Opens a session; resolves once connected, rejects (NatsgateError with .code and .status) if the first attempt fails. */
export function connect(options: ConnectOptions): Promise<NatsgateClient>;

/** Builds a Message from a wire message object. */
export function toMessage(wire: {
  subject: string;
  reply?: string;
  headers?: Record<string, string[]>;
  data?: string;
  data_base64?: string;
  stream?: string;
  seq?: number;
  time?: string;
}): Message;

export interface StreamOptions {
  token: string;
  subject: string;
  /** The gateway's base URL, with its mount prefix if any ("/nats"); default this page's origin. */
  url?: string;
  queue?: string;
  onMessage: (m: Message) => void;
  /** The gateway confirmed the subscription (": subscribed"). */
  onOpen?: () => void;
  /** An "event: status" ({"op":"status",…}). */
  onStatus?: (status: { op: 'status'; nats?: string; gateway?: string; auth?: 'expired' }) => void;
  /** Any other comment, e.g. "slow consumer: 3 dropped". */
  onComment?: (comment: string) => void;
  /** Aborting ends the stream; the promise then resolves. */
  signal?: AbortSignal;
}

/**
 * Streams GET /v1/subscribe/{subject} (SSE over fetch, with the Authorization header). Resolves when it ends or is
 * aborted. Rejects with a NatsgateError: the gateway's status if it refuses the stream; 503 if it cannot be reached
 * or the stream breaks; 401 if the token cannot be sent in a header (control characters, or beyond U+00FF). If a
 * callback throws, the stream is ended (the gateway drops the subscription) and the promise rejects with that error.
 */
export function subscribeStream(opts: StreamOptions): Promise<void>;

// ---- Key-value buckets ----

/** A key's entry at one revision (README, "Key-value buckets"). */
export interface KVEntry {
  bucket: string;
  key: string;
  revision: number;
  /** When it was stored (RFC 3339). */
  created: string;
  /** In a watch, how many entries it had yet to deliver after this one; 0 for get. */
  delta: number;
  /** DEL and PURGE (watches only) carry no value. */
  operation: 'PUT' | 'DEL' | 'PURGE';
  /** The value when it is valid UTF-8; undefined when it came as data_base64 (or for DEL/PURGE). */
  data: string | undefined;
  /** The value's bytes (empty for DEL/PURGE). */
  bytes: Uint8Array;
  /** Parses the value as JSON. */
  json(): any;
}

export interface WatchOptions {
  /** Keys to watch: `*` a token, a final `>` the rest. Default every key. */
  filter?: string;
  /** What comes first: each key's latest entry (lastValue, the default), every entry kept, or nothing old. */
  include?: 'lastValue' | 'allHistory' | 'updatesOnly';
  /** Leave out DEL and PURGE entries. */
  ignoreDeletes?: boolean;
  /** The watch has delivered the values current when it started (called again after each resume, once caught up). */
  onCurrent?: () => void;
}

/** Ends a watch (resolves on the gateway's ok); carries its sid. */
export type StopWatch = (() => Promise<void>) & { readonly sid: string };

/**
 * A bucket's handle. Failures reject with a NatsgateError carrying .status and .kind: 400 bad-key, 403,
 * 404 no-bucket, 409/412 (below), 503 gateway or NATS unreachable or no JetStream, 504 no answer in time.
 */
export interface KV {
  readonly bucket: string;
  /** The key's latest value, or null when it has none (never set, deleted, purged). */
  get(key: string): Promise<KVEntry | null>;
  /**
   * Stores value (as publish sends payloads: strings as is, bytes as bytes, anything else JSON) and resolves to the
   * new revision. With revision, only if that is still the key's latest (0: only if it has no value); else rejects
   * with status 412.
   */
  put(key: string, value: unknown, opts?: { revision?: number }): Promise<number>;
  /** Stores only where the key has no value; resolves to the revision, else rejects with status 409. */
  create(key: string, value: unknown): Promise<number>;
  /** Deletes the value (history kept; purge: removed too). With revision, only over that one, else 412. */
  delete(key: string, opts?: { revision?: number; purge?: boolean }): Promise<void>;
  /** The keys that have a value, sorted, matching filter (one or several) if given. */
  keys(filter?: string | string[]): Promise<string[]>;
  /**
   * Watches the bucket over the session; resolves, once the gateway confirmed it, to a function that stops it.
   * After a reconnect (or a watch the gateway ended on its own) it is made again from one past the last revision
   * delivered: onEntry sees each revision once, in order, and never one at or below one it saw.
   */
  watch(onEntry: (e: KVEntry) => void, opts?: WatchOptions): Promise<StopWatch>;
}
