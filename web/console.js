// The natsgate console (served at /): a page over client.js. Everything
// shown from the network goes in with textContent, never as HTML; the
// token stays in this page's memory (and the client's) only.
import { NatsgateClient } from './client.js';

const MAX_LOG = 500;
const MAX_ERRORS = 50;

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

/** @type {import('./client.js').NatsgateClient | null} */
let client = null;

/**
 * @param {string} tag
 * @param {string} [cls]
 * @param {string} [text]
 */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function now() {
  return new Date().toISOString().slice(11, 23);
}

/** @param {string} state */
function setState(state) {
  const s = $('state');
  s.textContent = state;
  s.dataset.state = state;
  const busy = state === 'connected' || state === 'connecting' || state === 'reconnecting';
  $('connect').disabled = busy;
  $('disconnect').disabled = !busy;
  $('token').disabled = busy;
  for (const id of ['sub-add', 'pub-send', 'req-send']) $(id).disabled = state !== 'connected';
  kvState(state);
}

/** @param {string} state */
function setNats(state) {
  const s = $('nats-state');
  s.textContent = state || '–';
  s.dataset.state = state;
}

/** @param {unknown} err @param {string} [context] */
function showError(err, context) {
  const e = /** @type {any} */ (err);
  let msg = e && e.message ? e.message : String(err);
  if (e && e.status && !msg.includes(String(e.status))) msg = `${e.status}: ${msg}`;
  const li = el('li', 'error');
  li.append(el('time', 'time', now()), el('span', 'context', context || 'error'), el('span', 'message', msg));
  const list = $('errors');
  list.prepend(li);
  while (list.children.length > MAX_ERRORS) list.lastElementChild.remove();
}

/**
 * Parses headers typed as JSON ({"A":"1","B":["2","3"]}) or as
 * "Name: value" lines (a repeated name gives several values).
 * @param {string} text
 * @returns {Record<string, string[]> | undefined}
 */
export function parseHeaders(text) {
  const t = text.trim();
  if (!t) return undefined;
  /** @type {Record<string, string[]>} */
  const out = {};
  if (t.startsWith('{')) {
    const obj = JSON.parse(t);
    for (const [k, v] of Object.entries(obj)) out[k] = Array.isArray(v) ? v.map(String) : [String(v)];
    return out;
  }
  for (const line of t.split(/\r?\n/)) {
    if (!line.trim()) continue;
    const i = line.indexOf(':');
    if (i <= 0) throw new Error(`header line ${JSON.stringify(line)} is not "Name: value"`);
    (out[line.slice(0, i).trim()] ||= []).push(line.slice(i + 1).trim());
  }
  return out;
}

/** @param {import('./client.js').Message} m */
function payloadText(m) {
  if (m.data !== undefined) return m.data;
  const hex = Array.from(m.bytes.subarray(0, 256), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return `[${m.bytes.length} bytes] ${hex}${m.bytes.length > 256 ? ' …' : ''}`;
}

/** @param {Record<string, string[]>} h */
function headersText(h) {
  return Object.entries(h).map(([k, vs]) => vs.map((v) => `${k}: ${v}`).join('\n')).join('\n');
}

function logCount() {
  $('log-count').textContent = String($('log').querySelectorAll('.entry.msg').length);
}

/** @param {HTMLElement} row */
function addLog(row) {
  const log = $('log');
  log.prepend(row);
  while (log.children.length > MAX_LOG) log.lastElementChild.remove();
  logCount();
}

/**
 * @param {import('./client.js').Message} m
 * @param {string} sub the subscription's subject
 */
function logMessage(m, sub) {
  const row = el('div', 'entry msg');
  row.dataset.subject = m.subject;
  row.dataset.sub = sub;
  const meta = el('div', 'meta');
  meta.append(el('time', 'time', now()));
  if (m.seq !== undefined) {
    // A JetStream subscription's message: its stream sequence, and the stream.
    row.dataset.seq = String(m.seq);
    meta.append(el('span', 'seq', `seq ${m.seq}`));
  }
  meta.append(el('span', 'subject', m.subject));
  if (m.stream) meta.append(el('span', 'stream', m.stream));
  if (m.reply) meta.append(el('span', 'reply', `reply: ${m.reply}`));
  row.append(meta);
  const h = headersText(m.headers);
  if (h) row.append(el('pre', 'headers', h));
  row.append(el('pre', m.data === undefined ? 'payload binary' : 'payload', payloadText(m)));
  addLog(row);
}

/** @param {string} text @param {string} kind */
function logNotice(text, kind) {
  const row = el('div', `entry notice ${kind}`);
  row.dataset.notice = text;
  row.append(el('time', 'time', now()), el('span', 'text', text));
  addLog(row);
}

function renderSubs() {
  const list = $('subs');
  list.replaceChildren();
  if (!client) return;
  for (const s of client.subscriptions) {
    const li = el('li', 'sub');
    li.dataset.sid = s.sid;
    li.dataset.subject = s.subject;
    const confirmed = unsubs.has(s.sid);
    li.dataset.confirmed = String(confirmed);
    li.append(el('span', 'subject', s.subject));
    if (s.queue) li.append(el('span', 'queue', `queue ${s.queue}`));
    if (s.jetstream) {
      li.dataset.jetstream = 'true';
      const j = s.jetstream;
      const from = j.start_seq !== undefined ? `from seq ${j.start_seq}` : j.start_time !== undefined ? `from ${j.start_time}` : `deliver ${j.deliver}`;
      li.append(el('span', 'jetstream', `JetStream, ${from}`));
    }
    if (!confirmed) li.append(el('span', 'pending', 'pending'));
    const b = /** @type {HTMLButtonElement} */ (el('button', 'unsub small', 'unsubscribe'));
    b.type = 'button';
    b.addEventListener('click', () => {
      const un = unsubs.get(s.sid);
      unsubs.delete(s.sid);
      if (un) un().catch((e) => showError(e, `unsubscribe ${s.subject}`)).finally(renderSubs);
    });
    li.append(b);
    list.append(li);
  }
}

/** @type {Map<string, () => Promise<void>>} */
const unsubs = new Map();

// The client is made, and becomes `client`, before its first attempt, so
// that Disconnect while connecting closes it: no session the page has
// forgotten connects behind its back. Every listener ignores a client that
// is no longer the page's.
function doConnect() {
  const token = $('token').value.trim();
  if (!token) {
    showError(new Error('enter a token'), 'connect');
    return;
  }
  if (client) client.close();
  let c;
  try {
    // The gateway is where this page is: at the origin's root, or under
    // the prefix a Go app mounted it at (the page's directory).
    c = new NatsgateClient({ token, url: new URL('.', location.href).href });
  } catch (e) {
    showError(e, 'connect');
    return;
  }
  client = c;
  let connected = false;
  /** @template T @param {(d: T) => void} fn @returns {(d: T) => void} */
  const mine = (fn) => (d) => { if (client === c) fn(d); };
  c.on('connect', mine(({ info, reconnected }) => {
    connected = true;
    setState('connected');
    // The connected frame says whether the token's NATS connection is up.
    setNats(info.nats || 'connected');
    $('info').textContent = `max_payload ${info.max_payload} B, max_subscriptions ${info.max_subscriptions}, queue ${info.queue_bytes} B`;
    if (reconnected) logNotice('gateway reconnected', 'gateway');
  }));
  c.on('disconnect', mine(({ code, reason, willReconnect }) => {
    if (willReconnect) logNotice(`gateway disconnected (${code}${reason ? `: ${reason}` : ''}), reconnecting`, 'gateway');
  }));
  c.on('subscribed', mine(({ subject, resubscribed }) => {
    if (resubscribed) logNotice(`resubscribed ${subject}`, 'gateway');
  }));
  c.on('reconnecting', mine(({ attempt, delay }) => {
    setState('reconnecting');
    $('info').textContent = `reconnecting: attempt ${attempt} in ${Math.round(delay)} ms`;
  }));
  c.on('closed', mine(({ error, code }) => {
    client = null;
    unsubs.clear();
    renderSubs();
    setState('disconnected');
    setNats('');
    $('info').textContent = 'Not connected.';
    if (code !== 1000) showError(error, connected ? 'connection' : 'connect');
  }));
  c.on('status', mine((st) => {
    if (st.nats) {
      setNats(st.nats);
      logNotice(`nats ${st.nats}`, 'status');
    } else if (st.gateway) {
      logNotice(`gateway ${st.gateway}`, 'status');
    }
  }));
  c.on('slowconsumer', mine(({ dropped }) => {
    showError(new Error(`slow consumer: ${dropped} messages dropped`), 'gateway');
    logNotice(`slow consumer: ${dropped} dropped`, 'warn');
  }));
  c.on('error', mine(({ error, subject }) => showError(error, subject ? `subscription ${subject}` : 'gateway')));
  c.on('gap', mine((g) => {
    const asked = g.requested_seq !== undefined ? `seq ${g.requested_seq}` : g.requested_time;
    logNotice(`gap on ${g.subject}: messages before seq ${g.first_seq} are gone (asked from ${asked})`, 'warn');
  }));
  c.on('resuming', mine(({ subject, delay, start_seq }) => {
    logNotice(`resuming ${subject}${start_seq !== undefined ? ` from seq ${start_seq}` : ''} in ${Math.round(delay)} ms`, 'gateway');
  }));
  setState('connecting');
  setNats('');
  // A failed first attempt ends in 'closed', which the listener shows.
  c.start().catch(() => {});
}

function doDisconnect() {
  const c = client;
  client = null;
  unsubs.clear();
  if (c) c.close();
  renderSubs();
  setState('disconnected');
  setNats('');
  $('info').textContent = 'Not connected.';
}

/**
 * The subscribe form's options: a queue, or a JetStream start position.
 * @returns {import('./client.js').SubscribeOptions}
 */
function subscribeOptions() {
  const queue = $('sub-queue').value.trim();
  const deliver = $('sub-deliver').value;
  if (deliver === 'start_seq') {
    const seq = Number($('sub-seq').value);
    if (!Number.isInteger(seq) || seq < 1) throw new Error('enter a start seq (an integer of at least 1)');
    return { start_seq: seq };
  }
  if (deliver) return { deliver };
  return queue ? { queue } : {};
}

async function doSubscribe() {
  const c = client;
  const subject = $('sub-subject').value.trim();
  if (!c || !subject) return;
  let opts;
  try {
    opts = subscribeOptions();
  } catch (e) {
    showError(e, `subscribe ${subject}`);
    return;
  }
  const p = c.subscribe(subject, (m) => logMessage(m, subject), opts);
  renderSubs();
  try {
    const un = await p;
    unsubs.set(un.sid, un);
    $('sub-subject').value = '';
  } catch (e) {
    showError(e, `subscribe ${subject}`);
  }
  renderSubs();
}

async function doPublish() {
  const c = client;
  if (!c) return;
  const subject = $('pub-subject').value.trim();
  const out = $('pub-result');
  try {
    const headers = parseHeaders($('pub-headers').value);
    out.textContent = 'publishing…';
    if ($('pub-stored').checked) {
      const msgId = $('pub-msgid').value.trim();
      const ack = await c.jsPublish(subject, $('pub-data').value, { headers, msgId: msgId || undefined });
      out.textContent = `${now()} stored in ${ack.stream} seq ${ack.seq}${ack.duplicate ? ' (duplicate: stored before)' : ''}`;
      return;
    }
    await c.publish(subject, $('pub-data').value, headers ? { headers } : {});
    out.textContent = `${now()} published to ${subject}`;
  } catch (e) {
    out.textContent = 'failed';
    showError(e, `publish ${subject}`);
  }
}

async function doRequest() {
  const c = client;
  if (!c) return;
  const subject = $('req-subject').value.trim();
  const res = $('req-result');
  res.className = 'result muted';
  try {
    const headers = parseHeaders($('req-headers').value);
    const timeout = Number($('req-timeout').value) || undefined;
    res.textContent = 'waiting for a reply…';
    const m = await c.request(subject, $('req-data').value, { headers, timeout });
    const h = headersText(m.headers);
    res.className = 'result ok';
    res.textContent = `${now()} reply from ${subject}\n${h ? `${h}\n\n` : ''}${payloadText(m)}`;
  } catch (e) {
    res.className = 'result failed';
    const err = /** @type {any} */ (e);
    res.textContent = `${now()} ${err.status ? `${err.status} ` : ''}${err.message}`;
    showError(e, `request ${subject}`);
  }
}

// ---- Key-value panel: pick a bucket, list its keys, edit a value (a put
// expecting the revision shown), and watch the bucket change live. ----

/**
 * The open bucket: its handle, its watch and the latest entry of each key
 * with a value, as the watch delivers them.
 * @type {{kv: import('./client.js').KV, client: import('./client.js').NatsgateClient,
 *   stop: (() => Promise<void>) | null, entries: Map<string, import('./client.js').KVEntry>} | null}
 */
let kvOpen = null;
/** The revision the editor's value was loaded at: what a put expects (0: the key has no value). */
let kvExpected = 0;

/** @param {string} state the client's */
function kvState(state) {
  for (const id of ['kv-open', 'kv-put', 'kv-delete']) $(id).disabled = state !== 'connected';
  if (state === 'disconnected' && kvOpen) kvClose();
}

function kvClose() {
  const o = kvOpen;
  kvOpen = null;
  if (o && o.stop && o.client === client) o.stop().catch(() => {});
  $('kv-keys').replaceChildren();
  $('kv-watching').textContent = '';
}

/** @param {import('./client.js').KVEntry} e */
function kvValueText(e) {
  if (e.data !== undefined) return e.data;
  return `[${e.bytes.length} bytes]`;
}

function kvRenderKeys() {
  const list = $('kv-keys');
  list.replaceChildren();
  if (!kvOpen) return;
  for (const key of [...kvOpen.entries.keys()].sort()) {
    const e = /** @type {import('./client.js').KVEntry} */ (kvOpen.entries.get(key));
    const li = el('li', 'kv-key');
    li.dataset.key = key;
    li.dataset.revision = String(e.revision);
    const b = /** @type {HTMLButtonElement} */ (el('button', 'small link', key));
    b.type = 'button';
    b.addEventListener('click', () => kvSelect(key));
    li.append(b, el('span', 'muted', `rev ${e.revision}`));
    list.append(li);
  }
}

/** Shows the selected key's latest entry (as the watch has it) beside the editor. */
function kvShowCurrent() {
  const cur = $('kv-current');
  const key = $('kv-key').value.trim();
  const e = kvOpen && key ? kvOpen.entries.get(key) : undefined;
  cur.dataset.revision = e ? String(e.revision) : '0';
  cur.className = `result ${e ? 'ok' : 'muted'}`;
  cur.textContent = e ? `rev ${e.revision} (${e.created})\n${kvValueText(e)}` : key ? 'no value' : 'Pick a key.';
}

/** @param {number} rev */
function kvSetExpected(rev) {
  kvExpected = rev;
  const out = $('kv-expected');
  out.dataset.revision = String(rev);
  out.textContent = rev ? `expects rev ${rev}` : 'new key';
}

/** Loads a key into the editor, with the revision a put will expect. @param {string} key */
async function kvSelect(key) {
  const o = kvOpen;
  if (!o) return;
  $('kv-key').value = key;
  try {
    const e = await o.kv.get(key);
    if (kvOpen !== o || $('kv-key').value.trim() !== key) return;
    $('kv-value').value = e ? kvValueText(e) : '';
    kvSetExpected(e ? e.revision : 0);
  } catch (err) {
    showError(err, `get ${key}`);
  }
  kvShowCurrent();
}

async function kvOpenBucket() {
  const c = client;
  const bucket = $('kv-bucket').value.trim();
  if (!c || !bucket) return;
  kvClose();
  /** @type {NonNullable<typeof kvOpen>} */
  const o = { kv: c.kv(bucket), client: c, stop: null, entries: new Map() };
  kvOpen = o;
  try {
    // The watch's lastValue entries list the keys; then it follows changes.
    o.stop = await o.kv.watch((e) => {
      if (kvOpen !== o) return;
      if (e.operation === 'PUT') o.entries.set(e.key, e);
      else o.entries.delete(e.key);
      kvRenderKeys();
      if (e.key === $('kv-key').value.trim()) kvShowCurrent();
    }, { onCurrent: () => { if (kvOpen === o) $('kv-watching').textContent = `${bucket}: watching`; } });
    if (kvOpen !== o) o.stop().catch(() => {});
  } catch (e) {
    if (kvOpen === o) kvOpen = null;
    showError(e, `watch ${bucket}`);
  }
}

/** @param {string} what @param {unknown} err */
function kvFailed(what, err) {
  const e = /** @type {any} */ (err);
  const out = $('kv-result');
  out.dataset.status = String(e.status || '');
  out.textContent = e.status === 412 ? `${e.status}: changed elsewhere; pick the key again` : `${e.status || ''} failed`;
  showError(err, what);
}

async function kvPut() {
  const o = kvOpen;
  const key = $('kv-key').value.trim();
  if (!o || !key) return;
  const out = $('kv-result');
  try {
    out.textContent = 'storing…';
    const rev = await o.kv.put(key, $('kv-value').value, { revision: kvExpected });
    out.dataset.status = '200';
    out.textContent = `${now()} stored as rev ${rev}`;
    kvSetExpected(rev);
  } catch (e) {
    kvFailed(`put ${key}`, e);
  }
}

async function kvDelete() {
  const o = kvOpen;
  const key = $('kv-key').value.trim();
  if (!o || !key) return;
  const out = $('kv-result');
  try {
    await o.kv.delete(key, kvExpected ? { revision: kvExpected } : {});
    out.dataset.status = '204';
    out.textContent = `${now()} deleted ${key}`;
    $('kv-value').value = '';
    kvSetExpected(0);
  } catch (e) {
    kvFailed(`delete ${key}`, e);
  }
}

onSubmit('kv-form', kvOpenBucket);
onSubmit('kv-edit', kvPut);
$('kv-delete').addEventListener('click', kvDelete);
// A key typed by hand expects the revision the watch last saw for it (a
// new key: none); picking it from the list loads its value too.
$('kv-key').addEventListener('input', () => {
  const e = kvOpen && kvOpen.entries.get($('kv-key').value.trim());
  kvSetExpected(e ? e.revision : 0);
  kvShowCurrent();
});

/** @param {string} id @param {() => unknown} fn */
function onSubmit(id, fn) {
  $(id).addEventListener('submit', (/** @type {Event} */ ev) => {
    ev.preventDefault();
    fn();
  });
}

onSubmit('connect-form', doConnect);
onSubmit('sub-form', doSubscribe);
onSubmit('pub-form', doPublish);
onSubmit('req-form', doRequest);
$('disconnect').addEventListener('click', doDisconnect);
$('log-clear').addEventListener('click', () => {
  $('log').replaceChildren();
  logCount();
});
$('errors-clear').addEventListener('click', () => $('errors').replaceChildren());
// A JetStream start position takes no queue group; "from seq" needs a seq.
$('sub-deliver').addEventListener('change', () => {
  const d = $('sub-deliver').value;
  $('sub-seq').disabled = d !== 'start_seq';
  $('sub-queue').disabled = d !== '';
});
$('pub-stored').addEventListener('change', () => { $('pub-msgid').disabled = !$('pub-stored').checked; });
setState('disconnected');
document.documentElement.dataset.ready = 'true';
