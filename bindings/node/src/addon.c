/*
 * keepalive-agent's Node binding: an N-API addon in plain C over include/keepalive_agent.h.
 *
 * index.js validates every argument and calls the small native surface below:
 *
 *   create(options)                          -> handle (an external owning one `agent`)
 *   request(handle, method, url, headers, body, timeoutMs) -> [promise, id]
 *   streamRequest(handle, method, url, headers, body, source, timeoutMs)
 *                                            -> [promise, id, sourceHandle]; the promise
 *                                               resolves with the head and a stream handle
 *   streamRead(stream, cb)                   -> one agent_stream_read_async; cb(err, chunk,
 *                                               totalMs): chunk null at the end
 *   streamFree(stream), streamBuffered(stream)
 *   sourcePush(source, bytes) -> 1 | 0 | -1, sourceEnd(source), sourceAbort(source, why),
 *   sourceState(source)                      -> a request body fed from JS (see below)
 *   cancel(handle, id)                       -> boolean
 *   stats(handle, origin?), keepAlive(handle), destroy(handle), version(), codeName(code)
 *   makeError(code, message)                 -> the Error a library failure becomes
 *   limits                                   -> {maxMsecs, ...}, from agent_limit
 *   statsFields                              -> the library's statistics field names
 *   testPanic()                              -> throws AGENT_CODE_PANIC (test-hooks builds)
 *
 * Lists the library owns are read from it, never repeated here: statistics are built from
 * agent_stats_field_name/agent_stats_values (snake_case names become camelCase keys), code
 * names come from agent_code_name, validation bounds from agent_limit.
 *
 * Threads. Requests go through agent_request_async (whole bodies) or
 * agent_request_stream_async (streamed bodies); their callbacks, and those of
 * agent_stream_read_async, run on library threads, copy what they need, and hand a tagged
 * item (the first field says which kind) to the JS thread through ONE
 * napi_threadsafe_function per environment (main thread or worker). That function is
 * unref'd whenever no request or body read is in flight, so idle pooled connections never
 * keep the process alive (like http.Agent's unref'd free sockets).
 *
 * Request bodies from JS (body_src). The library calls the source's read() on one of its
 * threads; read() never calls into JS and never waits: JS copies its chunks into the
 * source's ring buffer (sourcePush; SOURCE_RING bytes, or the body's length when it is
 * known and smaller; made at the first push and freed as soon as the library is done with
 * the source), read() takes from it. When the ring is empty and the body has not ended,
 * read() keeps a waker (agent_body_source_waker) and returns AGENT_SOURCE_PENDING, so a
 * waiting upload holds no library thread; the waker is woken when data comes, at the end
 * of the body, or when the source is stopped (JS aborted or failed it, its agent was
 * destroyed, its JS handle was collected, the environment is going away), and freed
 * unused when the library releases the source (the request's deadline, or a cancel, ends
 * it there). A push that does not fit whole tells JS to wait, and read() tells it to go on
 * (a "pull" item through the thread-safe function) once the ring is half empty. A
 * source's state, its waker included, is guarded by the env's mutex; wakers are woken and
 * freed outside it. The bytes are copied outside it too (one producer, the JS thread, and
 * one consumer, the library's read, each copying only the part of the ring the other does
 * not touch).
 *
 * Lifetimes.
 *  - env_state: one per environment, reference-counted (mutex-guarded): one reference for
 *    the environment (dropped by the env cleanup hook), one for the thread-safe function
 *    (dropped by its finalizer), one per request in flight (dropped by the library callback
 *    once the context has been handed over or freed), one per body source. Library threads
 *    therefore never touch freed state, whatever order Node tears things down in.
 *  - `closed` (under the mutex) is set by the cleanup hook and by the thread-safe
 *    function's finalizer; from then on library callbacks free their context themselves
 *    instead of calling into a thread-safe function that may be gone.
 *  - agent_box: owned by the JS external. destroy(), the env cleanup hook or the
 *    external's finalizer (whichever comes first) hands the native agent to agent_free on a
 *    short-lived background thread, since agent_free cancels in-flight requests and waits
 *    (bounded) for connections to close: the JS thread never waits for it. Every request
 *    in flight, and every open stream, holds a strong reference to the external, so a
 *    finalizer never runs while either exists. destroy() and the cleanup hook first free
 *    the agent's open streams and stop its body sources.
 *  - req_ctx: allocated by request()/streamRequest(), filled by the library callback,
 *    consumed and freed by call_js on the JS thread (or by the callback itself when the env
 *    is closing, or by call_js with env == NULL while Node drains the queue at teardown).
 *    Nothing reads a context after napi_call_threadsafe_function has accepted it.
 *  - stream_ctx: one per response stream, reference-counted (under the env mutex): one
 *    reference for its JS external, one while a read is in flight (the read's item is
 *    embedded in it). The agent_stream itself is freed by the JS thread only: at the end
 *    of the body, on an error, by streamFree, by the external's finalizer, by destroy() of
 *    its agent, or by the cleanup hook.
 *  - body_src: reference-counted: one reference for the library (dropped by release()),
 *    one for its JS external, one while a pull item is queued. release() always queues a
 *    last pull, whose delivery drops the strong reference to the JS onPull function.
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

/* Bodies at least this large are handed to JS without a copy (an external Buffer that
 * frees the response when collected); smaller ones are copied and freed at once. */
#define EXTERNAL_BODY_MIN ((size_t)64 * 1024)

/* The ring buffer of a JS body source: what the addon holds of a request body at most.
 * read() wakes a waiting pusher once it is half empty. */
#define SOURCE_RING ((size_t)1024 * 1024)

/* What the thread-safe function carries: the first field of every item. */
enum item_kind {
  ITEM_REQUEST = 1, /* req_ctx: a whole response (agent_request_async) */
  ITEM_HEAD,        /* req_ctx: a response head (agent_request_stream_async) */
  ITEM_DATA,        /* data_item: one agent_stream_read_async result */
  ITEM_PULL,        /* body_src: the source's queue has room again (or it stopped) */
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
typedef struct stream_ctx stream_ctx;

typedef struct env_state {
  pthread_mutex_t mu;            /* guards closed, refs, and every body_src's state */
  bool closed;                   /* the env is going away: do not call tsfn */
  size_t refs;                   /* env + tsfn + one per request in flight + per source */
  napi_threadsafe_function tsfn; /* set once at init, before any request */
  size_t inflight;               /* JS thread only: requests and reads not yet settled */
  agent_box *agents;             /* JS thread only: boxes whose agent may be live */
  stream_ctx *streams;           /* JS thread only: contexts whose stream is not freed */
  body_src *sources;             /* under mu: every live body source */
  size_t stat_count;             /* agent_stats_field_count(), read at init */
  char **stat_keys;              /* stat_count camelCase keys (malloc'd) */
  uint64_t *stat_values;         /* JS thread only: scratch for agent_stats_values */
} env_state;

struct agent_box {
  agent *handle;  /* NULL after destroy() or env teardown */
  env_state *st;  /* NULL once the env cleanup hook has run */
  agent_box *prev;
  agent_box *next;
};

typedef struct req_ctx {
  int kind; /* ITEM_REQUEST or ITEM_HEAD */
  env_state *st;
  agent_box *box;        /* ITEM_HEAD: the agent (alive: agent_ref holds its external) */
  agent_stream *stream;  /* ITEM_HEAD: the stream, on success */
  napi_deferred deferred;
  napi_ref agent_ref; /* keeps the agent's external alive while in flight */
  agent_code code;
  agent_response *response;
  char *message; /* library message on failure (malloc'd), or NULL */
} req_ctx;

/* One agent_stream_read_async result on its way to the JS thread (embedded in its
 * stream_ctx: one read at a time). */
typedef struct data_item {
  int kind; /* ITEM_DATA */
  stream_ctx *ctx;
  agent_code code;
  uint8_t *data; /* malloc'd copy of the piece, or NULL */
  size_t len;    /* 0 with AGENT_CODE_OK: the end of the body */
  char *message; /* library message on failure (malloc'd), or NULL */
} data_item;

struct stream_ctx {
  env_state *st;
  agent_box *box;        /* the agent (alive while agent_ref is held) */
  agent_stream *stream;  /* JS thread only; NULL once freed */
  napi_ref agent_ref;    /* JS thread only; held while `stream` is open */
  napi_ref read_cb;      /* JS thread only: the callback of the read in flight */
  bool reading;          /* JS thread only: a read is in flight */
  bool read_counted;     /* JS thread only: ... and counts in st->inflight */
  stream_ctx *prev;      /* st->streams, JS thread only, while `stream` is open */
  stream_ctx *next;
  size_t refs;           /* under st->mu: the external + one while a read is in flight */
  data_item item;        /* the result of the read in flight */
};

struct body_src {
  int kind;            /* ITEM_PULL: the source is its own pull item */
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
  bool pull_posted;    /* the pull item is queued on the thread-safe function */
  bool js_gone;        /* the external was finalized */
  bool released;       /* the library is done with it (its last pull is on its way) */
  size_t refs;         /* the library + the external + a queued pull */
  body_src *prev;      /* st->sources */
  body_src *next;
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

/* A request or body read is now in flight / has settled: the thread-safe function keeps
 * the event loop alive exactly while something is. JS thread only. */
static void inflight_add(napi_env env, env_state *st) {
  if (st->inflight++ == 0) {
    napi_ref_threadsafe_function(env, st->tsfn);
  }
}

static void inflight_done(napi_env env, env_state *st) {
  if (st->inflight > 0 && --st->inflight == 0) {
    napi_unref_threadsafe_function(env, st->tsfn);
  }
}

/* Hands `item` to the JS thread; false when the env is closing (the caller keeps it).
 * Called with st->mu held. */
static bool post_locked(env_state *st, void *item) {
  return !st->closed && napi_call_threadsafe_function(st->tsfn, item, napi_tsfn_nonblocking) == napi_ok;
}

/* ------------------------------------------------------------------------------------ */
/* Completion: library thread -> JS thread                                               */

static void ctx_free_native(req_ctx *r) {
  /* Frees only C memory: at teardown the deferred and reference die with the env. */
  agent_response_free(r->response);
  agent_stream_free(r->stream);
  free(r->message);
  free(r);
}

/* Library thread: hands a filled request context to the JS thread, or frees it when the
 * env is closing; drops the request's reference to the state either way. */
static void deliver_ctx(req_ctx *r) {
  env_state *st = r->st; /* copied: r may be freed by the JS thread once handed over */
  pthread_mutex_lock(&st->mu);
  bool delivered = post_locked(st, r);
  /* From here on, r belongs to the JS thread if delivered. */
  size_t left = --st->refs;
  pthread_mutex_unlock(&st->mu);

  if (!delivered) {
    ctx_free_native(r);
  }
  if (left == 0) {
    state_free(st);
  }
}

/* Runs on a library thread, exactly once per started request. */
static void on_complete(void *userdata, agent_code code, agent_response *response) {
  req_ctx *r = userdata;
  r->code = code;
  r->response = response;
  r->message = (code == AGENT_CODE_OK) ? NULL : last_error_dup();
  deliver_ctx(r);
}

/* Runs on a library thread, exactly once per started stream request: the head is in. */
static void on_stream_head(void *userdata, agent_code code, agent_stream *stream) {
  req_ctx *r = userdata;
  r->code = code;
  r->stream = stream;
  r->message = (code == AGENT_CODE_OK) ? NULL : last_error_dup();
  deliver_ctx(r);
}

static void free_response_finalizer(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  agent_response_free(hint);
}

static napi_status set_double(napi_env env, napi_value obj, const char *key, double v) {
  napi_value x;
  napi_status s = napi_create_double(env, v, &x);
  return s != napi_ok ? s : napi_set_named_property(env, obj, key, x);
}

/* Throws for a header block that does not match agent_response_read's documented form. */
static napi_value malformed_headers(napi_env env) {
  napi_throw_error(env, "ERR_KEEPALIVE_AGENT_INTERNAL",
                   "keepalive-agent: agent_response_read gave a malformed header block");
  return NULL;
}

/* rawHeaders, [name, value, name, value, ...], from the header block of
 * agent_response_read: `count` lines of `name: value\r\n` (values never contain CR or LF).
 * Each string is made straight from the block, as latin1 like Node's HTTP parser. */
static napi_value build_raw_headers(napi_env env, const uint8_t *block, size_t len, size_t count) {
  napi_value raw, v;
  if (count > (size_t)UINT32_MAX / 2) {
    return malformed_headers(env);
  }
  NAPI_TRY(env, napi_create_array_with_length(env, count * 2, &raw));
  const char *at = (const char *)block;
  size_t left = block != NULL ? len : 0;
  for (size_t i = 0; i < count; i++) {
    const char *colon = left > 0 ? memchr(at, ':', left) : NULL;
    if (colon == NULL) {
      return malformed_headers(env);
    }
    size_t name_len = (size_t)(colon - at);
    const char *value = colon + 1;
    left -= name_len + 1;
    if (left > 0 && *value == ' ') {
      value++;
      left--;
    }
    const char *cr = left > 0 ? memchr(value, '\r', left) : NULL;
    if (cr == NULL || (size_t)(cr - value) + 2 > left || cr[1] != '\n') {
      return malformed_headers(env);
    }
    size_t value_len = (size_t)(cr - value);
    NAPI_TRY(env, napi_create_string_latin1(env, at, name_len, &v));
    NAPI_TRY(env, napi_set_element(env, raw, (uint32_t)(2 * i), v));
    NAPI_TRY(env, napi_create_string_latin1(env, value, value_len, &v));
    NAPI_TRY(env, napi_set_element(env, raw, (uint32_t)(2 * i + 1), v));
    at = cr + 2;
    left -= value_len + 2;
  }
  if (left != 0) {
    return malformed_headers(env);
  }
  return raw;
}

/* {statusCode, httpVersion, rawHeaders, reusedSocket, timings} from agent_response_read or
 * agent_stream_head. */
static napi_value build_head(napi_env env, const agent_response_parts *p) {
  napi_value obj, v, raw, timings;
  NAPI_TRY(env, napi_create_object(env, &obj));

  NAPI_TRY(env, napi_create_uint32(env, p->status, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "statusCode", v));

  char verbuf[24];
  snprintf(verbuf, sizeof verbuf, "%u.%u", (unsigned)(p->version / 10), (unsigned)(p->version % 10));
  NAPI_TRY(env, napi_create_string_latin1(env, verbuf, NAPI_AUTO_LENGTH, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "httpVersion", v));

  raw = build_raw_headers(env, p->headers, p->headers_len, p->header_count);
  if (raw == NULL) {
    return NULL;
  }
  NAPI_TRY(env, napi_set_named_property(env, obj, "rawHeaders", raw));

  NAPI_TRY(env, napi_get_boolean(env, p->reused, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "reusedSocket", v));

  const agent_timings *t = &p->timings;
  NAPI_TRY(env, napi_create_object(env, &timings));
  NAPI_TRY(env, set_double(env, timings, "queued", (double)t->queued_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "dns", (double)t->dns_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "connect", (double)t->connect_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "tls", (double)t->tls_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "sent", (double)t->sent_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "ttfb", (double)t->ttfb_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "total", (double)t->total_us / 1000.0));
  NAPI_TRY(env, napi_set_named_property(env, obj, "timings", timings));
  return obj;
}

/* Builds {statusCode, httpVersion, rawHeaders, body, reusedSocket, timings} from one
 * agent_response_read. May take ownership of r->response (external body): then
 * r->response is set to NULL. */
static napi_value build_response(napi_env env, req_ctx *r) {
  agent_response *resp = r->response;
  agent_response_parts p;
  memset(&p, 0, sizeof p);
  agent_code code = agent_response_read(resp, &p);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
    return NULL;
  }
  napi_value obj = build_head(env, &p);
  if (obj == NULL) {
    return NULL;
  }

  /* Last, since it may hand the response over to the Buffer. */
  const uint8_t *data = p.body;
  size_t len = p.body_len;
  napi_value body = NULL;
  if (len >= EXTERNAL_BODY_MIN &&
      napi_create_external_buffer(env, len, (void *)data, free_response_finalizer, resp, &body) ==
          napi_ok) {
    r->response = NULL; /* now owned by the Buffer's finalizer */
  } else {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      return NULL;
    }
    void *copy_out = NULL;
    NAPI_TRY(env, napi_create_buffer_copy(env, len, len > 0 ? data : (const void *)"", &copy_out, &body));
  }
  NAPI_TRY(env, napi_set_named_property(env, obj, "body", body));
  return obj;
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

/* JS thread: frees the stream (aborting it before its end) and lets go of its agent.
 * Idempotent. `env` NULL (teardown): the agent reference dies with the env. A read in
 * flight completes later (the library's callback still comes), unseen; it no longer keeps
 * the event loop alive, since nobody waits for it. */
static void stream_close(napi_env env, stream_ctx *c) {
  if (c->read_counted && env != NULL) {
    c->read_counted = false;
    inflight_done(env, c->st);
  }
  if (c->stream != NULL) {
    agent_stream *s = c->stream;
    c->stream = NULL;
    stream_unlink(c);
    agent_stream_free(s);
  }
  if (c->agent_ref != NULL && env != NULL) {
    napi_delete_reference(env, c->agent_ref);
  }
  c->agent_ref = NULL;
}

static void stream_ctx_unref(stream_ctx *c) {
  env_state *st = c->st;
  pthread_mutex_lock(&st->mu);
  size_t left = --c->refs;
  pthread_mutex_unlock(&st->mu);
  if (left == 0) {
    free(c);
    state_unref(st);
  }
}

/* The stream's external was collected, or the env is being torn down (after env_cleanup,
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

/* Library thread: one read's result. Copies the piece (valid only during this call) and
 * hands it to the JS thread. */
static void on_data(void *userdata, agent_code code, const uint8_t *data, size_t len) {
  stream_ctx *c = userdata;
  env_state *st = c->st;
  data_item *it = &c->item;
  it->kind = ITEM_DATA;
  it->ctx = c;
  it->code = code;
  it->data = NULL;
  it->len = 0;
  it->message = NULL;
  if (code != AGENT_CODE_OK) {
    it->message = last_error_dup();
  } else if (len > 0) {
    it->data = malloc(len);
    if (it->data == NULL) {
      it->code = AGENT_CODE_INTERNAL;
      it->message = strdup("keepalive-agent: out of memory for a piece of the response body");
    } else {
      memcpy(it->data, data, len);
      it->len = len;
    }
  }
  pthread_mutex_lock(&st->mu);
  bool delivered = post_locked(st, it);
  size_t left = delivered ? 1 : --c->refs;
  pthread_mutex_unlock(&st->mu);
  if (!delivered) {
    free(it->data);
    free(it->message);
    it->data = NULL;
    it->message = NULL;
    if (left == 0) {
      free(c);
      state_unref(st);
    }
  }
}

/* JS thread: a read's result reaches its callback, cb(err, chunk, totalMs): an error; a
 * Buffer; or null at the end, with the request's total time. An error or the end frees
 * the stream at once (the end has given the connection back to the pool already). */
static void deliver_data(napi_env env, data_item *it) {
  stream_ctx *c = it->ctx;
  env_state *st = c->st;
  agent_code code = it->code;
  uint8_t *bytes = it->data;
  size_t len = it->len;
  char *message = it->message;
  it->data = NULL;
  it->message = NULL;
  if (env == NULL) {
    free(bytes);
    free(message);
    stream_ctx_unref(c);
    return;
  }
  napi_ref cb = c->read_cb;
  c->read_cb = NULL;
  c->reading = false;
  if (c->read_counted) {
    c->read_counted = false;
    inflight_done(env, st);
  }

  napi_handle_scope scope = NULL;
  bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;
  /* A stream freed by JS while its read was in flight: nobody is waiting for the result. */
  if (c->stream != NULL && cb != NULL) {
    napi_value argv[3], fn, recv;
    bool built = napi_get_null(env, &argv[0]) == napi_ok && napi_get_null(env, &argv[1]) == napi_ok &&
                 napi_get_undefined(env, &argv[2]) == napi_ok;
    if (built && code != AGENT_CODE_OK) {
      argv[0] = make_agent_error(env, code, message);
      stream_close(env, c);
      built = argv[0] != NULL;
    } else if (built && len == 0) {
      agent_response_parts p;
      memset(&p, 0, sizeof p);
      agent_stream_head(c->stream, &p);
      stream_close(env, c);
      built = napi_create_double(env, (double)p.timings.total_us / 1000.0, &argv[2]) == napi_ok;
    } else if (built) {
      /* Copied into a Buffer and the piece freed at once, rather than handed over as an
       * external Buffer: the garbage of a long download then stays in memory V8 manages
       * (a 1 GiB download peaked about 35 MiB higher with external Buffers). */
      void *copy_out = NULL;
      built = napi_create_buffer_copy(env, len, bytes, &copy_out, &argv[1]) == napi_ok;
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
    if (napi_get_reference_value(env, cb, &fn) == napi_ok && fn != NULL &&
        napi_get_undefined(env, &recv) == napi_ok) {
      /* An exception thrown by the callback stays pending: Node reports it as uncaught. */
      napi_call_function(env, recv, fn, 3, argv, NULL);
    }
  }
  if (cb != NULL) {
    napi_delete_reference(env, cb);
  }
  free(bytes);
  free(message);
  if (scoped) {
    napi_close_handle_scope(env, scope);
  }
  stream_ctx_unref(c);
}

/* JS thread: the head of a stream request is in. Builds the head object with a `stream`
 * handle that takes over r->stream and r->agent_ref (both set to NULL). */
static napi_value build_stream_head(napi_env env, req_ctx *r) {
  agent_response_parts p;
  memset(&p, 0, sizeof p);
  agent_code code = agent_stream_head(r->stream, &p);
  if (code != AGENT_CODE_OK) {
    throw_agent_error(env, code);
    return NULL;
  }
  napi_value obj = build_head(env, &p);
  if (obj == NULL) {
    return NULL;
  }
  stream_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  env_state *st = r->st;
  napi_value ext;
  if (napi_create_external(env, c, stream_finalize, NULL, &ext) != napi_ok) {
    free(c);
    ensure_exception(env, "napi_create_external");
    return NULL;
  }
  /* Owned by the external from here on (its finalizer drops this reference). */
  c->st = st;
  c->box = r->box;
  c->refs = 1;
  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);
  c->stream = r->stream;
  r->stream = NULL;
  c->agent_ref = r->agent_ref;
  r->agent_ref = NULL;
  c->next = st->streams;
  if (st->streams != NULL) {
    st->streams->prev = c;
  }
  st->streams = c;
  if (napi_type_tag_object(env, ext, &STREAM_TAG) != napi_ok ||
      napi_set_named_property(env, obj, "stream", ext) != napi_ok) {
    stream_close(env, c);
    ensure_exception(env, "stream handle");
    return NULL;
  }
  return obj;
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

/* Tells the JS pusher it may go on (room in the queue, or the source stopped). Called
 * with st->mu held. */
static void src_pull_locked(body_src *s) {
  if (s->pull_posted || s->js_gone) {
    return;
  }
  s->js_waiting = false;
  if (post_locked(s->st, s)) {
    s->pull_posted = true;
    s->refs++;
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

/* agent_body_source.read, on a library thread: takes what JS has queued. Never waits and
 * never calls into JS: with nothing queued, it keeps a waker and returns
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

/* JS thread (env NULL at teardown): the pull item of a source. */
static void deliver_pull(napi_env env, body_src *s) {
  env_state *st = s->st;
  pthread_mutex_lock(&st->mu);
  s->pull_posted = false;
  bool call = env != NULL && !s->js_gone && s->on_pull != NULL;
  bool released = s->released;
  pthread_mutex_unlock(&st->mu);
  if (call) {
    napi_handle_scope scope = NULL;
    bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;
    napi_value fn, recv;
    if (napi_get_reference_value(env, s->on_pull, &fn) == napi_ok && fn != NULL &&
        napi_get_undefined(env, &recv) == napi_ok) {
      napi_call_function(env, recv, fn, 0, NULL, NULL);
    }
    if (scoped) {
      napi_close_handle_scope(env, scope);
    }
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
/* Items: JS thread                                                                      */

/* Runs on the JS thread (env != NULL), or with env == NULL while Node empties the queue of
 * a thread-safe function at teardown. */
static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  switch (*(const int *)data) {
    case ITEM_DATA:
      deliver_data(env, data);
      return;
    case ITEM_PULL:
      deliver_pull(env, data);
      return;
    default:
      break;
  }
  req_ctx *r = data;
  if (env == NULL) {
    ctx_free_native(r); /* `context` may already be gone: do not touch it */
    return;
  }
  env_state *st = context;
  napi_handle_scope scope = NULL;
  bool scoped = napi_open_handle_scope(env, &scope) == napi_ok;

  napi_value value = NULL;
  bool ok = false;
  if (r->code != AGENT_CODE_OK) {
    value = make_agent_error(env, r->code, r->message);
  } else if (r->kind == ITEM_REQUEST) {
    value = build_response(env, r);
    ok = value != NULL;
  } else if (r->box->handle == NULL) {
    /* The agent was destroyed while the head was on its way: as if it had been in flight. */
    agent_stream_free(r->stream);
    r->stream = NULL;
    value = make_agent_error(env, AGENT_CODE_CANCELLED, "the agent was destroyed");
  } else {
    value = build_stream_head(env, r);
    ok = value != NULL;
  }
  if (value == NULL) {
    /* N-API failed while building: reject with whatever it threw. */
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
  if (r->agent_ref != NULL) {
    napi_delete_reference(env, r->agent_ref);
  }
  ctx_free_native(r);

  inflight_done(env, st);
  if (scoped) {
    napi_close_handle_scope(env, scope);
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

static void *free_agent_thread(void *arg) {
  agent_free(arg);
  return NULL;
}

/* agent_free cancels in-flight requests, closes every connection and waits (bounded) for
 * both, so it can take a while; the JS thread must never wait for it. It runs on a
 * short-lived detached thread instead (synchronously only if no thread can be made).
 * Safe: nothing uses the agent afterwards, and completions of its cancelled requests go
 * through the reference-counted env_state like any other. */
static void free_agent_in_background(agent *a) {
  if (a == NULL) {
    return;
  }
  pthread_attr_t attr;
  pthread_t t;
  bool started = false;
  if (pthread_attr_init(&attr) == 0) {
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    started = pthread_create(&t, &attr, free_agent_thread, a) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) {
    agent_free(a);
  }
}

/* The external was collected (or the env is being torn down). No request is in flight:
 * each holds a strong reference to the external. */
static void box_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  agent_box *b = data;
  box_unlink(b);
  agent *a = b->handle;
  b->handle = NULL;
  free_agent_in_background(a);
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
};

static const struct {
  const char *key;
  bool_setter set;
} BOOL_OPTIONS[] = {
    {"keepAlive", agent_options_set_keep_alive},
    {"retryStale", agent_options_set_retry_stale},
    {"useSystemRoots", agent_options_set_use_system_roots},
    {"dangerAcceptInvalidCerts", agent_options_set_danger_accept_invalid_certs},
};

/* Reads options.key: 1 = present (in *out), 0 = absent, -1 = N-API failure. */
static int get_opt(napi_env env, napi_value obj, const char *key, napi_value *out) {
  if (napi_get_named_property(env, obj, key, out) != napi_ok) {
    return -1;
  }
  return is_undefined(env, *out) ? 0 : 1;
}

/* create(options): options were validated and normalized by index.js (numbers are
 * integers in range, scheduling is 0/1, ca is a Buffer, rejectUnauthorized is turned into
 * dangerAcceptInvalidCerts). Keys left undefined keep the library's defaults; an
 * undefined keepAlive lets the environment switch decide. */
static napi_value js_create(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 1;
  napi_value argv[1], v, ext;
  agent_options *o = NULL;
  agent_box *b = NULL;
  char *ua = NULL;
  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "options required");
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
  has = get_opt(env, argv[0], "ca", &v);
  if (has < 0) {
    ensure_exception(env, "ca");
    goto fail;
  }
  if (has) {
    void *data = NULL;
    size_t len = 0;
    NAPI_TRY_GOTO(env, napi_get_buffer_info(env, v, &data, &len), fail);
    agent_options_set_ca_pem(o, data, len);
  }
  has = get_opt(env, argv[0], "userAgent", &v);
  if (has < 0) {
    ensure_exception(env, "userAgent");
    goto fail;
  }
  if (has) {
    ua = dup_js_string(env, v, "options.userAgent");
    if (ua == NULL) {
      goto fail;
    }
    agent_options_set_user_agent(o, ua);
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
  free(ua);
  ua = NULL;
  if (napi_create_external(env, b, box_finalize, NULL, &ext) != napi_ok) {
    ensure_exception(env, "napi_create_external");
    agent_free(b->handle);
    free(b);
    return NULL;
  }
  if (napi_type_tag_object(env, ext, &BOX_TAG) != napi_ok) {
    /* The finalizer frees the agent; without its tag the handle is refused everywhere. */
    ensure_exception(env, "napi_type_tag_object");
    return NULL;
  }
  /* Owned by the external from here on. */
  b->st = st;
  b->next = st->agents;
  if (st->agents != NULL) {
    st->agents->prev = b;
  }
  st->agents = b;
  return ext;

fail:
  agent_options_free(o);
  free(ua);
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
  b->handle = NULL;
  env_state *st = b->st;
  if (st != NULL) {
    /* Its open streams are aborted (a read in flight completes with AGENT_CODE_CANCELLED)
     * and its body sources stopped, so that no pending upload waits for JS any more. */
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
  /* Cancels in-flight requests (their promises reject with AGENT_CODE_CANCELLED once
   * call_js runs) and closes every connection, off the JS thread. */
  free_agent_in_background(a);
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

/* Takes the pending exception (creating one if N-API failed without throwing). */
static napi_value take_exception(napi_env env, const char *what) {
  napi_value e = NULL;
  ensure_exception(env, what);
  if (napi_get_and_clear_last_exception(env, &e) != napi_ok || e == NULL) {
    napi_get_undefined(env, &e);
  }
  return e;
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

/* The arguments request() and streamRequest() share, copied for the library call. */
typedef struct req_args {
  char *method;
  char *url;
  agent_header *headers;
  uint32_t header_count; /* entries filled so far: req_args_free frees exactly those */
  const uint8_t *body;   /* points into the caller's Uint8Array (valid during the call) */
  size_t body_len;
  uint32_t timeout_ms;
} req_args;

static void req_args_free(req_args *a) {
  free(a->method);
  free(a->url);
  if (a->headers != NULL) {
    for (uint32_t i = 0; i < a->header_count; i++) {
      free((void *)a->headers[i].name);
      free((void *)a->headers[i].value);
    }
    free(a->headers);
  }
}

/* Reads method, url, headers, body (argv[0..3]) and the timeout. headers: a flat array
 * [name, value, ...] of strings, or undefined. body: a Uint8Array (Buffer), or undefined.
 * timeout: integer 0..2^31-1. False with an exception pending on failure (the caller
 * still calls req_args_free). */
static bool parse_req_args(napi_env env, const napi_value *argv, napi_value timeout, req_args *a) {
  uint32_t n_strings = 0;
  a->method = dup_js_string(env, argv[0], "method");
  if (a->method == NULL) {
    return false;
  }
  a->url = dup_js_string(env, argv[1], "url");
  if (a->url == NULL) {
    return false;
  }
  if (!is_undefined(env, argv[2])) {
    if (napi_get_array_length(env, argv[2], &n_strings) != napi_ok) {
      ensure_exception(env, "napi_get_array_length");
      return false;
    }
    if (n_strings % 2 != 0) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "headers must be name/value pairs");
      return false;
    }
    if (n_strings > 0) {
      a->headers = calloc(n_strings / 2, sizeof *a->headers);
      if (a->headers == NULL) {
        napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
        return false;
      }
    }
    for (uint32_t i = 0; i < n_strings / 2; i++) {
      napi_value nv, vv;
      if (napi_get_element(env, argv[2], 2 * i, &nv) != napi_ok ||
          napi_get_element(env, argv[2], 2 * i + 1, &vv) != napi_ok) {
        ensure_exception(env, "napi_get_element");
        return false;
      }
      a->header_count++;
      a->headers[i].name = dup_js_string(env, nv, "header name");
      if (a->headers[i].name == NULL) {
        return false;
      }
      a->headers[i].value = dup_js_string(env, vv, "header value");
      if (a->headers[i].value == NULL) {
        return false;
      }
    }
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
  if (napi_get_value_uint32(env, timeout, &a->timeout_ms) != napi_ok) {
    ensure_exception(env, "timeout");
    return false;
  }
  return true;
}

/* A new context for a request whose promise is created here. NULL with an exception
 * pending on failure. */
static req_ctx *new_req_ctx(napi_env env, env_state *st, int kind, napi_value *promise) {
  req_ctx *r = calloc(1, sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  r->kind = kind;
  r->st = st;
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
  if (r->agent_ref != NULL) {
    napi_delete_reference(env, r->agent_ref);
  }
  free(r);
}

/* request(handle, method, url, headers, body, timeoutMs) -> [promise, id]
 * Bad arguments throw; once the promise exists, every failure rejects it instead (with
 * id 0), so a caller never sees both. */
static napi_value js_request(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 6;
  napi_value argv[6], promise;
  req_args a;
  memset(&a, 0, sizeof a);
  napi_value ret = NULL;

  NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&st));
  if (argc < 6) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "request() takes 6 arguments");
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
  if (!parse_req_args(env, argv + 1, argv[5], &a)) {
    goto done;
  }
  req_ctx *r = new_req_ctx(env, st, ITEM_REQUEST, &promise);
  if (r == NULL) {
    goto done;
  }
  /* From here on the promise exists: failures reject it. */
  if (napi_create_reference(env, argv[0], 1, &r->agent_ref) != napi_ok) {
    napi_reject_deferred(env, r->deferred, take_exception(env, "napi_create_reference"));
    free(r);
    ret = promise_and_id(env, promise, 0);
    goto done;
  }

  /* The callback may run on a library thread before agent_request_async returns. */
  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);

  uint64_t id = 0;
  agent_code code = agent_request_async(b->handle, a.method, a.url, a.headers, a.header_count, a.body,
                                        a.body_len, a.timeout_ms, on_complete, r, &id);
  if (code != AGENT_CODE_OK) {
    /* Not started; the callback will not run. */
    state_unref(st);
    reject_not_started(env, r, code);
    ret = promise_and_id(env, promise, 0);
    goto done;
  }
  /* r now belongs to the completion path: not touched again here. */
  inflight_add(env, st);
  ret = promise_and_id(env, promise, id);

done:
  req_args_free(&a);
  return ret;
}

/* A body source fed by JS: {length (-1 = unknown), onPull()}. Returns the source with
 * two references (the library's, handed over with the request, and its external's, in
 * *ext), linked into st->sources; NULL with an exception pending on failure. */
static body_src *src_new(napi_env env, env_state *st, const agent_box *b, napi_value spec,
                         int64_t *length, napi_value *ext) {
  napi_value v, fn;
  napi_valuetype t;
  if (napi_get_named_property(env, spec, "length", &v) != napi_ok ||
      napi_get_value_int64(env, v, length) != napi_ok ||
      napi_get_named_property(env, spec, "onPull", &fn) != napi_ok ||
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
  s->kind = ITEM_PULL;
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

/* streamRequest(handle, method, url, headers, body, source, timeoutMs)
 *   -> [promise, id, sourceHandle | undefined]
 * source: undefined (the body, if any, is `body`), or {length, onPull} for a body JS feeds
 * with sourcePush. The promise resolves once the head is in with
 * {statusCode, httpVersion, rawHeaders, reusedSocket, timings, stream}. */
static napi_value js_stream_request(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 7;
  napi_value argv[7], promise, src_ext, arr;
  req_args a;
  memset(&a, 0, sizeof a);
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
  if (!parse_req_args(env, argv + 1, argv[6], &a)) {
    goto done;
  }
  NAPI_TRY_GOTO(env, napi_get_undefined(env, &src_ext), done);
  bool has_source = !is_undefined(env, argv[5]);
  if (has_source && a.body_len > 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "a body and a source were both given");
    goto done;
  }
  req_ctx *r = new_req_ctx(env, st, ITEM_HEAD, &promise);
  if (r == NULL) {
    goto done;
  }
  /* From here on the promise exists: failures reject it. */
  if (napi_create_reference(env, argv[0], 1, &r->agent_ref) != napi_ok) {
    napi_reject_deferred(env, r->deferred, take_exception(env, "napi_create_reference"));
    free(r);
    ret = promise_and_id(env, promise, 0);
    goto done;
  }
  r->box = b;
  if (has_source) {
    s = src_new(env, st, b, argv[5], &length, &src_ext);
    if (s == NULL) {
      napi_reject_deferred(env, r->deferred, take_exception(env, "source"));
      napi_delete_reference(env, r->agent_ref);
      free(r);
      ret = promise_and_id(env, promise, 0);
      goto done;
    }
  }
  agent_body_source source = {src_read, NULL, src_release, length, s};

  pthread_mutex_lock(&st->mu);
  st->refs++;
  pthread_mutex_unlock(&st->mu);

  uint64_t id = 0;
  /* The library owns its reference to the source from here on: release() runs in every
   * case, also when this fails. */
  agent_code code = agent_request_stream_async(b->handle, a.method, a.url, a.headers, a.header_count,
                                               a.body, a.body_len, s != NULL ? &source : NULL,
                                               a.timeout_ms, on_stream_head, r, &id);
  if (code != AGENT_CODE_OK) {
    state_unref(st);
    reject_not_started(env, r, code);
    id = 0;
  } else {
    inflight_add(env, st);
  }
  ret = promise_and_id(env, promise, id);
  if (ret != NULL) {
    arr = ret;
    if (napi_set_element(env, arr, 2, src_ext) != napi_ok) {
      ensure_exception(env, "napi_set_element");
      ret = NULL;
    }
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
  napi_ref cb = NULL;
  NAPI_TRY(env, napi_create_reference(env, argv[1], 1, &cb));
  pthread_mutex_lock(&st->mu);
  c->refs++; /* the read's: dropped once its result has been delivered (or discarded) */
  pthread_mutex_unlock(&st->mu);
  c->reading = true;
  c->read_cb = cb;
  agent_code code = agent_stream_read_async(c->stream, on_data, c);
  if (code != AGENT_CODE_OK) {
    c->reading = false;
    c->read_cb = NULL;
    napi_delete_reference(env, cb);
    pthread_mutex_lock(&st->mu);
    c->refs--; /* not the last: the external holds one */
    pthread_mutex_unlock(&st->mu);
    throw_agent_error(env, code);
    return NULL;
  }
  c->read_counted = true;
  inflight_add(env, st);
  NAPI_TRY(env, napi_get_boolean(env, true, &out));
  return out;
}

/* streamFree(stream): aborts the stream if its body has not ended; idempotent. A read in
 * flight completes later, unseen. */
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
  if (s->stop != SRC_OPEN || s->ended) {
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
     * freed only on this thread, after the source stopped. */
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

/* ------------------------------------------------------------------------------------ */
/* Environment lifetime                                                                  */

/* The thread-safe function is finalized (env teardown): stop delivering to it. */
static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  env_state *st = data;
  pthread_mutex_lock(&st->mu);
  st->closed = true;
  pthread_mutex_unlock(&st->mu);
  state_unref(st);
}

/* The environment (main thread or worker) is going away: stop every body source, free
 * every open stream and every live agent. Each agent_free cancels the agent's in-flight
 * requests; their callbacks now see `closed` and free their contexts themselves. */
static void env_cleanup(void *arg) {
  env_state *st = arg;
  pthread_mutex_lock(&st->mu);
  st->closed = true;
  pthread_mutex_unlock(&st->mu);
  /* A pending source's read() is called again and fails at once. */
  src_stop_all(st, NULL, SRC_CLOSED);
  /* Open streams are aborted now (their references die with the env); reads in flight
   * complete later, see `closed`, and drop their contexts themselves. */
  while (st->streams != NULL) {
    stream_close(NULL, st->streams);
  }
  agent_box *b = st->agents;
  st->agents = NULL;
  while (b != NULL) {
    agent_box *next = b->next;
    agent *a = b->handle;
    b->handle = NULL;
    b->st = NULL;
    b->prev = b->next = NULL;
    /* Not waited for: an exiting process must not linger, and completions arriving
     * later see `closed` and free their contexts. */
    free_agent_in_background(a);
    b = next;
  }
  state_unref(st);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  env_state *st = calloc(1, sizeof *st);
  if (st == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    return NULL;
  }
  pthread_mutex_init(&st->mu, NULL);
  st->refs = 1; /* the environment's */

  napi_value name, limits, stats_fields;
  if (!load_stats_fields(env, st) || (limits = limits_object(env)) == NULL ||
      (stats_fields = stats_fields_array(env)) == NULL ||
      napi_create_string_utf8(env, "keepalive-agent completions", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, st, tsfn_finalize, st,
                                      call_js, &st->tsfn) != napi_ok) {
    ensure_exception(env, "module init");
    state_free(st);
    return NULL;
  }
  st->refs++; /* the thread-safe function's, dropped by tsfn_finalize */
  /* Idle until a request starts: an unused addon never keeps the loop alive. */
  napi_unref_threadsafe_function(env, st->tsfn);
  /* Registered after the thread-safe function, so it runs before Node closes it. */
  if (napi_add_env_cleanup_hook(env, env_cleanup, st) != napi_ok) {
    ensure_exception(env, "napi_add_env_cleanup_hook");
    return NULL;
  }

  const napi_property_descriptor props[] = {
      {"create", NULL, js_create, NULL, NULL, NULL, napi_default, st},
      {"request", NULL, js_request, NULL, NULL, NULL, napi_default, st},
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
      {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_default, st},
      {"version", NULL, js_version, NULL, NULL, NULL, napi_default, st},
      {"codeName", NULL, js_code_name, NULL, NULL, NULL, napi_default, st},
      {"testPanic", NULL, js_test_panic, NULL, NULL, NULL, napi_default, st},
      {"limits", NULL, NULL, NULL, NULL, limits, napi_enumerable, st},
      {"statsFields", NULL, NULL, NULL, NULL, stats_fields, napi_enumerable, st},
  };
  NAPI_TRY(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
