/*
 * soak.c: many requests through the C API (blocking, plus some async and some failing),
 * sampling the resident set size; fails if RSS after warm-up grows more than 10 %.
 *
 *   soak REQUESTS SAMPLE_EVERY        (KEEPALIVE_TESTSERVER: path of the test server)
 *
 * The baseline is the first sample taken after a quarter of the requests; the drift is the
 * largest later sample against it. The mix
 * per 100 requests: GETs of 13 bytes, POSTs with a 1 KiB body echoed back, 64 KiB bodies,
 * custom headers, header lookups, one async request, one request to a refusing port
 * (error path), one response with Connection: close (connection churn). One line per
 * sample, then one summary line:
 *   SOAK | C | <requests> | <failures> | <rss warm KiB> | <rss max KiB> | <rss end KiB> | <drift %> | <req/s> |
 * Uses the C tests' harness (tests/c/harness.c) to run the test server.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "keepalive_agent.h"

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    agent_code code;
};

static void on_done(void *ud, agent_code code, agent_response *r) {
    struct waiter *w = ud;
    agent_response_free(r);
    pthread_mutex_lock(&w->mu);
    w->done++;
    w->code = code;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* One request of the mix; returns 0 when it gave what was expected. */
static int one(agent *a, long i, const char *base, const char *refused, char *body, struct waiter *w) {
    char url[256];
    agent_response *r = NULL;
    agent_code c;
    long kind = i % 100;
    if (kind == 7) { /* error path: connection refused */
        c = agent_request(a, "GET", refused, NULL, 0, NULL, 0, 2000, &r);
        return c == AGENT_CODE_CONNECT_REFUSED ? 0 : 1;
    }
    if (kind == 13) { /* async */
        snprintf(url, sizeof url, "%s?bytes=100", base);
        pthread_mutex_lock(&w->mu);
        w->done = 0;
        pthread_mutex_unlock(&w->mu);
        if (agent_request_async(a, "GET", url, NULL, 0, NULL, 0, 5000, on_done, w, NULL) != AGENT_CODE_OK)
            return 1;
        pthread_mutex_lock(&w->mu);
        while (!w->done) pthread_cond_wait(&w->cv, &w->mu);
        c = w->code;
        pthread_mutex_unlock(&w->mu);
        return c == AGENT_CODE_OK ? 0 : 1;
    }
    agent_header h[2] = {{"X-Soak", "1"}, {"Accept", "*/*"}};
    size_t want = 13;
    if (kind % 10 == 0) {
        snprintf(url, sizeof url, "%s?echo=1", base);
        c = agent_request(a, "POST", url, h, 2, (const uint8_t *)body, 1024, 5000, &r);
        want = 0; /* JSON of varying size */
    } else if (kind == 3) {
        snprintf(url, sizeof url, "%s?bytes=65536", base);
        c = agent_request(a, "GET", url, h, 1, NULL, 0, 5000, &r);
        want = 65536;
    } else if (kind == 5) {
        snprintf(url, sizeof url, "%s?close=1", base);
        c = agent_request(a, "GET", url, NULL, 0, NULL, 0, 5000, &r);
    } else {
        c = agent_request(a, "GET", base, h, 2, NULL, 0, 5000, &r);
    }
    if (c != AGENT_CODE_OK) return 1;
    int bad = agent_response_status(r) != 200;
    const uint8_t *b;
    size_t len;
    const char *v;
    size_t vlen;
    bad |= agent_response_body(r, &b, &len) != AGENT_CODE_OK;
    if (want) bad |= len != want;
    bad |= agent_response_header(r, "x-conn-id", &v, &vlen) != AGENT_CODE_OK;
    agent_response_free(r);
    return bad;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    long every = argc > 2 ? atol(argv[2]) : 10000;
    if (n <= 0 || every <= 0) {
        fprintf(stderr, "usage: soak REQUESTS SAMPLE_EVERY\n");
        return 2;
    }
    long warm_until = n / 4 < every ? every : n / 4;
    if (ts_server_start(&ts_srv) != 0) {
        fprintf(stderr, "soak: cannot start the test server\n");
        return 2;
    }
    char base[128], refused[128];
    ts_url(base, sizeof base, "http", ts_srv.http_port, "/");
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", ts_refusing_port());
    char body[1024];
    memset(body, 'x', sizeof body);
    struct waiter w;
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);

    agent *a = agent_new(true, 1000);
    if (!a) {
        fprintf(stderr, "soak: agent_new failed: %s\n", ts_last_error());
        return 2;
    }
    long failures = 0, expected_errors = 0, warm = -1, peak = 0, end = 0;
    double t0 = ts_now_ms();
    for (long i = 0; i < n; i++) {
        if (i % 100 == 7) expected_errors++;
        if (one(a, i, base, refused, body, &w)) {
            if (failures < 5) fprintf(stderr, "soak: request %ld failed: %s\n", i, ts_last_error());
            failures++;
        }
        if ((i + 1) % every == 0) {
            long rss = rss_kib();
            printf("sample | C | %ld requests | rss %ld KiB\n", i + 1, rss);
            fflush(stdout);
            if (warm < 0) {
                if (i + 1 >= warm_until) warm = rss; /* the first sample after warm-up */
            } else if (rss > peak) {
                peak = rss;
            }
            end = rss;
        }
    }
    double secs = (ts_now_ms() - t0) / 1000.0;
    agent_pool_stats st;
    int stats_ok = agent_stats(a, &st) == AGENT_CODE_OK && st.requests == (uint64_t)n &&
                   st.errors == (uint64_t)(failures + expected_errors);
    if (!stats_ok)
        fprintf(stderr, "soak: stats requests %llu errors %llu, want %ld and %ld\n",
                (unsigned long long)st.requests, (unsigned long long)st.errors, n,
                failures + expected_errors);
    agent_free(a);
    ts_server_stop(&ts_srv);
    if (peak == 0) peak = end;
    double drift = warm > 0 ? 100.0 * (double)(peak - warm) / (double)warm : 0.0;
    printf("SOAK | C | %ld | %ld | %ld | %ld | %ld | %+.1f%% | %.0f |\n", n, failures, warm, peak, end,
           drift, (double)n / secs);
    fflush(stdout);
    int ok = failures == 0 && stats_ok && warm > 0 && peak <= warm + warm / 10;
    if (!ok) fprintf(stderr, "soak: FAILED (failures %ld, RSS warm %ld KiB, max after warm-up %ld KiB)\n",
                     failures, warm, peak);
    return ok ? 0 : 1;
}
