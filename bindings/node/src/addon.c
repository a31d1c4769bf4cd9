/*
 * keepalive-agent's Node binding: an N-API addon in plain C over include/keepalive_agent.h.
 *
 * index.js validates every argument and calls the small native surface below:
 *
 *   create(options)                          -> handle (an external owning one `agent`)
 *   request(handle, method, url, headers, body, timeoutMs) -> [promise, id]
 *   cancel(handle, id)                       -> boolean
 *   stats(handle, origin?), keepAlive(handle), destroy(handle), version(), codeName(code)
 *   limits                                   -> {maxMsecs, ...}, from agent_limit
 *   statsFields                              -> the library's statistics field names
 *   testPanic()                              -> throws AGENT_CODE_PANIC (test-hooks builds)
 *
 * Lists the library owns are read from it, never repeated here: statistics are built from
 * agent_stats_field_name/agent_stats_values (snake_case names become camelCase keys), code
 * names come from agent_code_name, validation bounds from agent_limit.
 *
 * Threads. Requests go through agent_request_async; its callback runs on a library thread,
 * copies what it needs, and hands the request context to the JS thread through ONE
 * napi_threadsafe_function per environment (main thread or worker). That function is
 * unref'd whenever no request is in flight, so idle pooled connections never keep the
 * process alive (like http.Agent's unref'd free sockets).
 *
 * Lifetimes.
 *  - env_state: one per environment, reference-counted (mutex-guarded): one reference for
 *    the environment (dropped by the env cleanup hook), one for the thread-safe function
 *    (dropped by its finalizer), one per request in flight (dropped by the library callback
 *    once the context has been handed over or freed). Library threads therefore never
 *    touch freed state, whatever order Node tears things down in.
 *  - `closed` (under the mutex) is set by the cleanup hook and by the thread-safe
 *    function's finalizer; from then on library callbacks free their context themselves
 *    instead of calling into a thread-safe function that may be gone.
 *  - agent_box: owned by the JS external. destroy(), the env cleanup hook or the
 *    external's finalizer (whichever comes first) hands the native agent to agent_free on a
 *    short-lived background thread, since agent_free cancels in-flight requests and waits
 *    (bounded) for connections to close: the JS thread never waits for it. Every request
 *    in flight holds a strong reference to the external, so a finalizer never runs while
 *    a request is in flight.
 *  - req_ctx: allocated by request(), filled by the library callback, consumed and freed
 *    by call_js on the JS thread (or by the callback itself when the env is closing, or by
 *    call_js with env == NULL while Node drains the queue at teardown). Nothing reads a
 *    context after napi_call_threadsafe_function has accepted it.
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

typedef struct agent_box agent_box;

typedef struct env_state {
  pthread_mutex_t mu;            /* guards closed and refs */
  bool closed;                   /* the env is going away: do not call tsfn */
  size_t refs;                   /* env + tsfn + one per request in flight */
  napi_threadsafe_function tsfn; /* set once at init, before any request */
  size_t inflight;               /* JS thread only: requests not yet settled */
  agent_box *agents;             /* JS thread only: boxes whose agent may be live */
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
  env_state *st;
  napi_deferred deferred;
  napi_ref agent_ref; /* keeps the agent's external alive while in flight */
  agent_code code;
  agent_response *response;
  char *message; /* library message on failure (malloc'd), or NULL */
} req_ctx;

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

static agent_box *get_box(napi_env env, napi_value v) {
  napi_valuetype t;
  void *data = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "not a keepalive-agent handle");
    return NULL;
  }
  return data;
}

/* ------------------------------------------------------------------------------------ */
/* Completion: library thread -> JS thread                                               */

static void ctx_free_native(req_ctx *r) {
  /* Frees only C memory: at teardown the deferred and reference die with the env. */
  agent_response_free(r->response);
  free(r->message);
  free(r);
}

/* Runs on a library thread, exactly once per started request. */
static void on_complete(void *userdata, agent_code code, agent_response *response) {
  req_ctx *r = userdata;
  env_state *st = r->st; /* copied: r may be freed by the JS thread once handed over */
  r->code = code;
  r->response = response;
  r->message = (code == AGENT_CODE_OK) ? NULL : last_error_dup();

  pthread_mutex_lock(&st->mu);
  bool delivered = false;
  if (!st->closed) {
    delivered = napi_call_threadsafe_function(st->tsfn, r, napi_tsfn_nonblocking) == napi_ok;
  }
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

  napi_value obj, v, raw, timings;
  NAPI_TRY(env, napi_create_object(env, &obj));

  NAPI_TRY(env, napi_create_uint32(env, p.status, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "statusCode", v));

  char verbuf[24];
  snprintf(verbuf, sizeof verbuf, "%u.%u", (unsigned)(p.version / 10), (unsigned)(p.version % 10));
  NAPI_TRY(env, napi_create_string_latin1(env, verbuf, NAPI_AUTO_LENGTH, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "httpVersion", v));

  raw = build_raw_headers(env, p.headers, p.headers_len, p.header_count);
  if (raw == NULL) {
    return NULL;
  }
  NAPI_TRY(env, napi_set_named_property(env, obj, "rawHeaders", raw));

  NAPI_TRY(env, napi_get_boolean(env, p.reused, &v));
  NAPI_TRY(env, napi_set_named_property(env, obj, "reusedSocket", v));

  const agent_timings *t = &p.timings;
  NAPI_TRY(env, napi_create_object(env, &timings));
  NAPI_TRY(env, set_double(env, timings, "queued", (double)t->queued_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "dns", (double)t->dns_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "connect", (double)t->connect_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "tls", (double)t->tls_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "sent", (double)t->sent_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "ttfb", (double)t->ttfb_us / 1000.0));
  NAPI_TRY(env, set_double(env, timings, "total", (double)t->total_us / 1000.0));
  NAPI_TRY(env, napi_set_named_property(env, obj, "timings", timings));

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

/* Runs on the JS thread (env != NULL), or with env == NULL while Node empties the queue of
 * a thread-safe function at teardown. */
static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
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
  if (r->code == AGENT_CODE_OK) {
    value = build_response(env, r);
    ok = value != NULL;
  } else {
    value = make_agent_error(env, r->code, r->message);
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
  napi_delete_reference(env, r->agent_ref);
  ctx_free_native(r);

  if (st->inflight > 0 && --st->inflight == 0) {
    napi_unref_threadsafe_function(env, st->tsfn);
  }
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

/* request(handle, method, url, headers, body, timeoutMs) -> [promise, id]
 * headers: a flat array [name, value, ...] of strings, or undefined.
 * body: a Uint8Array (Buffer), or undefined. timeoutMs: integer 0..2^31-1.
 * Bad arguments throw; once the promise exists, every failure rejects it instead (with
 * id 0), so a caller never sees both. */
static napi_value js_request(napi_env env, napi_callback_info info) {
  env_state *st = NULL;
  size_t argc = 6;
  napi_value argv[6], promise;
  char *method = NULL, *url = NULL;
  agent_header *headers = NULL;
  uint32_t header_count = 0, n_strings = 0;
  const uint8_t *body = NULL;
  size_t body_len = 0;
  uint32_t timeout_ms = 0;
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
  method = dup_js_string(env, argv[1], "method");
  if (method == NULL) {
    goto done;
  }
  url = dup_js_string(env, argv[2], "url");
  if (url == NULL) {
    goto done;
  }
  if (!is_undefined(env, argv[3])) {
    NAPI_TRY_GOTO(env, napi_get_array_length(env, argv[3], &n_strings), done);
    if (n_strings % 2 != 0) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "headers must be name/value pairs");
      goto done;
    }
    if (n_strings > 0) {
      headers = calloc(n_strings / 2, sizeof *headers);
      if (headers == NULL) {
        napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
        goto done;
      }
    }
    /* header_count counts the entries filled so far, so `done` frees exactly those. */
    for (uint32_t i = 0; i < n_strings / 2; i++) {
      napi_value nv, vv;
      NAPI_TRY_GOTO(env, napi_get_element(env, argv[3], 2 * i, &nv), done);
      NAPI_TRY_GOTO(env, napi_get_element(env, argv[3], 2 * i + 1, &vv), done);
      header_count++;
      headers[i].name = dup_js_string(env, nv, "header name");
      if (headers[i].name == NULL) {
        goto done;
      }
      headers[i].value = dup_js_string(env, vv, "header value");
      if (headers[i].value == NULL) {
        goto done;
      }
    }
  }
  if (!is_undefined(env, argv[4])) {
    napi_typedarray_type type;
    size_t length = 0, offset = 0;
    void *data = NULL;
    napi_value ab;
    bool is_ta = false;
    NAPI_TRY_GOTO(env, napi_is_typedarray(env, argv[4], &is_ta), done);
    if (!is_ta) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "body must be a Uint8Array");
      goto done;
    }
    NAPI_TRY_GOTO(env, napi_get_typedarray_info(env, argv[4], &type, &length, &data, &ab, &offset), done);
    if (type != napi_uint8_array) {
      napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "body must be a Uint8Array");
      goto done;
    }
    body = data;
    body_len = length;
  }
  NAPI_TRY_GOTO(env, napi_get_value_uint32(env, argv[5], &timeout_ms), done);

  req_ctx *r = calloc(1, sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "out of memory");
    goto done;
  }
  r->st = st;
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok) {
    ensure_exception(env, "napi_create_promise");
    free(r);
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
  agent_code code = agent_request_async(b->handle, method, url, headers, header_count, body,
                                        body_len, timeout_ms, on_complete, r, &id);
  if (code != AGENT_CODE_OK) {
    /* Not started; the callback will not run. */
    state_unref(st);
    char *msg = last_error_dup();
    napi_value err = make_agent_error(env, code, msg);
    free(msg);
    if (err == NULL) {
      err = take_exception(env, "make_agent_error");
    }
    napi_reject_deferred(env, r->deferred, err);
    napi_delete_reference(env, r->agent_ref);
    free(r);
    ret = promise_and_id(env, promise, 0);
    goto done;
  }
  /* r now belongs to the completion path: not touched again here. */
  if (st->inflight++ == 0) {
    napi_ref_threadsafe_function(env, st->tsfn);
  }
  ret = promise_and_id(env, promise, id);

done:
  free(method);
  free(url);
  if (headers != NULL) {
    for (uint32_t i = 0; i < header_count; i++) {
      free((void *)headers[i].name);
      free((void *)headers[i].value);
    }
    free(headers);
  }
  return ret;
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

/* The environment (main thread or worker) is going away: free every live agent. Each
 * agent_free cancels the agent's in-flight requests; their callbacks now see `closed`
 * and free their contexts themselves. */
static void env_cleanup(void *arg) {
  env_state *st = arg;
  pthread_mutex_lock(&st->mu);
  st->closed = true;
  pthread_mutex_unlock(&st->mu);
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
