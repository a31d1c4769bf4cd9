// Type declarations for keepalive-agent (Node binding of the keepalive-agent engine).

/// <reference types="node" />

import { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';

/** Options of {@link Agent}: Node's names where Node has one (http.Agent, agentkeepalive, undici). */
export interface AgentOptions {
  /**
   * Pool and reuse connections (default true). `false`: every request sends
   * `Connection: close` on a fresh connection, whatever the environment says.
   * KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED (or its alias AWS_NODEJS_CONNECTION_REUSE_ENABLED)
   * set to `false`/`0` is a kill switch: reuse is off even with `true` here, unless
   * `ignoreEnvironment`. `agent.keepAliveSource` tells what decided.
   */
  keepAlive?: boolean;
  /** The process switch KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED does not apply to this agent (default false). */
  ignoreEnvironment?: boolean;
  /**
   * Publish the engine's events on the `keepalive-agent:*` diagnostics channels (see
   * `channels`). Left out: on when one of those channels has a subscriber when the agent is
   * made. `false`: never (no callback in the engine at all).
   */
  events?: boolean;
  /** The events `request_sent` and `response_head` carry the header lines (credentials `[redacted]`). Default false. */
  eventHeaders?: boolean;
  /** Initial delay of TCP keep-alive probes, ms (TCP_KEEPIDLE = ceil(ms/1000) s). 0 = 1000. Max 32767000. */
  keepAliveMsecs?: number;
  /** Interval between TCP keep-alive probes, ms (TCP_KEEPINTVL). 0 = the OS default. */
  keepAliveInterval?: number;
  /** Unanswered probes before the connection is dropped (TCP_KEEPCNT, 0..127). 0 = the OS default. */
  keepAliveProbes?: number;
  /** Connections per origin (scheme, host, port); extra requests queue. 0 or Infinity = unlimited (default). */
  maxSockets?: number;
  /** Idle connections kept per origin (default 256). */
  maxFreeSockets?: number;
  /** Connections across all origins. 0 or Infinity = unlimited (default). */
  maxTotalSockets?: number;
  /** Which idle connection is reused first (default 'lifo'). */
  scheduling?: 'lifo' | 'fifo';
  /** An idle pooled connection is closed after this many ms (default 4000; 0 = never). */
  timeout?: number;
  /** Subtracted from a server's `Keep-Alive: timeout=N` hint, ms (default 1000). */
  keepAliveTimeoutBuffer?: number;
  /** Cap on a server's `Keep-Alive: timeout` hint, ms (default 600000). */
  keepAliveMaxTimeout?: number;
  /** A connection older than this many ms is not reused (default 0 = no limit). */
  socketActiveTTL?: number;
  /** DNS + TCP + TLS handshake limit, ms (default 10000; 0 = none). */
  connectTimeout?: number;
  /** From request sent to complete response head, ms (default 300000; 0 = none). */
  headersTimeout?: number;
  /** Longest gap between two body chunks, ms (default 300000; 0 = none). */
  bodyTimeout?: number;
  /** Retry idempotent requests once when a reused connection turns out stale (default true). */
  retryStale?: boolean;
  /** Larger response bodies fail with AGENT_CODE_RESPONSE_TOO_LARGE (default 0 = unlimited). */
  maxResponseSize?: number;
  /** Extra trust anchors (PEM), added to the system roots. */
  ca?: string | Uint8Array | ReadonlyArray<string | Uint8Array>;
  /** Trust the platform's CA store (default true). */
  useSystemRoots?: boolean;
  /** `false` accepts any server certificate. For tests against throw-away servers only. */
  rejectUnauthorized?: boolean;
  /** User-Agent sent when a request sets none (default `keepalive-agent/<version>`). */
  userAgent?: string;
  /**
   * The proxy for every request, overriding the environment: `http://host:port` or
   * `https://host:port` (TLS to the proxy), with optional percent-encoded `user:password@`
   * (Basic credentials, sent to the proxy only); port 1080 when left out. http:// URLs go
   * to the proxy in absolute form, https:// ones through a `CONNECT` tunnel. `''` means no
   * proxy at all, whatever the environment says.
   */
  proxy?: string;
  /**
   * Hosts that bypass the proxy, overriding `NO_PROXY`: names (each also matches the names
   * under it; a leading `.` or `*.` is the same), IP addresses, CIDR blocks, or `'*'`. A
   * string is a comma-separated list.
   */
  noProxy?: string | ReadonlyArray<string>;
  /**
   * Read the proxy variables as curl does (default true): `http_proxy` (lower case only)
   * for http, `https_proxy`/`HTTPS_PROXY` for https, `all_proxy`/`ALL_PROXY` for both,
   * `no_proxy`/`NO_PROXY`. Read once, when the agent is made; `proxy` and `noProxy` win.
   */
  proxyFromEnv?: boolean;
  /**
   * Name overrides, curl's `--resolve`: `'host:port:address[,address...]'` (IPv6 plain or
   * in brackets). Requests to that host and port connect to those addresses, in order
   * (happy eyeballs), without a lookup; TLS still checks the certificate against `host`.
   */
  resolve?: string | ReadonlyArray<string>;
  /** How long resolved addresses are reused, ms (default 60000; 0 = look up for every new connection). */
  dnsCacheMsecs?: number;
  /**
   * With several addresses, the next is tried after this many ms or as soon as the
   * previous attempt fails; the first to connect wins (RFC 8305; default 250).
   */
  happyEyeballsDelay?: number;
  /** Client certificate chain for mutual TLS (PEM), as Node's tls `cert`; needs `key`. */
  cert?: string | Uint8Array;
  /** Private key of `cert` (PKCS#8, PKCS#1 or SEC1 PEM, unencrypted), as Node's tls `key`. */
  key?: string | Uint8Array;
  /**
   * Which HTTP versions to speak (default `'http1'`, the library's):
   * - `'http1'`: HTTP/1.1 only.
   * - `'auto'`: over TLS, offer h2 then http/1.1 by ALPN and let the server choose; plain
   *   http stays HTTP/1.1.
   * - `'http2'`: HTTP/2 over TLS only (a server that does not choose h2 fails the request:
   *   nginx ends the handshake with an alert, `AGENT_CODE_TLS` "... NoApplicationProtocol");
   *   plain http stays HTTP/1.1.
   * - `'h2c-prior-knowledge'`: HTTP/2 on plain http too, without an upgrade (curl's
   *   `--http2-prior-knowledge`); h2 by ALPN over TLS.
   *
   * Requests to an HTTP/2 origin share one connection, as many at once as the server allows,
   * then another within `maxSockets`; with `keepAlive: false`, one request per connection.
   * HTTP/2 costs about 2.5× the CPU of HTTP/1.1 per request one at a time; it pays when many
   * requests run at once to one origin.
   */
  httpVersion?: 'auto' | 'http1' | 'http2' | 'h2c-prior-knowledge';
}

export type RequestHeaders =
  | Record<string, string | number | ReadonlyArray<string | number> | undefined>
  | ReadonlyArray<readonly [string, string | number]>
  | ReadonlyArray<string>
  | Iterable<readonly [string, string]>;

/** A piece of a streamed request body: bytes, or a string sent as UTF-8. */
export type BodyChunk = Uint8Array | ArrayBufferView | ArrayBuffer | string;

/**
 * A request body: whole (a string, sent as UTF-8, or bytes), or streamed (a Readable, a web
 * ReadableStream or any async iterable of chunks), read as it is sent. A streamed body is
 * sent with `Content-Length` when the headers give one (then exactly that many bytes must
 * come), otherwise chunked; it cannot be replayed, so a stale keep-alive connection fails
 * the request (ECONNRESET, AGENT_CODE_STALE_CONNECTION) where a whole body is retried.
 */
export type RequestBody =
  | string
  | Uint8Array
  | ArrayBufferView
  | ArrayBuffer
  | Readable
  | AsyncIterable<BodyChunk>
  | null;

export interface RequestOptions {
  /** HTTP method, a token; upper-cased like Node (default 'GET'). */
  method?: string;
  /** Absolute http:// or https:// URL. */
  url: string | URL;
  /** Object (array values repeat the header), [name, value] pairs, a flat [name, value, ...] list, or a Headers/Map. */
  headers?: RequestHeaders;
  /** Request body: see {@link RequestBody}. */
  body?: RequestBody;
  /**
   * Overall deadline in ms covering queueing, connecting, sending (a streamed body too) and
   * reading (with stream(), the whole body) (0 = none).
   */
  timeout?: number;
  /**
   * Cancels the request: the promise rejects with an AbortError; with stream(), after the
   * head, the body is destroyed with an AbortError.
   */
  signal?: AbortSignal;
}

/** Request timings in milliseconds (fractional). Phases are 0 when they did not happen. */
export interface Timings {
  /** Waiting for a connection or a free slot. */
  queued: number;
  dns: number;
  connect: number;
  tls: number;
  /** From the start until the request was handed to the connection. */
  sent: number;
  /** From the start until the response head arrived. */
  ttfb: number;
  /** From the start until the body was complete. */
  total: number;
}

export interface Response {
  statusCode: number;
  /** Whether the status is in 200-299, as fetch's Response.ok. */
  ok: boolean;
  /** Standard reason phrase for the status (http.STATUS_CODES), '' if none. */
  statusMessage: string;
  /** '1.1', '1.0' or '2.0' (HTTP/2), as Node's IncomingMessage. */
  httpVersion: string;
  /** 1 or 2. */
  httpVersionMajor: number;
  /** 1 or 0 (0 for HTTP/2). */
  httpVersionMinor: number;
  /**
   * Lowercase names, like Node's IncomingMessage.headers: set-cookie is always an array;
   * duplicates of single-valued fields (content-type, content-length, ...) keep the first;
   * cookie joins with '; '; other repeated headers join with ', '.
   */
  headers: Record<string, string | string[]>;
  /** Every header line as [name, value, name, value, ...] (names lowercase). */
  rawHeaders: string[];
  body: Buffer;
  /**
   * Whether the request went out on a connection that had served an earlier request (over
   * HTTP/2: every stream after the first on its connection).
   */
  reusedSocket: boolean;
  timings: Timings;
  /**
   * The trailer fields after the body (HTTP/2, or a chunked HTTP/1.1 body), named and joined
   * as `headers` are, like IncomingMessage.trailers. A shared frozen `{}` when there are none.
   */
  trailers: Record<string, string | string[]>;
  /** The trailer lines as [name, value, ...] (names lowercase); a shared frozen `[]` when none. */
  rawTrailers: string[];
}

/**
 * The body of a {@link StreamResponse}: a Readable of Buffers read from the engine as it is
 * consumed. Each `_read()` asks the engine for one piece; while the stream is paused or its
 * buffer is full, nothing is asked and the engine stops reading the socket (backpressure).
 * Reading it to the end gives the connection back to the pool; `destroy()` before the end
 * aborts the request (the connection is closed, the request counts as failed). Errors
 * carry the codes of {@link AgentError}; as with Node's IncomingMessage, 'error' is
 * emitted only when someone listens for it (for await, pipeline and finished() do), and
 * `errored` holds it either way.
 */
export interface ResponseBody extends Readable {
  /** Bytes the engine holds for this stream that were not handed to JS yet (at most hyper's window). */
  readonly engineBuffered: number;
  /** The response's `trailers`: `{}` until the body has ended (set before 'end' is emitted). */
  readonly trailers: Record<string, string | string[]>;
  /** The response's `rawTrailers`: `[]` until the body has ended. */
  readonly rawTrailers: string[];
}

/** What {@link Agent.stream} resolves with once the response head is in. */
export interface StreamResponse extends Omit<Response, 'body'> {
  /** `timings.total` is set when the body has been read to its end. */
  timings: Timings;
  /**
   * `{}` / `[]` until the body has been read to its end; set before its 'end' is emitted
   * (as IncomingMessage's, populated at 'end'). They stay empty after an early destroy().
   */
  trailers: Record<string, string | string[]>;
  rawTrailers: string[];
  body: ResponseBody;
}

/**
 * Counters (only grow) and gauges (a snapshot) of an agent or one origin: one key per
 * statistics field of the library (its snake_case names in camelCase), then `keepAlive`.
 * The fields below are today's; one added to the library appears without a binding change.
 */
export interface AgentStats {
  connectionsOpened: number;
  connectionsClosed: number;
  connectionsTimedOut: number;
  connectionsErrored: number;
  requests: number;
  reusedRequests: number;
  retries: number;
  timeouts: number;
  errors: number;
  active: number;
  idle: number;
  queued: number;
  /** Name lookups (getaddrinfo) made for connections that opened (IP literals and `resolve` entries are neither). */
  dnsLookups: number;
  /** Connections that opened with addresses from the agent's DNS cache. */
  dnsCacheHits: number;
  /** Requests sent as HTTP/2 streams (also counted in `requests`). */
  h2Streams: number;
  /** HTTP/2 connections opened (also counted in `connectionsOpened`). */
  h2Connections: number;
  /** The effective keep-alive setting (after the environment switch). */
  keepAlive: boolean;
  /** A statistic added to the library after these declarations. */
  [field: string]: number | boolean;
}

/** The library's bounds for option and request values (agent_limit); validation uses them. */
export interface Limits {
  /** Largest value of any timeout, ms (2^31 - 1, as Node's timers). */
  readonly maxMsecs: number;
  /** Largest keepAliveMsecs / keepAliveInterval, ms (the kernel's 32767 s). */
  readonly maxKeepAliveMsecs: number;
  /** Largest keepAliveProbes (the kernel's 127). */
  readonly maxKeepAliveProbes: number;
  /** Largest maxSockets, maxTotalSockets, maxFreeSockets. */
  readonly maxSockets: number;
}

/**
 * A failed request. `code` is Node's name where one fits — ECONNREFUSED, ECONNRESET
 * (reset, closed early, stale connection), ETIMEDOUT (every timeout), EPIPE, ENOTFOUND,
 * ERR_INVALID_URL, ERR_INVALID_ARG_VALUE, ERR_PROXY_TUNNEL (the proxy refused the `CONNECT`
 * tunnel of an https:// request; the message has its status line, e.g. 407),
 * ERR_HTTP2_STREAM_ERROR (the server reset the request's HTTP/2 stream, `RST_STREAM` with
 * its reason in the message; the connection's other requests go on) — otherwise the library's code name, e.g.
 * 'AGENT_CODE_TLS', 'AGENT_CODE_PROTOCOL', 'AGENT_CODE_CANCELLED', 'AGENT_CODE_BODY_SOURCE'
 * (a streamed request body failed or had the wrong length; `cause` is the body's own
 * error when it threw).
 */
export interface AgentError extends Error {
  code: string;
  /** The library's numeric code (see {@link codes}). */
  agentCode: number;
  /** The library's code name, e.g. 'AGENT_CODE_CONNECT_REFUSED'. */
  agentCodeName: string;
}

/** What a request rejects with when its AbortSignal fires (as Node's core modules do). */
export class AbortError extends Error {
  constructor(message?: string, options?: { cause?: unknown });
  readonly code: 'ABORT_ERR';
  readonly name: 'AbortError';
}

/**
 * What {@link Agent.dispatch} takes: undici's `Dispatcher.DispatchOptions`, the parts the
 * engine serves. `origin` + `path` (+ `query`) make the URL; a `path` that is an absolute
 * http(s) URL is used as it is.
 */
export interface DispatchOptions {
  origin?: string | URL;
  /** Starts with '/' (or is an absolute http:// or https:// URL). */
  path: string;
  method: string;
  /** An object (array values repeat the header), [name, value] pairs, a flat [name, value, ...] list, or an iterable of pairs. */
  headers?: RequestHeaders | Iterable<readonly [string, string]> | null;
  /** Added to `path` with node:querystring (the path must then hold no '?' or '#'). */
  query?: Record<string, unknown> | null;
  /**
   * Sent whole (string, Buffer, Uint8Array, ArrayBuffer) or streamed (Readable, web
   * ReadableStream, async or sync iterable of chunks, Blob, FormData).
   */
  body?: RequestBody | Iterable<BodyChunk> | Blob | FormData | null;
  /** Aborts the request, as the handler's abort would, with `signal.reason`. */
  signal?: AbortSignal | null;
  /** ms until the response head, for this request (0 or left out: the agent's `headersTimeout`). */
  headersTimeout?: number | null;
  /** ms between two body chunks while not paused, for this request (0 or left out: the agent's `bodyTimeout`). */
  bodyTimeout?: number | null;
  /** Refused (UND_ERR_NOT_SUPPORTED): the engine does not hand out connections. */
  upgrade?: string | null;
  /** Only 0: redirects are followed by fetch, or by undici's redirect interceptor through compose(). */
  maxRedirections?: number | null;
  /** undici's other options (idempotent, blocking, reset, opaque, ...) are accepted and ignored. */
  [option: string]: unknown;
}

/** What a handler of undici 7's form is given to steer its request. */
export interface DispatchController {
  readonly aborted: boolean;
  readonly paused: boolean;
  /** The reason given to abort(), or null. */
  readonly reason: Error | null;
  /** Ends the request at once: onResponseError(controller, reason ?? an UND_ERR_ABORTED error). */
  abort(reason?: Error): void;
  /** No more onResponseData until resume(); the engine stops reading the socket. */
  pause(): void;
  resume(): void;
}

/** undici 7's handler form (recognised, as by undici, by having `onRequestStart`). */
export interface DispatchHandlerModern {
  onRequestStart(controller: DispatchController, context: object): void;
  onRequestUpgrade?(controller: DispatchController, statusCode: number, headers: Record<string, string | string[]>, socket: unknown): void;
  /** Header names lowercase; a repeated header's values in an array. */
  onResponseStart?(controller: DispatchController, statusCode: number, headers: Record<string, string | string[]>, statusMessage?: string): void;
  onResponseData?(controller: DispatchController, chunk: Buffer): void;
  /** The response's trailers (names lowercase, a repeated name's values in an array); `{}` when none. */
  onResponseEnd?(controller: DispatchController, trailers: Record<string, string | string[]>): void;
  onResponseError?(controller: DispatchController, error: Error): void;
}

/** The older handler form, which undici's fetch, request() and stream() (and Node's fetch) use. */
export interface DispatchHandlerLegacy {
  onConnect(abort: (reason?: Error) => void, context?: object): void;
  /** Return false to pause until `resume()`. rawHeaders: [name, value, ...] as Buffers. */
  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean | void;
  /** Called before onHeaders when present (undici's fetch takes its timing there). */
  onResponseStarted?(): void;
  /** Return false to pause until the `resume` given to onHeaders is called. */
  onData(chunk: Buffer): boolean | void;
  /** The response's trailer lines as [name, value, ...] Buffers; `[]` when none. */
  onComplete(rawTrailers: Buffer[]): void;
  onError(error: Error): void;
  /** Never called: upgrades are refused through onError (UND_ERR_NOT_SUPPORTED). */
  onUpgrade?(statusCode: number, rawHeaders: Buffer[], socket: unknown): void;
}

export type DispatchHandler = DispatchHandlerModern | DispatchHandlerLegacy;

/** An undici interceptor: takes a dispatch function, returns one (undici.interceptors.redirect(), ...). */
export type DispatchInterceptor = (
  dispatch: (options: DispatchOptions, handler: DispatchHandler) => boolean,
) => (options: DispatchOptions, handler: DispatchHandler) => boolean;

/**
 * A connection-pooling HTTP agent on the keepalive-agent engine. It is also an undici
 * Dispatcher (dispatch, close, destroy, compose, and an EventEmitter as undici's base
 * class): pass it as `dispatcher` to fetch, undici.fetch, undici.request, undici.stream,
 * or to undici.setGlobalDispatcher. TypeScript sees undici's `Dispatcher` as a class with
 * more methods than the engine serves (its own `request`/`stream` are this package's), so
 * say `agent as unknown as Dispatcher` where undici's types ask for one.
 */
export class Agent extends EventEmitter {
  /** @throws TypeError (ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE) or RangeError (ERR_OUT_OF_RANGE) for bad options. */
  constructor(options?: AgentOptions);
  /** The effective keep-alive setting (after the environment switch). */
  readonly keepAlive: boolean;
  /** What decided `keepAlive`: nothing ('default'), the keepAlive option ('argument') or the process switch ('environment'). */
  readonly keepAliveSource: 'default' | 'argument' | 'environment';
  /** `keepAlive` in one sentence, e.g. `off: environment, KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED="false"`. */
  readonly keepAliveDescription: string;
  /** Whether this agent publishes the engine's events (decided when it was made: `events`, or a subscriber then). */
  readonly eventsEnabled: boolean;
  /** The options as given. */
  readonly options: Readonly<AgentOptions>;
  readonly destroyed: boolean;
  /** Whether close() or destroy() was called: new requests are refused (ERR_AGENT_CLOSED, or UND_ERR_CLOSED from dispatch). */
  readonly closed: boolean;
  /** Sends a request; resolves once the whole response body has arrived. Never blocks the event loop. */
  request(options: RequestOptions): Promise<Response>;
  request(url: string | URL, options?: Omit<RequestOptions, 'url'>): Promise<Response>;
  /**
   * Sends a request; resolves once the response head has arrived, with the body as a
   * Readable read from the engine as it is consumed.
   */
  stream(options: RequestOptions): Promise<StreamResponse>;
  stream(url: string | URL, options?: Omit<RequestOptions, 'url'>): Promise<StreamResponse>;
  /** Counters and gauges of the agent, or of one origin such as 'https://example.com'. */
  stats(origin?: string | URL): AgentStats;
  /**
   * Opens connections to the origin of `url` in the background, TLS included, until it has
   * `count` (default 1; idle, busy or opening, within maxSockets). Returns at once; they
   * show in `stats().idle` as they open. Nothing with keep-alive off or `count` 0; failures
   * show in the events. An HTTP/2 origin gets one connection.
   * @throws AgentError (AGENT_CODE_INVALID_URL) for a bad URL; ERR_AGENT_DESTROYED / ERR_AGENT_CLOSED.
   */
  preconnect(url: string | URL, count?: number): void;
  /**
   * Closes every connection at once, rejects in-flight requests and fails open response
   * bodies (AGENT_CODE_CANCELLED); dispatched requests fail with `error`, or undici's
   * ClientDestroyedError (UND_ERR_DESTROYED). Idempotent, done when it returns; the promise
   * (or callback) is undici's form.
   */
  destroy(): Promise<void>;
  destroy(error: Error | null): Promise<void>;
  destroy(callback: (err: null, data: null) => void): void;
  destroy(error: Error | null, callback: (err: null, data: null) => void): void;
  /**
   * Refuses new requests, waits for those in flight (their bodies read or dropped), then
   * destroys the agent. undici's Dispatcher.close.
   */
  close(): Promise<void>;
  close(callback: (err: Error | null, data: null) => void): void;
  /**
   * undici's Dispatcher.dispatch: sends the request and drives `handler` through it, in
   * either handler form. Returns true, or false when the request was refused (the
   * handler's onError / onResponseError was called).
   */
  dispatch(options: DispatchOptions, handler: DispatchHandler): boolean;
  /** undici's Dispatcher.compose: this agent with `interceptors` in front of dispatch(). */
  compose(interceptors: ReadonlyArray<DispatchInterceptor | null | undefined>): Agent;
  compose(...interceptors: Array<DispatchInterceptor | null | undefined>): Agent;
}

/** One event of the engine, as published on a `keepalive-agent:*` diagnostics channel. */
export interface AgentEvent {
  kind:
    | 'queued'
    | 'dequeued'
    | 'connect_start'
    | 'connect_done'
    | 'tls_done'
    | 'request_sent'
    | 'response_head'
    | 'retry'
    | 'connection_closed';
  /** The agent (undefined once it was collected). */
  agent: Agent | undefined;
  /** The connection's id, unique in the process; 0 for none (queued). */
  connection: number;
  /** `scheme://host:port` (with `(through the proxy ...)` when a proxy carries it). */
  origin: string | null;
  /** Connect events: `127.0.0.1:8080` or `[::1]:8080`; else null. */
  address: string | null;
  /** Connect events: 4 or 6; else 0. */
  family: number;
  /** response_head: the status code; else 0. */
  status: number;
  /** '1.1' or '2' once known; else null. */
  version: string | null;
  /** request_sent / response_head: the connection had served a request before. */
  reused: boolean;
  /** 0, or the library's code of what failed (connect_done, tls_done, retry); see `codes`. */
  code: number;
  /** e.g. 'AGENT_CODE_TLS'; null when code is 0. */
  codeName: string | null;
  /** Words for people ('' when there are none): 'GET / HTTP/1.1', 'a request on it failed', ... */
  detail: string;
  /** With `eventHeaders`, request_sent / response_head: 'Name: value\r\n' lines, credentials redacted; else null. */
  headers: string | null;
}

/** The diagnostics_channel names the events are published on. */
export const channels: Readonly<{
  /** kind 'queued' and 'dequeued'. */
  queue: 'keepalive-agent:queue';
  connectStart: 'keepalive-agent:connect:start';
  connectDone: 'keepalive-agent:connect:done';
  /** kind 'tls_done'. */
  tls: 'keepalive-agent:tls';
  requestSent: 'keepalive-agent:request:sent';
  responseHead: 'keepalive-agent:response:head';
  retry: 'keepalive-agent:retry';
  connectionClosed: 'keepalive-agent:connection:closed';
}>;

/** Library result codes by short name, e.g. codes.CONNECT_REFUSED === 11. */
export const codes: Readonly<Record<string, number>>;
/** The native library's version, e.g. '0.1.0'. */
export const version: string;
/** The native library's bounds for option and request values. */
export const limits: Readonly<Limits>;
