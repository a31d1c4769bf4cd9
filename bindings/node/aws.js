'use strict';
// KeepAliveHttpHandler: an AWS SDK for JavaScript v3 HttpHandler running on keepalive-agent.
//
//   const { DynamoDBClient } = require('@aws-sdk/client-dynamodb');
//   const { KeepAliveHttpHandler } = require('keepalive-agent/aws');
//   const client = new DynamoDBClient({ requestHandler: new KeepAliveHttpHandler({ keepAlive: false }) });
//
// Options are the Agent's (keepAlive, maxSockets, connectTimeout, ca, proxy, noProxy,
// proxyFromEnv, httpVersion, ...) plus the names @smithy/node-http-handler users already pass:
// requestTimeout (ms, per request; 0 = none) and connectionTimeout (ms, an alias of
// connectTimeout). AWS_NODEJS_CONNECTION_REUSE_ENABLED (or
// KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED) = false/0 turns reuse off for every handler,
// keepAlive: true included, unless ignoreEnvironment: true. proxy
// left out: the environment's proxy variables decide, as for the Agent (http_proxy,
// https_proxy, no_proxy, ... as curl reads them); proxy: '' means none.
//
// Errors keep the Agent's `code` (ECONNRESET, ECONNREFUSED, ETIMEDOUT, EPIPE, ENOTFOUND,
// ...); network and timeout errors are also named 'TimeoutError' like the SDK's own handler
// does, so the SDK's retry strategy treats them as transient. An aborted request rejects
// with name 'AbortError', which the SDK never retries.
//
// Bodies stream both ways, as with the SDK's NodeHttpHandler: a Readable (or another async
// iterable) request body is read as it is sent (S3 PutObject from fs.createReadStream), and
// the response body is a Readable read from the engine as it is consumed (S3 GetObject
// piped to a file), so neither is ever held whole in memory.

const { STATUS_CODES } = require('node:http');
const { Agent, limits } = require('./index.js');

// Option names that configure the Agent itself (a change re-creates it).
const AGENT_OPTIONS = new Set([
  'keepAlive',
  'ignoreEnvironment',
  'events',
  'eventHeaders',
  'keepAliveMsecs',
  'keepAliveInterval',
  'keepAliveProbes',
  'maxSockets',
  'maxFreeSockets',
  'maxTotalSockets',
  'scheduling',
  'timeout',
  'keepAliveTimeoutBuffer',
  'keepAliveMaxTimeout',
  'socketActiveTTL',
  'connectTimeout',
  'connectionTimeout',
  'headersTimeout',
  'bodyTimeout',
  'retryStale',
  'maxResponseSize',
  'ca',
  'useSystemRoots',
  'rejectUnauthorized',
  'userAgent',
  'proxy',
  'noProxy',
  'proxyFromEnv',
  'resolve',
  'dnsCacheMsecs',
  'happyEyeballsDelay',
  'cert',
  'key',
  'httpVersion',
]);

// Codes the SDK's node handler renames to TimeoutError (ECONNRESET, EPIPE, ETIMEDOUT).
const TIMEOUT_NAMED = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT']);

function agentOptionsOf(config) {
  const out = {};
  for (const key of Object.keys(config)) {
    if (!AGENT_OPTIONS.has(key) || config[key] === undefined) continue;
    if (key === 'connectionTimeout') {
      if (config.connectTimeout === undefined) out.connectTimeout = config.connectionTimeout;
    } else {
      out[key] = config[key];
    }
  }
  return out;
}

// @smithy/querystring-builder's escaping: encodeURIComponent plus !'()*.
function escapeUri(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The SDK's query object ({key: value | value[] | null}) as a query string (keys sorted). */
function buildQueryString(query) {
  const parts = [];
  for (const rawKey of Object.keys(query).sort()) {
    const value = query[rawKey];
    const key = escapeUri(rawKey);
    if (Array.isArray(value)) {
      for (const v of value) parts.push(`${key}=${escapeUri(v)}`);
    } else {
      let entry = key;
      if (value || typeof value === 'string') entry += `=${escapeUri(value)}`;
      parts.push(entry);
    }
  }
  return parts.join('&');
}

/** The URL of an SDK HttpRequest {protocol, hostname, port, path, query, fragment, username, password}. */
function requestUrl(request) {
  const protocol = request.protocol || 'https:';
  let host = request.hostname || '';
  if (host.includes(':') && !host.startsWith('[')) host = `[${host}]`;
  const port = request.port ? `:${request.port}` : '';
  let path = request.path || '/';
  if (!path.startsWith('/')) path = `/${path}`;
  // The SDK escapes paths already; escape only what may not appear in one (a space...).
  path = path.replace(/[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]/g, (c) => encodeURIComponent(c));
  const qs = request.query ? buildQueryString(request.query) : '';
  if (qs) path += `?${qs}`;
  if (request.fragment) path += `#${request.fragment}`;
  return `${protocol}//${host}${port}${path}`;
}

// The SDK's request body as the Agent takes it: bytes as they are; a Readable, a web
// ReadableStream or another async iterable streamed as it is; a Blob or a synchronous
// iterable of chunks read into bytes first.
async function requestBody(body) {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (typeof body[Symbol.asyncIterator] === 'function') return body;
  if (typeof Blob !== 'undefined' && body instanceof Blob) return new Uint8Array(await body.arrayBuffer());
  if (typeof body[Symbol.iterator] === 'function') {
    const chunks = [];
    for (const chunk of body) {
      chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }
    return Buffer.concat(chunks);
  }
  throw Object.assign(new TypeError('keepalive-agent/aws: unsupported request body type'), {
    code: 'ERR_INVALID_ARG_TYPE',
  });
}

class KeepAliveHttpHandler {
  /**
   * 'http/1.1' whatever httpVersion says: the SDK then sends HTTP/1.1-style requests (a
   * `host` header; on an HTTP/2 connection the engine drops it and sends the URL's host as
   * `:authority`, the same value the SDK signed). With
   * 'h2' it would add an `:authority` header itself and build h2-only clients (STS), which
   * an `httpVersion: 'auto'` origin that answers HTTP/1.1 could not serve.
   * @type {{handlerProtocol: string}}
   */
  metadata = { handlerProtocol: 'http/1.1' };

  #config;
  #agent = null;
  #agentInflight = 0;
  #retired = new Map(); // agents replaced by updateHttpClientConfig -> requests in flight

  /** Returns `instanceOrOptions` if it already is a handler, else a new handler (like NodeHttpHandler.create). */
  static create(instanceOrOptions) {
    if (instanceOrOptions && typeof instanceOrOptions.handle === 'function') return instanceOrOptions;
    return new KeepAliveHttpHandler(instanceOrOptions);
  }

  constructor(options = undefined) {
    if (options !== undefined && options !== null && typeof options !== 'object') {
      throw Object.assign(new TypeError('KeepAliveHttpHandler options must be an object'), {
        code: 'ERR_INVALID_ARG_TYPE',
      });
    }
    this.#config = { ...(options || {}) };
    // Created now, so bad options throw here (as the Agent would), not at the first call.
    this.#agent = new Agent(agentOptionsOf(this.#config));
  }

  /** The Agent serving requests (created lazily after a config change). */
  get agent() {
    if (this.#agent === null) {
      this.#agent = new Agent(agentOptionsOf(this.#config));
      this.#agentInflight = 0;
    }
    return this.#agent;
  }

  async handle(request, { abortSignal, requestTimeout } = {}) {
    const agent = this.agent;
    const timeoutOpt = requestTimeout !== undefined ? requestTimeout : this.#config.requestTimeout;
    const timeout = typeof timeoutOpt === 'number' && timeoutOpt > 0 ? Math.min(Math.ceil(timeoutOpt), limits.maxMsecs) : 0;
    // The SDK's headers object is passed as it is (the Agent copies what it sends); a copy
    // only when basic credentials add a header to it.
    let headers = request.headers || undefined;
    if ((request.username != null || request.password != null) && !hasHeader(headers || {}, 'authorization')) {
      const token = Buffer.from(`${request.username ?? ''}:${request.password ?? ''}`).toString('base64');
      headers = { ...(headers || {}), authorization: `Basic ${token}` };
    }
    this.#track(agent, +1);
    let res;
    try {
      if (abortSignal && abortSignal.aborted) throw abortError(abortSignal);
      res = await agent.stream({
        method: request.method || 'GET',
        url: requestUrl(request),
        headers,
        body: await requestBody(request.body),
        timeout,
        signal: abortSignal || undefined,
      });
    } catch (e) {
      this.#track(agent, -1);
      throw classify(e, abortSignal);
    }
    // The agent stays in use (a config change does not destroy it) until the body is done:
    // read to its end, failed or destroyed.
    res.body.once('close', () => this.#track(agent, -1));
    // The SDK's form: one string per name (set-cookie, the only array, joined with ',').
    const responseHeaders = res.headers;
    const cookies = responseHeaders['set-cookie'];
    if (cookies !== undefined) responseHeaders['set-cookie'] = cookies.join(',');
    return {
      response: {
        statusCode: res.statusCode,
        reason: STATUS_CODES[res.statusCode],
        headers: responseHeaders,
        body: res.body,
      },
    };
  }

  /** Closes every connection (the SDK calls this from client.destroy()). */
  destroy() {
    if (this.#agent !== null) this.#agent.destroy();
    this.#agent = null;
    for (const agent of this.#retired.keys()) agent.destroy();
    this.#retired.clear();
  }

  /** Sets one config value; agent options take effect for the next request (on a new agent). */
  updateHttpClientConfig(key, value) {
    this.#config = { ...this.#config, [key]: value };
    if (typeof key === 'string' && AGENT_OPTIONS.has(key) && this.#agent !== null) {
      const old = this.#agent;
      this.#agent = null;
      if (this.#agentInflight === 0) old.destroy();
      else this.#retired.set(old, this.#agentInflight);
    }
  }

  httpHandlerConfigs() {
    return { ...this.#config };
  }

  #track(agent, delta) {
    if (agent === this.#agent) {
      this.#agentInflight += delta;
      return;
    }
    const n = (this.#retired.get(agent) || 0) + delta;
    if (n <= 0) {
      this.#retired.delete(agent);
      agent.destroy();
    } else {
      this.#retired.set(agent, n);
    }
  }
}

function hasHeader(headers, name) {
  return Object.keys(headers).some((k) => k.toLowerCase() === name);
}

function abortError(signal) {
  const reason = signal.reason;
  const err = new Error(reason !== undefined && !(reason instanceof Error) ? String(reason) : 'Request aborted', {
    cause: reason instanceof Error ? reason : undefined,
  });
  err.name = 'AbortError';
  err.code = 'ABORT_ERR';
  return err;
}

// What the SDK's retry strategy expects: AbortError for aborts; TimeoutError (plus the
// Node code) for resets, broken pipes and timeouts, as @smithy/node-http-handler does.
function classify(e, abortSignal) {
  if (!e || typeof e !== 'object') return e;
  if (e.name === 'AbortError' || (abortSignal && abortSignal.aborted)) {
    if (e.name !== 'AbortError') {
      const err = abortError(abortSignal);
      err.cause = e;
      return err;
    }
    return e;
  }
  if (TIMEOUT_NAMED.has(e.code)) e.name = 'TimeoutError';
  return e;
}

module.exports = { KeepAliveHttpHandler, buildQueryString, requestUrl };
