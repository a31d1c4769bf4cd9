'use strict';
// The Agent as an undici Dispatcher: what `agent.dispatch(options, handler)` needs, kept
// apart from index.js. index.js owns the engine calls; this file turns undici's request
// options into the Agent's, drives one handler through one request (`Dispatch`), and gives
// errors the codes and names undici's own errors have.
//
// Two handler forms exist, and callers use both: undici 7's (onRequestStart,
// onResponseStart, onResponseData, onResponseEnd, onResponseError, given a controller) and
// the older one that undici's own fetch, request() and stream() still call, as does the
// undici 6 inside Node 20's global fetch (onConnect, onHeaders, onData, onComplete,
// onError). As in undici, a handler with `onRequestStart` is of the new form.

const querystring = require('node:querystring');

// ----------------------------------------------------------------------------------------
// Errors as undici makes them: its classes recognise an error by a Symbol.for() tag
// (`err instanceof undici.errors.HeadersTimeoutError` holds for ours too) and callers test
// `code`.

const UNDICI_TAG = Symbol.for('undici.error.UND_ERR');

function tagUndici(err, code, name, parents = []) {
  Object.defineProperty(err, 'code', { value: code, writable: true, enumerable: true, configurable: true });
  Object.defineProperty(err, 'name', { value: name, writable: true, enumerable: false, configurable: true });
  for (const c of [code, ...parents]) {
    Object.defineProperty(err, Symbol.for(`undici.error.${c}`), { value: true, configurable: true });
  }
  Object.defineProperty(err, UNDICI_TAG, { value: true, configurable: true });
  return err;
}

function invalidArgument(message) {
  return tagUndici(new Error(message), 'UND_ERR_INVALID_ARG', 'InvalidArgumentError');
}

function notSupported(message) {
  return tagUndici(new Error(message), 'UND_ERR_NOT_SUPPORTED', 'NotSupportedError');
}

function requestAborted() {
  return tagUndici(new Error('Request aborted'), 'UND_ERR_ABORTED', 'AbortError', ['UND_ERR_ABORT']);
}

function clientDestroyed() {
  return tagUndici(new Error('The client is destroyed'), 'UND_ERR_DESTROYED', 'ClientDestroyedError');
}

function clientClosed() {
  return tagUndici(new Error('The client is closed'), 'UND_ERR_CLOSED', 'ClientClosedError');
}

function headersTimeout() {
  return tagUndici(new Error('Headers Timeout Error'), 'UND_ERR_HEADERS_TIMEOUT', 'HeadersTimeoutError');
}

function bodyTimeout() {
  return tagUndici(new Error('Body Timeout Error'), 'UND_ERR_BODY_TIMEOUT', 'BodyTimeoutError');
}

function contentLengthMismatch() {
  return tagUndici(
    new Error('Request body length does not match content-length header'),
    'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH',
    'RequestContentLengthMismatchError',
  );
}

// The engine's codes that have an undici counterpart: [code, name]. The others keep the
// Agent's code (ECONNREFUSED, ENOTFOUND, ETIMEDOUT for the overall deadline,
// AGENT_CODE_TLS, AGENT_CODE_PROTOCOL, ...), as undici passes socket errors through.
const UNDICI_CODES = {
  AGENT_CODE_CONNECT_TIMEOUT: ['UND_ERR_CONNECT_TIMEOUT', 'ConnectTimeoutError'],
  AGENT_CODE_HEADERS_TIMEOUT: ['UND_ERR_HEADERS_TIMEOUT', 'HeadersTimeoutError'],
  AGENT_CODE_BODY_TIMEOUT: ['UND_ERR_BODY_TIMEOUT', 'BodyTimeoutError'],
  AGENT_CODE_CONNECTION_RESET: ['UND_ERR_SOCKET', 'SocketError'],
  AGENT_CODE_CONNECTION_CLOSED: ['UND_ERR_SOCKET', 'SocketError'],
  AGENT_CODE_STALE_CONNECTION: ['UND_ERR_SOCKET', 'SocketError'],
  AGENT_CODE_BROKEN_PIPE: ['UND_ERR_SOCKET', 'SocketError'],
  AGENT_CODE_RESPONSE_TOO_LARGE: ['UND_ERR_RES_EXCEEDED_MAX_SIZE', 'ResponseExceededMaxSizeError'],
  AGENT_CODE_INVALID_ARGUMENT: ['UND_ERR_INVALID_ARG', 'InvalidArgumentError'],
  AGENT_CODE_INVALID_URL: ['UND_ERR_INVALID_ARG', 'InvalidArgumentError'],
};

/**
 * An engine error as a dispatch reports it: the same object, its `code` and `name`
 * undici's where one applies (`agentCode` and `agentCodeName` stay).
 */
function undiciError(err) {
  if (err === null || typeof err !== 'object' || typeof err.agentCodeName !== 'string') return err;
  const mapped = UNDICI_CODES[err.agentCodeName];
  return mapped === undefined ? err : tagUndici(err, mapped[0], mapped[1]);
}

// ----------------------------------------------------------------------------------------
// Request options

const TOKEN = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/;
const INVALID_HEADER_CHAR = /[^\t\x20-\x7e\x80-\xff]/;
const INVALID_PATH = /[^\u0021-\u00ff]/; // undici's: no controls, spaces or wide characters

// One header as undici's Request takes it; pushes [name, value] pairs onto `out.headers`.
function addHeader(out, key, val) {
  if (val === undefined) return;
  if (val !== null && typeof val === 'object' && !Array.isArray(val)) throw invalidArgument(`invalid ${key} header`);
  if (typeof key !== 'string' || !TOKEN.test(key)) throw invalidArgument('invalid header key');
  const values = (Array.isArray(val) ? val : [val]).map((v) => {
    if (v === null) return '';
    if (typeof v === 'object') throw invalidArgument(`invalid ${key} header`);
    const s = String(v);
    if (INVALID_HEADER_CHAR.test(s)) throw invalidArgument(`invalid ${key} header`);
    return s;
  });
  const name = key.toLowerCase();
  if (name === 'transfer-encoding' || name === 'keep-alive' || name === 'upgrade') {
    throw invalidArgument(`invalid ${name} header`);
  }
  if (name === 'expect') throw notSupported('expect header not supported');
  if (name === 'connection') {
    const v = values.length === 1 ? values[0].toLowerCase() : null;
    if (v !== 'close' && v !== 'keep-alive') throw invalidArgument('invalid connection header');
    if (v === 'close') out.headers.push('connection', 'close'); // this connection is not reused
    return;
  }
  if (name === 'content-length') {
    if (out.contentLength !== null) return; // the first wins, as in undici
    const n = Number.parseInt(values[0], 10);
    if (!Number.isFinite(n) || n < 0) throw invalidArgument('invalid content-length header');
    out.contentLength = n;
    return;
  }
  if (name === 'content-type' && out.contentType === null) out.contentType = values[0];
  for (const v of values) out.headers.push(key, v);
}

// headers: an object, an array of [name, value] pairs, a flat [name, value, ...] array, or
// any iterable of pairs (Map, Headers).
function addHeaders(out, headers) {
  if (headers === undefined || headers === null) return;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers) {
        if (!Array.isArray(pair) || pair.length !== 2) throw invalidArgument('headers must be in key-value pair format');
        addHeader(out, pair[0], pair[1]);
      }
      return;
    }
    if (headers.length % 2 !== 0) throw invalidArgument('headers array must be even');
    for (let i = 0; i < headers.length; i += 2) addHeader(out, headers[i], headers[i + 1]);
    return;
  }
  if (typeof headers !== 'object') throw invalidArgument('headers must be an object or an array');
  if (typeof headers[Symbol.iterator] === 'function') {
    for (const pair of headers) {
      if (!Array.isArray(pair) || pair.length !== 2) throw invalidArgument('headers must be in key-value pair format');
      addHeader(out, pair[0], pair[1]);
    }
    return;
  }
  for (const key of Object.keys(headers)) addHeader(out, key, headers[key]);
}

function isBlobLike(body) {
  return (
    typeof body === 'object' &&
    typeof body.stream === 'function' &&
    typeof body.arrayBuffer === 'function' &&
    typeof body.size === 'number' &&
    /^(Blob|File)$/.test(body[Symbol.toStringTag])
  );
}

function isFormDataLike(body) {
  return typeof body === 'object' && body[Symbol.toStringTag] === 'FormData' && typeof body.entries === 'function';
}

async function* fromIterable(iterable) {
  yield* iterable;
}

// options.body -> {bytes} (sent whole) or {stream} (async iterable), or null.
function dispatchBody(body, out) {
  if (body === undefined || body === null) return null;
  if (typeof body === 'string') return body.length ? { bytes: Buffer.from(body, 'utf8') } : null;
  if (ArrayBuffer.isView(body)) {
    return body.byteLength ? { bytes: new Uint8Array(body.buffer, body.byteOffset, body.byteLength) } : null;
  }
  if (body instanceof ArrayBuffer) return body.byteLength ? { bytes: new Uint8Array(body) } : null;
  if (typeof body === 'object' && typeof body[Symbol.asyncIterator] === 'function') return { stream: body };
  if (isBlobLike(body)) {
    if (out.contentType === null && body.type) out.headers.push('content-type', body.type);
    if (out.contentLength === null) out.contentLength = body.size;
    return { stream: body.stream() };
  }
  if (isFormDataLike(body)) {
    // Encoded as fetch encodes it (multipart/form-data with its boundary).
    const encoded = new Response(body);
    if (out.contentType === null) out.headers.push('content-type', encoded.headers.get('content-type'));
    return { stream: encoded.body };
  }
  if (typeof body === 'object' && typeof body[Symbol.iterator] === 'function') return { stream: fromIterable(body) };
  throw invalidArgument('body must be a string, a Buffer, a Readable stream, an iterable, or an async iterable');
}

/**
 * undici's dispatch options -> what the Agent's request takes:
 * {method, url, headers (flat), body (bytes | async iterable | undefined), signal,
 *  headersTimeout, bodyTimeout}. Throws undici's InvalidArgumentError / NotSupportedError.
 */
function dispatchOptions(opts) {
  if (opts === null || typeof opts !== 'object') throw invalidArgument('opts must be an object.');
  const { path, method, origin, query } = opts;
  if (typeof path !== 'string') throw invalidArgument('path must be a string');
  const absolute = path.startsWith('http://') || path.startsWith('https://');
  if (path[0] !== '/' && !absolute) throw invalidArgument('path must be an absolute URL or start with a slash');
  if (INVALID_PATH.test(path)) throw invalidArgument('invalid request path');
  if (typeof method !== 'string') throw invalidArgument('method must be a string');
  if (!TOKEN.test(method)) throw invalidArgument('invalid request method');
  if (method.toUpperCase() === 'CONNECT' || (opts.upgrade !== undefined && opts.upgrade !== null && opts.upgrade !== false)) {
    throw notSupported(
      'keepalive-agent does not support upgrades or CONNECT (WebSocket, h2c upgrade, tunnels): ' +
        'its connections only carry whole HTTP requests and responses',
    );
  }
  if (opts.maxRedirections != null && opts.maxRedirections !== 0) {
    throw invalidArgument('maxRedirections is not supported, use the redirect interceptor');
  }
  for (const key of ['headersTimeout', 'bodyTimeout']) {
    const v = opts[key];
    if (v != null && (!Number.isFinite(v) || v < 0)) throw invalidArgument(`invalid ${key}`);
  }
  let url;
  if (absolute) {
    url = path;
  } else {
    if (origin === undefined || origin === null) throw invalidArgument('origin must be a string or an URL');
    let base;
    try {
      base = origin instanceof URL ? origin : new URL(String(origin));
    } catch {
      throw invalidArgument('invalid origin');
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw invalidArgument('origin must use the http: or https: protocol');
    }
    url = base.origin + path;
  }
  if (query !== undefined && query !== null) {
    if (/[?#]/.test(path)) throw invalidArgument('Query params cannot be passed when url already contains "?" or "#".');
    const q = querystring.stringify(query);
    if (q) url += `?${q}`;
  }
  const out = { headers: [], contentLength: null, contentType: null };
  addHeaders(out, opts.headers);
  const body = dispatchBody(opts.body, out);
  let bodyValue;
  if (body !== null && body.stream !== undefined) {
    bodyValue = body.stream;
    if (out.contentLength !== null) out.headers.push('content-length', String(out.contentLength));
  } else {
    const size = body === null ? 0 : body.bytes.byteLength;
    if (out.contentLength !== null && out.contentLength !== size) throw contentLengthMismatch();
    bodyValue = body === null ? undefined : body.bytes;
  }
  const signal = opts.signal === null ? undefined : opts.signal;
  if (signal !== undefined && (typeof signal !== 'object' || !('aborted' in signal))) {
    throw invalidArgument('signal must be an EventEmitter or EventTarget');
  }
  return {
    method,
    url,
    headers: out.headers,
    body: bodyValue,
    signal,
    headersTimeout: opts.headersTimeout == null ? 0 : opts.headersTimeout,
    bodyTimeout: opts.bodyTimeout == null ? 0 : opts.bodyTimeout,
  };
}

// ----------------------------------------------------------------------------------------
// Headers as the two handler forms take them.

// The engine's header strings are latin1 (one char per byte): undici's old form gets the
// bytes back as Buffers, the new form strings decoded as UTF-8 (as undici's parseHeaders).
function rawBuffers(raw) {
  const out = new Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = Buffer.from(raw[i], 'latin1');
  return out;
}

const NON_ASCII = /[^\x00-\x7f]/;

function headersRecord(raw) {
  const h = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    let value = raw[i + 1];
    if (NON_ASCII.test(value)) value = Buffer.from(value, 'latin1').toString('utf8');
    const prev = Object.prototype.hasOwnProperty.call(h, name) ? h[name] : undefined;
    if (prev === undefined) {
      Object.defineProperty(h, name, { value, writable: true, enumerable: true, configurable: true });
    } else if (Array.isArray(prev)) {
      prev.push(value);
    } else {
      h[name] = [prev, value];
    }
  }
  return h;
}

// ----------------------------------------------------------------------------------------
// One dispatched request

/** What a new-form handler is given: pause, resume and abort its request. */
class DispatchController {
  #d;
  constructor(d) {
    this.#d = d;
  }
  get aborted() {
    return this.#d.aborted;
  }
  get paused() {
    return this.#d.paused;
  }
  get reason() {
    return this.#d.reason;
  }
  abort(reason) {
    this.#d.abort(reason);
  }
  pause() {
    this.#d.pause();
  }
  resume() {
    this.#d.resume();
  }
}

/**
 * Drives one handler through one request: start (onRequestStart / onConnect), head
 * (onResponseStart / onHeaders), body (onResponseData / onData), end (onResponseEnd /
 * onComplete) or error (onResponseError / onError), each end exactly once and nothing
 * after it. The response body is the Agent's streamed body (a Readable over the engine's
 * reads): pausing the handler pauses it, so the engine stops reading the socket.
 */
class Dispatch {
  constructor(handler, hooks) {
    this.handler = handler;
    this.modern = Boolean(handler.onRequestStart); // undici's own test of the form
    this.controller = this.modern ? new DispatchController(this) : null;
    this.hooks = hooks; // {open(o, signal) -> Promise<StreamResponse>, ended(d)}
    this.done = false;
    this.aborted = false;
    this.reason = null;
    this.paused = false;
    this.body = null;
    this.cancel = new AbortController();
    this.unsubscribe = null;
    this.timer = null;
    this.headersTimeout = 0;
    this.bodyTimeout = 0;
    this.resumeFn = () => this.resume();
    this.abortFn = (reason) => this.abort(reason);
  }

  /**
   * For the old form, undici's own checks of a handler (assertRequestHandler): an upgrade
   * handler needs no onHeaders, onData or onComplete (its request is refused anyway).
   */
  static check(handler, opts) {
    if (handler.onRequestStart) return;
    const upgrade = opts !== null && typeof opts === 'object' && (opts.upgrade || opts.method === 'CONNECT');
    const methods = upgrade ? ['onConnect', 'onError'] : ['onConnect', 'onError', 'onHeaders', 'onData', 'onComplete'];
    for (const m of methods) {
      if (typeof handler[m] !== 'function') throw invalidArgument(`invalid ${m} method`);
    }
  }

  start(o) {
    this.headersTimeout = o.headersTimeout;
    this.bodyTimeout = o.bodyTimeout;
    if (!this.#call(() => (this.modern ? this.handler.onRequestStart(this.controller, {}) : this.handler.onConnect(this.abortFn, {})))) {
      return;
    }
    if (this.done) return; // aborted in onRequestStart / onConnect
    if (o.signal !== undefined) {
      if (o.signal.aborted) return this.abort(o.signal.reason);
      this.unsubscribe = this.hooks.onAbort(o.signal, () => this.abort(o.signal.reason));
    }
    this.#arm(this.headersTimeout, headersTimeout);
    this.hooks.open(o, this.cancel.signal).then(
      (res) => this.#head(res),
      (err) => this.fail(undiciError(err)),
    );
  }

  // Runs a handler callback; a throw aborts the request with that error (as undici does).
  #call(fn) {
    try {
      fn();
      return true;
    } catch (err) {
      this.abort(err);
      return false;
    }
  }

  #arm(ms, makeError) {
    this.#disarm();
    if (ms > 0 && !this.done) {
      this.timer = setTimeout(() => this.abort(makeError()), ms);
      this.timer.unref();
    }
  }

  #disarm() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  #head(res) {
    const body = res.body;
    if (this.done) {
      body.destroy();
      return;
    }
    this.body = body;
    this.#disarm();
    const h = this.handler;
    let more;
    try {
      if (this.modern) {
        h.onResponseStart?.(this.controller, res.statusCode, headersRecord(res.rawHeaders), res.statusMessage);
      } else {
        h.onResponseStarted?.();
        more = h.onHeaders(res.statusCode, rawBuffers(res.rawHeaders), this.resumeFn, res.statusMessage);
      }
    } catch (err) {
      return this.abort(err);
    }
    if (this.done) return;
    if (more === false) this.paused = true;
    if (this.paused) body.pause();
    else this.#arm(this.bodyTimeout, bodyTimeout);
    body.on('data', (chunk) => this.#data(chunk));
    body.once('end', () => this.#end());
    body.once('error', (err) => this.fail(undiciError(err)));
  }

  #data(chunk) {
    if (this.done) return;
    let more;
    try {
      if (this.modern) this.handler.onResponseData?.(this.controller, chunk);
      else more = this.handler.onData(chunk);
    } catch (err) {
      return this.abort(err);
    }
    if (this.done) return;
    if (more === false) this.pause();
    else if (!this.paused) this.#arm(this.bodyTimeout, bodyTimeout);
  }

  #end() {
    if (this.done) return;
    this.#finish();
    // The body sets its trailers before 'end': undici's forms of them, new objects each time.
    const raw = this.body.rawTrailers;
    try {
      if (this.modern) this.handler.onResponseEnd?.(this.controller, headersRecord(raw));
      else this.handler.onComplete(rawBuffers(raw));
    } catch (err) {
      this.#error(err);
    }
  }

  pause() {
    if (this.done || this.paused) return;
    this.paused = true;
    this.#disarm(); // a paused body is not late
    if (this.body !== null) this.body.pause();
  }

  resume() {
    if (this.done || !this.paused) return;
    this.paused = false;
    if (this.body !== null) {
      this.#arm(this.bodyTimeout, bodyTimeout);
      this.body.resume();
    }
  }

  /** controller.abort(reason) / the old form's abort(reason): ends the request at once. */
  abort(reason) {
    if (this.done) return;
    this.aborted = true;
    this.reason = reason === undefined || reason === null ? requestAborted() : reason;
    this.fail(this.reason);
  }

  /** The request failed (or was aborted): stop the engine's work, tell the handler once. */
  fail(err) {
    if (this.done) return;
    this.#finish();
    this.cancel.abort(err); // a request still waiting for its head is cancelled
    if (this.body !== null) this.body.destroy(); // a body being read: the connection is closed
    this.#error(err);
  }

  #error(err) {
    if (this.modern) {
      if (typeof this.handler.onResponseError !== 'function') throw err;
      this.handler.onResponseError(this.controller, err);
    } else {
      this.handler.onError(err);
    }
  }

  #finish() {
    this.done = true;
    this.#disarm();
    if (this.unsubscribe !== null) {
      this.unsubscribe();
      this.unsubscribe = null;
    }
    this.hooks.ended(this);
  }

  /** Reports an error from dispatch() itself, before the request started. */
  refuse(err) {
    this.done = true;
    this.#error(err);
  }
}

// Headers {name: value | value[]} as the old form takes them: [Buffer, Buffer | Buffer[], ...].
function recordToRaw(record) {
  const raw = [];
  for (const [key, val] of Object.entries(record || {})) {
    raw.push(Buffer.from(key), Array.isArray(val) ? val.map((v) => Buffer.from(v)) : Buffer.from(val));
  }
  return raw;
}

/**
 * An old-form handler seen through the new form, for interceptors (compose()), which
 * expect undici 7's form, as undici's WrapHandler does.
 */
class ModernHandler {
  #h;
  constructor(handler) {
    this.#h = handler;
  }
  static wrap(handler) {
    return handler !== null && typeof handler === 'object' && !handler.onRequestStart ? new ModernHandler(handler) : handler;
  }
  onRequestStart(controller, context) {
    this.#h.onConnect?.((reason) => controller.abort(reason), context);
  }
  onRequestUpgrade(controller, statusCode, headers, socket) {
    this.#h.onUpgrade?.(statusCode, recordToRaw(headers), socket);
  }
  onResponseStart(controller, statusCode, headers, statusMessage) {
    if (this.#h.onHeaders?.(statusCode, recordToRaw(headers), () => controller.resume(), statusMessage) === false) {
      controller.pause();
    }
  }
  onResponseData(controller, chunk) {
    if (this.#h.onData?.(chunk) === false) controller.pause();
  }
  onResponseEnd(controller, trailers) {
    this.#h.onComplete?.(recordToRaw(trailers));
  }
  onResponseError(controller, err) {
    if (typeof this.#h.onError !== 'function') throw invalidArgument('invalid onError method');
    this.#h.onError(err);
  }
}

module.exports = {
  Dispatch,
  ModernHandler,
  dispatchOptions,
  undiciError,
  invalidArgument,
  clientClosed,
  clientDestroyed,
};
