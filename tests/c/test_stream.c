/* Streaming bodies both ways: agent_request_stream, agent_stream_read(_async), and request
 * bodies from an agent_body_source, against the test server (which generates and discards
 * bytes). Sizes shrink under valgrind (C_TEST_TIME_SCALE > 1), where 1 GiB would take
 * minutes; the memory bounds are checked only without valgrind and ASan. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests.h"

#if defined(__SANITIZE_ADDRESS__)
#define T_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_ASAN 1
#endif
#endif
#ifndef T_ASAN
#define T_ASAN 0
#endif

#define MIB (1024ull * 1024ull)

/* Sizes of the big transfers: 1 GiB, or 64 MiB under valgrind. */
static uint64_t big_size(void) {
    return ts_time_scale() > 1 ? 64 * MIB : 1024 * MIB;
}

/* Whether RSS figures mean anything here (not under valgrind or ASan). */
static bool rss_meaningful(void) {
    return ts_time_scale() == 1 && !T_ASAN;
}

static long rss_kib(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* FNV-1a 64, as the test server's echo reports it (body_fnv). */
static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
#define FNV_START 0xcbf29ce484222325ull

/* The test server's pattern: byte i of a generated body is 'a' + i % 26. */
static bool pattern_ok(const uint8_t *p, size_t n, uint64_t offset) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] != (uint8_t)('a' + (offset + i) % 26)) return false;
    }
    return true;
}

static void stream_url(char *buf, size_t cap, const char *path_query) {
    ts_url(buf, cap, "http", ts_srv.http_port, path_query);
}

static agent_code t_stream(const agent *a, const char *method, const char *url,
                           const agent_body_source *src, agent_stream **out) {
    return agent_request_stream(a, method, url, NULL, 0, NULL, 0, src, 60000, out);
}

/* Reads a stream to its end; returns the byte count (or -1 on a failure, code in *code). */
static long long drain(agent_stream *s, agent_code *code, bool check_pattern) {
    static uint8_t buf[64 * 1024];
    unsigned long long total = 0;
    for (;;) {
        size_t n = 0;
        *code = agent_stream_read(s, buf, sizeof buf, &n);
        if (*code != AGENT_CODE_OK) return -1;
        if (n == 0) return (long long)total;
        if (check_pattern && !pattern_ok(buf, n, total)) return -2;
        total += n;
    }
}

void test_stream_download_big_in_constant_memory(void) {
    char url[256], q[64];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_response_parts head;
    agent_pool_stats st;
    agent_code code;
    uint64_t size = big_size();
    long before, after;
    long long got;
    CHECK(a != NULL);
    snprintf(q, sizeof q, "/?bytes=%llu", (unsigned long long)size);
    stream_url(url, sizeof url, q);
    before = rss_kib();
    CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
    CHECK_CODE(agent_stream_head(s, &head), AGENT_CODE_OK);
    CHECK_EQ(head.status, 200);
    CHECK(head.body == NULL && head.body_len == 0);
    CHECK(head.header_count > 0);
    got = drain(s, &code, true);
    CHECK_CODE(code, AGENT_CODE_OK);
    CHECK_EQ(got, (long long)size);
    after = rss_kib();
    CHECK_CODE(agent_stream_head(s, &head), AGENT_CODE_OK);
    CHECK(head.timings.total_us > 0);
    agent_stream_free(s);
    if (rss_meaningful()) {
        CHECK_MSG(after - before < 16 * 1024, "RSS grew by %ld KiB over a %llu MiB download",
                  after - before, (unsigned long long)(size / MIB));
    }
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, 1);
    CHECK_EQ(st.errors, 0);
    CHECK_EQ(st.idle, 1); /* read to the end: the connection went back to the pool */
    agent_free(a);
}

/* A source of `size` pattern bytes; counts its calls. */
typedef struct {
    uint64_t size, pos;
    uint64_t hash;
    int fail_at_pos; /* non-zero: return an error once pos reaches this */
    atomic_int released, rewound;
} pattern_src;

static int src_read(void *ud, uint8_t *buf, size_t cap, size_t *n) {
    pattern_src *p = ud;
    size_t k = cap, i;
    if (p->fail_at_pos && p->pos >= (uint64_t)p->fail_at_pos) return -1;
    if (p->size - p->pos < k) k = (size_t)(p->size - p->pos);
    for (i = 0; i < k; i++) buf[i] = (uint8_t)('a' + (p->pos + i) % 26);
    p->hash = fnv(p->hash, buf, k);
    p->pos += k;
    *n = k;
    return 0;
}

static int src_rewind(void *ud) {
    pattern_src *p = ud;
    p->pos = 0;
    p->hash = FNV_START;
    atomic_fetch_add(&p->rewound, 1);
    return 0;
}

static void src_release(void *ud) {
    atomic_fetch_add(&((pattern_src *)ud)->released, 1);
}

static agent_body_source make_src(pattern_src *p, uint64_t size, bool known_length, bool rewind) {
    agent_body_source s;
    memset(p, 0, sizeof *p);
    p->size = size;
    p->hash = FNV_START;
    s.read = src_read;
    s.rewind = rewind ? src_rewind : NULL;
    s.release = src_release;
    s.length = known_length ? (int64_t)size : -1;
    s.userdata = p;
    return s;
}

/* Reads a whole (small) stream body into buf as a C string. */
static agent_code slurp(agent_stream *s, char *buf, size_t cap) {
    size_t used = 0;
    for (;;) {
        size_t n = 0;
        agent_code c = agent_stream_read(s, (uint8_t *)buf + used, cap - 1 - used, &n);
        if (c != AGENT_CODE_OK) return c;
        used += n;
        if (n == 0 || used == cap - 1) break;
    }
    buf[used] = '\0';
    return AGENT_CODE_OK;
}

static void upload(bool known_length) {
    char url[256], echo[4096], want[64];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    pattern_src p;
    uint64_t size = big_size();
    agent_body_source src = make_src(&p, size, known_length, false);
    long before, after;
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/?echo=1");
    before = rss_kib();
    CHECK_CODE(t_stream(a, "PUT", url, &src, &s), AGENT_CODE_OK);
    CHECK_CODE(slurp(s, echo, sizeof echo), AGENT_CODE_OK);
    after = rss_kib();
    agent_stream_free(s);
    CHECK_EQ(p.pos, size);
    CHECK_EQ(atomic_load(&p.released), 1);
    snprintf(want, sizeof want, "\"body_len\":%llu", (unsigned long long)size);
    CHECK_MSG(strstr(echo, want) != NULL, "echo: %s", echo);
    snprintf(want, sizeof want, "\"body_fnv\":\"%016llx\"", (unsigned long long)p.hash);
    CHECK_MSG(strstr(echo, want) != NULL, "echo: %s (want %s)", echo, want);
    CHECK_MSG(strstr(echo, known_length ? "\"content-length\"" : "\"transfer-encoding\",\"chunked\"") != NULL,
              "framing: %s", echo);
    if (rss_meaningful()) {
        CHECK_MSG(after - before < 16 * 1024, "RSS grew by %ld KiB over a %llu MiB upload",
                  after - before, (unsigned long long)(size / MIB));
    }
    agent_free(a);
}

void test_stream_upload_content_length(void) { upload(true); }
void test_stream_upload_chunked(void) { upload(false); }

void test_stream_abort_closes_the_connection(void) {
    char url[256];
    uint8_t buf[4096];
    size_t n = 0;
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_response *r = NULL;
    agent_pool_stats st;
    ts_stats ss;
    CHECK(a != NULL);
    CHECK(ts_admin_reset(&ts_srv) == 0);
    stream_url(url, sizeof url, "/?bytes=50000000");
    CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
    CHECK_CODE(agent_stream_read(s, buf, sizeof buf, &n), AGENT_CODE_OK);
    CHECK(n > 0);
    agent_stream_free(s); /* before the end: abort */
    CHECK_MSG(ts_wait_open(&ts_srv, 0, 2000 * ts_time_scale()), "the connection is still open");
    /* The connection's end reaches the pool from its monitor task: wait for it (bounded). */
    for (n = 0; n < 200; n++) {
        CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
        if (st.active == 0) break;
        ts_sleep_ms(5 * ts_time_scale());
    }
    CHECK_EQ(st.requests, 1);
    CHECK_EQ(st.errors, 1);
    CHECK_EQ(st.idle, 0);
    CHECK_EQ(st.active, 0);
    CHECK_EQ(st.connections_closed, 1);
    /* The next request opens a new connection. */
    stream_url(url, sizeof url, "/after-abort");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK(!agent_response_reused(r));
    agent_response_free(r);
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 2);
    agent_free(a);
}

void test_stream_read_to_end_reuses_the_connection(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_response_parts head;
    agent_code code;
    ts_stats ss;
    int i;
    CHECK(a != NULL);
    CHECK(ts_admin_reset(&ts_srv) == 0);
    stream_url(url, sizeof url, "/?bytes=300000&chunked=1");
    for (i = 0; i < 3; i++) {
        CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
        CHECK_CODE(agent_stream_head(s, &head), AGENT_CODE_OK);
        CHECK_EQ(head.reused, i > 0);
        CHECK_EQ(drain(s, &code, true), 300000);
        agent_stream_free(s);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 1);
    agent_free(a);
}

void test_stream_slow_reader_keeps_the_window(void) {
    char url[256];
    uint8_t buf[16 * 1024];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_code code;
    uint64_t max_seen = 0;
    long long rest;
    int i;
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/?bytes=16000000");
    CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
    for (i = 0; i < 20; i++) {
        size_t n = 0;
        uint64_t b;
        CHECK_CODE(agent_stream_read(s, buf, sizeof buf, &n), AGENT_CODE_OK);
        CHECK(n > 0);
        ts_sleep_ms(10); /* the sender keeps sending; the engine must not keep reading */
        b = agent_stream_buffered(s);
        if (b > max_seen) max_seen = b;
    }
    /* hyper's read window (256 KiB) plus the piece being handed over and the head. */
    CHECK_MSG(max_seen <= 2 * 256 * 1024 + 4096, "buffered %llu bytes", (unsigned long long)max_seen);
    CHECK(max_seen > 0);
    rest = drain(s, &code, false);
    CHECK_CODE(code, AGENT_CODE_OK);
    CHECK(rest > 0);
    CHECK_EQ(agent_stream_buffered(s), 0);
    agent_stream_free(s);
    agent_free(a);
}

void test_stream_server_resets_mid_upload(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_stream *s = (agent_stream *)&s; /* must stay untouched on failure */
    agent_stream *sentinel = s;
    pattern_src p;
    agent_body_source src = make_src(&p, 64 * MIB, true, false);
    agent_code c;
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/?body_rst_after=1000000");
    c = t_stream(a, "PUT", url, &src, &s);
    CHECK_MSG(c == AGENT_CODE_CONNECTION_RESET || c == AGENT_CODE_BROKEN_PIPE ||
                  c == AGENT_CODE_CONNECTION_CLOSED,
              "got %s: %s", agent_code_name(c), ts_last_error());
    CHECK(s == sentinel);
    CHECK(p.pos < 64 * MIB);
    CHECK_EQ(atomic_load(&p.released), 1);
    agent_free(a);
}

void test_stream_source_failure_has_its_own_code(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    pattern_src p;
    agent_body_source src = make_src(&p, 10 * MIB, false, false);
    CHECK(a != NULL);
    p.fail_at_pos = 3 * 65536;
    stream_url(url, sizeof url, "/?echo=1");
    CHECK_CODE(t_stream(a, "POST", url, &src, &s), AGENT_CODE_BODY_SOURCE);
    CHECK(strstr(ts_last_error(), "read callback returned -1") != NULL);
    CHECK_EQ(atomic_load(&p.released), 1);
    /* A length the source does not deliver. */
    src = make_src(&p, 1000, false, false);
    src.length = 5000;
    CHECK_CODE(t_stream(a, "POST", url, &src, &s), AGENT_CODE_BODY_SOURCE);
    CHECK_EQ(atomic_load(&p.released), 1);
    agent_free(a);
}

void test_stream_bad_arguments_release_the_source(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    pattern_src p;
    agent_body_source src = make_src(&p, 10, true, false);
    uint8_t one = 1;
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/");
    CHECK_CODE(agent_request_stream(NULL, "PUT", url, NULL, 0, NULL, 0, &src, 0, &s),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_EQ(atomic_load(&p.released), 1);
    src = make_src(&p, 10, true, false);
    CHECK_CODE(agent_request_stream(a, "PUT", url, NULL, 0, &one, 1, &src, 0, &s),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_EQ(atomic_load(&p.released), 1);
    src = make_src(&p, 10, true, false);
    src.read = NULL;
    CHECK_CODE(agent_request_stream(a, "PUT", url, NULL, 0, NULL, 0, &src, 0, &s),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_EQ(atomic_load(&p.released), 1);
    src = make_src(&p, 10, true, false);
    CHECK_CODE(agent_request_stream(a, "PUT", "nope", NULL, 0, NULL, 0, &src, 0, &s),
               AGENT_CODE_INVALID_URL);
    CHECK_EQ(atomic_load(&p.released), 1);
    CHECK(s == NULL);
    CHECK_CODE(agent_stream_read(NULL, &one, 1, NULL), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_stream_head(NULL, NULL), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_EQ(agent_stream_buffered(NULL), 0);
    agent_stream_free(NULL);
    agent_free(a);
}

/* A reused connection the server resets: a source with rewind is replayed on a new
 * connection; one without fails with the stale code (its bytes cannot be sent again). */
void test_stream_stale_retry_needs_a_rewindable_source(void) {
    char warm[256], url[256], echo[2048];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    agent_stream *s = NULL;
    pattern_src p;
    agent_body_source src;
    CHECK(a != NULL);
    stream_url(warm, sizeof warm, "/warm");
    stream_url(url, sizeof url, "/?echo=1&rst_if_reused=1");

    CHECK_CODE(t_get(a, warm, &r), AGENT_CODE_OK);
    agent_response_free(r);
    src = make_src(&p, 100000, true, true);
    CHECK_CODE(t_stream(a, "PUT", url, &src, &s), AGENT_CODE_OK);
    CHECK_CODE(slurp(s, echo, sizeof echo), AGENT_CODE_OK);
    CHECK(strstr(echo, "\"body_len\":100000") != NULL);
    CHECK_EQ(atomic_load(&p.rewound), 1);
    agent_stream_free(s);
    CHECK_EQ(atomic_load(&p.released), 1);

    CHECK_CODE(t_get(a, warm, &r), AGENT_CODE_OK);
    agent_response_free(r);
    src = make_src(&p, 100000, true, false);
    CHECK_CODE(t_stream(a, "PUT", url, &src, &s), AGENT_CODE_STALE_CONNECTION);
    CHECK(strstr(ts_last_error(), "cannot be rewound") != NULL);
    CHECK_EQ(atomic_load(&p.released), 1);
    agent_free(a);
}

/* Async: the head through a callback, the body through read_async callbacks. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    agent_stream *stream;
    agent_code code;
    unsigned long long total;
    int reads;
    bool done, pattern_bad;
    int stop_after; /* free the stream after this many reads (0 = read to the end) */
} async_state;

static void on_data(void *ud, agent_code code, const uint8_t *data, size_t len);

static void finish(async_state *st, agent_code code) {
    pthread_mutex_lock(&st->mu);
    st->code = code;
    st->done = true;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void on_data(void *ud, agent_code code, const uint8_t *data, size_t len) {
    async_state *st = ud;
    if (code != AGENT_CODE_OK || len == 0) {
        finish(st, code);
        return;
    }
    if (!pattern_ok(data, len, st->total)) st->pattern_bad = true;
    st->total += len;
    st->reads++;
    if (st->stop_after && st->reads == st->stop_after) {
        /* Start one more read, then free the stream under it: it completes cancelled. */
        agent_code c = agent_stream_read_async(st->stream, on_data, st);
        agent_stream_free(st->stream);
        st->stream = NULL;
        if (c != AGENT_CODE_OK) finish(st, c);
        return;
    }
    code = agent_stream_read_async(st->stream, on_data, st);
    if (code != AGENT_CODE_OK) finish(st, code);
}

static void on_head(void *ud, agent_code code, agent_stream *stream) {
    async_state *st = ud;
    if (code != AGENT_CODE_OK) {
        finish(st, code);
        return;
    }
    st->stream = stream;
    code = agent_stream_read_async(stream, on_data, st);
    if (code != AGENT_CODE_OK) finish(st, code);
}

static agent_code run_async(agent *a, const char *url, async_state *st) {
    agent_code c;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    c = agent_request_stream_async(a, "GET", url, NULL, 0, NULL, 0, NULL, 60000, on_head, st, NULL);
    if (c != AGENT_CODE_OK) return c;
    pthread_mutex_lock(&st->mu);
    while (!st->done) pthread_cond_wait(&st->cv, &st->mu);
    pthread_mutex_unlock(&st->mu);
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    return st->code;
}

void test_stream_async_reads(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    async_state st;
    agent_pool_stats ps;
    CHECK(a != NULL);
    memset(&st, 0, sizeof st);
    stream_url(url, sizeof url, "/?bytes=20000000");
    CHECK_CODE(run_async(a, url, &st), AGENT_CODE_OK);
    CHECK_EQ(st.total, 20000000);
    CHECK(!st.pattern_bad);
    CHECK(st.reads > 1);
    agent_stream_free(st.stream);
    CHECK_CODE(agent_stats(a, &ps), AGENT_CODE_OK);
    CHECK_EQ(ps.idle, 1);
    CHECK_EQ(ps.errors, 0);

    memset(&st, 0, sizeof st);
    st.stop_after = 3;
    CHECK_CODE(run_async(a, url, &st), AGENT_CODE_CANCELLED);
    CHECK_EQ(st.reads, 3);
    CHECK_CODE(agent_stats(a, &ps), AGENT_CODE_OK);
    CHECK_EQ(ps.errors, 1);
    CHECK_EQ(ps.requests, 2);
    agent_free(a);
}

/* agent_stream_next hands out the library's own pieces; mixing it with agent_stream_read
 * keeps the byte order (a read's left-over comes first). */
void test_stream_next_without_copy(void) {
    char url[256];
    uint8_t small[1000];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    const uint8_t *p = NULL;
    size_t n = 0;
    unsigned long long total = 0;
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/?bytes=5000000");
    CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
    CHECK_CODE(agent_stream_read(s, small, sizeof small, &n), AGENT_CODE_OK);
    CHECK(n > 0 && pattern_ok(small, n, 0));
    total += n;
    for (;;) {
        CHECK_CODE(agent_stream_next(s, &p, &n), AGENT_CODE_OK);
        if (n == 0) break;
        CHECK(p != NULL);
        CHECK_MSG(pattern_ok(p, n, total), "at %llu", total);
        total += n;
    }
    CHECK_EQ(total, 5000000);
    CHECK_CODE(agent_stream_next(s, &p, &n), AGENT_CODE_OK); /* after the end: stays 0 */
    CHECK_EQ(n, 0);
    CHECK_CODE(agent_stream_next(s, NULL, &n), AGENT_CODE_INVALID_ARGUMENT);
    agent_stream_free(s);
    agent_free(a);
}

/* Freeing a stream whose async read waits for a slow server ends that read at once: the
 * callback gets AGENT_CODE_CANCELLED and the connection is closed, without waiting for the
 * next piece. */
typedef struct {
    atomic_int calls;
    atomic_int code;
    double at;
} wait_read;

static void on_waiting_data(void *ud, agent_code code, const uint8_t *data, size_t len) {
    wait_read *w = ud;
    (void)data;
    (void)len;
    w->at = ts_now_ms();
    atomic_store(&w->code, (int)code);
    atomic_fetch_add(&w->calls, 1);
}

void test_stream_free_ends_a_waiting_async_read(void) {
    char url[256];
    uint8_t buf[4096];
    size_t n = 0;
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_pool_stats st;
    wait_read w;
    double freed_at;
    int i;
    CHECK(a != NULL);
    memset(&w, 0, sizeof w);
    stream_url(url, sizeof url, "/?bytes=3000&chunked=1&chunks=3&chunk_delay_ms=10000");
    CHECK_CODE(t_stream(a, "GET", url, NULL, &s), AGENT_CODE_OK);
    CHECK_CODE(agent_stream_read(s, buf, sizeof buf, &n), AGENT_CODE_OK);
    CHECK(n > 0);
    CHECK_CODE(agent_stream_read_async(s, on_waiting_data, &w), AGENT_CODE_OK);
    ts_sleep_ms(100);
    CHECK_EQ(atomic_load(&w.calls), 0);
    freed_at = ts_now_ms();
    agent_stream_free(s);
    for (i = 0; i < 400 && atomic_load(&w.calls) == 0; i++) ts_sleep_ms(5);
    CHECK_EQ(atomic_load(&w.calls), 1);
    CHECK_EQ(atomic_load(&w.code), AGENT_CODE_CANCELLED);
    CHECK_MSG(w.at - freed_at < 1000.0 * ts_time_scale(), "the read ended %.0f ms after the free",
              w.at - freed_at);
    for (i = 0; i < 200; i++) {
        CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
        if (st.active == 0) break;
        ts_sleep_ms(5);
    }
    CHECK_EQ(st.active, 0);
    CHECK_EQ(st.errors, 1);
    agent_free(a);
}

/* An empty POST/PUT body says Content-Length: 0, whether bytes or an empty source. */
void test_stream_empty_bodies_have_a_length(void) {
    char url[256], echo[2048];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    agent_response *r = NULL;
    pattern_src p;
    agent_body_source src = make_src(&p, 0, true, false);
    CHECK(a != NULL);
    stream_url(url, sizeof url, "/?echo=1");
    CHECK_CODE(agent_request(a, "POST", url, NULL, 0, NULL, 0, 10000, &r), AGENT_CODE_OK);
    t_body(r, echo, sizeof echo);
    agent_response_free(r);
    CHECK_MSG(strstr(echo, "[\"content-length\",\"0\"]") != NULL, "%s", echo);
    CHECK_CODE(t_stream(a, "PUT", url, &src, &s), AGENT_CODE_OK);
    CHECK_CODE(slurp(s, echo, sizeof echo), AGENT_CODE_OK);
    agent_stream_free(s);
    CHECK_MSG(strstr(echo, "[\"content-length\",\"0\"]") != NULL, "%s", echo);
    CHECK(strstr(echo, "\"body_len\":0") != NULL);
    agent_free(a);
}

/* A source that has nothing yet: the first read takes a waker and returns
 * AGENT_SOURCE_PENDING; a feeder thread later makes `size` bytes available and wakes it. */
typedef struct {
    pthread_mutex_t mu;
    uint64_t size, pos, available;
    bool ended;
    agent_body_waker *waker;
    int pendings;
} pending_src;

static int pend_read(void *ud, uint8_t *buf, size_t cap, size_t *n) {
    pending_src *p = ud;
    size_t k, i;
    pthread_mutex_lock(&p->mu);
    if (p->pos == p->available && !p->ended) {
        /* Asked again before being woken (a spurious poll): keep only the newest waker. */
        agent_body_waker_free(p->waker);
        p->waker = agent_body_source_waker();
        p->pendings++;
        pthread_mutex_unlock(&p->mu);
        return p->waker ? AGENT_SOURCE_PENDING : -1;
    }
    k = (size_t)(p->available - p->pos) < cap ? (size_t)(p->available - p->pos) : cap;
    for (i = 0; i < k; i++) buf[i] = (uint8_t)('a' + (p->pos + i) % 26);
    p->pos += k;
    *n = k;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static void pend_feed(pending_src *p) { /* everything arrives at once, then the end */
    agent_body_waker *w;
    pthread_mutex_lock(&p->mu);
    p->available = p->size;
    p->ended = true;
    w = p->waker;
    p->waker = NULL;
    pthread_mutex_unlock(&p->mu);
    agent_body_waker_wake(w);
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    agent_code codes[8];
    char echo[8][1024];
    agent_stream *streams[8];
    double got_at;
} uploads_state;

typedef struct {
    uploads_state *st;
    int i;
} upload_slot;

static void on_upload_head(void *ud, agent_code code, agent_stream *s) {
    upload_slot *u = ud;
    uploads_state *st = u->st;
    pthread_mutex_lock(&st->mu);
    st->codes[u->i] = code;
    st->streams[u->i] = s;
    st->done++;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void on_get(void *ud, agent_code code, agent_response *r) {
    uploads_state *st = ud;
    (void)code;
    agent_response_free(r);
    pthread_mutex_lock(&st->mu);
    st->got_at = ts_now_ms();
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

/* Three async uploads waiting for their sources hold no library thread: an async GET meanwhile
 * completes at once (with 2 library threads), and the uploads finish when fed. */
void test_stream_pending_sources_hold_no_thread(void) {
    enum { N = 3 };
    char url[256], get_url[256];
    agent *a = agent_new(true, 1000);
    agent *b = agent_new(true, 1000);
    pending_src src_state[N];
    agent_body_source src[N];
    upload_slot slots[N];
    uploads_state st;
    double t0;
    int i;
    CHECK(a != NULL && b != NULL);
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.mu, NULL);
    pthread_cond_init(&st.cv, NULL);
    stream_url(url, sizeof url, "/?echo=1");
    stream_url(get_url, sizeof get_url, "/get");
    for (i = 0; i < N; i++) {
        memset(&src_state[i], 0, sizeof src_state[i]);
        pthread_mutex_init(&src_state[i].mu, NULL);
        src_state[i].size = 100000;
        src[i].read = pend_read;
        src[i].rewind = NULL;
        src[i].release = NULL;
        src[i].length = -1;
        src[i].userdata = &src_state[i];
        slots[i].st = &st;
        slots[i].i = i;
        CHECK_CODE(agent_request_stream_async(a, "PUT", url, NULL, 0, NULL, 0, &src[i], 30000,
                                              on_upload_head, &slots[i], NULL),
                   AGENT_CODE_OK);
    }
    /* Wait until every source has said "pending". */
    for (i = 0; i < 400; i++) {
        int k, all = 1;
        for (k = 0; k < N; k++) {
            pthread_mutex_lock(&src_state[k].mu);
            if (src_state[k].waker == NULL) all = 0;
            pthread_mutex_unlock(&src_state[k].mu);
        }
        if (all) break;
        ts_sleep_ms(5);
    }
    t0 = ts_now_ms();
    CHECK_CODE(agent_request_async(b, "GET", get_url, NULL, 0, NULL, 0, 10000, on_get, &st, NULL),
               AGENT_CODE_OK);
    pthread_mutex_lock(&st.mu);
    while (st.got_at == 0) pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);
    CHECK_MSG(st.got_at - t0 < 1000.0 * ts_time_scale(), "a GET took %.0f ms beside pending uploads",
              st.got_at - t0);
    for (i = 0; i < N; i++) pend_feed(&src_state[i]);
    pthread_mutex_lock(&st.mu);
    while (st.done < N) pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);
    for (i = 0; i < N; i++) {
        CHECK_CODE(st.codes[i], AGENT_CODE_OK);
        CHECK_CODE(slurp(st.streams[i], st.echo[i], sizeof st.echo[i]), AGENT_CODE_OK);
        agent_stream_free(st.streams[i]);
        CHECK_MSG(strstr(st.echo[i], "\"body_len\":100000") != NULL, "%s", st.echo[i]);
        CHECK(src_state[i].pendings >= 1);
        pthread_mutex_destroy(&src_state[i].mu);
    }
    pthread_mutex_destroy(&st.mu);
    pthread_cond_destroy(&st.cv);
    agent_free(a);
    agent_free(b);
}

static void *feed_later(void *arg) {
    ts_sleep_ms(50);
    pend_feed(arg);
    return NULL;
}

/* The blocking call waits for a pending source on its own thread, then sends the body. A
 * source that says "pending" without a waker fails the request clearly. */
void test_stream_pending_source_in_a_blocking_call(void) {
    char url[256], echo[1024];
    agent *a = agent_new(true, 1000);
    agent_stream *s = NULL;
    pending_src p;
    agent_body_source src = {pend_read, NULL, NULL, -1, &p};
    pthread_t th;
    CHECK(a != NULL);
    memset(&p, 0, sizeof p);
    pthread_mutex_init(&p.mu, NULL);
    p.size = 70000;
    stream_url(url, sizeof url, "/?echo=1");
    CHECK(pthread_create(&th, NULL, feed_later, &p) == 0);
    CHECK_CODE(t_stream(a, "PUT", url, &src, &s), AGENT_CODE_OK);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_CODE(slurp(s, echo, sizeof echo), AGENT_CODE_OK);
    agent_stream_free(s);
    CHECK_MSG(strstr(echo, "\"body_len\":70000") != NULL, "%s", echo);
    CHECK(p.pendings >= 1);
    CHECK(agent_body_source_waker() == NULL); /* outside a read callback */
    agent_body_waker_wake(NULL);
    agent_body_waker_free(NULL);
    pthread_mutex_destroy(&p.mu);
    agent_free(a);
}
