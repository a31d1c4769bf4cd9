/*
 * HTTP/2 from C against the test server's h2c (prior knowledge) and h2 (TLS, ALPN)
 * listeners: many threads over one connection, a 1 GiB streamed body in constant memory
 * with its trailers, a reset stream's own code while the connection goes on, the event
 * queue over HTTP/2, and the queue's own connection when its agent or the queue itself is
 * freed with requests in flight. Run plainly, under valgrind and under ASan/UBSan like the
 * whole suite.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests.h"

#if defined(__SANITIZE_ADDRESS__)
#define H2_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define H2_ASAN 1
#endif
#endif
#ifndef H2_ASAN
#define H2_ASAN 0
#endif

#define MIB (1024ull * 1024ull)

static agent *h2_agent(uint32_t version, bool with_ca) {
    agent_options *o = agent_options_new();
    agent *a = NULL;
    if (o == NULL) return NULL;
    if (agent_options_set_http_version(o, version) != AGENT_CODE_OK ||
        (with_ca && agent_options_set_ca_file(o, ts_srv.ca_pem_path) != AGENT_CODE_OK) ||
        agent_new_with_options(o, &a) != AGENT_CODE_OK) {
        a = NULL;
    }
    agent_options_free(o);
    return a;
}

typedef struct {
    agent *a;
    char url[256];
    int ok;
} job;

static void *worker(void *arg) {
    job *j = arg;
    int i, n = ts_time_scale() > 1 ? 5 : 25;
    for (i = 0; i < n; i++) {
        agent_response *r = NULL;
        if (t_get(j->a, j->url, &r) != AGENT_CODE_OK) continue;
        if (agent_response_status(r) == 200 && agent_response_version(r) == 20) j->ok++;
        agent_response_free(r);
    }
    return NULL;
}

void test_h2_one_connection_for_many_threads(void) {
    enum { THREADS = 16 };
    agent *a = h2_agent(AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, false);
    agent *tls = h2_agent(AGENT_HTTP_VERSION_AUTO, true);
    pthread_t th[THREADS];
    job jobs[THREADS];
    ts_stats before, after;
    agent_pool_stats st;
    int i, ok = 0, want = THREADS * (ts_time_scale() > 1 ? 5 : 25);
    CHECK(a != NULL && tls != NULL);
    CHECK(ts_admin_stats(&ts_srv, &before) == 0);
    for (i = 0; i < THREADS; i++) {
        jobs[i].a = i % 2 ? a : tls;
        jobs[i].ok = 0;
        ts_url(jobs[i].url, sizeof jobs[i].url, i % 2 ? "http" : "https",
               i % 2 ? ts_srv.h2c_port : ts_srv.h2_port, "/?echo=1");
        CHECK(pthread_create(&th[i], NULL, worker, &jobs[i]) == 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ok += jobs[i].ok;
    }
    CHECK(ts_admin_stats(&ts_srv, &after) == 0);
    CHECK_EQ(ok, want);
    /* One connection per agent: h2c and h2 over TLS. */
    CHECK_EQ(after.accepted - before.accepted, 2);
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.h2_connections, 1);
    CHECK_EQ(st.h2_streams, (uint64_t)want / 2);
    agent_free(a);
    agent_free(tls);
}

static long rss_kib(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

void test_h2_big_stream_in_constant_memory_with_trailers(void) {
    static uint8_t buf[64 * 1024];
    uint64_t size = ts_time_scale() > 1 ? 64 * MIB : 1024 * MIB, total = 0;
    agent *a = h2_agent(AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, false);
    agent_stream *s = NULL;
    agent_response_parts head;
    char url[256], q[96];
    const char *v = NULL;
    size_t vlen = 0;
    long before, after;
    bool pattern = true;
    CHECK(a != NULL);
    snprintf(q, sizeof q, "/?bytes=%llu&trailers=1", (unsigned long long)size);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, q);
    before = rss_kib();
    CHECK_CODE(agent_request_stream(a, "GET", url, NULL, 0, NULL, 0, NULL, 120000, &s),
               AGENT_CODE_OK);
    CHECK_CODE(agent_stream_head(s, &head), AGENT_CODE_OK);
    CHECK_EQ(head.status, 200);
    CHECK_EQ(head.version, 20);
    /* Trailers come after the body. */
    CHECK_CODE(agent_stream_trailer(s, "x-checksum", &v, &vlen), AGENT_CODE_NOT_FOUND);
    for (;;) {
        size_t n = 0, i;
        agent_code c = agent_stream_read(s, buf, sizeof buf, &n);
        CHECK_CODE(c, AGENT_CODE_OK);
        if (n == 0) break;
        for (i = 0; i < n && pattern; i += 4093) {
            pattern = buf[i] == (uint8_t)('a' + (total + i) % 26);
        }
        total += n;
    }
    after = rss_kib();
    CHECK(pattern);
    CHECK_EQ(total, size);
    CHECK_CODE(agent_stream_trailer(s, "x-checksum", &v, &vlen), AGENT_CODE_OK);
    CHECK_EQ(vlen, 16);
    {
        /* The trailer block enumerated, as bindings read it. */
        const char *name = NULL, *value = NULL;
        size_t nlen = 0, i, count = agent_stream_trailer_count(s);
        bool found = false;
        CHECK(count >= 1);
        for (i = 0; i < count; i++) {
            CHECK_CODE(agent_stream_trailer_at(s, i, &name, &nlen, &value, &vlen), AGENT_CODE_OK);
            if (nlen == 10 && memcmp(name, "x-checksum", 10) == 0 && vlen == 16) found = true;
        }
        CHECK(found);
        CHECK_CODE(agent_stream_trailer_at(s, count, &name, &nlen, &value, &vlen),
                   AGENT_CODE_NOT_FOUND);
        CHECK_CODE(agent_stream_trailer_at(s, 0, NULL, &nlen, &value, &vlen),
                   AGENT_CODE_INVALID_ARGUMENT);
    }
    if (ts_time_scale() == 1 && !H2_ASAN) {
        CHECK_MSG(after - before < 32 * 1024, "RSS grew by %ld KiB over a %llu MiB HTTP/2 stream",
                  after - before, (unsigned long long)(size / MIB));
    }
    agent_stream_free(s);
    {
        /* A whole response keeps its trailers too. */
        agent_response *r = NULL;
        const char *name = NULL, *value = NULL;
        size_t nlen = 0;
        ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/?bytes=100&trailers=1");
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
        CHECK_EQ(agent_response_trailer_count(r), 1);
        CHECK_CODE(agent_response_trailer_at(r, 0, &name, &nlen, &value, &vlen), AGENT_CODE_OK);
        CHECK(nlen == 10 && memcmp(name, "x-checksum", 10) == 0);
        CHECK_EQ(vlen, 16);
        CHECK_CODE(agent_response_trailer_at(r, 1, &name, &nlen, &value, &vlen),
                   AGENT_CODE_NOT_FOUND);
        agent_response_free(r);
        CHECK_EQ(agent_response_trailer_count(NULL), 0);
    }
    agent_free(a);
}

void test_h2_reset_stream_and_queue(void) {
    agent *a = h2_agent(AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, false);
    agent_queue *q = NULL;
    agent_response *r = NULL;
    agent_event ev[8];
    char url[256], msg[512];
    size_t got = 0, n = 0;
    int i, ok = 0;
    double until;
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/?rst=cancel");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_STREAM_RESET);
    agent_last_error(msg, sizeof msg);
    CHECK_MSG(strstr(msg, "CANCEL") != NULL, "message: %s", msg);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_reused(r), true); /* the same connection went on */
    agent_response_free(r);
    /* The event queue over HTTP/2: 8 requests at once, one event each. */
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    for (i = 0; i < 8; i++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 10000, (uint64_t)i, NULL),
                   AGENT_CODE_OK);
    }
    until = ts_now_ms() + 10000 * ts_time_scale();
    while (got < 8 && ts_now_ms() < until) {
        CHECK_CODE(agent_queue_drain(q, ev, 8, 100, &n), AGENT_CODE_OK);
        for (i = 0; i < (int)n; i++) {
            if (ev[i].code == AGENT_CODE_OK && agent_response_version(ev[i].response) == 20) ok++;
            agent_response_free(ev[i].response);
        }
        got += n;
    }
    CHECK_EQ(got, 8);
    CHECK_EQ(ok, 8);
    agent_queue_free(q);
    agent_free(a);
}

/* One drain of `q` (waiting up to `ms`): each event's token counted once in seen[], the OK
 * ones over HTTP/2 in *ok. Returns the events received (a failed drain fails the test and
 * counts none). */
static size_t pump_h2(agent_queue *q, int ms, int *seen, size_t nseen, int *ok) {
    agent_event ev[16];
    size_t n = 0, i;
    agent_code code = agent_queue_drain(q, ev, 16, (uint32_t)ms, &n);
    if (code != AGENT_CODE_OK) {
        ts_fail(__FILE__, __LINE__, "agent_queue_drain: %s (%s)", agent_code_name(code),
                ts_last_error());
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (ev[i].token < nseen) seen[ev[i].token]++;
        if (ev[i].code == AGENT_CODE_OK) {
            if (agent_response_version(ev[i].response) == 20) (*ok)++;
            agent_response_free(ev[i].response);
        }
    }
    return n;
}

/* Drains `q` until `want` events came (or 10 s, scaled). */
static size_t drain_h2(agent_queue *q, size_t want, int *seen, size_t nseen, int *ok) {
    size_t got = 0;
    double until = ts_now_ms() + 10000 * ts_time_scale();
    while (got < want && ts_now_ms() < until) got += pump_h2(q, 50, seen, nseen, ok);
    return got;
}

void test_h2_queue_connection_outlives_its_agent_and_its_queue(void) {
    enum { N = 16 };
    agent *a = h2_agent(AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, false);
    agent_queue *q = NULL;
    char url[256];
    int seen[N], ok = 0, i;
    size_t got;
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/?delay_ms=300");
    /* The agent freed while its requests are in flight on the queue's own connection:
     * each still gets exactly one event (done, or cancelled), then the queue goes. */
    memset(seen, 0, sizeof seen);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    for (i = 0; i < N; i++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 10000, (uint64_t)i, NULL),
                   AGENT_CODE_OK);
    }
    got = pump_h2(q, 20, seen, N, &ok); /* sends them */
    agent_free(a);
    got += drain_h2(q, N - got, seen, N, &ok);
    CHECK_EQ(got, (size_t)N);
    for (i = 0; i < N; i++) CHECK_EQ(seen[i], 1);
    CHECK_EQ(agent_queue_pending(q), 0);
    agent_queue_free(q);
    CHECK(ts_wait_open(&ts_srv, 0, (int)(10000 * ts_time_scale())));
    /* The queue freed with requests in flight: they are dropped (no event, nobody is left
     * to drain), the connection moves to the library's threads, which close it; the agent
     * is freed after. */
    a = h2_agent(AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, false);
    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    ok = 0;
    memset(seen, 0, sizeof seen);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/");
    for (i = 0; i < 4; i++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 10000, (uint64_t)i, NULL),
                   AGENT_CODE_OK);
    }
    CHECK_EQ(drain_h2(q, 4, seen, N, &ok), (size_t)4);
    CHECK_EQ(ok, 4);
    ts_url(url, sizeof url, "http", ts_srv.h2c_port, "/?delay_ms=2000");
    for (i = 4; i < 8; i++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 10000, (uint64_t)i, NULL),
                   AGENT_CODE_OK);
    }
    CHECK_EQ(pump_h2(q, 20, seen, N, &ok), (size_t)0);
    agent_queue_free(q);
    CHECK(ts_wait_open(&ts_srv, 0, (int)(10000 * ts_time_scale())));
    agent_free(a);
}
