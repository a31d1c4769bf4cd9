'use strict';
// keepalive-agent for Node: an HTTP/1.1 (and, on request, HTTP/2) client with a keep-alive
// connection pool, running on the native engine (libkeepalive_agent) through an N-API addon
// (src/addon.c).
//
// Everything is validated here, with Node's error codes, before the addon is called. The
// addon submits requests to the engine's event queue (one per thread: main or worker) and
// libuv drains it on this thread when its descriptor is readable: the socket I/O happens
// here, as with Node's own http, and every completed request or body read of a batch is
// settled in one JavaScript turn. Nothing blocks the event loop; no thread is crossed.

const EventEmitter = require('node:events');
const { STATUS_CODES } = require('node:http');
const { Readable, finished } = require('node:stream');
const { inspect } = require('node:util');
const { Dispatch, ModernHandler, dispatchOptions, invalidArgument, clientClosed, clientDestroyed } = require('./dispatcher.js');
const eventChannels = require('./events.js');

let native;
try {
  native = require('./build/Release/keepalive_agent.node');
} catch (e) {
  const err = new Error(
    `keepalive-agent: cannot load the native addon (${e.message}). ` +
      'Build it with `npm run build` in the package directory (needs a C compiler and the Rust library).',
  );
  err.code = 'ERR_KEEPALIVE_AGENT_NOT_BUILT';
  err.cause = e;
  throw err;
}

// ----------------------------------------------------------------------------------------
// Library codes, read from the library itself (agent_code_name) so they cannot drift.

/** Library result codes by short name, e.g. codes.CONNECT_REFUSED === 11. */
const codes = {};
for (let i = 0; i < 128; i++) {
  const name = native.codeName(i);
  if (name !== 'AGENT_CODE_UNKNOWN') codes[name.slice('AGENT_CODE_'.length)] = i;
}
Object.freeze(codes);

// ----------------------------------------------------------------------------------------
// Node-style validation errors (same codes, classes and message shapes as Node's own).

function received(value) {
  if (value == null) return ` Received ${value}`;
  if (typeof value === 'function') return ` Received function ${value.name || '<anonymous>'}`;
  if (typeof value === 'object') {
    if (value.constructor && value.constructor.name) {
      return ` Received an instance of ${value.constructor.name}`;
    }
    return ` Received ${inspect(value, { depth: -1 })}`;
  }
  let shown = inspect(value, { colors: false });
  if (shown.length > 28) shown = `${shown.slice(0, 25)}...`;
  return ` Received type ${typeof value} (${shown})`;
}

function withCode(err, code) {
  err.code = code;
  return err;
}

function argKind(name) {
  return name.includes('.') ? 'property' : 'argument';
}

function invalidArgType(name, expected, value) {
  return withCode(
    new TypeError(`The "${name}" ${argKind(name)} must be ${expected}.${received(value)}`),
    'ERR_INVALID_ARG_TYPE',
  );
}

function outOfRange(name, range, value) {
  return withCode(
    new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${inspect(value)}`),
    'ERR_OUT_OF_RANGE',
  );
}

function invalidArgValue(name, value, reason) {
  return withCode(
    new TypeError(`The ${argKind(name)} '${name}' ${reason}. Received ${inspect(value)}`),
    'ERR_INVALID_ARG_VALUE',
  );
}

function validateInteger(value, name, min, max, { infinity } = {}) {
  if (typeof value !== 'number') throw invalidArgType(name, 'of type number', value);
  if (value === Infinity && infinity !== undefined) return infinity;
  if (!Number.isInteger(value)) throw outOfRange(name, 'an integer', value);
  if (value < min || value > max) {
    const inf = infinity !== undefined ? ' (or Infinity)' : '';
    throw outOfRange(name, `>= ${min} && <= ${max}${inf}`, value);
  }
  return value;
}

function validateBoolean(value, name) {
  if (typeof value !== 'boolean') throw invalidArgType(name, 'of type boolean', value);
  return value;
}

function validateString(value, name) {
  if (typeof value !== 'string') throw invalidArgType(name, 'of type string', value);
  return value;
}

/** Node's AbortError (what core modules reject with when an AbortSignal fires). */
class AbortError extends Error {
  constructor(message = 'The operation was aborted', options = undefined) {
    super(message, options);
    this.code = 'ABORT_ERR';
    this.name = 'AbortError';
  }
}

// ----------------------------------------------------------------------------------------
// Agent options

/**
 * The library's own bounds (agent_limit), so validation here matches what it enforces:
 * maxMsecs (any timeout), maxKeepAliveMsecs (TCP_KEEPIDLE and TCP_KEEPINTVL),
 * maxKeepAliveProbes (TCP_KEEPCNT), maxSockets (every socket count).
 */
const limits = native.limits;
const MSECS_MAX = limits.maxMsecs;
const KEEPALIVE_MSECS_MAX = limits.maxKeepAliveMsecs;
const KEEPALIVE_PROBES_MAX = limits.maxKeepAliveProbes;
const SOCKETS_MAX = limits.maxSockets;

// [name, min, max, value meaning "unlimited" for Infinity (or undefined: Infinity refused)]
const INTEGER_OPTIONS = [
  ['keepAliveMsecs', 0, KEEPALIVE_MSECS_MAX],
  ['keepAliveInterval', 0, KEEPALIVE_MSECS_MAX],
  ['keepAliveProbes', 0, KEEPALIVE_PROBES_MAX],
  ['maxSockets', 0, SOCKETS_MAX, 0],
  ['maxTotalSockets', 0, SOCKETS_MAX, 0],
  ['maxFreeSockets', 0, SOCKETS_MAX, SOCKETS_MAX],
  ['timeout', 0, MSECS_MAX],
  ['keepAliveTimeoutBuffer', 0, MSECS_MAX],
  ['keepAliveMaxTimeout', 0, MSECS_MAX],
  ['socketActiveTTL', 0, MSECS_MAX],
  ['connectTimeout', 0, MSECS_MAX],
  ['headersTimeout', 0, MSECS_MAX],
  ['bodyTimeout', 0, MSECS_MAX],
  ['dnsCacheMsecs', 0, MSECS_MAX],
  ['happyEyeballsDelay', 0, MSECS_MAX],
];

// httpVersion's names and the library's values for them (AGENT_HTTP_VERSION_*).
const HTTP_VERSIONS = native.httpVersions;
const HTTP_VERSION_NAMES = Object.keys(HTTP_VERSIONS)
  .map((n) => `'${n}'`)
  .join(', ');

function toBuffer(value, name) {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (ArrayBuffer.isView(value)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw invalidArgType(name, 'of type string or an instance of Buffer or Uint8Array', value);
}

function normalizeAgentOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object') throw invalidArgType('options', 'of type object', options);
  const out = {};
  if (options.keepAlive !== undefined) out.keepAlive = validateBoolean(options.keepAlive, 'options.keepAlive');
  for (const key of ['ignoreEnvironment', 'events', 'eventHeaders']) {
    if (options[key] !== undefined) out[key] = validateBoolean(options[key], `options.${key}`);
  }
  for (const [key, min, max, infinity] of INTEGER_OPTIONS) {
    const v = options[key];
    if (v !== undefined) out[key] = validateInteger(v, `options.${key}`, min, max, { infinity });
  }
  if (options.scheduling !== undefined) {
    const s = options.scheduling;
    if (s !== 'lifo' && s !== 'fifo') {
      throw invalidArgValue('options.scheduling', s, "must be one of: 'fifo', 'lifo'");
    }
    out.scheduling = s === 'fifo' ? 1 : 0;
  }
  if (options.httpVersion !== undefined) {
    const v = options.httpVersion;
    if (typeof v !== 'string') throw invalidArgType('options.httpVersion', 'of type string', v);
    if (!Object.prototype.hasOwnProperty.call(HTTP_VERSIONS, v)) {
      throw invalidArgValue('options.httpVersion', v, `must be one of: ${HTTP_VERSION_NAMES}`);
    }
    out.httpVersion = HTTP_VERSIONS[v];
  }
  if (options.retryStale !== undefined) out.retryStale = validateBoolean(options.retryStale, 'options.retryStale');
  if (options.maxResponseSize !== undefined) {
    out.maxResponseSize = validateInteger(options.maxResponseSize, 'options.maxResponseSize', 0, Number.MAX_SAFE_INTEGER, {
      infinity: 0,
    });
  }
  if (options.ca !== undefined && options.ca !== null) {
    const list = Array.isArray(options.ca) ? options.ca : [options.ca];
    const parts = [];
    list.forEach((c, i) => {
      parts.push(toBuffer(c, Array.isArray(options.ca) ? `options.ca[${i}]` : 'options.ca'));
      parts.push(Buffer.from('\n'));
    });
    out.ca = Buffer.concat(parts);
  }
  if (options.useSystemRoots !== undefined) {
    out.useSystemRoots = validateBoolean(options.useSystemRoots, 'options.useSystemRoots');
  }
  if (options.rejectUnauthorized !== undefined) {
    out.dangerAcceptInvalidCerts = !validateBoolean(options.rejectUnauthorized, 'options.rejectUnauthorized');
  }
  if (options.userAgent !== undefined) {
    const ua = validateString(options.userAgent, 'options.userAgent');
    if (INVALID_HEADER_CHAR.test(ua)) {
      throw withCode(new TypeError('Invalid character in header content ["user-agent"]'), 'ERR_INVALID_CHAR');
    }
    out.userAgent = ua;
  }
  // Proxies, name overrides and client certificates. Their values are checked by the
  // library when the agent is made (ERR_INVALID_ARG_VALUE with its message).
  if (options.proxy !== undefined && options.proxy !== null) {
    out.proxy = validateString(options.proxy, 'options.proxy');
  }
  if (options.noProxy !== undefined && options.noProxy !== null) {
    out.noProxy = stringList(options.noProxy, 'options.noProxy').join(',');
  }
  if (options.proxyFromEnv !== undefined) {
    out.proxyFromEnv = validateBoolean(options.proxyFromEnv, 'options.proxyFromEnv');
  }
  if (options.resolve !== undefined && options.resolve !== null) {
    out.resolve = stringList(options.resolve, 'options.resolve');
  }
  for (const key of ['cert', 'key']) {
    if (options[key] !== undefined && options[key] !== null) out[key] = toBuffer(options[key], `options.${key}`);
  }
  if ((out.cert === undefined) !== (out.key === undefined)) {
    const [given, missing] = out.cert !== undefined ? ['cert', 'key'] : ['key', 'cert'];
    throw withCode(
      new TypeError(`The property 'options.${given}' needs 'options.${missing}': a client certificate and its private key go together`),
      'ERR_INVALID_ARG_VALUE',
    );
  }
  return out;
}

// The library's messages about options name its C options (SPEC §2 and §8); an agent made
// from Node says Node's names instead. Longest names first, so that no name is replaced
// inside a longer one.
const C_OPTION_NAMES = [
  ['keep_alive_timeout_buffer_msecs', 'keepAliveTimeoutBuffer'],
  ['max_keep_alive_timeout_msecs', 'keepAliveMaxTimeout'],
  ['max_socket_lifetime_msecs', 'socketActiveTTL'],
  ['keep_alive_interval_msecs', 'keepAliveInterval'],
  ['free_socket_timeout_msecs', 'timeout'],
  ['happy_eyeballs_delay_msecs', 'happyEyeballsDelay'],
  ['danger_accept_invalid_certs', 'rejectUnauthorized'],
  ['headers_timeout_msecs', 'headersTimeout'],
  ['connect_timeout_msecs', 'connectTimeout'],
  ['body_timeout_msecs', 'bodyTimeout'],
  ['max_response_bytes', 'maxResponseSize'],
  ['ignore_environment', 'ignoreEnvironment'],
  ['max_total_sockets', 'maxTotalSockets'],
  ['keep_alive_probes', 'keepAliveProbes'],
  ['max_free_sockets', 'maxFreeSockets'],
  ['keep_alive_msecs', 'keepAliveMsecs'],
  ['use_system_roots', 'useSystemRoots'],
  ['client_cert_file', 'cert'],
  ['client_cert_pem', 'cert'],
  ['client_key_file', 'key'],
  ['client_key_pem', 'key'],
  ['dns_cache_msecs', 'dnsCacheMsecs'],
  ['proxy_from_env', 'proxyFromEnv'],
  ['http_version', 'httpVersion'],
  ['max_sockets', 'maxSockets'],
  ['retry_stale', 'retryStale'],
  ['user_agent', 'userAgent'],
  ['keep_alive', 'keepAlive'],
  ['no_proxy', 'noProxy'],
  ['ca_file', 'ca'],
  ['ca_pem', 'ca'],
];
const C_OPTION_NAME = new RegExp(`\\b(${C_OPTION_NAMES.map(([c]) => c).join('|')})\\b`, 'g');
const NODE_OPTION_NAME = new Map(C_OPTION_NAMES);

/** A library message about options, with Node's option names ("ca_pem holds no PEM ..." -> "ca holds ..."). */
function nodeOptionNames(message) {
  return message
    .replace(C_OPTION_NAME, (c) => NODE_OPTION_NAME.get(c))
    .replace(/\b(\w+) or \1\b/g, '$1'); // "client_key_pem or client_key_file" -> "key"
}

// A string, or an array of strings, as an array.
function stringList(value, name) {
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value)) throw invalidArgType(name, 'of type string or an array of strings', value);
  value.forEach((v, i) => validateString(v, `${name}[${i}]`));
  return value.slice();
}

// ----------------------------------------------------------------------------------------
// Requests

const TOKEN = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/; // Node's checkIsHttpToken
const INVALID_HEADER_CHAR = /[^\t\x20-\x7e\x80-\xff]/; // Node's checkInvalidHeaderChar

function pushHeader(flat, name, value) {
  if (typeof name !== 'string' || !TOKEN.test(name)) {
    throw withCode(new TypeError(`Header name must be a valid HTTP token ["${name}"]`), 'ERR_INVALID_HTTP_TOKEN');
  }
  if (value === undefined) {
    throw withCode(new TypeError(`Invalid value "undefined" for header "${name}"`), 'ERR_HTTP_INVALID_HEADER_VALUE');
  }
  const v = String(value);
  if (INVALID_HEADER_CHAR.test(v)) {
    throw withCode(new TypeError(`Invalid character in header content ["${name}"]`), 'ERR_INVALID_CHAR');
  }
  flat.push(name, v);
}

// Object ({name: value | value[]}), array of [name, value] pairs, flat [n, v, n, v] array
// (Node's rawHeaders form), or any iterable of pairs (Map, Headers) -> flat string array.
function normalizeHeaders(headers) {
  if (headers === undefined || headers === null) return undefined;
  if (typeof headers !== 'object') throw invalidArgType('options.headers', 'of type object', headers);
  const flat = [];
  if (Array.isArray(headers)) {
    if (headers.length > 0 && !Array.isArray(headers[0])) {
      if (headers.length % 2 !== 0) {
        throw invalidArgValue('options.headers', headers, 'must be an array of [name, value] pairs or of even length');
      }
      for (let i = 0; i < headers.length; i += 2) pushHeader(flat, headers[i], headers[i + 1]);
      return flat;
    }
    for (const pair of headers) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw invalidArgValue('options.headers', headers, 'must be an array of [name, value] pairs or of even length');
      }
      pushHeader(flat, pair[0], pair[1]);
    }
    return flat;
  }
  if (typeof headers[Symbol.iterator] === 'function') {
    for (const [name, value] of headers) pushHeader(flat, name, value);
    return flat;
  }
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) {
      for (const v of value) pushHeader(flat, name, v);
    } else {
      pushHeader(flat, name, value);
    }
  }
  return flat;
}

// A whole body -> Uint8Array; a Readable or another async iterable -> {stream}.
function normalizeBody(body) {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return body;
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer || body instanceof SharedArrayBuffer) return new Uint8Array(body);
  if (typeof body === 'object' && typeof body[Symbol.asyncIterator] === 'function') return { stream: body };
  throw invalidArgType(
    'options.body',
    'of type string or an instance of Buffer, Uint8Array, ArrayBuffer, Readable or an async iterable',
    body,
  );
}

// One piece of a streamed body as bytes (strings as UTF-8), or a TypeError.
function chunkBytes(chunk) {
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  if (chunk instanceof Uint8Array) return chunk;
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (chunk instanceof ArrayBuffer || chunk instanceof SharedArrayBuffer) return new Uint8Array(chunk);
  throw invalidArgType('options.body chunk', 'of type string or an instance of Buffer or Uint8Array', chunk);
}

// For a streamed body, the engine frames the message itself: Content-Length when the
// caller gave one (then exactly that many bytes must come), else chunked. Both framing
// headers are taken out of the list and the length returned (-1: chunked).
function takeFraming(flat) {
  let length = -1;
  let chunked = false;
  const rest = [];
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i].toLowerCase();
    if (name === 'content-length') {
      const v = flat[i + 1].trim();
      if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v)) || (length >= 0 && Number(v) !== length)) {
        throw invalidArgValue('options.headers', flat[i + 1], 'has an invalid content-length');
      }
      length = Number(v);
    } else if (name === 'transfer-encoding') {
      chunked = true;
    } else {
      rest.push(flat[i], flat[i + 1]);
    }
  }
  return { headers: rest, length: chunked ? -1 : length };
}

function normalizeRequest(input, extra) {
  let options = input;
  if (typeof input === 'string' || input instanceof URL) {
    if (extra !== undefined && (extra === null || typeof extra !== 'object')) {
      throw invalidArgType('options', 'of type object', extra);
    }
    options = { ...extra, url: input };
  } else if (input === null || typeof input !== 'object') {
    throw invalidArgType('options', 'of type object', input);
  }
  let url = options.url;
  if (url instanceof URL) url = url.href;
  if (typeof url !== 'string') throw invalidArgType('options.url', 'of type string or an instance of URL', url);
  let method = options.method === undefined ? 'GET' : options.method;
  if (typeof method !== 'string') throw invalidArgType('options.method', 'of type string', method);
  if (!TOKEN.test(method)) {
    throw withCode(new TypeError(`Method must be a valid HTTP token ["${method}"]`), 'ERR_INVALID_HTTP_TOKEN');
  }
  method = method.toUpperCase();
  const timeout =
    options.timeout === undefined || options.timeout === null
      ? 0
      : validateInteger(options.timeout, 'options.timeout', 0, MSECS_MAX, { infinity: 0 });
  const signal = options.signal === null ? undefined : options.signal;
  if (signal !== undefined && (typeof signal !== 'object' || !('aborted' in signal))) {
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  }
  let headers = normalizeHeaders(options.headers);
  let body = normalizeBody(options.body);
  let bodyStream;
  let bodyLength = -1;
  if (body !== undefined && !(body instanceof Uint8Array)) {
    bodyStream = body.stream;
    body = undefined;
    ({ headers, length: bodyLength } = takeFraming(headers || []));
  }
  return { method, url, headers, body, bodyStream, bodyLength, timeout, signal };
}

// Node's IncomingMessage.headers rules: set-cookie is always an array; duplicates of these
// single-valued fields keep the first value; cookie joins with '; '; others with ', '.
const DISCARD_DUPLICATES = new Set([
  'age',
  'authorization',
  'content-length',
  'content-type',
  'etag',
  'expires',
  'from',
  'host',
  'if-modified-since',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'referer',
  'retry-after',
  'server',
  'user-agent',
]);

function headersObject(raw) {
  const h = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]; // already lowercase (the engine lowercases names)
    const value = raw[i + 1];
    if (Object.prototype.hasOwnProperty.call(h, name)) {
      if (name === 'set-cookie') h[name].push(value);
      else if (DISCARD_DUPLICATES.has(name)) continue;
      else h[name] += (name === 'cookie' ? '; ' : ', ') + value;
    } else if (name === '__proto__') {
      // An own property, never the prototype setter.
      Object.defineProperty(h, name, { value, writable: true, enumerable: true, configurable: true });
    } else {
      h[name] = name === 'set-cookie' ? [value] : value;
    }
  }
  return h;
}

// What a response without trailers shares (most have none): frozen, never filled.
const NO_TRAILERS = Object.freeze({});
const NO_RAW_TRAILERS = Object.freeze([]);

function finishResponse(raw) {
  return {
    statusCode: raw.statusCode,
    statusMessage: STATUS_CODES[raw.statusCode] || '',
    ok: raw.statusCode >= 200 && raw.statusCode <= 299,
    httpVersion: raw.httpVersion,
    httpVersionMajor: raw.httpVersionMajor,
    httpVersionMinor: raw.httpVersionMinor,
    headers: headersObject(raw.rawHeaders),
    rawHeaders: raw.rawHeaders,
    body: raw.body,
    reusedSocket: raw.reusedSocket,
    timings: raw.timings,
    trailers: NO_TRAILERS, // set when the body ends (ResponseBody)
    rawTrailers: NO_RAW_TRAILERS,
  };
}

// rawHeaders, [name, value, ...], from the engine's header block: one `name: value\r\n`
// line per header, names lowercase (values never hold CR or LF; names never hold ':').
function splitHeaderBlock(block) {
  const raw = [];
  let at = 0;
  while (at < block.length) {
    const colon = block.indexOf(':', at);
    const end = block.indexOf('\r\n', colon + 1);
    if (colon < 0 || end < 0) {
      throw withCode(new Error('keepalive-agent: malformed header block from the engine'), 'ERR_KEEPALIVE_AGENT_INTERNAL');
    }
    const value = block.charCodeAt(colon + 1) === 32 ? colon + 2 : colon + 1;
    raw.push(block.slice(at, colon), block.slice(value, end));
    at = end + 2;
  }
  return raw;
}

// The engine's version number (10, 11, 20) as Node's IncomingMessage spells it.
function httpVersion(v) {
  return v === 11 ? '1.1' : v === 20 ? '2.0' : v === 10 ? '1.0' : `${Math.floor(v / 10)}.${v % 10}`;
}

// The addon calls these once per response (timings in microseconds): the object a whole
// response resolves with, and the raw head of a streamed one (with its stream handle).
// rawTrailers: [name, value, ...] (lowercase names), undefined when there are none.
function makeResponse(status, version, block, reused, body, queued, dns, connect, tls, sent, ttfb, total, rawTrailers) {
  const rawHeaders = splitHeaderBlock(block);
  return {
    statusCode: status,
    statusMessage: STATUS_CODES[status] || '',
    ok: status >= 200 && status <= 299,
    httpVersion: httpVersion(version),
    httpVersionMajor: Math.floor(version / 10),
    httpVersionMinor: version % 10,
    headers: headersObject(rawHeaders),
    rawHeaders,
    body,
    reusedSocket: reused,
    timings: timingsObject(queued, dns, connect, tls, sent, ttfb, total),
    // As IncomingMessage's: named as headers are (repeats joined with ', ', set-cookie an array).
    trailers: rawTrailers === undefined ? NO_TRAILERS : headersObject(rawTrailers),
    rawTrailers: rawTrailers === undefined ? NO_RAW_TRAILERS : rawTrailers,
  };
}

// Timings in milliseconds (the engine counts microseconds).
function timingsObject(queued, dns, connect, tls, sent, ttfb, total) {
  return {
    queued: queued / 1000,
    dns: dns / 1000,
    connect: connect / 1000,
    tls: tls / 1000,
    sent: sent / 1000,
    ttfb: ttfb / 1000,
    total: total / 1000,
  };
}

function makeHead(status, version, block, reused, stream, queued, dns, connect, tls, sent, ttfb, total) {
  return {
    statusCode: status,
    httpVersion: httpVersion(version),
    httpVersionMajor: Math.floor(version / 10),
    httpVersionMinor: version % 10,
    rawHeaders: splitHeaderBlock(block),
    reusedSocket: reused,
    timings: timingsObject(queued, dns, connect, tls, sent, ttfb, total),
    stream,
  };
}

native.setFactories(makeResponse, makeHead);
const events = eventChannels.install(native);
// agent_keep_alive_source's values (AGENT_SOURCE_*).
const KEEP_ALIVE_SOURCES = ['default', 'argument', 'environment'];

// Why a body source stopped (the addon's enum src_stop).
const SRC_FAILED = 1;
const SRC_ABORTED = 2;

/**
 * Feeds a streamed request body to the engine: each chunk is copied into the addon's ring
 * buffer (sourcePush); when it does not fit whole, the pump waits until the engine has
 * taken enough (onPull) and pushes the rest. No engine thread ever waits for JS: with
 * nothing buffered, the engine's read is left pending in the addon until a push, the end
 * or a stop wakes it. A Readable is read in flowing mode and paused while the pump waits,
 * as pipe() does; another async iterable with for await.
 */
class BodyPump {
  constructor(iterable, length) {
    this.iterable = iterable;
    this.length = length;
    this.pushed = 0;
    this.error = null;
    this.done = false;
    this.onError = null;
    this.wake = null;
    this.onPull = () => {
      const wake = this.wake;
      this.wake = null;
      if (wake !== null) wake();
    };
  }

  run(source) {
    const body = this.iterable;
    if (isReadable(body)) this.#runReadable(source, body);
    else this.#runIterable(source, body);
  }

  // The next chunk as bytes, counted against the content-length; throws when it is not.
  #bytes(chunk) {
    const bytes = chunkBytes(chunk);
    this.pushed += bytes.byteLength;
    if (this.length >= 0 && this.pushed > this.length) {
      throw withCode(
        new Error(`the request body is longer than its content-length (${this.length})`),
        'ERR_HTTP_CONTENT_LENGTH_MISMATCH',
      );
    }
    return bytes;
  }

  #fail(source, e) {
    this.error = e;
    native.sourceAbort(source, SRC_FAILED);
    if (this.onError !== null) this.onError(e);
  }

  async #runIterable(source, iterable) {
    try {
      for await (const chunk of iterable) {
        let bytes = this.#bytes(chunk);
        while (bytes.byteLength > 0) {
          const taken = native.sourcePush(source, bytes);
          if (taken < 0) return; // the request is over: leaving the loop closes the iterable
          bytes = bytes.subarray(taken);
          if (bytes.byteLength > 0) {
            await new Promise((resolve) => {
              this.wake = resolve;
            });
          }
        }
      }
      native.sourceEnd(source);
    } catch (e) {
      this.#fail(source, e);
    } finally {
      this.done = true;
    }
  }

  #runReadable(source, readable) {
    let over = false; // nothing more to do
    let ended = false; // the Readable has emitted all its data
    let waiting = false; // a piece waits for room (the Readable is paused)
    const stop = () => {
      over = true;
      this.done = true;
      readable.off('data', onData);
      stopFinished();
    };
    const stopFinished = finished(readable, { writable: false }, (err) => {
      if (over) return;
      if (err) {
        stop();
        this.#fail(source, err);
        return;
      }
      // 'end' may come while the last piece still waits for room: it is sent first.
      ended = true;
      if (!waiting) {
        stop();
        native.sourceEnd(source);
      }
    });
    // The request is over, or the body is not one: stop reading and let the Readable go.
    const quit = (err) => {
      if (over) return;
      stop();
      if (err) this.#fail(source, err);
      readable.destroy();
    };
    const push = (bytes) => {
      const taken = native.sourcePush(source, bytes);
      if (taken < 0) return quit(null);
      if (taken < bytes.byteLength) {
        if (!waiting) readable.pause();
        waiting = true;
        const rest = bytes.subarray(taken);
        this.wake = () => {
          if (!over) push(rest);
        };
        return;
      }
      if (!waiting) return;
      waiting = false;
      if (ended) {
        stop();
        native.sourceEnd(source);
      } else {
        readable.resume();
      }
    };
    const onData = (chunk) => {
      let bytes;
      try {
        bytes = this.#bytes(chunk);
      } catch (e) {
        return quit(e);
      }
      if (bytes.byteLength > 0) push(bytes);
    };
    readable.on('data', onData);
  }

  /** The request failed: a Readable body that is still being read is destroyed. */
  stop() {
    if (!this.done && typeof this.iterable.destroy === 'function') this.iterable.destroy();
  }
}

// A Node Readable (or a readable-stream copy of one): read in flowing mode.
function isReadable(body) {
  return (
    body instanceof Readable ||
    (typeof body.on === 'function' && typeof body.pause === 'function' && typeof body.resume === 'function' &&
      typeof body.read === 'function' && typeof body.destroy === 'function')
  );
}

/**
 * A response body read from the engine piece by piece: each _read() submits one
 * agent_queue_read and pushes what it brings. While the stream is paused or full,
 * no read is in flight and the engine does not read the socket (backpressure).
 * The end sets the response's final timings and its trailers, before 'end' is emitted.
 */
class ResponseBody extends Readable {
  #handle;
  #res;
  #onClose;
  #reading = false;

  constructor(handle, res, onClose) {
    super({ highWaterMark: 64 * 1024 });
    this.#handle = handle;
    this.#res = res;
    this.#onClose = onClose;
  }

  /** The response's trailers (as IncomingMessage's): `{}` until the body has ended. */
  get trailers() {
    return this.#res.trailers;
  }

  /** The response's trailers as [name, value, ...]: `[]` until the body has ended. */
  get rawTrailers() {
    return this.#res.rawTrailers;
  }

  /** Bytes the engine holds for this stream that were not handed to JS yet (bounded). */
  get engineBuffered() {
    return this.#handle === null ? 0 : native.streamBuffered(this.#handle);
  }

  _read() {
    if (this.#reading || this.#handle === null) return;
    let started;
    try {
      started = native.streamRead(this.#handle, this.#onData);
    } catch (e) {
      this.destroy(e);
      return;
    }
    if (started) this.#reading = true;
    else this.destroy(native.makeError(codes.CANCELLED, 'the response stream was closed'));
  }

  #onData = (err, chunk, total, rawTrailers) => {
    this.#reading = false;
    if (err) {
      this.#close();
      this.destroy(err);
    } else if (chunk === null) {
      const res = this.#res;
      if (total !== undefined) res.timings.total = total;
      if (rawTrailers !== undefined) {
        res.trailers = headersObject(rawTrailers);
        res.rawTrailers = rawTrailers;
      }
      this.#close();
      this.push(null);
    } else {
      this.push(chunk);
    }
  };

  // As Node's IncomingMessage: the error is emitted only to someone listening for it
  // (for await, pipeline and finished() do); it stays in `errored` either way.
  _destroy(err, callback) {
    this.#close();
    callback(this.listenerCount('error') > 0 ? err : null);
  }

  #close() {
    if (this.#handle === null) return;
    native.streamFree(this.#handle);
    this.#handle = null;
    const onClose = this.#onClose;
    this.#onClose = null;
    onClose();
  }
}

function abortError(signal, cause) {
  const reason = signal.reason;
  return new AbortError(undefined, { cause: reason !== undefined ? reason : cause });
}

function destroyedError() {
  return withCode(new Error('The agent was destroyed'), 'ERR_AGENT_DESTROYED');
}

function closedError() {
  return withCode(new Error('The agent was closed'), 'ERR_AGENT_CLOSED');
}

// Subscribes to an AbortSignal (or an AWS SDK-style signal with only `onabort`).
function onAbort(signal, fn) {
  if (typeof signal.addEventListener === 'function') {
    signal.addEventListener('abort', fn, { once: true });
    return () => signal.removeEventListener('abort', fn);
  }
  const previous = signal.onabort;
  signal.onabort = function (...args) {
    fn();
    if (typeof previous === 'function') return previous.apply(this, args);
  };
  return () => {
    signal.onabort = previous;
  };
}

// ----------------------------------------------------------------------------------------
// Agent

/**
 * The agent. Besides its own API (request, stream, stats), it is an undici Dispatcher
 * (dispatch, close, destroy, compose, and EventEmitter as undici's base class is), so
 * fetch, undici.request, undici.stream and setGlobalDispatcher run on the engine.
 */
class Agent extends EventEmitter {
  #handle;
  #destroyed = false;
  #closed = false;
  #keepAlive;
  #keepAliveFrom; // [source, description]
  #options;
  #bodies = new Set(); // WeakRefs to response bodies whose native stream is open
  #pending = 0; // request() calls and dispatches not yet settled
  #dispatches = new Set(); // dispatches not yet ended
  #onIdle = []; // close() callbacks waiting for #pending and #bodies to empty
  #dispatchHooks = {
    open: (o, signal) => this.#stream({ ...o, signal }),
    onAbort,
    ended: (d) => {
      if (this.#dispatches.delete(d)) this.#settled();
    },
  };

  /**
   * @param {object} [options] Node's option names (see index.d.ts). The process switch
   *   KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED (or AWS_NODEJS_CONNECTION_REUSE_ENABLED) =
   *   false/0 turns reuse off for every agent, `keepAlive: true` included, unless
   *   `ignoreEnvironment: true`; `keepAlive: false` is always off. Default on.
   */
  constructor(options = undefined) {
    super();
    const normalized = normalizeAgentOptions(options);
    const eventsId = events.reserve(normalized);
    try {
      this.#handle = native.create(normalized);
    } catch (e) {
      if (e && e.agentCode === codes.INVALID_OPTION && typeof e.message === 'string') {
        e.message = nodeOptionNames(e.message);
      }
      throw e;
    }
    this.#keepAlive = native.keepAlive(this.#handle);
    this.#options = Object.freeze({ ...(options || {}) });
    this.#keepAliveFrom = [KEEP_ALIVE_SOURCES[native.keepAliveSource(this.#handle)], nodeOptionNames(native.keepAliveDescribe(this.#handle))];
    events.attach(eventsId, this);
  }

  /** The effective keep-alive setting (after the environment switch). */
  get keepAlive() {
    return this.#keepAlive;
  }

  /** What decided `keepAlive`: 'default', 'argument' (the keepAlive option) or 'environment'. */
  get keepAliveSource() {
    return this.#keepAliveFrom[0];
  }

  /** `keepAlive` in one sentence, with what decided it and what the environment said. */
  get keepAliveDescription() {
    return this.#keepAliveFrom[1];
  }

  /** Whether the engine's events reach diagnostics_channel for this agent (decided at creation). */
  get eventsEnabled() {
    return native.eventsOn(this.#handle);
  }

  /**
   * Opens connections to the origin of `url` in the background (TLS included) until it has
   * `count` (idle, busy or opening; within maxSockets), so that the first requests find
   * them warm. Returns at once; they appear in stats().idle as they open. Nothing happens
   * with keep-alive off or `count` 0; failures show in the events, not here.
   */
  preconnect(url, count = 1) {
    const refusal = this.#refusal();
    if (refusal !== null) throw refusal;
    if (url instanceof URL) url = url.href;
    validateString(url, 'url');
    validateInteger(count, 'count', 0, 0xffffffff);
    native.preconnect(this.#handle, url, count);
  }

  /** The options this agent was created with (as given). */
  get options() {
    return this.#options;
  }

  /** Whether destroy() was called. */
  get destroyed() {
    return this.#destroyed;
  }

  /** Whether close() (or destroy()) was called: no new request is taken. */
  get closed() {
    return this.#closed || this.#destroyed;
  }

  // Why a new request is refused, or null.
  #refusal() {
    if (this.#destroyed) return destroyedError();
    if (this.#closed) return closedError();
    return null;
  }

  /**
   * Sends a request; resolves with the whole response once its body has arrived.
   * `agent.request(options)` or `agent.request(url, options)`.
   */
  request(input, extra = undefined) {
    // Not an async function: without a signal, the addon's own promise is returned as it
    // is (every failure still comes as a rejection, never a throw).
    let o;
    let promise;
    try {
      o = normalizeRequest(input, extra);
      const refused = this.#refusal();
      if (refused !== null) throw refused;
      if (o.bodyStream === undefined && o.signal === undefined) {
        promise = native.request(this.#handle, o.method, o.url, o.headers, o.body, o.timeout);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    if (promise === undefined) {
      promise = o.bodyStream !== undefined ? this.#stream(o).then((res) => this.#collect(res)) : this.#requestWithSignal(o);
    }
    // close() waits for it; the caller gets the promise as it is.
    this.#pending++;
    promise.then(this.#requestSettled, this.#requestSettled);
    return promise;
  }

  #requestSettled = () => {
    this.#pending--;
    this.#settled();
  };

  async #requestWithSignal(o) {
    const signal = o.signal;
    if (signal.aborted) throw abortError(signal);
    const handle = this.#handle;
    const promise = native.request(handle, o.method, o.url, o.headers, o.body, o.timeout);
    const id = native.lastId();
    const unsubscribe = onAbort(signal, () => native.cancel(handle, id));
    try {
      return await promise;
    } catch (e) {
      if (signal.aborted && e && e.agentCode === codes.CANCELLED) throw abortError(signal, e);
      throw e;
    } finally {
      unsubscribe();
    }
  }

  /**
   * Sends a request; resolves once the response head is in, with the body as a Readable
   * read from the engine as it is consumed. `agent.stream(options)` or
   * `agent.stream(url, options)`, with the options of request().
   */
  async stream(input, extra = undefined) {
    const o = normalizeRequest(input, extra);
    const refused = this.#refusal();
    if (refused !== null) throw refused;
    this.#pending++; // close() waits for the head; then for the body (#bodies)
    try {
      return await this.#stream(o);
    } finally {
      this.#requestSettled();
    }
  }

  async #stream(o) {
    const signal = o.signal;
    if (signal !== undefined && signal.aborted) throw abortError(signal);
    const pump = o.bodyStream !== undefined ? new BodyPump(o.bodyStream, o.bodyLength) : null;
    const spec = pump !== null ? { length: o.bodyLength, onPull: pump.onPull } : undefined;
    const handle = this.#handle;
    const [promise, id, source] = native.streamRequest(handle, o.method, o.url, o.headers, o.body, spec, o.timeout);
    if (pump !== null) pump.run(source);
    let unsubscribe = null;
    if (signal !== undefined) {
      unsubscribe = onAbort(signal, () => {
        native.cancel(handle, id);
        if (source !== undefined) native.sourceAbort(source, SRC_ABORTED);
      });
    }
    let raw;
    try {
      raw = await promise;
    } catch (e) {
      if (unsubscribe !== null) unsubscribe();
      if (pump !== null) pump.stop();
      throw this.#streamError(e, o, pump, source);
    }
    if (unsubscribe !== null) unsubscribe();
    unsubscribe = null;
    const res = finishResponse(raw);
    // Weakly held: a body dropped unread is collected, and its finalizer aborts the stream.
    let ref = null;
    const body = new ResponseBody(raw.stream, res, () => {
      this.#bodies.delete(ref);
      if (unsubscribe !== null) unsubscribe();
      this.#settled();
    });
    ref = new WeakRef(body);
    this.#bodies.add(ref);
    res.body = body;
    if (signal !== undefined) {
      if (signal.aborted) {
        body.destroy(abortError(signal));
        throw abortError(signal);
      }
      unsubscribe = onAbort(signal, () => body.destroy(abortError(signal)));
    }
    if (pump !== null) {
      // A body that turns out longer than its content-length, after the head: the
      // response is not to be trusted.
      if (pump.error !== null) body.destroy(pump.error);
      else pump.onError = (e) => body.destroy(e);
    }
    return res;
  }

  // The error a failed stream request rejects with: the library's, unless the body source
  // explains it better (the caller's iterable failed, the request was aborted, the agent
  // destroyed). A deadline that passes while the engine waits for the body is the
  // library's own AGENT_CODE_TIMEOUT.
  #streamError(e, o, pump, source) {
    const signal = o.signal;
    if (signal !== undefined && signal.aborted && e && (e.agentCode === codes.CANCELLED || e.agentCode === codes.BODY_SOURCE)) {
      return abortError(signal, e);
    }
    if (source === undefined || !e || e.agentCode !== codes.BODY_SOURCE) return e;
    if (pump.error !== null) {
      const err = native.makeError(codes.BODY_SOURCE, `the request body failed: ${pump.error.message}`);
      err.cause = pump.error;
      return err;
    }
    if (this.#destroyed) return native.makeError(codes.CANCELLED, 'the agent was destroyed');
    return e;
  }

  // request() with a streamed request body: the response read whole.
  async #collect(res) {
    const chunks = [];
    for await (const chunk of res.body) chunks.push(chunk);
    res.body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    return res;
  }

  /**
   * Counters and gauges of the whole agent, or of one origin (e.g. 'http://127.0.0.1:8080'):
   * one key per statistics field of the library (camelCase), then keepAlive.
   */
  stats(origin = undefined) {
    if (origin !== undefined) {
      if (origin instanceof URL) origin = origin.href;
      validateString(origin, 'origin');
    }
    if (this.#destroyed) throw destroyedError();
    return native.stats(this.#handle, origin);
  }

  /**
   * Closes every connection at once, rejects in-flight requests and fails open response
   * bodies (AGENT_CODE_CANCELLED); dispatched requests get `err`, or undici's
   * ClientDestroyedError (UND_ERR_DESTROYED). Idempotent; the work is done when it returns.
   * As undici's: `destroy([err][, callback])`, a promise without a callback. Without it,
   * the agent is freed when garbage-collected or at exit.
   */
  destroy(err = undefined, callback = undefined) {
    if (typeof err === 'function') {
      callback = err;
      err = undefined;
    }
    if (callback !== undefined && typeof callback !== 'function') throw invalidArgument('invalid callback');
    if (!this.#destroyed) {
      this.#destroyed = true;
      const reason = err instanceof Error ? err : clientDestroyed();
      for (const d of [...this.#dispatches]) d.fail(reason);
      for (const ref of this.#bodies) {
        const body = ref.deref();
        if (body !== undefined) body.destroy(native.makeError(codes.CANCELLED, 'the agent was destroyed'));
      }
      this.#bodies.clear();
      native.destroy(this.#handle);
      this.#settled();
    }
    if (callback === undefined) return Promise.resolve();
    queueMicrotask(() => callback(null, null));
    return undefined;
  }

  /**
   * Takes no new request, waits for those in flight (dispatched or not, their bodies read
   * to the end or dropped), then destroys the agent: its idle connections close. As
   * undici's: `close([callback])`, a promise without a callback.
   */
  close(callback = undefined) {
    if (callback === undefined) {
      return new Promise((resolve, reject) => this.close((e) => (e ? reject(e) : resolve())));
    }
    if (typeof callback !== 'function') throw invalidArgument('invalid callback');
    if (this.#destroyed && !this.#closed) {
      queueMicrotask(() => callback(clientDestroyed(), null));
      return undefined;
    }
    this.#closed = true;
    this.#onIdle.push(callback);
    this.#settled();
    return undefined;
  }

  // Something in flight ended: a close() waiting for the last one finishes.
  #settled() {
    if (this.#onIdle.length === 0) return;
    if (!this.#destroyed && (this.#pending > 0 || this.#dispatches.size > 0 || this.#bodies.size > 0)) return;
    const callbacks = this.#onIdle;
    this.#onIdle = [];
    this.destroy();
    queueMicrotask(() => {
      for (const cb of callbacks) cb(null, null);
    });
  }

  /**
   * undici's Dispatcher.dispatch: sends `options` (origin, path, method, headers, query,
   * body, signal, headersTimeout, bodyTimeout) and drives `handler` through it, in
   * undici 7's form (onRequestStart, onResponseStart, onResponseData, onResponseEnd,
   * onResponseError, with a controller) or the older one (onConnect, onHeaders, onData,
   * onComplete, onError). Returns true (requests queue in the engine, never here), or
   * false when the request was refused (the handler was told).
   */
  dispatch(options, handler) {
    if (handler === null || typeof handler !== 'object') throw invalidArgument('handler must be an object');
    Dispatch.check(handler, options);
    const d = new Dispatch(handler, this.#dispatchHooks);
    let o;
    try {
      const refused = this.#refusal();
      if (refused !== null) throw refused.code === 'ERR_AGENT_DESTROYED' ? clientDestroyed() : clientClosed();
      const u = dispatchOptions(options);
      o = normalizeRequest({ method: u.method, url: u.url, headers: u.headers, body: u.body });
      o.headersTimeout = u.headersTimeout;
      o.bodyTimeout = u.bodyTimeout;
      o.signal = u.signal;
    } catch (e) {
      d.refuse(e);
      return false;
    }
    this.#dispatches.add(d);
    d.start(o);
    return true;
  }

  /**
   * undici's Dispatcher.compose: a dispatcher whose dispatch runs through `interceptors`
   * (e.g. undici's interceptors.redirect(), retry(), dump()) before this agent's.
   */
  compose(...args) {
    const interceptors = Array.isArray(args[0]) ? args[0] : args;
    let dispatch = this.dispatch.bind(this);
    for (const interceptor of interceptors) {
      if (interceptor == null) continue;
      if (typeof interceptor !== 'function') {
        throw new TypeError(`invalid interceptor, expected function received ${typeof interceptor}`);
      }
      const intercepted = interceptor(dispatch);
      if (typeof intercepted !== 'function' || intercepted.length !== 2) throw new TypeError('invalid interceptor');
      // Interceptors are written for undici 7's handler form: an old-form handler is adapted.
      dispatch = (opts, handler) => intercepted(opts, ModernHandler.wrap(handler));
    }
    return new Proxy(this, {
      get: (target, key) => {
        if (key === 'dispatch') return dispatch;
        const value = Reflect.get(target, key, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }
}

/** The version of the native library, e.g. '0.1.0'. */
const version = native.version();

module.exports = { Agent, AbortError, codes, limits, version, channels: eventChannels.channels };
// Internal, for the binding's own tests.
Object.defineProperty(module.exports, '_native', { value: native, enumerable: false });
Object.defineProperty(module.exports, '_nodeOptionNames', { value: nodeOptionNames, enumerable: false });
