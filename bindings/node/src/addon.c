/*
 * keepalive-agent's Node binding: an N-API addon in plain C over include/keepalive_agent.h.
 *
 * index.js validates every argument and calls the small native surface below:
 *
 *   setFactories(makeResponse, makeHead)     -> the JS functions that build response
 *                                               objects (called once per response; a
 *                                               whole response's trailers come as one
 *                                               more argument, see below)
 *   create(options)                          -> handle (an external owning one `agent`)
 *   request(handle, method, url, headers, body, timeoutMs) -> promise of a whole response
 *   lastId()                                 -> the id of the last request() (for cancel)
 *   streamRequest(handle, method, url, headers, body, source, timeoutMs)
 *                                            -> [promise, id, sourceHandle]; the promise
 *                                               resolves with the head and a stream handle
 *   streamRead(stream, cb)                   -> one agent_queue_read; cb(err, chunk,
 *                                               totalMs, rawTrailers): chunk null at
 *                                               the end
 *   streamFree(stream), streamBuffered(stream)
 *   sourcePush(source, bytes) -> n | -1, sourceEnd(source), sourceAbort(source, why),
 *   sourceState(source)                      -> a request body fed from JS (see below)
 *   cancel(handle, id)                       -> boolean
 *   stats(handle, origin?), keepAlive(handle), destroy(handle), version(), codeName(code)
 *   keepAliveSource(handle) -> AGENT_SOURCE_*, keepAliveDescribe(handle) -> the sentence
 *   preconnect(handle, url, count)           -> agent_preconnect (returns at once)
 *   setEventPublisher(fn), eventsOn(handle)  -> the engine's events (see below)
 *   makeError(code, message)                 -> the Error a library failure becomes
 *   limits                                   -> {maxMsecs, ...}, from agent_limit
 *   httpVersions                             -> {auto, http1, http2, 'h2c-prior-knowledge'}:
 *                                               the library's AGENT_HTTP_VERSION_* values
 *   statsFields                              -> the library's statistics field names
 *   testPanic()                              -> throws AGENT_CODE_PANIC (test-hooks builds)
 *
 * Trailers (the fields after the body: HTTP/2, or a chunked HTTP/1.1 body) reach JS as
 * rawTrailers, a flat [name, value, ...] array of latin1 strings made here from
 * agent_response_trailer_at / agent_stream_trailer_at (N-API copies the bytes; nothing is
 * allocated in C), or undefined when there are none, so that JS shares one empty object
 * for the common case. A whole response is asked for them only when it can carry them
 * (HTTP/2, or a transfer-encoding header): an HTTP/1.1 response with a Content-Length
 * costs no extra call. A stream's come with the read that returns the end of its body,
 * read before the stream is freed.
 *
 * Lists the library owns are read from it, never repeated here: statistics are built from
 * agent_stats_field_name/agent_stats_values (snake_case names become camelCase keys), code
 * names come from agent_code_name, validation bounds from agent_limit.
 *
 * Requests run on the JS thread, driven by libuv. Each environment (the main thread, each
 * worker) has one agent_queue. request() and streamRequest() submit to it
 * (agent_queue_submit, agent_queue_submit_stream), streamRead() submits one body read
 * (agent_queue_read); nothing is sent from inside those calls. A uv_poll_t watches the
 * queue's descriptor; when it is readable, the queue is drained on the JS thread
 * (agent_queue_drain with no wait: the sends, receives and connects happen there, as
 * Node's own http does its socket I/O) and every completed event of the batch is settled
 * in one JavaScript turn: one handle scope and one callback scope per batch (microtasks
 * run when it closes), one promise resolved or rejected, or one read callback called, per
 * event. The token of every submission is the address of its context (a `pend`); the
 * library reports each accepted submission exactly once. Should JavaScript submit more
 * while a batch is settled, the queue is drained again at once, so a request made in a
 * promise continuation is sent without another trip through the event loop.
 *
 * The poll handle is referenced only while a request or read is in flight
 * (uv_ref/uv_unref), so idle pooled connections never keep the process alive (like
 * http.Agent's unref'd free sockets).
 *
 * Events (agent_options_set_events), only for an agent created with `events` (an id that
 * index.js gives it, nonzero: events.js asks for them when a diagnostics_channel channel
 * has subscribers, or when the agent's `events` option is true). The callback runs on any
 * thread (library threads, or this one inside agent_queue_drain): it copies the event, its
 * strings included, into one allocation, appends it to the env's list under `mu` and wakes
 * the JS thread through the env's `wake` async handle (unref'd, so it never keeps the
 * process alive) when the list was empty. The JS thread takes the whole list at once (at
 * the end of every drain, and from the wake callback) and calls the publisher
 * (setEventPublisher) once with a flat array, EVENT_FIELDS values per event. The
 * callback's userdata (ev_sink) must outlive agent_free, which runs on a detached thread
 * and may end after the box and the env: it goes with the agent to free_agent_in_background,
 * which frees it once agent_free has returned, and it holds a reference to the env state
 * (whose `mu` and list the callback uses). Once the env is
 * closing, events are dropped. The list is bounded (EVENT_QUEUE_MAX; beyond it events are
 * dropped and counted) so that a JS thread that never turns cannot make it grow forever.
 *
 * Request bodies from JS (body_src). The library calls the source's read() while it drives
 * the request, on the draining thread (inside agent_queue_drain). read() never calls into
 * JS and never waits: JS copies its chunks into the source's ring buffer (sourcePush;
 * SOURCE_RING bytes, or the body's length when it is known and smaller; made at the first
 * push and freed as soon as the library is done with the source), read() takes from it.
 * When the ring is empty and the body has not ended, read() keeps a waker
 * (agent_body_source_waker) and returns AGENT_SOURCE_PENDING; the waker is woken when data
 * comes, at the end of the body, or when the source is stopped (JS aborted or failed it,
 * its agent was destroyed, its JS handle was collected, the environment is going away),
 * and freed unused when the library releases the source. A push that does not fit whole
 * tells JS to wait; read() puts the source on the env's pull list once the ring is half
 * empty, and the list is delivered (onPull called) after the drain returns, or by a
 * uv_async_t when the library releases a source outside a drain. A source's state, its
 * waker included, is guarded by the env's mutex, since the library may release a source
 * on any thread; wakers are woken and freed outside it.
 *
 * Lifetimes.
 *  - env_state: one per environment, reference-counted (mutex-guarded): one reference for
 *    the environment (dropped once its libuv handles have closed), one per body source,
 *    one per response stream context.
 *  - Teardown (an async cleanup hook, which Node waits for): sources are stopped, streams
 *    freed, the poll stopped and the queue freed (requests still in flight are dropped, so
 *    their contexts are freed here: the list of pending contexts), agents freed, then the
 *    libuv handles closed; the hook completes when both have closed.
 *  - agent_box: owned by the JS external. destroy(), teardown or the external's finalizer
 *    (whichever comes first) hands the native agent to agent_free on a short-lived
 *    background thread, since agent_free closes every connection and waits (bounded) for
 *    them: the JS thread never waits for it. The box keeps a reference to its external
 *    that is strong while a request or stream of it is open (`holds`), so a finalizer
 *    never runs while either exists. destroy() and teardown first free the agent's open
 *    streams and stop its body sources.
 *  - req_ctx: allocated by request()/streamRequest(), linked on the pending list until its
 *    event is settled (then freed), or freed at teardown.
 *  - stream_ctx: one per response stream, reference-counted (JS thread only): one
 *    reference for its JS external, one while a read is in flight (then it is on the
 *    pending list). The agent_stream itself is freed at the end of the body, on an error,
 *    by streamFree, by the external's finalizer, by destroy() of its agent, or at teardown.
 *  - body_src: reference-counted under the env mutex: one reference for the library
 *    (dropped by release()), one for its JS external, one while it is on the pull list.
 *    release() always queues a last pull, whose delivery drops the strong reference to the
 *    JS onPull function.
 */

/* For RTLD_DEFAULT. */
#define _GNU_SOURCE

#define NAPI_VERSION 8
#include <node_api.h>

#include <keepalive_agent.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libuv: Node's own uv.h when the build found it, else the few stable libuv 1.x entry
 * points used here (handles are allocated with uv_handle_size, never laid out here). */
#if defined(__has_include)
#if __has_include(<uv.h>)
#include <uv.h>
#define KEEPALIVE_HAVE_UV_H 1
#endif
#endif
#ifndef KEEPALIVE_HAVE_UV_H
typedef struct uv_loop_s uv_loop_t;
typedef struct uv_handle_s uv_handle_t;
typedef struct uv_poll_s uv_poll_t;
typedef struct uv_async_s uv_async_t;
typedef void (*uv_poll_cb)(uv_poll_t *handle, int status, int events);
typedef void (*uv_async_cb)(uv_async_t *handle);
typedef void (*uv_close_cb)(uv_handle_t *handle);
typedef enum { UV_ASYNC = 1, UV_POLL = 8 } uv_handle_type;
enum { UV_READABLE = 1 };
size_t uv_handle_size(uv_handle_type type);
void *uv_handle_get_data(const uv_handle_t *handle);
void uv_handle_set_data(uv_handle_t *handle, void *data);
int uv_poll_init(uv_loop_t *loop, uv_poll_t *handle, int fd);
int uv_poll_start(uv_poll_t *handle, int events, uv_poll_cb cb);
int uv_poll_stop(uv_poll_t *handle);
int uv_async_init(uv_loop_t *loop, uv_async_t *async, uv_async_cb async_cb);
int uv_async_send(uv_async_t *async);
void uv_close(uv_handle_t *handle, uv_close_cb close_cb);
void uv_ref(uv_handle_t *handle);
void uv_unref(uv_handle_t *handle);
#endif

/* Bodies at least this large are handed to JS without a copy (an external Buffer that
 * frees the response when collected); smaller ones are copied and freed at once. */
#define EXTERNAL_BODY_MIN ((size_t)64 * 1024)

/* The ring buffer of a JS body source: what the addon holds of a request body at most.
 * read() wakes a waiting pusher once it is half empty. */
#define SOURCE_RING ((size_t)1024 * 1024)

/* Events taken from the queue per drain, settled in one JavaScript turn. */
#define EVENT_BATCH 256

/* The most drains one readiness callback makes before it lets the event loop go on (the
 * descriptor is level-triggered: work left over is seen at the next iteration). */
#define DRAIN_ROUNDS 16

/* Events waiting for the JS thread, at most (beyond: dropped, counted in ev_dropped). */
#define EVENT_QUEUE_MAX 65536

/* Values per event in the publisher's flat array: agent id, kind, connection, origin,
 * address, family, status, version, reused, code, detail, headers. */
#define EVENT_FIELDS 12

/* What a pending context is: the first field of req_ctx and stream_ctx. */
enum pend_kind {
  PEND_REQUEST = 1, /* req_ctx: a whole response (agent_queue_submit) */
  PEND_HEAD,        /* req_ctx: a response head (agent_queue_submit_stream) */
  PEND_READ,        /* stream_ctx: one agent_queue_read */
};

/* Why a body source stops; read() returns this (the library then fails the request with
 * AGENT_CODE_BODY_SOURCE) and sourceState() reports it. */
enum src_stop {
  SRC_OPEN = 0,
  SRC_FAILED = 1,    /* the JS iterable threw, or gave something that is not bytes */
  SRC_ABORTED = 2,   /* the request was aborted (AbortSignal) */
  /* 3 was "timed out waiting for JS": the library keeps the deadline of a pending source */
  SRC_CLOSED = 4,    /* released by the library, agent destroyed, or env going away */
};

typedef struct agent_box agent_box;
typedef struct body_src body_src;
typedef struct ev_sink ev_sink;
typedef struct ev_rec ev_rec;
typedef struct stream_ctx stream_ctx;

/* A submission waiting for its event: linked on env_state.pending (JS thread only). Its
 * address is the submission's token. */
typedef struct pend {
  struct pend *prev;
  struct pend *next;
  int kind; /* enum pend_kind */
} pend;

typedef struct env_state {
  pthread_mutex_t mu;            /* guards closed, refs, pulls, and every body_src's state */
  bool closed;                   /* the env is going away */
  size_t refs;                   /* env + one per body source + one per stream context */
  napi_env env;
  agent_queue *queue;            /* NULL once freed at teardown */
  uv_poll_t *poll;               /* watches agent_queue_fd; ref'd while inflight > 0 */
  uv_async_t *wake;              /* delivers pulls posted outside a drain */
  bool poll_open;                /* uv_poll_init succeeded (closed at teardown) */
  bool wake_open;                /* uv_async_init succeeded (closed at teardown) */
  int open_handles;              /* handles closing at teardown, until their callbacks */
  napi_async_cleanup_hook_handle cleanup;
  napi_async_context async_ctx;  /* for the callback scope of each batch */
  napi_ref resource;             /* its resource object */
  napi_ref make_response;        /* JS factories (setFactories) */
  napi_ref make_head;
  size_t inflight;               /* JS thread only: requests and reads not yet settled */
  bool in_poll;                  /* JS thread only: a readiness callback is running */
  uint64_t submitted;            /* JS thread only: submissions so far */
  uint64_t last_id;              /* JS thread only: the id of the last request() */
  pend pending;                  /* JS thread only: list head of pending contexts */
  agent_box *agents;             /* JS thread only: boxes whose agent may be live */
  stream_ctx *streams;           /* JS thread only: contexts whose stream is not freed */
  body_src *sources;             /* under mu: every live body source */
  body_src *pulls;               /* under mu: sources whose pusher is to be called */
  size_t stat_count;             /* agent_stats_field_count(), read at init */
  char **stat_keys;              /* stat_count camelCase keys (malloc'd) */
  uint64_t *stat_values;         /* JS thread only: scratch for agent_stats_values */
  napi_ref publish;              /* events.js's publisher (setEventPublisher) */
  ev_rec *ev_head;               /* under mu: events waiting for the JS thread, oldest first */
  ev_rec *ev_tail;
  size_t ev_count;
  uint64_t ev_dropped;           /* under mu: events dropped because the list was full */
  agent_event events[EVENT_BATCH];
} env_state;

struct agent_box {
  agent *handle;  /* NULL after destroy() or env teardown */
  ev_sink *sink;  /* the event callback's userdata while `handle` is live, or NULL */
  bool events;    /* the agent was made with an event callback */
  env_state *st;  /* NULL once the env is being torn down */
  agent_box *prev;
  agent_box *next;
  napi_ref self;  /* the external: strong while holds > 0, weak otherwise */
  size_t holds;   /* requests in flight + open streams */
};

typedef struct req_ctx {
  pend link; /* first: PEND_REQUEST or PEND_HEAD */
  agent_box *box;
  napi_deferred deferred;
} req_ctx;

struct stream_ctx {
  pend link;             /* first: PEND_READ, linked while a read is in flight */
  env_state *st;
  agent_box *box;        /* the agent (held while `stream` is open) */
  agent_stream *stream;  /* NULL once freed */
  napi_ref read_cb;      /* the callback of the read in flight */
  bool reading;          /* a read is in flight */
  bool read_counted;     /* ... and counts in st->inflight */
  bool holds_box;        /* this stream holds its box */
  stream_ctx *prev;      /* st->streams, while `stream` is open */
  stream_ctx *next;
  size_t refs;           /* the external + one while a read is in flight */
};

/* The userdata of one agent's event callback: freed after agent_free returns. */
struct ev_sink {
  env_state *st;   /* holds one reference to it */
  uint32_t id;     /* the agent's events id (index.js) */
};

/* One event copied off the library's thread: the strings follow the struct. */
struct ev_rec {
  ev_rec *next;
  uint64_t connection;
  uint32_t id;
  uint32_t kind;
  uint32_t family;
  uint32_t status;
  uint32_t version;
  uint32_t code;
  bool reused;
  const char *origin;  /* into text; NULL when the library gave none */
  const char *address;
  const char *detail;
  const char *headers;
  char text[];
};

struct body_src {
  env_state *st;       /* holds one reference to it */
  const agent_box *box; /* the agent it was sent with: compared, never dereferenced */
  /* Everything below is guarded by st->mu. */
  agent_body_waker *waker; /* kept by a read() that returned AGENT_SOURCE_PENDING */
  uint8_t *ring;        /* `cap` bytes: made by the first push, freed by the last pull */
  size_t cap;           /* the ring's size (set at creation) */
  size_t start;        /* where the unread bytes begin */
  size_t queued;       /* unread bytes */
  bool ended;          /* JS gave the last chunk */
  int stop;            /* enum src_stop */
  bool js_waiting;     /* a push did not fit whole: wake JS when there is room */
  bool pull_posted;    /* the source is on st->pulls */
  bool js_gone;        /* the external was finalized */
  bool released;       /* the library is done with it (its last pull is on its way) */
  size_t refs;         /* the library + the external + one while on st->pulls */
  body_src *prev;      /* st->sources */
  body_src *next;
  body_src *pull_next; /* st->pulls */
  napi_ref on_pull;    /* JS thread only: called when the pusher may go on */
};

/* ------------------------------------------------------------------------------------ */
/* Small helpers                                                                         */

/* Frees a state whose last reference is gone (or that was never shared). */
static void state_free(env_state *st) {
  if (st->stat_keys != NULL) {
    for (size_t i = 0; i < st->stat_count; i++) {
      free(st->stat_keys[i]);
    }
    free(st->stat_keys);
  }
  free(st->stat_values);
  while (st->ev_head != NULL) {
    ev_rec *next = st->ev_head->next;
    free(st->ev_head);
    st->ev_head = next;
  }
  free(st->poll);
  free(st->wake);
  pthread_mutex_destroy(&st->mu);
  free(st);
}

static void state_unref(env_state *st) {
  pthread_mutex_lock(&st->mu);
  size_t left = --st->refs;
  pthread_mutex_unlock(&st->mu);
  if (left == 0) {
    state_free(st);
  }
}

/* The calling thread's last library message, malloc'd (never NULL unless out of memory). */
static char *last_error_dup(void) {
  char small[256];
  size_t n = agent_last_error(small, sizeof small);
  char *out = malloc(n + 1);
  if (out == NULL) {
    return NULL;
  }
  if (n < sizeof small) {
    memcpy(out, small, n + 1);
  } else {
    agent_last_error(out, n + 1);
  }
  return out;
}

/* Node's name for a library code where one fits; otherwise the library's own name. */
static const char *error_code_for(agent_code code) {
  switch (code) {
    case AGENT_CODE_DNS:
      return "ENOTFOUND";
    case AGENT_CODE_CONNECT_REFUSED:
      return "ECONNREFUSED";
    case AGENT_CODE_CONNECT_TIMEOUT:
    case AGENT_CODE_HEADERS_TIMEOUT:
    case AGENT_CODE_BODY_TIMEOUT:
    case AGENT_CODE_TIMEOUT:
      return "ETIMEDOUT";
    case AGENT_CODE_CONNECTION_RESET:
    case AGENT_CODE_CONNECTION_CLOSED:
    case AGENT_CODE_STALE_CONNECTION:
      return "ECONNRESET";
    case AGENT_CODE_BROKEN_PIPE:
      return "EPIPE";
    case AGENT_CODE_INVALID_ARGUMENT:
    case AGENT_CODE_INVALID_OPTION:
      return "ERR_INVALID_ARG_VALUE";
    case AGENT_CODE_INVALID_URL:
      return "ERR_INVALID_URL";
    case AGENT_CODE_PROXY:
      return "ERR_PROXY_TUNNEL"; /* Node 24's code for a proxy tunnel that failed */
    case AGENT_CODE_STREAM_RESET:
      return "ERR_HTTP2_STREAM_ERROR"; /* node:http2's code for a stream the peer reset */
    default:
      return agent_code_name(code);
  }
}

static bool is_type_error(agent_code code) {
  return code == AGENT_CODE_INVALID_ARGUMENT || code == AGENT_CODE_INVALID_OPTION ||
         code == AGENT_CODE_INVALID_URL;
}

/* Builds the Error for a library failure: message = the library's message, `code` =
 * Node's name or the library's, plus `agentCode` and `agentCodeName`. NULL if N-API
 * itself failed (an exception is then pending). */
static napi_value make_agent_error(napi_env env, agent_code code, const char *message) {
  napi_value err, code_v, msg_v, num_v, name_v;
  const char *name = agent_code_name(code);
  const char *text = (message != NULL && message[0] != '\0') ? message : name;
  if (napi_create_string_utf8(env, error_code_for(code), NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_uint32(env, (uint32_t)code, &num_v) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &name_v) != napi_ok) {
    return NULL;
  }
  napi_status s = is_type_error(code) ? napi_create_type_error(env, code_v, msg_v, &err)
                                      : napi_create_error(env, code_v, msg_v, &err);
  if (s != napi_ok || napi_set_named_property(env, err, "agentCode", num_v) != napi_ok ||
      napi_set_named_property(env, err, "agentCodeName", name_v) != napi_ok) {
    return NULL;
  }
  return err;
}

static void throw_agent_error(napi_env env, agent_code code) {
  char *msg = last_error_dup();
  napi_value err = make_agent_error(env, code, msg);
  free(msg);
  if (err != NULL) {
    napi_throw(env, err);
  }
}

/* After a failed N-API call: make sure some exception is pending. */
static void ensure_exception(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    return;
  }
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char buf[256];
  snprintf(buf, sizeof buf, "keepalive-agent: %s failed: %s", what,
           (info != NULL && info->error_message != NULL) ? info->error_message : "N-API error");
  napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL", buf);
}

#define NAPI_TRY(env, call)            \
  do {                                 \
    if ((call) != napi_ok) {           \
      ensure_exception((env), #call);  \
      return NULL;                     \
    }                                  \
  } while (0)

/* Like NAPI_TRY, for blocks that must release resources: jumps to `label`. */
#define NAPI_TRY_GOTO(env, call, label) \
  do {                                  \
    if ((call) != napi_ok) {            \
      ensure_exception((env), #call);   \
      goto label;                       \
    }                                   \
  } while (0)

/* Takes the pending exception (creating one if N-API failed without throwing). */
static napi_value take_exception(napi_env env, const char *what) {
  napi_value e = NULL;
  ensure_exception(env, what);
  if (napi_get_and_clear_last_exception(env, &e) != napi_ok || e == NULL) {
    napi_get_undefined(env, &e);
  }
  return e;
}

static bool is_undefined(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) != napi_ok || t == napi_undefined || t == napi_null;
}

/* Copies a JS string into a malloc'd NUL-terminated UTF-8 string. Refuses strings with an
 * embedded NUL (C would silently truncate them). Throws and returns NULL on failure. */
static char *dup_js_string(napi_env env, napi_value v, const char *what) {
  size_t len = 0, copied = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    char buf[128];
    snprintf(buf, sizeof buf, "The \"%s\" argument must be of type string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", buf);
    return NULL;
  }
  char *s = malloc(len + 1);
  if (s == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  if (napi_get_value_string_utf8(env, v, s, len + 1, &copied) != napi_ok) {
    free(s);
    ensure_exception(env, "napi_get_value_string_utf8");
    return NULL;
  }
  if (strlen(s) != copied) {
    free(s);
    char buf[128];
    snprintf(buf, sizeof buf, "Invalid character (NUL) in %s", what);
    napi_throw_type_error(env, "ERR_INVALID_CHAR", buf);
    return NULL;
  }
  return s;
}

/* Type tags of the three kinds of external handed to JS, so that one kind passed where
 * another is expected is refused instead of misread. */
static const napi_type_tag BOX_TAG = {0x6b6565705f616c69ULL, 0x76655f6167656e74ULL};
static const napi_type_tag STREAM_TAG = {0x6b6565705f616c69ULL, 0x76655f7374726561ULL};
static const napi_type_tag SOURCE_TAG = {0x6b6565705f616c69ULL, 0x76655f736f757263ULL};

/* The data of an external tagged `tag`, or NULL with a TypeError thrown. */
static void *get_tagged(napi_env env, napi_value v, const napi_type_tag *tag, const char *what) {
  napi_valuetype t;
  void *data = NULL;
  bool tagged = false;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    char buf[96];
    snprintf(buf, sizeof buf, "not a keepalive-agent %s handle", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", buf);
    return NULL;
  }
  return data;
}

static agent_box *get_box(napi_env env, napi_value v) {
  return get_tagged(env, v, &BOX_TAG, "agent");
}

static stream_ctx *get_stream(napi_env env, napi_value v) {
  return get_tagged(env, v, &STREAM_TAG, "stream");
}

static body_src *get_source(napi_env env, napi_value v) {
  return get_tagged(env, v, &SOURCE_TAG, "body source");
}

/* ------------------------------------------------------------------------------------ */
/* Pending submissions, the poll handle's reference, agents held by their requests       */

static void pend_link(env_state *st, pend *p) {
  p->prev = &st->pending;
  p->next = st->pending.next;
  st->pending.next->prev = p;
  st->pending.next = p;
}

static void pend_unlink(pend *p) {
  if (p->next != NULL) {
    p->prev->next = p->next;
    p->next->prev = p->prev;
  }
  p->prev = p->next = NULL;
}

/* A request or body read is now in flight / has settled: the poll handle keeps the event
 * loop alive exactly while something is. JS thread only. */
static void inflight_add(env_state *st) {
  if (st->inflight++ == 0 && st->poll_open) {
    uv_ref((uv_handle_t *)st->poll);
  }
}

static void inflight_done(env_state *st) {
  if (st->inflight > 0 && --st->inflight == 0 && st->poll_open) {
    uv_unref((uv_handle_t *)st->poll);
  }
}

/* A request or stream of the agent is open: its external must not be collected. */
static void box_hold(napi_env env, agent_box *b) {
  if (b->holds++ == 0 && b->self != NULL) {
    napi_reference_ref(env, b->self, NULL);
  }
}

static void box_release(napi_env env, agent_box *b) {
  if (b->holds > 0 && --b->holds == 0 && b->self != NULL && env != NULL) {
    napi_reference_unref(env, b->self, NULL);
  }
}

/* ------------------------------------------------------------------------------------ */
/* JavaScript turns from libuv callbacks                                                 */

typedef struct js_turn {
  napi_handle_scope handles;
  napi_callback_scope callback;
  bool open;
} js_turn;

/* Opens one handle scope and one callback scope: what Node does around a callback from
 * the event loop (closing the callback scope runs process.nextTick and microtasks). False
 * when not even a handle scope can be opened: no N-API call may be made then. */
static bool turn_open(env_state *st, js_turn *t) {
  napi_env env = st->env;
  napi_value resource;
  t->open = false;
  t->callback = NULL;
  if (napi_open_handle_scope(env, &t->handles) != napi_ok) {
    return false;
  }
  if (st->async_ctx == NULL || napi_get_reference_value(env, st->resource, &resource) != napi_ok ||
      resource == NULL || napi_open_callback_scope(env, resource, st->async_ctx, &t->callback) != napi_ok) {
    t->callback = NULL; /* settled all the same; microtasks run at the next callback */
  }
  t->open = true;
  return true;
}

static void turn_close(env_state *st, js_turn *t) {
  if (t->open) {
    if (t->callback != NULL) {
      napi_close_callback_scope(st->env, t->callback);
    }
    napi_close_handle_scope(st->env, t->handles);
    t->open = false;
  }
}

/* An exception left pending by JS called from a libuv callback becomes an uncaught
 * exception (process 'uncaughtException'), as for any callback from the event loop. */
static void report_pending_exception(napi_env env) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value e = NULL;
    if (napi_get_and_clear_last_exception(env, &e) == napi_ok && e != NULL) {
      napi_fatal_exception(env, e);
    }
  }
}

static void call_js(napi_env env, napi_ref fn_ref, size_t argc, const napi_value *argv) {
  napi_value fn, recv;
  if (napi_get_reference_value(env, fn_ref, &fn) == napi_ok && fn != NULL &&
      napi_get_undefined(env, &recv) == napi_ok &&
      napi_call_function(env, recv, fn, argc, argv, NULL) != napi_ok) {
    report_pending_exception(env);
  }
}

/* ------------------------------------------------------------------------------------ */
/* Responses                                                                             */

static void free_response_finalizer(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  agent_response_free(hint);
}

/* Arguments shared by the two factories: status, version (10/11/20), the header block as one
 * latin1 string ("name: value\r\n" lines, split in JS), reused, then (after the body or
 * stream slot) the seven timings in microseconds, then rawTrailers (undefined for a head,
 * and for a whole response without trailers). */
#define FACTORY_ARGS 13

static bool head_args(napi_env env, const agent_response_parts *p, napi_value *argv) {
  const agent_timings *t = &p->timings;
  const uint64_t us[7] = {t->queued_us, t->dns_us, t->connect_us, t->tls_us,
                          t->sent_us,   t->ttfb_us, t->total_us};
  if (napi_create_uint32(env, p->status, &argv[0]) != napi_ok ||
      napi_create_uint32(env, p->version, &argv[1]) != napi_ok ||
      napi_create_string_latin1(env, p->headers != NULL ? (const char *)p->headers : "",
                                p->headers != NULL ? p->headers_len : 0, &argv[2]) != napi_ok ||
      napi_get_boolean(env, p->reused, &argv[3]) != napi_ok) {
    return false;
  }
  for (int i = 0; i < 7; i++) {
    if (napi_create_double(env, (double)us[i], &argv[5 + i]) != napi_ok) {
      return false;
    }
  }
  return napi_get_undefined(env, &argv[12]) == napi_ok;
}

/* rawTrailers from the `count` trailer lines of `resp` (or, when it is NULL, of `stream`):
 * [name, value, ...] as latin1 strings, copied by N-API; undefined when `count` is 0. False
 * with an exception pending on failure. */
static bool trailer_array(napi_env env, const agent_response *resp, const agent_stream *stream, size_t count,
                          napi_value *out) {
  if (count == 0) {
    return napi_get_undefined(env, out) == napi_ok;
  }
  if (napi_create_array_with_length(env, count * 2, out) != napi_ok) {
    ensure_exception(env, "napi_create_array_with_length");
    return false;
  }
  for (size_t i = 0; i < count; i++) {
    const char *name = NULL;
    const char *value = NULL;
    size_t name_len = 0;
    size_t value_len = 0;
    agent_code code = resp != NULL ? agent_response_trailer_at(resp, i, &name, &name_len, &value, &value_len)
                                   : agent_stream_trailer_at(stream, i, &name, &name_len, &value, &value_len);
    if (code != AGENT_CODE_OK) {
      throw_agent_error(env, code);
      return false;
    }
    napi_value n, v;
    if (napi_create_string_latin1(env, name_len > 0 ? name : "", name_len, &n) != napi_ok ||
        napi_create_string_latin1(env, value_len > 0 ? value : "", value_len, &v) != napi_ok ||
        napi_set_element(env, *out, (uint32_t)(2 * i), n) != napi_ok ||
        napi_set_element(env, *out, (uint32_t)(2 * i + 1), v) != napi_ok) {
      ensure_exception(env, "trailers");
      return false;
    }
  }
  return true;
}

/* Whether a whole response can have trailers: HTTP/2, or a transfer-encoding (chunked)
 * body. Anything else (a Content-Length or close-delimited HTTP/1.x body) has none, and
 * is not asked. */
static bool may_have_trailers(const agent_response *resp, const agent_response_parts *p) {
  const char *value = NULL;
  size_t value_len = 0;
  return p->version >= 20 || agent_response_header(resp, "transfer-encoding", &value, &value_len) == AGENT_CODE_OK;
}

/* Calls a factory; NULL with an exception pending when it (or N-API) failed. */
static napi_value call_factory(napi_env env, napi_ref ref, napi_value *argv) {
  napi_value fn, recv, out = NULL;
  if (ref == NULL) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL", "keepalive-agent: setFactories() was not called");
    return NULL;
  }
  NAPI_TRY(env, napi_get_reference_value(env, ref, &fn));
  NAPI_TRY(env, napi_get_undefined(env, &recv));
  NAPI_TRY(env, napi_call_function(env, recv, fn, FACTORY_ARGS, argv, &out));
  return out;
}

/* The response object (made by the makeResponse factory) from one agent_response_read.
 * Takes the response: freed here, or handed to an external Buffer. NULL with an exception
 * pending on failure. */
static napi_value build_response(napi_env env, env_state *st, agent_response *resp) {
  agent_response_parts p;
  memset(&p, 0, sizeof p);
  agent_code code = agent_response_read(resp, &p);
  if (code != AGENT_CODE_OK) {
    agent_response_free(resp);
    throw_agent_error(env, code);
    return NULL;
  }
  napi_value argv[FACTORY_ARGS];
  if (!head_args(env, &p, argv)) {
    agent_response_free(resp);
    ensure_exception(env, "response");
    return NULL;
  }
  /* Read before the body: the response may be freed just below. */
  if (may_have_trailers(resp, &p) &&
      !trailer_array(env, resp, NULL, agent_response_trailer_count(resp), &argv[12])) {
    agent_response_free(resp);
    return NULL;
  }
  /* The body is copied once into a Buffer (then the response is freed at once), or, when
   * large, lent to an external Buffer that frees the response when collected. */
  const uint8_t *data = p.body;
  size_t len = p.body_len;
  if (len >= EXTERNAL_BODY_MIN &&
      napi_create_external_buffer(env, len, (void *)data, free_response_finalizer, resp, &argv[4]) ==
          napi_ok) {
    resp = NULL; /* now owned by the Buffer's finalizer */
  } else {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    void *copy_out = NULL;
    if (pending || napi_create_buffer_copy(env, len, len > 0 ? data : (const void *)"", &copy_out,
                                           &argv[4]) != napi_ok) {
      agent_response_free(resp);
      ensure_exception(env, "napi_create_buffer_copy");
      return NULL;
    }
    agent_response_free(resp);
  }
  return call_factory(env, st->make_response, argv);
}

/* ------------------------------------------------------------------------------------ */
/* Response streams                                                                      */

static void stream_unlink(stream_ctx *c) {
  env_state *st = c->st;
  if (c->prev != NULL) {
    c->prev->next = c->next;
  } else if (st->streams == c) {
    st->streams = c->next;
  }
  if (c->next != NULL) {
    c->next->prev = c->prev;
  }
  c->prev = c->next = NULL;
}

/* Frees the stream (aborting it before its end) and lets go of its agent. Idempotent.
 * `env` NULL (teardown): references die with the env. A read in flight is reported
 * cancelled at a later drain, unseen; it no longer keeps the event loop alive, since
 * nobody waits for it. */
static void stream_close(napi_env env, stream_ctx *c) {
  if (c->read_counted) {
    c->read_counted = false;
    inflight_done(c->st);
  }
  if (c->stream != NULL) {
    agent_stream *s = c->stream;
    c->stream = NULL;
    stream_unlink(c);
    agent_stream_free(s);
  }
  if (c->holds_box) {
    c->holds_box = false;
    box_release(env, c->box);
  }
}

static void stream_ctx_unref(stream_ctx *c) {
  if (--c->refs == 0) {
    env_state *st = c->st;
    free(c);
    state_unref(st);
  }
}

/* The stream's external was collected, or the env is being torn down (after teardown,
 * which freed the stream already). A read in flight holds its own reference. */
static void stream_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  stream_ctx *c = data;
  env_state *st = c->st;
  pthread_mutex_lock(&st->mu);
  bool closing = st->closed;
  pthread_mutex_unlock(&st->mu);
  stream_close(closing ? NULL : env, c);
  stream_ctx_unref(c);
}

/* A read's event reaches its callback, cb(err, chunk, totalMs, rawTrailers): an error; a
 * Buffer; or null at the end, with the request's total time and its trailers (undefined
 * when there were none). An error or the end frees the stream at once (the end has given
 * the connection back to the pool already): the trailers are read before. */
static void settle_read(napi_env env, stream_ctx *c, const agent_event *ev) {
  napi_ref cb = c->read_cb;
  c->read_cb = NULL;
  c->reading = false;
  if (c->read_counted) {
    c->read_counted = false;
    inflight_done(c->st);
  }
  /* A stream freed by JS while its read was in flight: nobody is waiting for the result
   * (and the piece, if any, went with the stream). */
  if (c->stream != NULL && cb != NULL) {
    napi_value argv[4];
    bool built = napi_get_null(env, &argv[0]) == napi_ok && napi_get_null(env, &argv[1]) == napi_ok &&
                 napi_get_undefined(env, &argv[2]) == napi_ok && napi_get_undefined(env, &argv[3]) == napi_ok;
    if (built && ev->code != AGENT_CODE_OK) {
      argv[0] = make_agent_error(env, ev->code, ev->message);
      stream_close(env, c);
      built = argv[0] != NULL;
    } else if (built && ev->len == 0) {
      agent_response_parts p;
      memset(&p, 0, sizeof p);
      agent_stream_head(c->stream, &p);
      built = trailer_array(env, NULL, c->stream, agent_stream_trailer_count(c->stream), &argv[3]) &&
              napi_create_double(env, (double)p.timings.total_us / 1000.0, &argv[2]) == napi_ok;
      stream_close(env, c);
    } else if (built) {
      /* Copied into a Buffer: the piece is valid only until the next read, which the
       * callback may start. */
      void *copy_out = NULL;
      built = napi_create_buffer_copy(env, ev->len, ev->data, &copy_out, &argv[1]) == napi_ok;
    }
    if (!built) {
      /* N-API failed: the reader gets whatever it threw, and the stream is done. */
      stream_close(env, c);
      napi_value e = NULL;
      if (napi_get_and_clear_last_exception(env, &e) != napi_ok || e == NULL) {
        napi_create_string_utf8(env, "keepalive-agent: N-API failure while delivering body data",
                                NAPI_AUTO_LENGTH, &e);
      }
      argv[0] = e;
      napi_get_null(env, &argv[1]);
    }
    call_js(env, cb, 4, argv);
  }
  if (cb != NULL) {
    napi_delete_reference(env, cb);
  }
  stream_ctx_unref(c);
}

/* The head of a stream request is in: the head object (made by the makeHead factory) with
 * a `stream` handle that takes over the stream and the request's hold on its agent. NULL
 * with an exception pending on failure (the stream is then freed). */
static napi_value build_stream_head(napi_env env, env_state *st, req_ctx *r, agent_stream *stream) {
  agent_response_parts p;
  memset(&p, 0, sizeof p);
  agent_code code = agent_stream_head(stream, &p);
  if (code != AGENT_CODE_OK) {
    agent_stream_free(stream);
    throw_agent_error(env, code);
    return NULL;
  }
  napi_value argv[FACTORY_ARGS];
  if (!head_args(env, &p, argv)) {
    agent_stream_free(stream);
    ensure_exception(env, "response head");
    return NULL;
  }
  stream_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) {
    agent_stream_free(stream);
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  if (napi_create_external(env, c, stream_finalize, NULL, &argv[4]) != napi_ok) {
    free(c);
    agent_stream_free(stream);
    ensure_exception(env, "napi_create_external");
    return NULL;
  }
  /* Owned by the external from here on (its finalizer drops this reference). */
  c->link.kind = PEND_READ;
  c->st = st;
  c->box = r->box;
  c->refs = 1;
  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);
  c->stream = stream;
  c->holds_box = true;
  box_hold(env, c->box);
  c->next = st->streams;
  if (st->streams != NULL) {
    st->streams->prev = c;
  }
  st->streams = c;
  if (napi_type_tag_object(env, argv[4], &STREAM_TAG) != napi_ok) {
    stream_close(env, c);
    ensure_exception(env, "stream handle");
    return NULL;
  }
  napi_value head = call_factory(env, st->make_head, argv);
  if (head == NULL) {
    stream_close(env, c);
  }
  return head;
}

/* ------------------------------------------------------------------------------------ */
/* Request bodies from JS                                                                */

/* Drops one reference to a source; called with st->mu held. True when it was the last:
 * the caller then calls src_destroy (after unlocking). */
static bool src_unref_locked(body_src *s) {
  if (--s->refs > 0) {
    return false;
  }
  env_state *st = s->st;
  if (s->prev != NULL) {
    s->prev->next = s->next;
  } else if (st->sources == s) {
    st->sources = s->next;
  }
  if (s->next != NULL) {
    s->next->prev = s->prev;
  }
  return true;
}

static void src_destroy(body_src *s) {
  env_state *st = s->st;
  free(s->ring); /* the last reference: nobody else can see it */
  agent_body_waker_free(s->waker); /* NULL: src_release took it */
  free(s);
  state_unref(st);
}

/* Tells the JS pusher it may go on (room in the queue, or the source stopped): puts the
 * source on the pull list, delivered after the current drain or by the wake handle.
 * Called with st->mu held. */
static void src_pull_locked(body_src *s) {
  env_state *st = s->st;
  if (s->pull_posted || s->js_gone || st->closed) {
    return;
  }
  s->js_waiting = false;
  s->pull_posted = true;
  s->refs++;
  bool first = st->pulls == NULL;
  s->pull_next = st->pulls;
  st->pulls = s;
  if (first && st->wake_open) {
    uv_async_send(st->wake);
  }
}

/* Takes the waker a pending read() kept, for the caller to wake (or free) once it has
 * unlocked st->mu. Called with st->mu held. */
static agent_body_waker *src_take_waker_locked(body_src *s) {
  agent_body_waker *w = s->waker;
  s->waker = NULL;
  return w;
}

/* Stops a source (first reason wins). Called with st->mu held; returns the waker of a
 * pending read, which the caller wakes after unlocking (read() then returns the reason). */
static agent_body_waker *src_stop_locked(body_src *s, int why) {
  if (s->stop == SRC_OPEN) {
    s->stop = why;
  }
  return src_take_waker_locked(s);
}

/* Stops every source of the env sent with `box` (every source when `box` is NULL) and
 * wakes their pending reads, each outside the lock. */
static void src_stop_all(env_state *st, const agent_box *box, int why) {
  for (;;) {
    agent_body_waker *w = NULL;
    pthread_mutex_lock(&st->mu);
    for (body_src *s = st->sources; s != NULL && w == NULL; s = s->next) {
      if (box == NULL || s->box == box) {
        w = src_stop_locked(s, why);
      }
    }
    pthread_mutex_unlock(&st->mu);
    if (w == NULL) {
      return; /* every source is stopped, and a stopped source keeps no new waker */
    }
    agent_body_waker_wake(w);
  }
}

/* agent_body_source.read, on the draining thread: takes what JS has queued. Never waits
 * and never calls into JS: with nothing queued, it keeps a waker and returns
 * AGENT_SOURCE_PENDING (see the top of the file). */
static int src_read(void *userdata, uint8_t *buf, size_t cap, size_t *n) {
  body_src *s = userdata;
  env_state *st = s->st;
  size_t got = 0;
  int rc = 0;
  agent_body_waker *stale = NULL;
  pthread_mutex_lock(&st->mu);
  /* A read before its waker was woken (a spurious poll) keeps only the newest waker. */
  stale = src_take_waker_locked(s);
  if (s->stop != SRC_OPEN) {
    rc = s->stop;
  } else if (s->queued > 0) {
    got = s->queued < cap ? s->queued : cap;
    size_t at = s->start;
    pthread_mutex_unlock(&st->mu);
    /* Only this reader moves `start` and shrinks `queued`, and the pusher writes only
     * outside [start, start + queued): these bytes are stable without the lock. */
    size_t first = s->cap - at < got ? s->cap - at : got;
    memcpy(buf, s->ring + at, first);
    memcpy(buf + first, s->ring, got - first);
    pthread_mutex_lock(&st->mu);
    s->start = (at + got) % s->cap;
    s->queued -= got;
  } else if (!s->ended) {
    if (s->js_waiting) {
      src_pull_locked(s);
    }
    s->waker = agent_body_source_waker();
    /* NULL only outside a read callback, which the library never does. */
    rc = s->waker != NULL ? AGENT_SOURCE_PENDING : SRC_CLOSED;
  }
  if (rc == 0 && s->js_waiting && s->queued <= s->cap / 2) {
    src_pull_locked(s);
  }
  pthread_mutex_unlock(&st->mu);
  agent_body_waker_free(stale);
  *n = got;
  return rc;
}

/* agent_body_source.release: exactly once, on any thread. */
static void src_release(void *userdata) {
  body_src *s = userdata;
  env_state *st = s->st;
  pthread_mutex_lock(&st->mu);
  /* The library no longer reads: a waker still kept is freed unused. */
  agent_body_waker *w = src_stop_locked(s, SRC_CLOSED);
  s->released = true;
  /* A last pull: a waiting pusher learns that it is over, and the JS thread drops onPull
   * (which, held strongly, would keep the pusher and everything it holds alive). */
  src_pull_locked(s);
  bool last = src_unref_locked(s);
  pthread_mutex_unlock(&st->mu);
  agent_body_waker_free(w);
  if (last) {
    src_destroy(s);
  }
}

/* JS thread (env NULL at teardown): one source taken off the pull list. */
static void deliver_pull(napi_env env, body_src *s) {
  env_state *st = s->st;
  pthread_mutex_lock(&st->mu);
  s->pull_posted = false;
  bool call = env != NULL && !s->js_gone && s->on_pull != NULL;
  bool released = s->released;
  pthread_mutex_unlock(&st->mu);
  if (call) {
    call_js(env, s->on_pull, 0, NULL);
    if (released) {
      napi_delete_reference(env, s->on_pull);
      s->on_pull = NULL;
    }
  }
  if (released && env != NULL) {
    /* The library is done with it and sourcePush (this thread) no longer writes to it: the
     * ring goes now rather than when the external is collected, which may be much later. */
    pthread_mutex_lock(&st->mu);
    uint8_t *ring = s->ring;
    s->ring = NULL;
    pthread_mutex_unlock(&st->mu);
    free(ring);
  }
  pthread_mutex_lock(&st->mu);
  bool last = src_unref_locked(s);
  pthread_mutex_unlock(&st->mu);
  if (last) {
    src_destroy(s);
  }
}

/* Delivers every source on the pull list (env NULL at teardown: only drops them). */
static void deliver_pulls(napi_env env, env_state *st) {
  for (int round = 0; round < 64; round++) {
    pthread_mutex_lock(&st->mu);
    body_src *list = st->pulls;
    st->pulls = NULL;
    pthread_mutex_unlock(&st->mu);
    if (list == NULL) {
      return;
    }
    while (list != NULL) {
      body_src *next = list->pull_next;
      list->pull_next = NULL;
      deliver_pull(env, list);
      list = next;
    }
  }
  /* A pusher that keeps refilling from inside onPull: the rest waits for the wake handle. */
  pthread_mutex_lock(&st->mu);
  if (st->pulls != NULL && st->wake_open && !st->closed) {
    uv_async_send(st->wake);
  }
  pthread_mutex_unlock(&st->mu);
}

static bool pulls_waiting(env_state *st) {
  pthread_mutex_lock(&st->mu);
  bool any = st->pulls != NULL;
  pthread_mutex_unlock(&st->mu);
  return any;
}

/* The source's external was collected, or the env is being torn down. Nobody can push
 * to it any more: unless its body was complete, a pending reader would never be woken,
 * so it stops (and its reader is woken to fail). */
static void src_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  body_src *s = data;
  env_state *st = s->st;
  agent_body_waker *w = NULL;
  pthread_mutex_lock(&st->mu);
  s->js_gone = true;
  if (!s->ended) {
    w = src_stop_locked(s, SRC_CLOSED);
  }
  bool closing = st->closed;
  pthread_mutex_unlock(&st->mu);
  agent_body_waker_wake(w);
  /* JS thread: no pull is being delivered now, and js_gone stops later ones. */
  if (s->on_pull != NULL && !closing) {
    napi_delete_reference(env, s->on_pull);
  }
  s->on_pull = NULL;
  pthread_mutex_lock(&st->mu);
  bool last = src_unref_locked(s);
  pthread_mutex_unlock(&st->mu);
  if (last) {
    src_destroy(s);
  }
}

/* ------------------------------------------------------------------------------------ */
/* Events: the JS thread                                                                 */

/* A request's event: its promise is resolved with the response (or the head and its
 * stream) or rejected with the library's error. */
static void settle_request(napi_env env, env_state *st, req_ctx *r, const agent_event *ev) {
  napi_value value = NULL;
  bool ok = false;
  if (ev->code != AGENT_CODE_OK) {
    agent_response_free(ev->response);
    agent_stream_free(ev->stream);
    value = make_agent_error(env, ev->code, ev->message);
  } else if (r->link.kind == PEND_REQUEST) {
    agent_stream_free(ev->stream);
    value = build_response(env, st, ev->response);
    ok = value != NULL;
  } else if (r->box->handle == NULL) {
    /* The agent was destroyed while the head was on its way: as if it had been in flight. */
    agent_response_free(ev->response);
    agent_stream_free(ev->stream);
    value = make_agent_error(env, AGENT_CODE_CANCELLED, "the agent was destroyed");
  } else {
    agent_response_free(ev->response);
    value = build_stream_head(env, st, r, ev->stream);
    ok = value != NULL;
  }
  if (value == NULL) {
    /* N-API (or a factory) failed while building: reject with whatever it threw. */
    ok = false;
    if (napi_get_and_clear_last_exception(env, &value) != napi_ok || value == NULL) {
      napi_get_undefined(env, &value);
    }
  }
  if (ok) {
    napi_resolve_deferred(env, r->deferred, value);
  } else {
    napi_reject_deferred(env, r->deferred, value);
  }
  box_release(env, r->box);
  free(r);
  inflight_done(st);
}

static void settle_event(napi_env env, env_state *st, const agent_event *ev) {
  pend *p = (pend *)(uintptr_t)ev->token;
  pend_unlink(p);
  if (p->kind == PEND_READ) {
    settle_read(env, (stream_ctx *)p, ev);
  } else {
    settle_request(env, st, (req_ctx *)p, ev);
  }
  /* Whatever JS left pending (it cannot be an exception of a call: those are reported
   * where they happen) must not make the next event's N-API calls fail. */
  report_pending_exception(env);
}

/* ------------------------------------------------------------------------------------ */
/* Events (agent_options_set_events)                                                    */

static ev_sink *sink_new(env_state *st, uint32_t id) {
  ev_sink *k = calloc(1, sizeof *k);
  if (k == NULL) {
    return NULL;
  }
  k->st = st;
  k->id = id;
  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);
  return k;
}

/* Only once the library can no longer call the callback (agent_free returned, or the
 * agent was never made). */
static void sink_free(ev_sink *k) {
  if (k == NULL) {
    return;
  }
  env_state *st = k->st;
  free(k);
  state_unref(st);
}

static size_t text_size(const char *s) {
  return s == NULL ? 0 : strlen(s) + 1;
}

/* Copies `s` to *at and returns where it went (NULL for NULL). */
static const char *text_put(char **at, const char *s) {
  if (s == NULL) {
    return NULL;
  }
  size_t n = strlen(s) + 1;
  char *out = *at;
  memcpy(out, s, n);
  *at += n;
  return out;
}

/* The event callback: any thread, possibly several at once. Copies and queues; never
 * calls into JS. */
static void on_trace(void *userdata, const agent_trace_event *event) {
  ev_sink *k = userdata;
  env_state *st = k->st;
  if (event == NULL) {
    return;
  }
  size_t len = text_size(event->origin) + text_size(event->address) + text_size(event->detail) +
               text_size(event->headers);
  ev_rec *r = malloc(sizeof *r + len);
  if (r == NULL) {
    return;
  }
  char *at = r->text;
  r->next = NULL;
  r->connection = event->connection;
  r->id = k->id;
  r->kind = (uint32_t)event->kind;
  r->family = event->family;
  r->status = event->status;
  r->version = event->version;
  r->code = (uint32_t)event->code;
  r->reused = event->reused;
  r->origin = text_put(&at, event->origin);
  r->address = text_put(&at, event->address);
  r->detail = text_put(&at, event->detail);
  r->headers = text_put(&at, event->headers);
  pthread_mutex_lock(&st->mu);
  if (st->closed || !st->wake_open || st->ev_count >= EVENT_QUEUE_MAX) {
    if (!st->closed) {
      st->ev_dropped++;
    }
    pthread_mutex_unlock(&st->mu);
    free(r);
    return;
  }
  bool first = st->ev_head == NULL;
  if (first) {
    st->ev_head = r;
  } else {
    st->ev_tail->next = r;
  }
  st->ev_tail = r;
  st->ev_count++;
  if (first) {
    uv_async_send(st->wake);
  }
  pthread_mutex_unlock(&st->mu);
}

static bool events_waiting(env_state *st) {
  pthread_mutex_lock(&st->mu);
  bool any = st->ev_head != NULL;
  pthread_mutex_unlock(&st->mu);
  return any;
}

static ev_rec *events_take(env_state *st) {
  pthread_mutex_lock(&st->mu);
  ev_rec *list = st->ev_head;
  st->ev_head = st->ev_tail = NULL;
  st->ev_count = 0;
  pthread_mutex_unlock(&st->mu);
  return list;
}

static void events_free(ev_rec *list) {
  while (list != NULL) {
    ev_rec *next = list->next;
    free(list);
    list = next;
  }
}

static napi_status set_text(napi_env env, napi_value arr, uint32_t i, const char *s) {
  napi_value v;
  napi_status status = s == NULL ? napi_get_null(env, &v) : napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return status != napi_ok ? status : napi_set_element(env, arr, i, v);
}

static napi_status set_u32(napi_env env, napi_value arr, uint32_t i, uint32_t x) {
  napi_value v;
  napi_status status = napi_create_uint32(env, x, &v);
  return status != napi_ok ? status : napi_set_element(env, arr, i, v);
}

/* One event's EVENT_FIELDS values at arr[base...]. */
static napi_status event_values(napi_env env, napi_value arr, uint32_t base, const ev_rec *r) {
  napi_value v;
  napi_status s;
  if ((s = set_u32(env, arr, base, r->id)) != napi_ok || (s = set_u32(env, arr, base + 1, r->kind)) != napi_ok ||
      (s = napi_create_double(env, (double)r->connection, &v)) != napi_ok ||
      (s = napi_set_element(env, arr, base + 2, v)) != napi_ok ||
      (s = set_text(env, arr, base + 3, r->origin)) != napi_ok ||
      (s = set_text(env, arr, base + 4, r->address)) != napi_ok ||
      (s = set_u32(env, arr, base + 5, r->family)) != napi_ok ||
      (s = set_u32(env, arr, base + 6, r->status)) != napi_ok ||
      (s = set_u32(env, arr, base + 7, r->version)) != napi_ok ||
      (s = napi_get_boolean(env, r->reused, &v)) != napi_ok ||
      (s = napi_set_element(env, arr, base + 8, v)) != napi_ok ||
      (s = set_u32(env, arr, base + 9, r->code)) != napi_ok ||
      (s = set_text(env, arr, base + 10, r->detail)) != napi_ok) {
    return s;
  }
  return set_text(env, arr, base + 11, r->headers);
}

/* Publishes every queued event (JS thread, inside an open turn): one call of the publisher
 * per batch, with a flat array. */
static void deliver_events(napi_env env, env_state *st) {
  ev_rec *list = events_take(st);
  if (list == NULL) {
    return;
  }
  if (st->publish == NULL) {
    events_free(list);
    return;
  }
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    events_free(list);
    return;
  }
  napi_value arr;
  bool ok = napi_create_array(env, &arr) == napi_ok;
  uint32_t base = 0;
  for (ev_rec *r = list; ok && r != NULL; r = r->next, base += EVENT_FIELDS) {
    ok = event_values(env, arr, base, r) == napi_ok;
  }
  events_free(list);
  if (ok) {
    call_js(env, st->publish, 1, &arr);
  } else {
    report_pending_exception(env);
  }
  napi_close_handle_scope(env, scope);
}

/* Drains the queue and settles what completed, batch by batch (see the top of the
 * file). JS thread, from a libuv callback. */
static void run_queue(env_state *st) {
  napi_env env = st->env;
  if (st->in_poll || st->queue == NULL) {
    return;
  }
  st->in_poll = true;
  for (int round = 0; round < DRAIN_ROUNDS && st->queue != NULL; round++) {
    size_t n = 0;
    agent_code code = agent_queue_drain(st->queue, st->events, EVENT_BATCH, 0, &n);
    if (code != AGENT_CODE_OK) {
      n = 0;
    }
    if (n == 0 && !pulls_waiting(st)) {
      break;
    }
    uint64_t submitted = st->submitted;
    js_turn turn;
    if (!turn_open(st, &turn)) {
      /* No JS at all: what the events carry is freed, their contexts wait for teardown. */
      for (size_t i = 0; i < n; i++) {
        agent_response_free(st->events[i].response);
        agent_stream_free(st->events[i].stream);
      }
      break;
    }
    for (size_t i = 0; i < n; i++) {
      settle_event(env, st, &st->events[i]);
    }
    /* Published before the promises of this batch run their continuations. */
    deliver_events(env, st);
    deliver_pulls(env, st);
    turn_close(st, &turn);
    /* Another drain only when this one was full, or JS submitted while settling (so its
     * requests are sent now rather than at the next loop iteration). */
    if (n < EVENT_BATCH && st->submitted == submitted) {
      break;
    }
  }
  st->in_poll = false;
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  run_queue(uv_handle_get_data((uv_handle_t *)handle));
}

/* Pulls posted outside a drain (a source released on another thread, or by a stream's
 * free), and events. */
static void on_wake(uv_async_t *handle) {
  env_state *st = uv_handle_get_data((uv_handle_t *)handle);
  if (!pulls_waiting(st) && !events_waiting(st)) {
    return;
  }
  js_turn turn;
  if (turn_open(st, &turn)) {
    deliver_events(st->env, st);
    deliver_pulls(st->env, st);
    turn_close(st, &turn);
  }
}

/* ------------------------------------------------------------------------------------ */
/* Agents                                                                                */

static void box_unlink(agent_box *b) {
  if (b->st == NULL) {
    return;
  }
  if (b->prev != NULL) {
    b->prev->next = b->next;
  } else {
    b->st->agents = b->next;
  }
  if (b->next != NULL) {
    b->next->prev = b->prev;
  }
  b->prev = b->next = NULL;
  b->st = NULL;
}

/* What a freeing thread frees: the agent, then its event callback's userdata. */
typedef struct free_job {
  agent *a;
  ev_sink *sink;
} free_job;

static void *free_agent_thread(void *arg) {
  free_job *job = arg;
  agent_free(job->a);
  sink_free(job->sink);
  free(job);
  return NULL;
}

/* agent_free closes every connection and waits (bounded) for them, so it can take a
 * while; the JS thread must never wait for it. It runs on a short-lived detached thread
 * instead (synchronously only if no thread can be made). Safe: nothing uses the agent
 * afterwards; its requests still on the queue are reported cancelled at the next drain. */
static void free_agent_in_background(agent *a, ev_sink *sink) {
  if (a == NULL) {
    sink_free(sink);
    return;
  }
  pthread_attr_t attr;
  pthread_t t;
  bool started = false;
  free_job *job = malloc(sizeof *job);
  if (job != NULL && pthread_attr_init(&attr) == 0) {
    job->a = a;
    job->sink = sink;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&t, &attr, free_agent_thread, job) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) {
    free(job);
    agent_free(a);
    sink_free(sink);
  }
}

/* Takes the box's agent (and its event userdata) and frees them off the JS thread. */
static void box_free_agent(agent_box *b) {
  agent *a = b->handle;
  ev_sink *sink = b->sink;
  b->handle = NULL;
  b->sink = NULL;
  free_agent_in_background(a, sink);
}

/* The external was collected (or the env is being torn down). No request is in flight:
 * each holds the external. */
static void box_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  agent_box *b = data;
  bool live_env = b->st != NULL;
  box_unlink(b);
  if (live_env && b->self != NULL) {
    napi_delete_reference(env, b->self);
  }
  b->self = NULL;
  box_free_agent(b);
  free(b);
}

typedef agent_code (*u32_setter)(agent_options *, uint32_t);
typedef agent_code (*bool_setter)(agent_options *, bool);

static const struct {
  const char *key;
  u32_setter set;
} U32_OPTIONS[] = {
    {"keepAliveMsecs", agent_options_set_keep_alive_msecs},
    {"keepAliveInterval", agent_options_set_keep_alive_interval_msecs},
    {"keepAliveProbes", agent_options_set_keep_alive_probes},
    {"maxSockets", agent_options_set_max_sockets},
    {"maxTotalSockets", agent_options_set_max_total_sockets},
    {"maxFreeSockets", agent_options_set_max_free_sockets},
    {"scheduling", agent_options_set_scheduling},
    {"timeout", agent_options_set_free_socket_timeout_msecs},
    {"keepAliveTimeoutBuffer", agent_options_set_keep_alive_timeout_buffer_msecs},
    {"keepAliveMaxTimeout", agent_options_set_max_keep_alive_timeout_msecs},
    {"socketActiveTTL", agent_options_set_max_socket_lifetime_msecs},
    {"connectTimeout", agent_options_set_connect_timeout_msecs},
    {"headersTimeout", agent_options_set_headers_timeout_msecs},
    {"bodyTimeout", agent_options_set_body_timeout_msecs},
    {"dnsCacheMsecs", agent_options_set_dns_cache_msecs},
    {"happyEyeballsDelay", agent_options_set_happy_eyeballs_delay_msecs},
    {"httpVersion", agent_options_set_http_version},
};

static const struct {
  const char *key;
  bool_setter set;
} BOOL_OPTIONS[] = {
    {"keepAlive", agent_options_set_keep_alive},
    {"retryStale", agent_options_set_retry_stale},
    {"useSystemRoots", agent_options_set_use_system_roots},
    {"dangerAcceptInvalidCerts", agent_options_set_danger_accept_invalid_certs},
    {"proxyFromEnv", agent_options_set_proxy_from_env},
    {"ignoreEnvironment", agent_options_set_ignore_environment},
};

typedef agent_code (*str_setter)(agent_options *, const char *);
typedef agent_code (*pem_setter)(agent_options *, const uint8_t *, size_t);

/* String options: JS strings (index.js joins a noProxy list with commas). */
static const struct {
  const char *key;
  const char *what; /* the name in a TypeError */
  str_setter set;
} STRING_OPTIONS[] = {
    {"userAgent", "options.userAgent", agent_options_set_user_agent},
    {"proxy", "options.proxy", agent_options_set_proxy},
    {"noProxy", "options.noProxy", agent_options_set_no_proxy},
};

/* PEM options: Buffers (index.js turns strings into UTF-8 bytes). */
static const struct {
  const char *key;
  pem_setter set;
} PEM_OPTIONS[] = {
    {"ca", agent_options_set_ca_pem},
    {"cert", agent_options_set_client_cert_pem},
    {"key", agent_options_set_client_key_pem},
};

/* Reads options.key: 1 = present (in *out), 0 = absent, -1 = N-API failure. */
static int get_opt(napi_env env, napi_value obj, const char *key, napi_value *out) {
  if (napi_get_named_property(env, obj, key, out) != napi_ok) {
    return -1;
  }
  return is_undefined(env, *out) ? 0 : 1;
}

/* The strings given to the options of one create(), freed once the agent is made. */
typedef struct kept_strings {
  char **items;
  size_t len;
  size_t cap;
} kept_strings;

/* Takes `s` (freed with the list, or here on failure). False with an exception pending. */
static bool strings_keep(napi_env env, kept_strings *k, char *s) {
  if (k->len == k->cap) {
    size_t cap = k->cap == 0 ? 8 : k->cap * 2;
    char **items = realloc(k->items, cap * sizeof *items);
    if (items == NULL) {
      free(s);
      napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
      return false;
    }
    k->items = items;
    k->cap = cap;
  }
  k->items[k->len++] = s;
  return true;
}

static void strings_free(kept_strings *k) {
  for (size_t i = 0; i < k->len; i++) {
    free(k->items[i]);
  }
  free(k->items);
  k->items = NULL;
  k->len = k->cap = 0;
}

/* An option setter's result: false (with the library's error thrown) unless OK. Values
 * are checked by agent_new_with_options; a setter refuses only what it cannot take. */
static bool option_ok(napi_env env, agent_code code) {
  if (code == AGENT_CODE_OK) {
    return true;
  }
  throw_agent_error(env, code);
  return false;
}

/* create(options): options were validated and normalized by index.js (numbers are
 * integers in range, scheduling is 0/1, ca/cert/key are Buffers, noProxy is one
 * comma-separated string, resolve an array of strings, rejectUnauthorized is turned into
 * dangerAcceptInvalidCerts, httpVersion is one of httpVersions' values). Keys left
 * undefined keep the library's defaults; an undefined keepAlive lets the environment
 * switch decide (which turns reuse off even for keepAlive true, unless ignoreEnvironment).
 * `events` (a nonzero id) installs the event callback, with every kind, and
 * `eventHeaders` adds the headers (AGENT_TRACE_WITH_HEADERS). */
static napi_value js_create(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 1;
  napi_value argv[1], v, ext;
  agent_options *o = NULL;
  agent_box *b = NULL;
  ev_sink *sink = NULL;
  kept_strings kept = {NULL, 0, 0};
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "options required");
    return NULL;
  }
  if (is_undefined(env, argv[0])) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "options must be an object");
    return NULL;
  }
  o = agent_options_new();
  if (o == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < sizeof U32_OPTIONS / sizeof U32_OPTIONS[0]; i++) {
    int has = get_opt(env, argv[0], U32_OPTIONS[i].key, &v);
    if (has < 0) {
      ensure_exception(env, U32_OPTIONS[i].key);
      goto fail;
    }
    if (has) {
      uint32_t x = 0;
      NAPI_TRY_GOTO(env, napi_get_value_uint32(env, v, &x), fail);
      U32_OPTIONS[i].set(o, x);
    }
  }
  for (size_t i = 0; i < sizeof BOOL_OPTIONS / sizeof BOOL_OPTIONS[0]; i++) {
    int has = get_opt(env, argv[0], BOOL_OPTIONS[i].key, &v);
    if (has < 0) {
      ensure_exception(env, BOOL_OPTIONS[i].key);
      goto fail;
    }
    if (has) {
      bool x = false;
      NAPI_TRY_GOTO(env, napi_get_value_bool(env, v, &x), fail);
      BOOL_OPTIONS[i].set(o, x);
    }
  }
  int has = get_opt(env, argv[0], "maxResponseSize", &v);
  if (has < 0) {
    ensure_exception(env, "maxResponseSize");
    goto fail;
  }
  if (has) {
    int64_t x = 0;
    NAPI_TRY_GOTO(env, napi_get_value_int64(env, v, &x), fail);
    agent_options_set_max_response_bytes(o, x < 0 ? 0 : (uint64_t)x);
  }
  for (size_t i = 0; i < sizeof PEM_OPTIONS / sizeof PEM_OPTIONS[0]; i++) {
    has = get_opt(env, argv[0], PEM_OPTIONS[i].key, &v);
    if (has < 0) {
      ensure_exception(env, PEM_OPTIONS[i].key);
      goto fail;
    }
    if (has) {
      void *data = NULL;
      size_t len = 0;
      NAPI_TRY_GOTO(env, napi_get_buffer_info(env, v, &data, &len), fail);
      if (!option_ok(env, PEM_OPTIONS[i].set(o, data, len))) {
        goto fail;
      }
    }
  }
  /* Strings are kept until the agent is made (the library copies them, but only its
   * documentation for some of them says so). */
  for (size_t i = 0; i < sizeof STRING_OPTIONS / sizeof STRING_OPTIONS[0]; i++) {
    has = get_opt(env, argv[0], STRING_OPTIONS[i].key, &v);
    if (has < 0) {
      ensure_exception(env, STRING_OPTIONS[i].key);
      goto fail;
    }
    if (has) {
      char *text = dup_js_string(env, v, STRING_OPTIONS[i].what);
      if (text == NULL || !strings_keep(env, &kept, text)) {
        goto fail;
      }
      if (!option_ok(env, STRING_OPTIONS[i].set(o, text))) {
        goto fail;
      }
    }
  }
  /* resolve: an array of curl CURLOPT_RESOLVE entries, one agent_options_add_resolve each. */
  has = get_opt(env, argv[0], "resolve", &v);
  if (has < 0) {
    ensure_exception(env, "resolve");
    goto fail;
  }
  if (has) {
    uint32_t n = 0;
    NAPI_TRY_GOTO(env, napi_get_array_length(env, v, &n), fail);
    for (uint32_t i = 0; i < n; i++) {
      napi_value item;
      char what[48];
      NAPI_TRY_GOTO(env, napi_get_element(env, v, i, &item), fail);
      snprintf(what, sizeof what, "options.resolve[%u]", (unsigned)i);
      char *entry = dup_js_string(env, item, what);
      if (entry == NULL || !strings_keep(env, &kept, entry)) {
        goto fail;
      }
      if (!option_ok(env, agent_options_add_resolve(o, entry))) {
        goto fail;
      }
    }
  }

  has = get_opt(env, argv[0], "events", &v);
  if (has < 0) {
    ensure_exception(env, "events");
    goto fail;
  }
  if (has) {
    uint32_t id = 0;
    bool headers = false;
    NAPI_TRY_GOTO(env, napi_get_value_uint32(env, v, &id), fail);
    has = get_opt(env, argv[0], "eventHeaders", &v);
    if (has < 0) {
      ensure_exception(env, "eventHeaders");
      goto fail;
    }
    if (has) {
      NAPI_TRY_GOTO(env, napi_get_value_bool(env, v, &headers), fail);
    }
    if (id != 0) {
      sink = sink_new(st, id);
      if (sink == NULL) {
        napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
        goto fail;
      }
      uint32_t mask = (uint32_t)AGENT_TRACE_MASK_ALL | (headers ? (uint32_t)AGENT_TRACE_WITH_HEADERS : 0u);
      if (!option_ok(env, agent_options_set_events(o, on_trace, sink)) ||
          !option_ok(env, agent_options_set_event_mask(o, mask))) {
        goto fail;
      }
    }
  }

  b = calloc(1, sizeof *b);
  if (b == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    goto fail;
  }
  agent_code code = agent_new_with_options(o, &b->handle);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
    goto fail;
  }
  agent_options_free(o);
  o = NULL;
  strings_free(&kept);
  b->sink = sink;
  b->events = sink != NULL;
  sink = NULL; /* goes with the agent from here on */
  if (napi_create_external(env, b, box_finalize, NULL, &ext) != napi_ok) {
    ensure_exception(env, "napi_create_external");
    agent_free(b->handle);
    sink_free(b->sink);
    free(b);
    return NULL;
  }
  /* Owned by the external from here on. */
  b->st = st;
  b->next = st->agents;
  if (st->agents != NULL) {
    st->agents->prev = b;
  }
  st->agents = b;
  if (napi_type_tag_object(env, ext, &BOX_TAG) != napi_ok ||
      napi_create_reference(env, ext, 0, &b->self) != napi_ok) {
    /* The finalizer frees the agent; without its tag the handle is refused everywhere. */
    b->self = NULL;
    ensure_exception(env, "agent handle");
    return NULL;
  }
  return ext;

fail:
  agent_options_free(o);
  strings_free(&kept);
  sink_free(sink); /* no agent was made with it */
  free(b);
  return NULL;
}

static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  agent *a = b->handle;
  ev_sink *sink = b->sink;
  b->handle = NULL;
  b->sink = NULL;
  env_state *st = b->st;
  if (st != NULL) {
    /* Its open streams are aborted (a read in flight is reported cancelled) and its body
     * sources stopped, so that no pending upload waits for JS any more. */
    stream_ctx *c = st->streams;
    while (c != NULL) {
      stream_ctx *next = c->next;
      if (c->box == b) {
        stream_close(env, c);
      }
      c = next;
    }
    src_stop_all(st, b, SRC_CLOSED);
  }
  /* Its requests on the queue are reported cancelled at the next drain (their promises
   * reject with AGENT_CODE_CANCELLED); every connection is closed, off the JS thread. */
  free_agent_in_background(a, sink);
  return NULL;
}

static napi_value js_keep_alive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  NAPI_TRY(env, napi_get_boolean(env, agent_keep_alive_enabled(b->handle), &out));
  return out;
}

/* keepAliveSource(handle): AGENT_SOURCE_DEFAULT, _ARGUMENT or _ENVIRONMENT. */
static napi_value js_keep_alive_source(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  NAPI_TRY(env, napi_create_uint32(env, (uint32_t)agent_keep_alive_source(b->handle), &out));
  return out;
}

/* keepAliveDescribe(handle): agent_keep_alive_describe's sentence. */
static napi_value js_keep_alive_describe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  char small[256];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  size_t n = agent_keep_alive_describe(b->handle, small, sizeof small);
  if (n < sizeof small) {
    NAPI_TRY(env, napi_create_string_utf8(env, small, n, &out));
    return out;
  }
  char *big = malloc(n + 1);
  if (big == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  size_t m = agent_keep_alive_describe(b->handle, big, n + 1);
  napi_status status = napi_create_string_utf8(env, big, m < n ? m : n, &out);
  free(big);
  NAPI_TRY(env, status);
  return out;
}

/* preconnect(handle, url, count): agent_preconnect; throws the library's error. */
static napi_value js_preconnect(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 3 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  if (b->handle == NULL) {
    napi_throw_error(env, "ERR_AGENT_DESTROYED", "the agent was destroyed");
    return NULL;
  }
  uint32_t count = 0;
  NAPI_TRY(env, napi_get_value_uint32(env, argv[2], &count));
  char *url = dup_js_string(env, argv[1], "url");
  if (url == NULL) {
    return NULL;
  }
  agent_code code = agent_preconnect(b->handle, url, count);
  free(url);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
  }
  return NULL;
}

/* eventsOn(handle): whether the agent was made with an event callback. */
static napi_value js_events_on(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  NAPI_TRY(env, napi_get_boolean(env, b->events, &out));
  return out;
}

/* setEventPublisher(fn): called with each batch of events (a flat array, EVENT_FIELDS
 * values per event). */
static napi_value js_set_event_publisher(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype t;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "setEventPublisher(fn) takes a function");
    return NULL;
  }
  if (st->publish != NULL) {
    napi_delete_reference(env, st->publish);
    st->publish = NULL;
  }
  NAPI_TRY(env, napi_create_reference(env, argv[0], 1, &st->publish));
  return NULL;
}

static napi_status set_double(napi_env env, napi_value obj, const char *key, double v) {
  napi_value x;
  napi_status s = napi_create_double(env, v, &x);
  return s != napi_ok ? s : napi_set_named_property(env, obj, key, x);
}

/* stats(handle, origin?): one key per library statistics field (agent_stats_field_name,
 * camelCased), in the library's order, then keepAlive. A field added to the library
 * appears here with no change to this file. */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 2;
  napi_value argv[2], out, v;
  char *origin = NULL;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  agent_box *b = argc < 1 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  if (b->handle == NULL) {
    napi_throw_error(env, "ERR_AGENT_DESTROYED", "the agent was destroyed");
    return NULL;
  }
  if (argc >= 2 && !is_undefined(env, argv[1])) {
    origin = dup_js_string(env, argv[1], "origin");
    if (origin == NULL) {
      return NULL;
    }
  }
  size_t count = 0;
  agent_code code = agent_stats_values(b->handle, origin, st->stat_values, st->stat_count, &count);
  free(origin);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
    return NULL;
  }
  if (count > st->stat_count) {
    count = st->stat_count; /* only the fields named at init were written */
  }
  NAPI_TRY(env, napi_create_object(env, &out));
  for (size_t i = 0; i < count; i++) {
    NAPI_TRY(env, set_double(env, out, st->stat_keys[i], (double)st->stat_values[i]));
  }
  NAPI_TRY(env, napi_get_boolean(env, agent_keep_alive_enabled(b->handle), &v));
  NAPI_TRY(env, napi_set_named_property(env, out, "keepAlive", v));
  return out;
}

/* ------------------------------------------------------------------------------------ */
/* Requests                                                                              */

/* The strings of one request (method, url, header names and values), copied into one
 * buffer: a stack area for the usual sizes, the heap beyond. */
#define ARENA_SMALL 4096
#define HEADERS_SMALL 32

typedef struct req_args {
  char *buf;             /* `small` or malloc'd */
  size_t len;
  size_t cap;
  size_t *offsets;       /* method, url, then name/value per header (`offsets_small` or malloc'd) */
  size_t n_offsets;
  agent_header *headers; /* `headers_small` or malloc'd, filled by req_args_finish */
  uint32_t header_count;
  const uint8_t *body;   /* points into the caller's Uint8Array (valid during the call) */
  size_t body_len;
  uint32_t timeout_ms;
  const char *method;
  const char *url;
  char small[ARENA_SMALL];
  size_t offsets_small[2 + 2 * HEADERS_SMALL];
  agent_header headers_small[HEADERS_SMALL];
} req_args;

static void req_args_init(req_args *a) {
  a->buf = a->small;
  a->len = 0;
  a->cap = sizeof a->small;
  a->offsets = a->offsets_small;
  a->n_offsets = 0;
  a->headers = a->headers_small;
  a->header_count = 0;
  a->body = NULL;
  a->body_len = 0;
  a->timeout_ms = 0;
  a->method = a->url = NULL;
}

static void req_args_free(req_args *a) {
  if (a->buf != a->small) {
    free(a->buf);
  }
  if (a->offsets != a->offsets_small) {
    free(a->offsets);
  }
  if (a->headers != a->headers_small) {
    free(a->headers);
  }
}

/* Makes room for `need` more bytes. False with an exception pending. */
static bool arena_reserve(napi_env env, req_args *a, size_t need) {
  if (a->cap - a->len >= need) {
    return true;
  }
  size_t cap = a->cap;
  while (cap - a->len < need) {
    if (cap > SIZE_MAX / 2) {
      napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
      return false;
    }
    cap *= 2;
  }
  char *buf = a->buf == a->small ? malloc(cap) : realloc(a->buf, cap);
  if (buf == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return false;
  }
  if (a->buf == a->small) {
    memcpy(buf, a->small, a->len);
  }
  a->buf = buf;
  a->cap = cap;
  return true;
}

/* Appends a JS string (NUL-terminated, NUL inside refused) and records its offset. False
 * with an exception pending. */
static bool arena_string(napi_env env, req_args *a, napi_value v, const char *what) {
  size_t copied = 0;
  if (!arena_reserve(env, a, 64)) {
    return false;
  }
  size_t room = a->cap - a->len;
  if (napi_get_value_string_utf8(env, v, a->buf + a->len, room, &copied) != napi_ok) {
    char msg[128];
    snprintf(msg, sizeof msg, "The \"%s\" argument must be of type string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  if (copied + 1 >= room) {
    /* It may have been cut short: ask for its length and copy it again. */
    size_t full = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &full) != napi_ok) {
      ensure_exception(env, "napi_get_value_string_utf8");
      return false;
    }
    if (full > copied) {
      if (full > SIZE_MAX - 2 || !arena_reserve(env, a, full + 1)) {
        if (full > SIZE_MAX - 2) {
          napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
        }
        return false;
      }
      if (napi_get_value_string_utf8(env, v, a->buf + a->len, full + 1, &copied) != napi_ok) {
        ensure_exception(env, "napi_get_value_string_utf8");
        return false;
      }
    }
  }
  if (strlen(a->buf + a->len) != copied) {
    char msg[128];
    snprintf(msg, sizeof msg, "Invalid character (NUL) in %s", what);
    napi_throw_type_error(env, "ERR_INVALID_CHAR", msg);
    return false;
  }
  a->offsets[a->n_offsets++] = a->len;
  a->len += copied + 1;
  return true;
}

/* Reads method, url, headers, body (argv[0..3]) and the timeout. headers: a flat array
 * [name, value, ...] of strings, or undefined. body: a Uint8Array (Buffer), or undefined.
 * timeout: integer 0..2^31-1. False with an exception pending on failure (the caller
 * still calls req_args_free). */
static bool parse_req_args(napi_env env, const napi_value *argv, napi_value timeout, req_args *a) {
  uint32_t n_strings = 0;
  if (!is_undefined(env, argv[2])) {
    bool is_array = false;
    if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "headers must be an array of strings");
      return false;
    }
    if (napi_get_array_length(env, argv[2], &n_strings) != napi_ok) {
      ensure_exception(env, "napi_get_array_length");
      return false;
    }
    if (n_strings % 2 != 0) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "headers must be name/value pairs");
      return false;
    }
    if (n_strings / 2 > HEADERS_SMALL) {
      a->offsets = malloc(sizeof *a->offsets * (2 + (size_t)n_strings));
      a->headers = malloc(sizeof *a->headers * (n_strings / 2));
      if (a->offsets == NULL || a->headers == NULL) {
        free(a->offsets);
        free(a->headers);
        a->offsets = a->offsets_small;
        a->headers = a->headers_small;
        napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
        return false;
      }
    }
  }
  if (!arena_string(env, a, argv[0], "method") || !arena_string(env, a, argv[1], "url")) {
    return false;
  }
  for (uint32_t i = 0; i < n_strings; i++) {
    napi_value s;
    if (napi_get_element(env, argv[2], i, &s) != napi_ok) {
      ensure_exception(env, "napi_get_element");
      return false;
    }
    if (!arena_string(env, a, s, i % 2 == 0 ? "header name" : "header value")) {
      return false;
    }
  }
  /* Every string is in place: pointers into the (now final) buffer. */
  a->method = a->buf + a->offsets[0];
  a->url = a->buf + a->offsets[1];
  a->header_count = n_strings / 2;
  for (uint32_t i = 0; i < a->header_count; i++) {
    a->headers[i].name = a->buf + a->offsets[2 + 2 * i];
    a->headers[i].value = a->buf + a->offsets[3 + 2 * i];
  }
  if (!is_undefined(env, argv[3])) {
    napi_typedarray_type type;
    size_t length = 0, offset = 0;
    void *data = NULL;
    napi_value ab;
    bool is_ta = false;
    if (napi_is_typedarray(env, argv[3], &is_ta) != napi_ok) {
      ensure_exception(env, "napi_is_typedarray");
      return false;
    }
    if (!is_ta) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "body must be a Uint8Array");
      return false;
    }
    if (napi_get_typedarray_info(env, argv[3], &type, &length, &data, &ab, &offset) != napi_ok) {
      ensure_exception(env, "napi_get_typedarray_info");
      return false;
    }
    if (type != napi_uint8_array) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "body must be a Uint8Array");
      return false;
    }
    a->body = data;
    a->body_len = length;
  }
  napi_valuetype t;
  if (napi_typeof(env, timeout, &t) != napi_ok || t != napi_number ||
      napi_get_value_uint32(env, timeout, &a->timeout_ms) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "timeout must be a number");
    return false;
  }
  return true;
}

/* The queue, or NULL with an error thrown (the env is going away). */
static agent_queue *env_queue(napi_env env, env_state *st) {
  if (st->queue == NULL) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_CLOSED", "keepalive-agent: the environment is shutting down");
  }
  return st->queue;
}

/* A new context for a request whose promise is created here. NULL with an exception
 * pending on failure. */
static req_ctx *new_req_ctx(napi_env env, agent_box *b, int kind, napi_value *promise) {
  req_ctx *r = malloc(sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  r->link.prev = r->link.next = NULL;
  r->link.kind = kind;
  r->box = b;
  if (napi_create_promise(env, &r->deferred, promise) != napi_ok) {
    ensure_exception(env, "napi_create_promise");
    free(r);
    return NULL;
  }
  return r;
}

/* Rejects the promise of a request that did not start with the library's error for
 * `code`, and frees its context. */
static void reject_not_started(napi_env env, req_ctx *r, agent_code code) {
  char *msg = last_error_dup();
  napi_value err = make_agent_error(env, code, msg);
  free(msg);
  if (err == NULL) {
    err = take_exception(env, "make_agent_error");
  }
  napi_reject_deferred(env, r->deferred, err);
  free(r);
}

/* The submission is accepted: its context waits on the pending list for its event. */
static void submitted(env_state *st, req_ctx *r) {
  pend_link(st, &r->link);
  inflight_add(st);
  st->submitted++;
}

/* request(handle, method, url, headers, body, timeoutMs) -> promise
 * Bad arguments throw; once the promise exists, every failure rejects it instead, so a
 * caller never sees both. lastId() then gives the request's id (0 when it did not start). */
static napi_value js_request(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 6;
  napi_value argv[6], promise;
  req_args a;
  req_args_init(&a);
  napi_value ret = NULL;

  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 6) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "request() takes 6 arguments");
    return NULL;
  }
  st->last_id = 0;
  agent_box *b = get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  if (b->handle == NULL) {
    napi_throw_error(env, "ERR_AGENT_DESTROYED", "the agent was destroyed");
    return NULL;
  }
  agent_queue *q = env_queue(env, st);
  if (q == NULL || !parse_req_args(env, argv + 1, argv[5], &a)) {
    goto done;
  }
  req_ctx *r = new_req_ctx(env, b, PEND_REQUEST, &promise);
  if (r == NULL) {
    goto done;
  }
  /* From here on the promise exists: failures reject it. */
  uint64_t id = 0;
  agent_code code = agent_queue_submit(q, b->handle, a.method, a.url, a.headers, a.header_count, a.body,
                                       a.body_len, a.timeout_ms, (uint64_t)(uintptr_t)&r->link, &id);
  if (code != AGENT_CODE_OK) {
    reject_not_started(env, r, code); /* no event will come */
  } else {
    box_hold(env, b);
    submitted(st, r);
    st->last_id = id;
  }
  ret = promise;

done:
  req_args_free(&a);
  return ret;
}

static napi_value js_last_id(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  napi_value out;
  NAPI_TRY(env, napi_get_cb_info(env, info, NULL, NULL, NULL, (void **)&st));
  NAPI_TRY(env, napi_create_double(env, (double)st->last_id, &out));
  return out;
}

/* A body source fed by JS: {length (-1 = unknown), onPull()}. Returns the source with
 * two references (the library's, handed over with the request, and its external's, in
 * *ext), linked into st->sources; NULL with an exception pending on failure. */
static body_src *src_new(napi_env env, env_state *st, const agent_box *b, napi_value spec,
                         int64_t *length, napi_value *ext) {
  napi_value v, fn;
  napi_valuetype t;
  if (napi_typeof(env, spec, &t) != napi_ok || t != napi_object) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "source must be {length >= -1, onPull: function}");
    return NULL;
  }
  if (napi_get_named_property(env, spec, "length", &v) != napi_ok ||
      napi_typeof(env, v, &t) != napi_ok) {
    ensure_exception(env, "source");
    return NULL;
  }
  if (t != napi_number || napi_get_value_int64(env, v, length) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "source must be {length >= -1, onPull: function}");
    return NULL;
  }
  if (napi_get_named_property(env, spec, "onPull", &fn) != napi_ok ||
      napi_typeof(env, fn, &t) != napi_ok) {
    ensure_exception(env, "source");
    return NULL;
  }
  if (t != napi_function || *length < -1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "source must be {length >= -1, onPull: function}");
    return NULL;
  }
  body_src *s = calloc(1, sizeof *s);
  if (s == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  s->st = st;
  s->box = b;
  s->cap = *length >= 0 && (uint64_t)*length < SOURCE_RING ? (size_t)(*length > 0 ? *length : 1) : SOURCE_RING;
  if (napi_create_reference(env, fn, 1, &s->on_pull) != napi_ok) {
    free(s);
    ensure_exception(env, "napi_create_reference");
    return NULL;
  }
  if (napi_create_external(env, s, src_finalize, NULL, ext) != napi_ok) {
    napi_delete_reference(env, s->on_pull);
    free(s);
    ensure_exception(env, "napi_create_external");
    return NULL;
  }
  /* The external's reference (dropped by src_finalize) and the library's. */
  s->refs = 2;
  pthread_mutex_lock(&st->mu);
  st->refs++;
  s->next = st->sources;
  if (st->sources != NULL) {
    st->sources->prev = s;
  }
  st->sources = s;
  pthread_mutex_unlock(&st->mu);
  if (napi_type_tag_object(env, *ext, &SOURCE_TAG) != napi_ok) {
    ensure_exception(env, "napi_type_tag_object");
    src_release(s); /* never handed to the library */
    return NULL;
  }
  return s;
}

/* [promise, id], or NULL with an exception pending. */
static napi_value promise_and_id(napi_env env, napi_value promise, uint64_t id) {
  napi_value arr, idv;
  NAPI_TRY(env, napi_create_array_with_length(env, 2, &arr));
  NAPI_TRY(env, napi_set_element(env, arr, 0, promise));
  NAPI_TRY(env, napi_create_double(env, (double)id, &idv));
  NAPI_TRY(env, napi_set_element(env, arr, 1, idv));
  return arr;
}

/* streamRequest(handle, method, url, headers, body, source, timeoutMs)
 *   -> [promise, id, sourceHandle | undefined]
 * source: undefined (the body, if any, is `body`), or {length, onPull} for a body JS feeds
 * with sourcePush. The promise resolves once the head is in with what makeHead returns
 * (its `stream` is the stream handle). */
static napi_value js_stream_request(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 7;
  napi_value argv[7], promise, src_ext;
  req_args a;
  req_args_init(&a);
  napi_value ret = NULL;
  body_src *s = NULL;
  int64_t length = -1;

  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 7) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "streamRequest() takes 7 arguments");
    return NULL;
  }
  agent_box *b = get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  if (b->handle == NULL) {
    napi_throw_error(env, "ERR_AGENT_DESTROYED", "the agent was destroyed");
    return NULL;
  }
  agent_queue *q = env_queue(env, st);
  if (q == NULL || !parse_req_args(env, argv + 1, argv[6], &a)) {
    goto done;
  }
  NAPI_TRY_GOTO(env, napi_get_undefined(env, &src_ext), done);
  bool has_source = !is_undefined(env, argv[5]);
  if (has_source && a.body_len > 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "a body and a source were both given");
    goto done;
  }
  req_ctx *r = new_req_ctx(env, b, PEND_HEAD, &promise);
  if (r == NULL) {
    goto done;
  }
  /* From here on the promise exists: failures reject it. */
  if (has_source) {
    s = src_new(env, st, b, argv[5], &length, &src_ext);
    if (s == NULL) {
      napi_reject_deferred(env, r->deferred, take_exception(env, "source"));
      free(r);
      ret = promise_and_id(env, promise, 0);
      goto done;
    }
  }
  agent_body_source source = {src_read, NULL, src_release, length, s};

  uint64_t id = 0;
  /* The library owns its reference to the source from here on: release() runs in every
   * case, also when this fails. */
  agent_code code = agent_queue_submit_stream(q, b->handle, a.method, a.url, a.headers, a.header_count,
                                              a.body, a.body_len, s != NULL ? &source : NULL,
                                              a.timeout_ms, (uint64_t)(uintptr_t)&r->link, &id);
  if (code != AGENT_CODE_OK) {
    reject_not_started(env, r, code);
    id = 0;
  } else {
    box_hold(env, b);
    submitted(st, r);
  }
  ret = promise_and_id(env, promise, id);
  if (ret != NULL && napi_set_element(env, ret, 2, src_ext) != napi_ok) {
    ensure_exception(env, "napi_set_element");
    ret = NULL;
  }

done:
  req_args_free(&a);
  return ret;
}

/* streamRead(stream, cb) -> true when a read started, false when the stream is over
 * (ended, failed or freed). Throws while a read is in flight. */
static napi_value js_stream_read(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  stream_ctx *c = argc < 2 ? NULL : get_stream(env, argv[0]);
  if (c == NULL) {
    return NULL;
  }
  napi_valuetype t;
  NAPI_TRY(env, napi_typeof(env, argv[1], &t));
  if (t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "the read callback must be a function");
    return NULL;
  }
  if (c->reading) {
    napi_throw_error(env, "ERR_INVALID_STATE", "a read of this stream is already in flight");
    return NULL;
  }
  if (c->stream == NULL) {
    NAPI_TRY(env, napi_get_boolean(env, false, &out));
    return out;
  }
  env_state *st = c->st;
  agent_queue *q = env_queue(env, st);
  if (q == NULL) {
    return NULL;
  }
  napi_ref cb = NULL;
  NAPI_TRY(env, napi_create_reference(env, argv[1], 1, &cb));
  agent_code code = agent_queue_read(q, c->stream, (uint64_t)(uintptr_t)&c->link);
  if (code != AGENT_CODE_OK) {
    napi_delete_reference(env, cb);
    throw_agent_error(env, code);
    return NULL;
  }
  c->refs++; /* the read's: dropped once its event has been settled (or at teardown) */
  c->reading = true;
  c->read_cb = cb;
  c->read_counted = true;
  pend_link(st, &c->link);
  inflight_add(st);
  st->submitted++;
  NAPI_TRY(env, napi_get_boolean(env, true, &out));
  return out;
}

/* streamFree(stream): aborts the stream if its body has not ended; idempotent. A read in
 * flight is reported cancelled later, unseen. */
static napi_value js_stream_free(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  stream_ctx *c = argc < 1 ? NULL : get_stream(env, argv[0]);
  if (c == NULL) {
    return NULL;
  }
  stream_close(env, c);
  return NULL;
}

/* streamBuffered(stream) -> bytes the engine holds for the stream (agent_stream_buffered). */
static napi_value js_stream_buffered(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  stream_ctx *c = argc < 1 ? NULL : get_stream(env, argv[0]);
  if (c == NULL) {
    return NULL;
  }
  uint64_t n = c->stream != NULL ? agent_stream_buffered(c->stream) : 0;
  NAPI_TRY(env, napi_create_double(env, (double)n, &out));
  return out;
}

/* sourcePush(source, bytes) -> how many bytes were taken (copied into the ring); fewer
 * than given: wait for onPull, then push the rest. -1: none, the source is over (stopped,
 * released or ended). */
static napi_value js_source_push(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  body_src *s = argc < 2 ? NULL : get_source(env, argv[0]);
  if (s == NULL) {
    return NULL;
  }
  napi_typedarray_type type;
  size_t len = 0, offset = 0;
  void *data = NULL;
  napi_value ab;
  bool is_ta = false;
  NAPI_TRY(env, napi_is_typedarray(env, argv[1], &is_ta));
  if (is_ta) {
    NAPI_TRY(env, napi_get_typedarray_info(env, argv[1], &type, &len, &data, &ab, &offset));
  }
  if (!is_ta || type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "a body chunk must be a Uint8Array");
    return NULL;
  }
  env_state *st = s->st;
  uint8_t *fresh = NULL;
  if (s->ring == NULL) {
    /* Only this thread sets `ring`; the reader looks at it only once bytes are queued. */
    fresh = malloc(s->cap);
    if (fresh == NULL) {
      napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
      return NULL;
    }
  }
  double taken;
  pthread_mutex_lock(&st->mu);
  if (s->stop != SRC_OPEN || s->ended || s->released) {
    pthread_mutex_unlock(&st->mu);
    taken = -1;
  } else {
    if (fresh != NULL) {
      s->ring = fresh;
      fresh = NULL;
    }
    size_t room = s->cap - s->queued;
    size_t n = len < room ? len : room;
    size_t at = (s->start + s->queued) % s->cap;
    pthread_mutex_unlock(&st->mu);
    /* Only this thread grows `queued`, and the reader reads only inside
     * [start, start + queued): the free part of the ring is this thread's. The ring is
     * freed only on this thread, after the source was released. */
    size_t first = s->cap - at < n ? s->cap - at : n;
    if (n > 0) {
      memcpy(s->ring + at, data, first);
      memcpy(s->ring, (const uint8_t *)data + first, n - first);
    }
    pthread_mutex_lock(&st->mu);
    s->queued += n;
    s->js_waiting = n < len;
    agent_body_waker *w = n > 0 ? src_take_waker_locked(s) : NULL;
    pthread_mutex_unlock(&st->mu);
    agent_body_waker_wake(w);
    taken = (double)n;
  }
  free(fresh);
  NAPI_TRY(env, napi_create_double(env, taken, &out));
  return out;
}

/* sourceEnd(source): the body is complete. */
static napi_value js_source_end(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  body_src *s = argc < 1 ? NULL : get_source(env, argv[0]);
  if (s == NULL) {
    return NULL;
  }
  pthread_mutex_lock(&s->st->mu);
  s->ended = true;
  agent_body_waker *w = src_take_waker_locked(s);
  pthread_mutex_unlock(&s->st->mu);
  agent_body_waker_wake(w);
  return NULL;
}

/* sourceAbort(source, why): 1 = the JS body failed, 2 = the request was aborted. The
 * library's read fails (AGENT_CODE_BODY_SOURCE) unless the body was complete already. */
static napi_value js_source_abort(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t why = SRC_FAILED;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  body_src *s = argc < 1 ? NULL : get_source(env, argv[0]);
  if (s == NULL) {
    return NULL;
  }
  if (argc >= 2 && !is_undefined(env, argv[1])) {
    NAPI_TRY(env, napi_get_value_int32(env, argv[1], &why));
  }
  if (why != SRC_ABORTED) {
    why = SRC_FAILED;
  }
  pthread_mutex_lock(&s->st->mu);
  agent_body_waker *w = src_stop_locked(s, why);
  pthread_mutex_unlock(&s->st->mu);
  agent_body_waker_wake(w);
  return NULL;
}

/* sourceState(source) -> why it stopped (enum src_stop; 0 while open). */
static napi_value js_source_state(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  body_src *s = argc < 1 ? NULL : get_source(env, argv[0]);
  if (s == NULL) {
    return NULL;
  }
  pthread_mutex_lock(&s->st->mu);
  int stop = s->stop;
  pthread_mutex_unlock(&s->st->mu);
  NAPI_TRY(env, napi_create_int32(env, stop, &out));
  return out;
}

/* makeError(code, message) -> the Error a library failure becomes (see make_agent_error). */
static napi_value js_make_error(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  uint32_t code = 0;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "makeError() takes 2 arguments");
    return NULL;
  }
  NAPI_TRY(env, napi_get_value_uint32(env, argv[0], &code));
  char *msg = dup_js_string(env, argv[1], "message");
  if (msg == NULL) {
    return NULL;
  }
  napi_value err = make_agent_error(env, (agent_code)code, msg);
  free(msg);
  if (err == NULL) {
    ensure_exception(env, "make_agent_error");
  }
  return err;
}

static napi_value js_cancel(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  agent_box *b = argc < 2 ? NULL : get_box(env, argv[0]);
  if (b == NULL) {
    return NULL;
  }
  int64_t id = 0;
  NAPI_TRY(env, napi_get_value_int64(env, argv[1], &id));
  bool cancelled = b->handle != NULL && id > 0 &&
                   agent_request_cancel(b->handle, (uint64_t)id) == AGENT_CODE_OK;
  NAPI_TRY(env, napi_get_boolean(env, cancelled, &out));
  return out;
}

/* setFactories(makeResponse, makeHead): the functions that build the objects requests
 * resolve with (index.js). */
static napi_value js_set_factories(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 2;
  napi_value argv[2];
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  for (size_t i = 0; i < 2; i++) {
    napi_valuetype t = napi_undefined;
    if (i >= argc || napi_typeof(env, argv[i], &t) != napi_ok || t != napi_function) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "setFactories() takes two functions");
      return NULL;
    }
  }
  napi_ref response = NULL, head = NULL;
  NAPI_TRY(env, napi_create_reference(env, argv[0], 1, &response));
  if (napi_create_reference(env, argv[1], 1, &head) != napi_ok) {
    napi_delete_reference(env, response);
    ensure_exception(env, "napi_create_reference");
    return NULL;
  }
  if (st->make_response != NULL) {
    napi_delete_reference(env, st->make_response);
  }
  if (st->make_head != NULL) {
    napi_delete_reference(env, st->make_head);
  }
  st->make_response = response;
  st->make_head = head;
  return NULL;
}

static napi_value js_version(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  NAPI_TRY(env, napi_create_string_utf8(env, agent_version(), NAPI_AUTO_LENGTH, &out));
  return out;
}

static napi_value js_code_name(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  uint32_t code = 0;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "codeName() takes a number");
    return NULL;
  }
  NAPI_TRY(env, napi_get_value_uint32(env, argv[0], &code));
  NAPI_TRY(env, napi_create_string_utf8(env, agent_code_name(code), NAPI_AUTO_LENGTH, &out));
  return out;
}

typedef agent_code (*test_panic_fn)(void);
_Static_assert(sizeof(test_panic_fn) == sizeof(void *), "dlsym result must fit a function pointer");

/* For the binding's tests: the library's panic boundary, as a thrown agent error.
 * agent_test_panic exists only in test-hooks builds of the library, so it is looked up at
 * run time (a test preloads such a build with LD_PRELOAD); without it this throws. */
static napi_value js_test_panic(napi_env env, napi_callback_info info) {
  (void)info;
  void *sym = dlsym(RTLD_DEFAULT, "agent_test_panic");
  if (sym == NULL) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_NO_TEST_HOOKS",
                     "keepalive-agent: agent_test_panic is not available: the loaded "
                     "libkeepalive_agent was built without the test-hooks feature "
                     "(preload a test-hooks build with LD_PRELOAD)");
    return NULL;
  }
  test_panic_fn test_panic;
  memcpy(&test_panic, &sym, sizeof test_panic);
  throw_agent_error(env, test_panic());
  return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* What the library says about itself, read once per environment                         */

/* "connections_timed_out" -> "connectionsTimedOut", malloc'd (NULL when out of memory). */
static char *camel_case(const char *snake) {
  char *out = malloc(strlen(snake) + 1);
  if (out == NULL) {
    return NULL;
  }
  size_t n = 0;
  bool upper = false;
  for (const char *c = snake; *c != '\0'; c++) {
    if (*c == '_' && n > 0) {
      upper = true;
      continue;
    }
    out[n++] = (upper && *c >= 'a' && *c <= 'z') ? (char)(*c - 'a' + 'A') : *c;
    upper = false;
  }
  out[n] = '\0';
  return out;
}

/* Fills st->stat_keys/stat_values from agent_stats_field_count/agent_stats_field_name.
 * False (with an exception pending) on failure. */
static bool load_stats_fields(napi_env env, env_state *st) {
  size_t n = agent_stats_field_count();
  st->stat_keys = calloc(n > 0 ? n : 1, sizeof *st->stat_keys);
  st->stat_values = calloc(n > 0 ? n : 1, sizeof *st->stat_values);
  if (st->stat_keys == NULL || st->stat_values == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    const char *name = agent_stats_field_name(i);
    if (name == NULL) {
      break; /* fewer names than the count says: keep the named ones */
    }
    st->stat_keys[i] = camel_case(name);
    if (st->stat_keys[i] == NULL) {
      napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
      return false;
    }
    st->stat_count = i + 1;
  }
  return true;
}

/* statsFields: the library's own names of the statistics fields, in order. */
static napi_value stats_fields_array(napi_env env) {
  napi_value arr, v;
  size_t n = agent_stats_field_count();
  NAPI_TRY(env, napi_create_array(env, &arr));
  for (size_t i = 0; i < n; i++) {
    const char *name = agent_stats_field_name(i);
    if (name == NULL) {
      break;
    }
    NAPI_TRY(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v));
    NAPI_TRY(env, napi_set_element(env, arr, (uint32_t)i, v));
  }
  NAPI_TRY(env, napi_object_freeze(env, arr));
  return arr;
}

/* The limits index.js validates with. agent_limit has no enumeration, so the names it
 * is asked for are listed here; the values always come from the library. */
static const char *const LIMIT_NAMES[] = {
    "max_msecs",
    "max_keep_alive_msecs",
    "max_keep_alive_probes",
    "max_sockets",
};

/* limits: {maxMsecs, maxKeepAliveMsecs, maxKeepAliveProbes, maxSockets}, frozen. */
static napi_value limits_object(napi_env env) {
  napi_value obj;
  NAPI_TRY(env, napi_create_object(env, &obj));
  for (size_t i = 0; i < sizeof LIMIT_NAMES / sizeof LIMIT_NAMES[0]; i++) {
    uint64_t value = 0;
    agent_code code = agent_limit(LIMIT_NAMES[i], &value);
    if (code != AGENT_CODE_OK) {
      throw_agent_error(env, code);
      return NULL;
    }
    char *key = camel_case(LIMIT_NAMES[i]);
    if (key == NULL) {
      napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
      return NULL;
    }
    napi_status s = set_double(env, obj, key, (double)value);
    free(key);
    NAPI_TRY(env, s);
  }
  NAPI_TRY(env, napi_object_freeze(env, obj));
  return obj;
}

/* httpVersions: the option's names (Node's spelling) and the library's values for them. */
static napi_value http_versions_object(napi_env env) {
  static const struct {
    const char *name;
    uint32_t value;
  } VERSIONS[] = {
      {"auto", AGENT_HTTP_VERSION_AUTO},
      {"http1", AGENT_HTTP_VERSION_HTTP1},
      {"http2", AGENT_HTTP_VERSION_HTTP2},
      {"h2c-prior-knowledge", AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE},
  };
  napi_value obj, v;
  NAPI_TRY(env, napi_create_object(env, &obj));
  for (size_t i = 0; i < sizeof VERSIONS / sizeof VERSIONS[0]; i++) {
    NAPI_TRY(env, napi_create_uint32(env, VERSIONS[i].value, &v));
    NAPI_TRY(env, napi_set_named_property(env, obj, VERSIONS[i].name, v));
  }
  NAPI_TRY(env, napi_object_freeze(env, obj));
  return obj;
}

/* ------------------------------------------------------------------------------------ */
/* Environment lifetime                                                                  */

static void on_handle_closed(uv_handle_t *handle) {
  env_state *st = uv_handle_get_data(handle);
  if (--st->open_handles > 0) {
    return;
  }
  napi_async_cleanup_hook_handle hook = st->cleanup;
  st->cleanup = NULL;
  state_unref(st); /* the environment's reference */
  if (hook != NULL) {
    napi_remove_async_cleanup_hook(hook);
  }
}

/* The environment (main thread or worker) is going away. Sources are stopped and streams
 * freed; the queue is freed once its descriptor is no longer watched (requests still in
 * flight are dropped with it: their contexts are freed here); agents are freed; then the
 * libuv handles are closed, and Node waits for that before it closes the loop. */
static void env_teardown(napi_async_cleanup_hook_handle handle, void *arg) {
  env_state *st = arg;
  napi_env env = st->env;
  st->cleanup = handle;
  pthread_mutex_lock(&st->mu);
  st->closed = true;
  pthread_mutex_unlock(&st->mu);
  /* A pending source's read() is called again and fails at once. */
  src_stop_all(st, NULL, SRC_CLOSED);
  while (st->streams != NULL) {
    stream_close(NULL, st->streams);
  }
  if (st->poll_open) {
    uv_poll_stop(st->poll);
  }
  agent_queue *q = st->queue;
  st->queue = NULL;
  agent_queue_free(q);
  /* Nothing will report these any more. A promise still pending cannot be settled now
   * (no JavaScript runs during teardown): it is left to the env. */
  while (st->pending.next != &st->pending) {
    pend *p = st->pending.next;
    pend_unlink(p);
    if (p->kind == PEND_READ) {
      stream_ctx *c = (stream_ctx *)p;
      c->reading = false;
      if (c->read_cb != NULL) {
        napi_delete_reference(env, c->read_cb);
      }
      c->read_cb = NULL;
      stream_ctx_unref(c);
    } else {
      free(p);
    }
  }
  st->inflight = 0;
  deliver_pulls(NULL, st);
  /* References the addon created are deleted here: Node frees only its own at teardown. */
  pthread_mutex_lock(&st->mu);
  for (body_src *s = st->sources; s != NULL; s = s->next) {
    if (s->on_pull != NULL) {
      napi_delete_reference(env, s->on_pull);
      s->on_pull = NULL;
    }
  }
  pthread_mutex_unlock(&st->mu);
  /* `closed` is set: no event is queued from here on. */
  events_free(events_take(st));
  napi_ref *refs[] = {&st->resource, &st->make_response, &st->make_head, &st->publish};
  for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
    if (*refs[i] != NULL) {
      napi_delete_reference(env, *refs[i]);
      *refs[i] = NULL;
    }
  }
  agent_box *b = st->agents;
  st->agents = NULL;
  while (b != NULL) {
    agent_box *next = b->next;
    if (b->self != NULL) {
      napi_delete_reference(env, b->self);
      b->self = NULL;
    }
    b->st = NULL;
    b->prev = b->next = NULL;
    /* Not waited for: an exiting process must not linger. */
    box_free_agent(b);
    b = next;
  }
  if (st->async_ctx != NULL) {
    napi_async_destroy(env, st->async_ctx);
    st->async_ctx = NULL;
  }
  /* No uv_async_send from here on: `closed` is set, so no pull is posted. */
  pthread_mutex_lock(&st->mu);
  st->open_handles = (st->poll_open ? 1 : 0) + (st->wake_open ? 1 : 0);
  bool poll_open = st->poll_open, wake_open = st->wake_open;
  st->poll_open = st->wake_open = false;
  pthread_mutex_unlock(&st->mu);
  if (poll_open || wake_open) {
    if (poll_open) {
      uv_close((uv_handle_t *)st->poll, on_handle_closed);
    }
    if (wake_open) {
      uv_close((uv_handle_t *)st->wake, on_handle_closed);
    }
  } else {
    st->cleanup = NULL;
    state_unref(st);
    napi_remove_async_cleanup_hook(handle);
  }
}

/* The queue, its poll handle and the wake handle. False with an exception pending. */
static bool start_queue(napi_env env, env_state *st) {
  uv_loop_t *loop = NULL;
  agent_code code = agent_queue_new(&st->queue);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
    return false;
  }
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == NULL) {
    ensure_exception(env, "napi_get_uv_event_loop");
    return false;
  }
  st->poll = calloc(1, uv_handle_size(UV_POLL));
  st->wake = calloc(1, uv_handle_size(UV_ASYNC));
  if (st->poll == NULL || st->wake == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return false;
  }
  if (uv_poll_init(loop, st->poll, agent_queue_fd(st->queue)) != 0) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL", "keepalive-agent: uv_poll_init failed on the queue's descriptor");
    return false;
  }
  uv_handle_set_data((uv_handle_t *)st->poll, st);
  /* Idle until a request starts: an unused addon never keeps the loop alive. */
  uv_unref((uv_handle_t *)st->poll);
  st->poll_open = true; /* from here on closed at teardown */
  if (uv_async_init(loop, st->wake, on_wake) != 0) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL", "keepalive-agent: uv_async_init failed");
    return false;
  }
  uv_handle_set_data((uv_handle_t *)st->wake, st);
  uv_unref((uv_handle_t *)st->wake);
  pthread_mutex_lock(&st->mu);
  st->wake_open = true;
  pthread_mutex_unlock(&st->mu);
  if (uv_poll_start(st->poll, UV_READABLE, on_poll) != 0) {
    napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL", "keepalive-agent: uv_poll_start failed");
    return false;
  }
  return true;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  env_state *st = calloc(1, sizeof *st);
  if (st == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  pthread_mutex_init(&st->mu, NULL);
  st->refs = 1; /* the environment's */
  st->env = env;
  st->pending.prev = st->pending.next = &st->pending;

  napi_value name, resource, limits, stats_fields, http_versions;
  if (!load_stats_fields(env, st) || (limits = limits_object(env)) == NULL ||
      (stats_fields = stats_fields_array(env)) == NULL ||
      (http_versions = http_versions_object(env)) == NULL ||
      napi_create_object(env, &resource) != napi_ok ||
      napi_create_string_utf8(env, "keepalive-agent", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, resource, name, &st->async_ctx) != napi_ok) {
    ensure_exception(env, "module init");
    state_free(st);
    return NULL;
  }
  if (napi_create_reference(env, resource, 1, &st->resource) != napi_ok) {
    ensure_exception(env, "module init");
    napi_async_destroy(env, st->async_ctx);
    state_free(st);
    return NULL;
  }
  bool started = start_queue(env, st);
  /* From here on teardown owns the state (and closes whatever was opened). */
  if (napi_add_async_cleanup_hook(env, env_teardown, st, NULL) != napi_ok) {
    ensure_exception(env, "napi_add_async_cleanup_hook");
    return NULL;
  }
  if (!started) {
    return NULL;
  }

  const napi_property_descriptor props[] = {
      {"setFactories", NULL, js_set_factories, NULL, NULL, NULL, napi_default, st},
      {"create", NULL, js_create, NULL, NULL, NULL, napi_default, st},
      {"request", NULL, js_request, NULL, NULL, NULL, napi_default, st},
      {"lastId", NULL, js_last_id, NULL, NULL, NULL, napi_default, st},
      {"streamRequest", NULL, js_stream_request, NULL, NULL, NULL, napi_default, st},
      {"streamRead", NULL, js_stream_read, NULL, NULL, NULL, napi_default, st},
      {"streamFree", NULL, js_stream_free, NULL, NULL, NULL, napi_default, st},
      {"streamBuffered", NULL, js_stream_buffered, NULL, NULL, NULL, napi_default, st},
      {"sourcePush", NULL, js_source_push, NULL, NULL, NULL, napi_default, st},
      {"sourceEnd", NULL, js_source_end, NULL, NULL, NULL, napi_default, st},
      {"sourceAbort", NULL, js_source_abort, NULL, NULL, NULL, napi_default, st},
      {"sourceState", NULL, js_source_state, NULL, NULL, NULL, napi_default, st},
      {"makeError", NULL, js_make_error, NULL, NULL, NULL, napi_default, st},
      {"cancel", NULL, js_cancel, NULL, NULL, NULL, napi_default, st},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, st},
      {"keepAlive", NULL, js_keep_alive, NULL, NULL, NULL, napi_default, st},
      {"keepAliveSource", NULL, js_keep_alive_source, NULL, NULL, NULL, napi_default, st},
      {"keepAliveDescribe", NULL, js_keep_alive_describe, NULL, NULL, NULL, napi_default, st},
      {"preconnect", NULL, js_preconnect, NULL, NULL, NULL, napi_default, st},
      {"eventsOn", NULL, js_events_on, NULL, NULL, NULL, napi_default, st},
      {"setEventPublisher", NULL, js_set_event_publisher, NULL, NULL, NULL, napi_default, st},
      {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_default, st},
      {"version", NULL, js_version, NULL, NULL, NULL, napi_default, st},
      {"codeName", NULL, js_code_name, NULL, NULL, NULL, napi_default, st},
      {"testPanic", NULL, js_test_panic, NULL, NULL, NULL, napi_default, st},
      {"limits", NULL, NULL, NULL, NULL, limits, napi_enumerable, st},
      {"statsFields", NULL, NULL, NULL, NULL, stats_fields, napi_enumerable, st},
      {"httpVersions", NULL, NULL, NULL, NULL, http_versions, napi_enumerable, st},
  };
  NAPI_TRY(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
