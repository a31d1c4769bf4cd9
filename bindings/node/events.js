'use strict';
// The engine's events (agent_options_set_events) on diagnostics_channel, with channel names
// in the style of undici's ('undici:client:connected' and so on):
//
//   keepalive-agent:queue               kind 'queued' or 'dequeued' (the socket limits)
//   keepalive-agent:connect:start       a TCP connection attempt starts (one per address)
//   keepalive-agent:connect:done        it connected (code 0) or failed
//   keepalive-agent:tls                 a TLS handshake ended (detail: version, ALPN, resumption)
//   keepalive-agent:request:sent        a request went out (reused: on a connection used before)
//   keepalive-agent:response:head       a response head arrived (status, version)
//   keepalive-agent:retry               a request is sent again on another connection
//   keepalive-agent:connection:closed   a connection closed (detail says why)
//
// Each message is one plain object:
//   { kind, agent, connection, origin, address, family, status, version, reused, code,
//     codeName, detail, headers }
// kind is the event's name ('connect_start', ... as Python's records have them); agent the
// Agent (undefined once it was collected); version '1.0' | '1.1' | '2' | null; code the
// library's code (0 when nothing failed) and codeName its name (null for 0); headers the
// 'Name: value\r\n' lines of request:sent and response:head for an agent made with
// eventHeaders: true (credentials are '[redacted]' by the library), else null.
//
// Cheap when nobody listens: the addon installs the engine's callback only for an agent
// made while one of these channels had a subscriber, or with `events: true`; without it
// the engine spends one branch per event. The callback runs on the engine's threads: the
// addon copies each event and wakes this thread, which publishes them in batches (before
// the promises of the same turn settle when the events come from the turn's own I/O). A
// subscriber added after an agent was made sees that agent's events only if it already had
// them.

const dc = require('node:diagnostics_channel');

/** Channel names by short name. */
const channels = Object.freeze({
  queue: 'keepalive-agent:queue',
  connectStart: 'keepalive-agent:connect:start',
  connectDone: 'keepalive-agent:connect:done',
  tls: 'keepalive-agent:tls',
  requestSent: 'keepalive-agent:request:sent',
  responseHead: 'keepalive-agent:response:head',
  retry: 'keepalive-agent:retry',
  connectionClosed: 'keepalive-agent:connection:closed',
});

// enum agent_trace_kind, in order: [name, channel]
const KINDS = [
  ['queued', channels.queue],
  ['dequeued', channels.queue],
  ['connect_start', channels.connectStart],
  ['connect_done', channels.connectDone],
  ['tls_done', channels.tls],
  ['request_sent', channels.requestSent],
  ['response_head', channels.responseHead],
  ['retry', channels.retry],
  ['connection_closed', channels.connectionClosed],
].map(([kind, name]) => ({ kind, channel: dc.channel(name) }));
const ALL = [...new Set(KINDS.map((k) => k.channel))];

const VERSIONS = { 10: '1.0', 11: '1.1', 20: '2' };

// Values per event in the addon's flat array (EVENT_FIELDS in addon.c).
const FIELDS = 12;

// Agents by events id. An entry goes when its agent is collected.
const agents = new Map();
const registry = new FinalizationRegistry((id) => agents.delete(id));
let lastId = 0;

function subscribed() {
  return ALL.some((c) => c.hasSubscribers);
}

/**
 * Sets up the publisher of the addon `native`; returns the Agent's two hooks:
 * reserve(normalized) before native.create (replaces `events` with an id, or drops it)
 * and attach(id, agent) after.
 */
function install(native) {
  const codeName = (code) => (code === 0 ? null : native.codeName(code));

  native.setEventPublisher((flat) => {
    for (let i = 0; i + FIELDS <= flat.length; i += FIELDS) {
      const k = KINDS[flat[i + 1]];
      if (k === undefined || !k.channel.hasSubscribers) continue;
      const ref = agents.get(flat[i]);
      k.channel.publish({
        kind: k.kind,
        agent: ref === undefined ? undefined : ref.deref(),
        connection: flat[i + 2],
        origin: flat[i + 3],
        address: flat[i + 4],
        family: flat[i + 5],
        status: flat[i + 6],
        version: VERSIONS[flat[i + 7]] || (flat[i + 7] ? String(flat[i + 7]) : null),
        reused: flat[i + 8],
        code: flat[i + 9],
        codeName: codeName(flat[i + 9]),
        detail: flat[i + 10],
        headers: flat[i + 11],
      });
    }
  });

  function reserve(normalized) {
    const want = normalized.events === undefined ? subscribed() : normalized.events;
    delete normalized.events;
    if (!want) {
      delete normalized.eventHeaders;
      return 0;
    }
    lastId = lastId >= 0xffffffff ? 1 : lastId + 1;
    normalized.events = lastId;
    return lastId;
  }

  function attach(id, agent) {
    if (id === 0) return;
    agents.set(id, new WeakRef(agent));
    registry.register(agent, id);
  }

  return { reserve, attach };
}

module.exports = { channels, install };
