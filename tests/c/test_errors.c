/* test_errors.c: NULL arguments, outputs only on success, agent_last_error, error codes. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"

/* The call fails with INVALID_ARGUMENT and the thread's message mentions `word`. */
#define CHECK_NULL_ARG(expr, word)                                                     \
    do {                                                                               \
        CHECK_CODE(expr, AGENT_CODE_INVALID_ARGUMENT);                                 \
        CHECK_MSG(strstr(ts_last_error(), word) != NULL,                               \
                  "%s: message \"%s\" does not mention \"%s\"", #expr, ts_last_error(), \
                  word);                                                               \
    } while (0)

static int never_calls;
static void never_cb(void *ud, agent_code code, agent_response *r) {
    (void)ud;
    (void)code;
    never_calls++;
    agent_response_free(r);
}

typedef agent_code (*set_u32_fn)(agent_options *, uint32_t);
typedef agent_code (*set_bool_fn)(agent_options *, bool);

void test_null_arguments(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent *out_agent = NULL;
    agent_options *o = agent_options_new();
    agent_response *r = NULL;
    agent_pool_stats st;
    agent_timings t;
    agent_header h[1];
    const char *name, *value;
    size_t name_len, value_len, n;
    const uint8_t *data;
    uint64_t id;
    size_t i;
    static const uint8_t five[5] = {1, 2, 3, 4, 5};
    const set_u32_fn u32_setters[] = {
        agent_options_set_keep_alive_msecs,
        agent_options_set_keep_alive_interval_msecs,
        agent_options_set_keep_alive_probes,
        agent_options_set_max_sockets,
        agent_options_set_max_total_sockets,
        agent_options_set_max_free_sockets,
        agent_options_set_scheduling,
        agent_options_set_free_socket_timeout_msecs,
        agent_options_set_keep_alive_timeout_buffer_msecs,
        agent_options_set_max_keep_alive_timeout_msecs,
        agent_options_set_max_socket_lifetime_msecs,
        agent_options_set_connect_timeout_msecs,
        agent_options_set_headers_timeout_msecs,
        agent_options_set_body_timeout_msecs,
    };
    const set_bool_fn bool_setters[] = {
        agent_options_set_keep_alive,
        agent_options_set_retry_stale,
        agent_options_set_use_system_roots,
        agent_options_set_danger_accept_invalid_certs,
    };

    CHECK(a != NULL && o != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/null");

    /* Frees ignore NULL. */
    agent_free(NULL);
    agent_options_free(NULL);
    agent_response_free(NULL);

    /* Creation. */
    CHECK_NULL_ARG(agent_new_with_options(NULL, &out_agent), "options");
    CHECK_NULL_ARG(agent_new_with_options(o, NULL), "out");
    CHECK(out_agent == NULL);

    /* Options setters. */
    for (i = 0; i < sizeof u32_setters / sizeof u32_setters[0]; i++) {
        CHECK_NULL_ARG(u32_setters[i](NULL, 1), "options");
    }
    for (i = 0; i < sizeof bool_setters / sizeof bool_setters[0]; i++) {
        CHECK_NULL_ARG(bool_setters[i](NULL, true), "options");
    }
    CHECK_NULL_ARG(agent_options_set_max_response_bytes(NULL, 1), "options");
    CHECK_NULL_ARG(agent_options_set_ca_pem(NULL, five, sizeof five), "options");
    CHECK_NULL_ARG(agent_options_set_ca_pem(o, NULL, 5), "pem");
    CHECK_CODE(agent_options_set_ca_pem(o, NULL, 0), AGENT_CODE_OK); /* zero length tolerates NULL */
    CHECK_NULL_ARG(agent_options_set_ca_file(NULL, "/x.pem"), "options");
    CHECK_NULL_ARG(agent_options_set_ca_file(o, NULL), "path");
    CHECK_NULL_ARG(agent_options_set_user_agent(NULL, "ua"), "options");
    CHECK_NULL_ARG(agent_options_set_user_agent(o, NULL), "user_agent");
    CHECK_NULL_ARG(agent_options_set_proxy(NULL, "http://127.0.0.1:1"), "options");
    CHECK_NULL_ARG(agent_options_set_proxy(o, NULL), "url");
    CHECK_NULL_ARG(agent_options_set_no_proxy(o, NULL), "list");
    CHECK_NULL_ARG(agent_options_set_proxy_from_env(NULL, false), "options");
    CHECK_NULL_ARG(agent_options_add_resolve(o, NULL), "entry");
    CHECK_NULL_ARG(agent_options_set_dns_cache_msecs(NULL, 1), "options");
    CHECK_NULL_ARG(agent_options_set_happy_eyeballs_delay_msecs(NULL, 1), "options");
    CHECK_NULL_ARG(agent_options_set_http_version(NULL, AGENT_HTTP_VERSION_AUTO), "options");
    CHECK_NULL_ARG(agent_options_set_client_cert_pem(o, NULL, 4), "pem");
    CHECK_NULL_ARG(agent_options_set_client_key_pem(o, NULL, 4), "pem");
    CHECK_NULL_ARG(agent_options_set_client_cert_file(o, NULL), "path");
    CHECK_NULL_ARG(agent_options_set_client_key_file(NULL, "/k.pem"), "options");

    /* Blocking request. */
    h[0].name = "X-A";
    h[0].value = "1";
    CHECK_NULL_ARG(agent_request(NULL, "GET", url, NULL, 0, NULL, 0, 0, &r), "agent");
    CHECK_NULL_ARG(agent_request(a, NULL, url, NULL, 0, NULL, 0, 0, &r), "method");
    CHECK_NULL_ARG(agent_request(a, "GET", NULL, NULL, 0, NULL, 0, 0, &r), "url");
    CHECK_NULL_ARG(agent_request(a, "GET", url, NULL, 1, NULL, 0, 0, &r), "headers");
    CHECK_NULL_ARG(agent_request(a, "POST", url, NULL, 0, NULL, 5, 0, &r), "body");
    CHECK_NULL_ARG(agent_request(a, "GET", url, h, 1, NULL, 0, 0, NULL), "out");
    h[0].name = NULL;
    CHECK_NULL_ARG(agent_request(a, "GET", url, h, 1, NULL, 0, 0, &r), "headers[0]");
    h[0].name = "X-A";
    h[0].value = NULL;
    CHECK_NULL_ARG(agent_request(a, "GET", url, h, 1, NULL, 0, 0, &r), "headers[0]");
    CHECK_NULL_ARG(agent_request(a, "GET", "http://127.0.0.1/\xff", NULL, 0, NULL, 0, 0, &r),
                   "UTF-8");
    CHECK(r == NULL);
    /* NULL with a zero count/length is fine. */
    CHECK_CODE(agent_request(a, "GET", url, NULL, 0, NULL, 0, 0, &r), AGENT_CODE_OK);
    agent_response_free(r);

    /* Async request: same checks, plus the callback; the callback is never called. */
    h[0].value = "1";
    never_calls = 0;
    CHECK_NULL_ARG(agent_request_async(NULL, "GET", url, NULL, 0, NULL, 0, 0, never_cb, NULL, &id),
                   "agent");
    CHECK_NULL_ARG(agent_request_async(a, NULL, url, NULL, 0, NULL, 0, 0, never_cb, NULL, &id),
                   "method");
    CHECK_NULL_ARG(agent_request_async(a, "GET", NULL, NULL, 0, NULL, 0, 0, never_cb, NULL, &id),
                   "url");
    CHECK_NULL_ARG(agent_request_async(a, "GET", url, NULL, 2, NULL, 0, 0, never_cb, NULL, &id),
                   "headers");
    CHECK_NULL_ARG(agent_request_async(a, "PUT", url, h, 1, NULL, 9, 0, never_cb, NULL, &id),
                   "body");
    CHECK_NULL_ARG(agent_request_async(a, "GET", url, h, 1, NULL, 0, 0, NULL, NULL, &id),
                   "callback");
    CHECK_NULL_ARG(agent_request_cancel(NULL, 1), "agent");

    /* Stats. */
    CHECK_NULL_ARG(agent_stats(NULL, &st), "agent");
    CHECK_NULL_ARG(agent_stats(a, NULL), "out");
    CHECK_NULL_ARG(agent_origin_stats(NULL, url, &st), "agent");
    CHECK_NULL_ARG(agent_origin_stats(a, NULL, &st), "origin_url");
    CHECK_NULL_ARG(agent_origin_stats(a, url, NULL), "out");
    CHECK(!agent_keep_alive_enabled(NULL));

    /* Response getters: documented defaults; fallible ones: INVALID_ARGUMENT. */
    CHECK_EQ(agent_response_status(NULL), 0);
    CHECK_EQ(agent_response_version(NULL), 0);
    CHECK(!agent_response_reused(NULL));
    CHECK_EQ(agent_response_header_count(NULL), 0);
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_NULL_ARG(agent_response_header_at(NULL, 0, &name, &name_len, &value, &value_len),
                   "response");
    CHECK_NULL_ARG(agent_response_header_at(r, 0, NULL, &name_len, &value, &value_len), "name");
    CHECK_NULL_ARG(agent_response_header_at(r, 0, &name, NULL, &value, &value_len), "name_len");
    CHECK_NULL_ARG(agent_response_header_at(r, 0, &name, &name_len, NULL, &value_len), "value");
    CHECK_NULL_ARG(agent_response_header_at(r, 0, &name, &name_len, &value, NULL), "value_len");
    CHECK_NULL_ARG(agent_response_header(NULL, "x-conn-id", &value, &value_len), "response");
    CHECK_NULL_ARG(agent_response_header(r, NULL, &value, &value_len), "name");
    CHECK_NULL_ARG(agent_response_header(r, "x-conn-id", NULL, &value_len), "value");
    CHECK_NULL_ARG(agent_response_header(r, "x-conn-id", &value, NULL), "value_len");
    CHECK_NULL_ARG(agent_response_body(NULL, &data, &n), "response");
    CHECK_NULL_ARG(agent_response_body(r, NULL, &n), "data");
    CHECK_NULL_ARG(agent_response_body(r, &data, NULL), "len");
    CHECK_NULL_ARG(agent_response_timings(NULL, &t), "response");
    CHECK_NULL_ARG(agent_response_timings(r, NULL), "out");
    agent_response_free(r);

    /* agent_last_error with NULL: the length only (also when cap > 0 by mistake). */
    n = agent_last_error(NULL, 0);
    CHECK(n > 0);
    CHECK_EQ(agent_last_error(NULL, 16), n);

    /* Let the async requests that were refused prove they never call back. */
    ts_sleep_ms(50);
    CHECK_EQ(never_calls, 0);
    agent_options_free(o);
    agent_free(a);
}

void test_outputs_only_on_success(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_options *o = agent_options_new();
    agent_response *const SENTINEL = (agent_response *)&url; /* any non-NULL address */
    agent_response *r = SENTINEL, *ok = NULL;
    agent *agent_out = (agent *)&url;
    agent_pool_stats st, st_before;
    agent_timings t, t_before;
    const char *const STR_SENTINEL = "sentinel";
    const char *name = STR_SENTINEL, *value = STR_SENTINEL;
    size_t name_len = 777, value_len = 777, len = 777;
    const uint8_t *data = (const uint8_t *)STR_SENTINEL;
    uint64_t id = 0xDEADBEEFu;

    CHECK(a != NULL && o != NULL);

    /* agent_request: refused connect, bad URL, bad argument. */
    ts_url(url, sizeof url, "http", ts_refusing_port(), "/");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_CONNECT_REFUSED);
    CHECK(r == SENTINEL);
    CHECK_CODE(t_get(a, "not a url", &r), AGENT_CODE_INVALID_URL);
    CHECK(r == SENTINEL);
    CHECK_CODE(agent_request(a, "BAD METHOD", url, NULL, 0, NULL, 0, 0, &r),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK(r == SENTINEL);

    /* agent_request_async: a refused start leaves out_id alone. */
    CHECK_CODE(agent_request_async(a, "GET", "not a url", NULL, 0, NULL, 0, 0, never_cb, NULL, &id),
               AGENT_CODE_INVALID_URL);
    CHECK(id == 0xDEADBEEFu);

    /* agent_new_with_options: a bad option leaves out alone; agent_new returns NULL. */
    CHECK_CODE(agent_options_set_scheduling(o, 7), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &agent_out), AGENT_CODE_INVALID_OPTION);
    CHECK(agent_out == (agent *)&url);
    CHECK(agent_new(true, 4000000000u) == NULL);
    CHECK(ts_last_error()[0] != '\0');

    /* Stats into a pre-filled struct. */
    memset(&st, 0xA5, sizeof st);
    st_before = st;
    CHECK_CODE(agent_stats(NULL, &st), AGENT_CODE_INVALID_ARGUMENT);
    CHECK(memcmp(&st, &st_before, sizeof st) == 0);
    CHECK(agent_origin_stats(a, "not a url", &st) != AGENT_CODE_OK);
    CHECK(memcmp(&st, &st_before, sizeof st) == 0);

    /* Response accessors. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/outputs");
    CHECK_CODE(t_get(a, url, &ok), AGENT_CODE_OK);
    CHECK_CODE(agent_response_header(ok, "x-not-there", &value, &value_len), AGENT_CODE_NOT_FOUND);
    CHECK(value == STR_SENTINEL && value_len == 777);
    CHECK_CODE(agent_response_header_at(ok, 100000, &name, &name_len, &value, &value_len),
               AGENT_CODE_NOT_FOUND);
    CHECK(name == STR_SENTINEL && name_len == 777 && value == STR_SENTINEL && value_len == 777);
    CHECK_CODE(agent_response_body(NULL, &data, &len), AGENT_CODE_INVALID_ARGUMENT);
    CHECK(data == (const uint8_t *)STR_SENTINEL && len == 777);
    memset(&t, 0x5A, sizeof t);
    t_before = t;
    CHECK_CODE(agent_response_timings(NULL, &t), AGENT_CODE_INVALID_ARGUMENT);
    CHECK(memcmp(&t, &t_before, sizeof t) == 0);
    /* And on success they are written. */
    CHECK_CODE(agent_response_body(ok, &data, &len), AGENT_CODE_OK);
    CHECK(len == 13);
    CHECK_CODE(agent_response_timings(ok, &t), AGENT_CODE_OK);
    CHECK(memcmp(&t, &t_before, sizeof t) != 0);
    agent_response_free(ok);

    agent_options_free(o);
    agent_free(a);
}

static void *thread_last_error(void *arg) {
    size_t *out = arg;
    out[0] = agent_last_error(NULL, 0); /* nothing failed on this thread yet */
    (void)agent_stats(NULL, NULL);       /* this thread's own failure */
    out[1] = agent_last_error(NULL, 0);
    return NULL;
}

void test_last_error_buffer(void) {
    char full[1024], small[16], canary[64];
    size_t n, got, i;
    size_t other[2] = {99, 0};
    pthread_t th;
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;

    CHECK(a != NULL);
    CHECK_CODE(t_get(a, "http://127.0.0.1:notaport/", &r), AGENT_CODE_INVALID_URL);
    n = agent_last_error(NULL, 0);
    CHECK(n > 16);
    CHECK_EQ(agent_last_error(full, sizeof full), n);
    CHECK_EQ(strlen(full), n);

    /* Too small: the return value says so; a truncated NUL-terminated prefix; nothing past cap. */
    memset(canary, 'Z', sizeof canary);
    got = agent_last_error(canary, 8);
    CHECK_EQ(got, n);
    CHECK(got >= 8);
    CHECK_EQ(canary[7], '\0');
    CHECK(memcmp(canary, full, 7) == 0);
    for (i = 8; i < sizeof canary; i++) {
        CHECK_MSG(canary[i] == 'Z', "byte %zu past cap was written", i);
    }
    CHECK_EQ(agent_last_error(small, 1), n);
    CHECK_EQ(small[0], '\0');
    /* Exactly the length: still one byte short (the NUL). */
    {
        char *exact = malloc(n + 1);
        CHECK(exact != NULL);
        got = agent_last_error(exact, n);
        CHECK(got >= n);
        CHECK_EQ(strlen(exact), n - 1);
        CHECK_EQ(agent_last_error(exact, n + 1), n);
        CHECK(strcmp(exact, full) == 0);
        free(exact);
    }

    /* Per thread: a new thread has no message; its failure does not change ours. */
    CHECK(pthread_create(&th, NULL, thread_last_error, other) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_EQ(other[0], 0);
    CHECK(other[1] > 0);
    CHECK_EQ(agent_last_error(NULL, 0), n);
    agent_free(a);
}

void test_connect_refused(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    agent_pool_stats st;
    int port = ts_refusing_port();

    CHECK(a != NULL);
    CHECK(port > 0);
    ts_url(url, sizeof url, "http", port, "/");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_CONNECT_REFUSED);
    CHECK(r == NULL);
    CHECK(ts_last_error()[0] != '\0');
    ts_url(url, sizeof url, "https", port, "/");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_CONNECT_REFUSED);
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, 2);
    CHECK_EQ(st.errors, 2);
    CHECK_EQ(st.active, 0);
    agent_free(a);
}

void test_invalid_url(void) {
    static const char *const bad[] = {
        "not a url",
        "",
        "/relative/path",
        "127.0.0.1:8080/no-scheme",
        "ftp://127.0.0.1/file",
        "file:///etc/passwd",
        "http://",
        "http://user:secret@127.0.0.1:1/",
        "http://127.0.0.1:99999/",
        "http://[::1/",
        "http://127.0.0.1:8080/a b",
    };
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    ts_stats ss;
    size_t i;

    CHECK(a != NULL);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        agent_code c = t_get(a, bad[i], &r);
        CHECK_MSG(c == AGENT_CODE_INVALID_URL, "\"%s\": got %s (%s), want AGENT_CODE_INVALID_URL",
                  bad[i], agent_code_str(c), ts_last_error());
        CHECK(r == NULL);
        CHECK(ts_last_error()[0] != '\0');
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 0);
    agent_free(a);
}

static int async_injection_calls;
static void count_cb(void *ud, agent_code code, agent_response *r) {
    (void)ud;
    (void)code;
    async_injection_calls++;
    agent_response_free(r);
}

void test_header_injection(void) {
    static const char *const bad_values[] = {"a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x01z",
                                             "a\x7f"};
    static const char *const bad_names[] = {"X-Bad\r\nX-Injected", "Bad Name", "Bad:Name", "",
                                            "X\nY"};
    static const char *const bad_methods[] = {"GE T", "GET\r\nX: y", "", "GET\n", "G(E)T"};
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    agent_header h;
    ts_stats ss;
    size_t i;

    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/inject");
    /* A pooled connection exists, so a wrongly sent request would show up as a request. */
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    agent_response_free(r);
    r = NULL;
    CHECK(ts_admin_reset(&ts_srv) == 0);

    h.name = "X-Test";
    for (i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        h.value = bad_values[i];
        CHECK_CODE(agent_request(a, "GET", url, &h, 1, NULL, 0, 5000, &r),
                   AGENT_CODE_INVALID_ARGUMENT);
        CHECK(r == NULL);
        CHECK(ts_last_error()[0] != '\0');
        CHECK_CODE(agent_request_async(a, "GET", url, &h, 1, NULL, 0, 5000, count_cb, NULL, NULL),
                   AGENT_CODE_INVALID_ARGUMENT);
    }
    h.value = "ok";
    for (i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        h.name = bad_names[i];
        agent_code c = agent_request(a, "GET", url, &h, 1, NULL, 0, 5000, &r);
        CHECK_MSG(c == AGENT_CODE_INVALID_ARGUMENT, "header name \"%s\": got %s", bad_names[i],
                  agent_code_str(c));
        CHECK(r == NULL);
    }
    for (i = 0; i < sizeof bad_methods / sizeof bad_methods[0]; i++) {
        agent_code c = agent_request(a, bad_methods[i], url, NULL, 0, NULL, 0, 5000, &r);
        CHECK_MSG(c == AGENT_CODE_INVALID_ARGUMENT, "method \"%s\": got %s", bad_methods[i],
                  agent_code_str(c));
        CHECK(r == NULL);
    }
    ts_sleep_ms(50);
    CHECK_EQ(async_injection_calls, 0);
    /* Nothing reached the server. */
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.requests, 0);
    CHECK_EQ(ss.accepted, 0);
    /* And the pooled connection still works. */
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK(agent_response_reused(r));
    agent_response_free(r);
    agent_free(a);
}

void test_code_str(void) {
    static const struct {
        uint32_t code;
        const char *name;
    } codes[] = {
        {AGENT_CODE_OK, "AGENT_CODE_OK"},
        {AGENT_CODE_INVALID_ARGUMENT, "AGENT_CODE_INVALID_ARGUMENT"},
        {AGENT_CODE_INVALID_URL, "AGENT_CODE_INVALID_URL"},
        {AGENT_CODE_INVALID_OPTION, "AGENT_CODE_INVALID_OPTION"},
        {AGENT_CODE_NOT_FOUND, "AGENT_CODE_NOT_FOUND"},
        {AGENT_CODE_WOULD_BLOCK, "AGENT_CODE_WOULD_BLOCK"},
        {AGENT_CODE_DNS, "AGENT_CODE_DNS"},
        {AGENT_CODE_CONNECT_REFUSED, "AGENT_CODE_CONNECT_REFUSED"},
        {AGENT_CODE_CONNECT_TIMEOUT, "AGENT_CODE_CONNECT_TIMEOUT"},
        {AGENT_CODE_CONNECT, "AGENT_CODE_CONNECT"},
        {AGENT_CODE_PROXY, "AGENT_CODE_PROXY"},
        {AGENT_CODE_TLS, "AGENT_CODE_TLS"},
        {AGENT_CODE_HEADERS_TIMEOUT, "AGENT_CODE_HEADERS_TIMEOUT"},
        {AGENT_CODE_BODY_TIMEOUT, "AGENT_CODE_BODY_TIMEOUT"},
        {AGENT_CODE_TIMEOUT, "AGENT_CODE_TIMEOUT"},
        {AGENT_CODE_CONNECTION_RESET, "AGENT_CODE_CONNECTION_RESET"},
        {AGENT_CODE_CONNECTION_CLOSED, "AGENT_CODE_CONNECTION_CLOSED"},
        {AGENT_CODE_BROKEN_PIPE, "AGENT_CODE_BROKEN_PIPE"},
        {AGENT_CODE_STALE_CONNECTION, "AGENT_CODE_STALE_CONNECTION"},
        {AGENT_CODE_PROTOCOL, "AGENT_CODE_PROTOCOL"},
        {AGENT_CODE_RESPONSE_TOO_LARGE, "AGENT_CODE_RESPONSE_TOO_LARGE"},
        {AGENT_CODE_BODY_SOURCE, "AGENT_CODE_BODY_SOURCE"},
        {AGENT_CODE_STREAM_RESET, "AGENT_CODE_STREAM_RESET"},
        {AGENT_CODE_CANCELLED, "AGENT_CODE_CANCELLED"},
        {AGENT_CODE_FORKED, "AGENT_CODE_FORKED"},
        {AGENT_CODE_PANIC, "AGENT_CODE_PANIC"},
        {AGENT_CODE_INTERNAL, "AGENT_CODE_INTERNAL"},
    };
    static const uint32_t unknown[] = {6, 9, 15, 48, 59, 62, 1000, 0xFFFFFFFFu};
    size_t i;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = agent_code_name(codes[i].code);
        CHECK(s != NULL);
        CHECK_MSG(strcmp(s, codes[i].name) == 0, "code %u: %s", codes[i].code, s);
        /* The deprecated name of the same function. */
        CHECK(agent_code_str(codes[i].code) == s);
    }
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        CHECK(strcmp(agent_code_name(unknown[i]), "AGENT_CODE_UNKNOWN") == 0);
    }
    /* Stable values (the header promises they are never reused). */
    CHECK_EQ(AGENT_CODE_CONNECT_REFUSED, 11);
    CHECK_EQ(AGENT_CODE_TLS, 20);
    CHECK_EQ(AGENT_CODE_CANCELLED, 50);
    CHECK_EQ(AGENT_CODE_PANIC, 60);
}

void test_version(void) {
    char composed[64];
    const char *v = agent_version();
    CHECK(v != NULL);
    CHECK_MSG(strcmp(v, KEEPALIVE_AGENT_VERSION) == 0, "library %s, header %s", v,
              KEEPALIVE_AGENT_VERSION);
    snprintf(composed, sizeof composed, "%d.%d.%d", KEEPALIVE_AGENT_VERSION_MAJOR,
             KEEPALIVE_AGENT_VERSION_MINOR, KEEPALIVE_AGENT_VERSION_PATCH);
    CHECK(strcmp(composed, KEEPALIVE_AGENT_VERSION) == 0);
}

void test_invalid_option(void) {
    agent_options *o;
    agent *a = NULL;
    static const char garbage[] = "not a certificate";

    o = agent_options_new();
    CHECK(o != NULL);
    CHECK_CODE(agent_options_set_scheduling(o, 2), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_INVALID_OPTION);
    CHECK(strstr(ts_last_error(), "scheduling") != NULL);
    CHECK_CODE(agent_options_set_scheduling(o, AGENT_SCHEDULING_FIFO), AGENT_CODE_OK);
    CHECK_CODE(agent_options_set_keep_alive_probes(o, 500), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_INVALID_OPTION);
    CHECK_CODE(agent_options_set_keep_alive_probes(o, 0), AGENT_CODE_OK);
    CHECK_CODE(agent_options_set_ca_file(o, "/nonexistent/keepalive-ca.pem"), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_INVALID_OPTION);
    CHECK(strstr(ts_last_error(), "/nonexistent/keepalive-ca.pem") != NULL);
    agent_options_free(o);

    o = agent_options_new();
    CHECK_CODE(agent_options_set_ca_pem(o, (const uint8_t *)garbage, sizeof garbage - 1),
               AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_INVALID_OPTION);
    CHECK(a == NULL);
    agent_options_free(o);

    /* Options are copied: freed before the agent is used, the agent still has the CA. */
    o = agent_options_new();
    CHECK_CODE(agent_options_set_ca_file(o, ts_srv.ca_pem_path), AGENT_CODE_OK);
    CHECK_CODE(agent_options_set_user_agent(o, "c-tests/1"), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_OK);
    agent_options_free(o);
    {
        char url[256], body[4096];
        agent_response *r = NULL;
        ts_url(url, sizeof url, "https", ts_srv.https_port, "/copied?echo=1");
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
        t_body(r, body, sizeof body);
        CHECK_MSG(strstr(body, "\"c-tests/1\"") != NULL, "user agent not sent: %s", body);
        agent_response_free(r);
    }
    agent_free(a);
}
