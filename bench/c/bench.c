/*
 * The C side of `make bench`: this library against libcurl, driven by bench/run.py.
 *
 * Server mode (no arguments): reads one command per line on stdin, answers one JSON line each.
 *
 *   versions
 *   run <client> <concurrency> <keep_alive 0|1> <seconds> <warmup_seconds> <max_requests>
 *       <expect_len> <url> <ca_file>
 *   quit
 *
 *   client "ours":  concurrency 1 -> the blocking agent_request loop;
 *                   concurrency N -> agent_request_async, N requests in flight, the completion
 *                   callback starting the next one.
 *   client "curl":  concurrency 1 -> one easy handle reused (curl_easy_perform loop);
 *                   concurrency N -> the multi interface with N easy handles.
 *
 *   keep_alive 0 sends `Connection: close` on a fresh connection for every request (ours:
 *   keep_alive=false; curl: CURLOPT_FRESH_CONNECT + CURLOPT_FORBID_REUSE + the same header).
 *   Every client verifies TLS with <ca_file> ("-" for none).
 *
 *   A cell runs <warmup_seconds> unmeasured on the same client (connections opened then are
 *   reused by the measured part), then until <seconds> have passed or <max_requests> requests
 *   were started, whichever comes first. Answer:
 *   {"requests":N,"total_requests":N,"errors":N,"seconds":S,"p50_ms":X,"p99_ms":X,
 *    "cpu_s":S,"bytes":N,"error":"first error message"}
 *   cpu_s is getrusage(RUSAGE_SELF) user+system over the measured part: every thread, the
 *   library's runtime threads included.
 *
 * Memory mode: bench mem <client> <n> <url> <ca_file>
 *   Opens n connections at once (n requests in flight), lets them go idle in the pool, and
 *   prints {"rss_before_kib":..,"rss_after_kib":..,"threads_before":..,"threads_after":..,
 *   "idle":..,"errors":..} after malloc_trim(0). One warm-up request runs before the baseline,
 *   so TLS set-up and runtime start are not counted as per-connection cost.
 */
#define _GNU_SOURCE

#include <curl/curl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "keepalive_agent.h"

#define TIMEOUT_MS 30000u
#define MAX_CONC 4096

/* ----------------------------------------------------------------------------------------- */
/* Measurement */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

typedef struct {
    /* settings */
    const char *url;
    const char *ca_file; /* NULL: none */
    bool keep_alive;
    int conc;
    long max_requests;
    size_t expect_len;
    /* state of the current phase */
    bool record;
    double deadline;
    long started;
    long done;
    long errors;
    long total; /* warm-up + measured, every request started */
    double *lat; /* seconds, `done` entries while recording */
    uint64_t bytes;
    char error[512];
} cell;

static void note_error(cell *c, const char *fmt, const char *a, const char *b) {
    c->errors++;
    if (c->error[0] == '\0') {
        snprintf(c->error, sizeof c->error, fmt, a, b);
    }
}

/* Whether another request may start now (caller holds whatever lock protects `c`). */
static bool may_start(cell *c) {
    return c->started < c->max_requests && now_s() < c->deadline;
}

static void record(cell *c, double latency, size_t len) {
    if (c->record) {
        c->lat[c->done] = latency;
        c->bytes += len;
    }
    c->done++;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double *v, long n, double p) {
    if (n <= 0) {
        return 0;
    }
    long i = (long)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') {
            putchar('\\');
            putchar(*s);
        } else if ((unsigned char)*s < 0x20) {
            printf("\\u%04x", *s);
        } else {
            putchar(*s);
        }
    }
    putchar('"');
}

/* ----------------------------------------------------------------------------------------- */
/* This library */

static char *last_error(void) {
    static __thread char buf[256];
    agent_last_error(buf, sizeof buf);
    return buf;
}

static agent *ours_agent(const cell *c, uint32_t max_free, uint32_t idle_ms) {
    agent_options *o = agent_options_new();
    agent *a = NULL;
    agent_options_set_keep_alive(o, c->keep_alive);
    if (c->ca_file) {
        agent_options_set_ca_file(o, c->ca_file);
    }
    if (max_free) {
        agent_options_set_max_free_sockets(o, max_free);
    }
    if (idle_ms) {
        agent_options_set_free_socket_timeout_msecs(o, idle_ms);
    }
    if (agent_new_with_options(o, &a) != AGENT_CODE_OK) {
        fprintf(stderr, "bench: agent_new_with_options: %s\n", last_error());
        a = NULL;
    }
    agent_options_free(o);
    return a;
}

/* Checks one response; returns its body length. */
static size_t ours_check(cell *c, agent_code code, agent_response *resp) {
    if (code != AGENT_CODE_OK) {
        note_error(c, "%s: %s", agent_code_name(code), last_error());
        return 0;
    }
    const uint8_t *body = NULL;
    size_t len = 0;
    agent_response_body(resp, &body, &len);
    uint16_t status = agent_response_status(resp);
    if (status != 200 || len != c->expect_len) {
        char s[64];
        snprintf(s, sizeof s, "status %u, %zu bytes", status, len);
        note_error(c, "%s%s", s, "");
    }
    agent_response_free(resp);
    return len;
}

static void ours_blocking_phase(agent *a, cell *c) {
    while (may_start(c)) {
        c->started++;
        c->total++;
        agent_response *resp = NULL;
        double t0 = now_s();
        agent_code code = agent_request(a, "GET", c->url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
        size_t len = ours_check(c, code, resp);
        record(c, now_s() - t0, len);
    }
}

typedef struct {
    agent *a;
    cell *c;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
} async_state;

typedef struct {
    async_state *st;
    double t0;
} slot;

static void ours_callback(void *userdata, agent_code code, agent_response *resp);

/* Starts one request on `s`; the lock is held. Returns false when it could not start. */
static bool ours_start(slot *s) {
    async_state *st = s->st;
    st->c->started++;
    st->c->total++;
    s->t0 = now_s();
    agent_code code = agent_request_async(st->a, "GET", st->c->url, NULL, 0, NULL, 0,
                                          TIMEOUT_MS, ours_callback, s, NULL);
    if (code != AGENT_CODE_OK) {
        note_error(st->c, "start: %s: %s", agent_code_name(code), last_error());
        return false;
    }
    return true;
}

static void ours_callback(void *userdata, agent_code code, agent_response *resp) {
    slot *s = userdata;
    async_state *st = s->st;
    double latency = now_s() - s->t0;
    pthread_mutex_lock(&st->mu);
    size_t len = ours_check(st->c, code, resp);
    record(st->c, latency, len);
    if (!(may_start(st->c) && ours_start(s))) {
        if (--st->inflight == 0) {
            pthread_cond_signal(&st->cv);
        }
    }
    pthread_mutex_unlock(&st->mu);
}

static void ours_async_phase(async_state *st, slot *slots) {
    cell *c = st->c;
    pthread_mutex_lock(&st->mu);
    for (int i = 0; i < c->conc && may_start(c); i++) {
        slots[i].st = st;
        st->inflight++;
        if (!ours_start(&slots[i])) {
            st->inflight--;
        }
    }
    while (st->inflight > 0) {
        pthread_cond_wait(&st->cv, &st->mu);
    }
    pthread_mutex_unlock(&st->mu);
}

/* ----------------------------------------------------------------------------------------- */
/* libcurl */

typedef struct {
    size_t len;
    double t0;
} curl_xfer;

static size_t curl_sink(char *data, size_t size, size_t n, void *userdata) {
    (void)data;
    ((curl_xfer *)userdata)->len += size * n;
    return size * n;
}

static CURL *curl_handle(const cell *c, struct curl_slist *headers, curl_xfer *x) {
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, c->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    /* HTTP/1.1 like every client here. (Over TLS libcurl would otherwise offer h2 and make
     * concurrent transfers wait for the first connection, to see whether it multiplexes.) */
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, curl_sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_PRIVATE, x);
    if (c->ca_file) {
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    }
    if (!c->keep_alive) {
        curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    }
    return h;
}

static void curl_check(cell *c, CURL *h, CURLcode rc, curl_xfer *x, double latency) {
    if (rc != CURLE_OK) {
        note_error(c, "curl: %s%s", curl_easy_strerror(rc), "");
    } else {
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200 || x->len != c->expect_len) {
            char s[64];
            snprintf(s, sizeof s, "status %ld, %zu bytes", status, x->len);
            note_error(c, "%s%s", s, "");
        }
    }
    record(c, latency, x->len);
}

static void curl_easy_phase(CURL *h, curl_xfer *x, cell *c) {
    while (may_start(c)) {
        c->started++;
        c->total++;
        x->len = 0;
        double t0 = now_s();
        CURLcode rc = curl_easy_perform(h);
        curl_check(c, h, rc, x, now_s() - t0);
    }
}

static void curl_multi_phase(CURLM *m, CURL **hs, curl_xfer *xs, cell *c) {
    int inflight = 0;
    for (int i = 0; i < c->conc && may_start(c); i++) {
        c->started++;
        c->total++;
        xs[i].len = 0;
        xs[i].t0 = now_s();
        curl_multi_add_handle(m, hs[i]);
        inflight++;
    }
    while (inflight > 0) {
        int running = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            CURL *h = msg->easy_handle;
            CURLcode rc = msg->data.result;
            curl_xfer *x = NULL;
            curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&x);
            curl_check(c, h, rc, x, now_s() - x->t0);
            curl_multi_remove_handle(m, h);
            if (may_start(c)) {
                c->started++;
                c->total++;
                x->len = 0;
                x->t0 = now_s();
                curl_multi_add_handle(m, h);
            } else {
                inflight--;
            }
        }
        if (inflight > 0) {
            curl_multi_poll(m, NULL, 0, 100, NULL);
        }
    }
}

/* ----------------------------------------------------------------------------------------- */
/* A cell: warm-up, then the measured part, same client */

typedef enum { CLIENT_OURS, CLIENT_CURL } client_kind;

/* One client object lives across both phases. */
static void run(client_kind kind, cell *c, double seconds, double warmup) {
    agent *a = NULL;
    async_state st;
    slot *slots = NULL;
    CURL *easy = NULL;
    CURLM *multi = NULL;
    CURL **hs = NULL;
    curl_xfer *xs = NULL;
    struct curl_slist *headers = curl_slist_append(NULL, "Connection: close");
    curl_xfer x1 = {0, 0};

    if (kind == CLIENT_OURS) {
        a = ours_agent(c, 0, 0);
        if (a == NULL) {
            note_error(c, "agent creation failed%s%s", "", "");
            c->deadline = 0;
        }
        if (c->conc > 1) {
            memset(&st, 0, sizeof st);
            st.a = a;
            st.c = c;
            pthread_mutex_init(&st.mu, NULL);
            pthread_cond_init(&st.cv, NULL);
            slots = calloc((size_t)c->conc, sizeof *slots);
        }
    } else if (c->conc == 1) {
        easy = curl_handle(c, headers, &x1);
    } else {
        multi = curl_multi_init();
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)c->conc * 2);
        hs = calloc((size_t)c->conc, sizeof *hs);
        xs = calloc((size_t)c->conc, sizeof *xs);
        for (int i = 0; i < c->conc; i++) {
            hs[i] = curl_handle(c, headers, &xs[i]);
        }
    }

    double t0 = 0, cpu0 = 0, t1 = 0, cpu1 = 0;
    long errors_warmup = 0;
    for (int phase = 0; phase < 2 && (kind != CLIENT_OURS || a != NULL); phase++) {
        c->record = phase == 1;
        c->started = 0;
        c->done = 0;
        if (phase == 1) {
            errors_warmup = c->errors;
            t0 = now_s();
            cpu0 = cpu_s();
        }
        c->deadline = now_s() + (phase == 0 ? warmup : seconds);
        if (kind == CLIENT_OURS && c->conc == 1) {
            ours_blocking_phase(a, c);
        } else if (kind == CLIENT_OURS) {
            ours_async_phase(&st, slots);
        } else if (c->conc == 1) {
            curl_easy_phase(easy, &x1, c);
        } else {
            curl_multi_phase(multi, hs, xs, c);
        }
        if (phase == 1) {
            t1 = now_s();
            cpu1 = cpu_s();
        }
    }

    if (a != NULL) {
        agent_free(a);
    }
    if (slots != NULL) {
        pthread_mutex_destroy(&st.mu);
        pthread_cond_destroy(&st.cv);
        free(slots);
    }
    if (easy != NULL) {
        curl_easy_cleanup(easy);
    }
    if (multi != NULL) {
        for (int i = 0; i < c->conc; i++) {
            curl_easy_cleanup(hs[i]);
        }
        curl_multi_cleanup(multi);
        free(hs);
        free(xs);
    }
    curl_slist_free_all(headers);

    long n = c->done;
    qsort(c->lat, (size_t)n, sizeof *c->lat, cmp_double);
    printf("{\"requests\":%ld,\"total_requests\":%ld,\"errors\":%ld,\"warmup_errors\":%ld,"
           "\"seconds\":%.6f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"cpu_s\":%.6f,\"bytes\":%llu,"
           "\"error\":",
           n, c->total, c->errors - errors_warmup, errors_warmup, t1 - t0,
           percentile(c->lat, n, 0.50) * 1e3, percentile(c->lat, n, 0.99) * 1e3, cpu1 - cpu0,
           (unsigned long long)c->bytes);
    json_string(c->error);
    printf("}\n");
    fflush(stdout);
}

/* ----------------------------------------------------------------------------------------- */
/* Memory: n idle pooled connections */

static long proc_status(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t klen = strlen(key);
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = atol(line + klen + 1);
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return v;
}

static void settle(void) {
    usleep(300 * 1000);
    malloc_trim(0);
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int errors;
} mem_state;

static void mem_callback(void *userdata, agent_code code, agent_response *resp) {
    mem_state *ms = userdata;
    pthread_mutex_lock(&ms->mu);
    if (code != AGENT_CODE_OK || agent_response_status(resp) != 200) {
        ms->errors++;
    }
    agent_response_free(resp);
    if (--ms->pending == 0) {
        pthread_cond_signal(&ms->cv);
    }
    pthread_mutex_unlock(&ms->mu);
}

static int mem_ours(int n, const char *url, const char *ca) {
    cell c;
    memset(&c, 0, sizeof c);
    c.url = url;
    c.ca_file = ca;
    c.keep_alive = true;
    agent *a = ours_agent(&c, (uint32_t)n + 16, 120000);
    if (a == NULL) {
        return 1;
    }
    agent_response *resp = NULL;
    if (agent_request(a, "GET", url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp) != AGENT_CODE_OK) {
        fprintf(stderr, "bench: warm-up: %s\n", last_error());
        return 1;
    }
    agent_response_free(resp);
    settle();
    long rss0 = proc_status("VmRSS"), th0 = proc_status("Threads");

    mem_state ms = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, n, 0};
    pthread_mutex_lock(&ms.mu);
    for (int i = 0; i < n; i++) {
        if (agent_request_async(a, "GET", url, NULL, 0, NULL, 0, TIMEOUT_MS, mem_callback, &ms,
                                NULL) != AGENT_CODE_OK) {
            ms.pending--;
            ms.errors++;
        }
    }
    while (ms.pending > 0) {
        pthread_cond_wait(&ms.cv, &ms.mu);
    }
    pthread_mutex_unlock(&ms.mu);
    settle();
    long rss1 = proc_status("VmRSS"), th1 = proc_status("Threads");
    agent_pool_stats s;
    agent_stats(a, &s);
    printf("{\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"threads_before\":%ld,"
           "\"threads_after\":%ld,\"idle\":%llu,\"errors\":%d}\n",
           rss0, rss1, th0, th1, (unsigned long long)s.idle, ms.errors);
    fflush(stdout);
    agent_free(a);
    return 0;
}

static int mem_curl(int n, const char *url, const char *ca) {
    cell c;
    memset(&c, 0, sizeof c);
    c.url = url;
    c.ca_file = ca;
    c.keep_alive = true;
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)n + 16);
    curl_xfer *xs = calloc((size_t)n + 1, sizeof *xs);
    int errors = 0;

    /* warm-up: one transfer through the multi handle */
    CURL *w = curl_handle(&c, NULL, &xs[n]);
    curl_multi_add_handle(m, w);
    int running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running) {
            curl_multi_poll(m, NULL, 0, 100, NULL);
        }
    }
    curl_multi_remove_handle(m, w);
    curl_easy_cleanup(w);
    settle();
    long rss0 = proc_status("VmRSS"), th0 = proc_status("Threads");

    CURL **hs = calloc((size_t)n, sizeof *hs);
    for (int i = 0; i < n; i++) {
        hs[i] = curl_handle(&c, NULL, &xs[i]);
        curl_multi_add_handle(m, hs[i]);
    }
    running = 1;
    while (running) {
        curl_multi_perform(m, &running);
        if (running) {
            curl_multi_poll(m, NULL, 0, 100, NULL);
        }
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE && msg->data.result != CURLE_OK) {
            errors++;
        }
    }
    /* The connections stay in the multi handle's cache; the easy handles (and their
     * transfer buffers) go, as an application keeping only a connection pool would. */
    for (int i = 0; i < n; i++) {
        curl_multi_remove_handle(m, hs[i]);
        curl_easy_cleanup(hs[i]);
    }
    settle();
    long rss1 = proc_status("VmRSS"), th1 = proc_status("Threads");
    printf("{\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"threads_before\":%ld,"
           "\"threads_after\":%ld,\"idle\":-1,\"errors\":%d}\n",
           rss0, rss1, th0, th1, errors);
    fflush(stdout);
    curl_multi_cleanup(m);
    free(hs);
    free(xs);
    return 0;
}

/* ----------------------------------------------------------------------------------------- */

static void versions(void) {
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    printf("{\"ours\":\"keepalive-agent %s\",\"curl\":\"libcurl %s (%s)\"}\n", agent_version(),
           v->version, v->ssl_version ? v->ssl_version : "no TLS");
    fflush(stdout);
}

static int serve(void) {
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        char client[32], url[2048], ca[2048];
        int conc = 0, ka = 0;
        double seconds = 0, warmup = 0;
        long max_requests = 0;
        size_t expect_len = 0;
        if (strncmp(line, "quit", 4) == 0) {
            break;
        }
        if (strncmp(line, "versions", 8) == 0) {
            versions();
            continue;
        }
        if (sscanf(line, "run %31s %d %d %lf %lf %ld %zu %2047s %2047s", client, &conc, &ka,
                   &seconds, &warmup, &max_requests, &expect_len, url, ca) != 9 ||
            conc < 1 || conc > MAX_CONC || max_requests < 1) {
            printf("{\"fatal\":\"bad command\"}\n");
            fflush(stdout);
            continue;
        }
        cell c;
        memset(&c, 0, sizeof c);
        c.url = url;
        c.ca_file = strcmp(ca, "-") == 0 ? NULL : ca;
        c.keep_alive = ka != 0;
        c.conc = conc;
        c.max_requests = max_requests;
        c.expect_len = expect_len;
        /* the warm-up never records; the measured part records at most max_requests */
        c.lat = malloc((size_t)max_requests * sizeof *c.lat);
        client_kind kind = strcmp(client, "ours") == 0 ? CLIENT_OURS : CLIENT_CURL;
        if (c.lat == NULL || (kind == CLIENT_CURL && strcmp(client, "curl") != 0)) {
            printf("{\"fatal\":\"unknown client or out of memory\"}\n");
            fflush(stdout);
            free(c.lat);
            continue;
        }
        run(kind, &c, seconds, warmup);
        free(c.lat);
    }
    return 0;
}

int main(int argc, char **argv) {
    curl_global_init(CURL_GLOBAL_ALL);
    int rc;
    if (argc == 6 && strcmp(argv[1], "mem") == 0) {
        const char *ca = strcmp(argv[5], "-") == 0 ? NULL : argv[5];
        int n = atoi(argv[3]);
        rc = strcmp(argv[2], "ours") == 0 ? mem_ours(n, argv[4], ca) : mem_curl(n, argv[4], ca);
    } else if (argc == 1) {
        rc = serve();
    } else {
        fprintf(stderr, "usage: bench | bench mem ours|curl N URL CA_FILE|-\n");
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
