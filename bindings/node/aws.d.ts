// Type declarations for keepalive-agent/aws: an AWS SDK for JavaScript v3 request handler.
// Structural types only, so the package does not depend on @smithy/types.

/// <reference types="node" />

import type { Readable } from 'node:stream';
import type { Agent, AgentOptions } from './index';

export interface KeepAliveHttpHandlerOptions extends AgentOptions {
  /**
   * The proxy for every SDK call (see AgentOptions.proxy): `'http://host:port'`, with
   * optional percent-encoded `user:password@`; `''` = none. Left out: the environment's
   * proxy variables decide (`https_proxy`, `no_proxy`, ...) unless `proxyFromEnv` is false.
   * `noProxy` and `proxyFromEnv` are passed to the Agent as well.
   */
  proxy?: string;
  /** Per-request deadline in ms (0 or absent = none); a handle() call's requestTimeout wins. */
  requestTimeout?: number;
  /** Alias of connectTimeout, the name @smithy/node-http-handler uses. */
  connectionTimeout?: number;
  /**
   * The Agent's `httpVersion` (default `'http1'`): `'auto'` lets a TLS endpoint that offers
   * h2 (ALPN) serve the SDK's calls over HTTP/2, many at once on one connection. `metadata`
   * stays `'http/1.1'` either way: the SDK builds HTTP/1.1-style requests and the engine
   * turns them into HTTP/2 ones.
   */
  httpVersion?: AgentOptions['httpVersion'];
}

/** The subset of @smithy/protocol-http's HttpRequest the handler reads. */
export interface HttpRequestLike {
  method: string;
  protocol: string;
  hostname: string;
  port?: number | string;
  path: string;
  query?: Record<string, string | Array<string> | null>;
  fragment?: string;
  username?: string;
  password?: string;
  headers: Record<string, string>;
  /**
   * Bytes or a string are sent whole; a Readable, web ReadableStream or other async
   * iterable is streamed as it is read; a Blob or a synchronous iterable of chunks is read
   * into bytes first.
   */
  body?: unknown;
}

export interface HttpResponseLike {
  statusCode: number;
  reason?: string;
  headers: Record<string, string>;
  /** Read from the engine as it is consumed (see ResponseBody in the main module). */
  body: Readable;
}

/** An AbortSignal, or the SDK's own signal type (which may have only `onabort`). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  reason?: unknown;
  onabort?: unknown;
  addEventListener?: unknown;
  removeEventListener?: unknown;
}

export class KeepAliveHttpHandler {
  /** AWS_NODEJS_CONNECTION_REUSE_ENABLED=false (or KEEPALIVE_AGENT_...) turns reuse off, keepAlive: true included, unless ignoreEnvironment: true. */
  constructor(options?: KeepAliveHttpHandlerOptions);
  static create(instanceOrOptions?: KeepAliveHttpHandler | KeepAliveHttpHandlerOptions): KeepAliveHttpHandler;
  readonly metadata: { handlerProtocol: 'http/1.1' };
  /** The Agent serving requests. */
  readonly agent: Agent;
  handle(
    request: HttpRequestLike,
    options?: { abortSignal?: AbortSignalLike; requestTimeout?: number },
  ): Promise<{ response: HttpResponseLike }>;
  destroy(): void;
  updateHttpClientConfig(key: keyof KeepAliveHttpHandlerOptions | string | symbol, value: unknown): void;
  httpHandlerConfigs(): KeepAliveHttpHandlerOptions;
}

/** The SDK's query object as a query string (keys sorted, RFC 3986 escaping). */
export function buildQueryString(query: Record<string, string | Array<string> | null>): string;
/** The URL of an SDK HttpRequest. */
export function requestUrl(request: HttpRequestLike): string;
