/*
 * Interoperability against a real nginx (Debian's, started by scripts/nginx.sh with its own
 * config). Connections are counted by nginx's stub_status "accepts", never by this library:
 *
 *   keep-alive on:  100 sequential GETs -> nginx accepted exactly 1 connection
 *   keep-alive off: 100 sequential GETs -> nginx accepted exactly 100 connections
 *
 * over HTTP and over HTTPS (verified against the CA the script made), with both agents alive
 * in the same process. Every response must be 200 with the 13-byte body. A 1 MiB static file
 * is also fetched a few times on the pooled connection and compared byte for byte with
 * nginx's copy.
 *
 * HTTP/2: 64 threads x 20 requests at once over nginx's h2 port (ALPN) and its h2c port (prior
 * knowledge) -> one connection each, every response HTTP/2; 100 sequential and the 1 MiB file
 * over h2; keep-alive off -> one connection per request; against the HTTP/1.1-only port, auto
 * falls back to HTTP/1.1 and http2 alone is refused.
 *
 * Environment (from scripts/nginx.sh start): NGINX_HTTP_URL, NGINX_HTTPS_URL, NGINX_CA_FILE,
 * NGINX_ADMIN_PORT, NGINX_DIR, NGINX_H2_URL, NGINX_H2C_URL.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <pthread.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keepalive_agent.h"

#define REQUESTS 100
#define BIG_REQUESTS 5
#define BIG_SIZE 1048576u
#define TIMEOUT_MS 10000u

static const char HELLO[] = "hello, world\n";
static int failures;

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    failures++;
}

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr, "%s is not set: run this through tests/nginx/run.sh\n", name);
        exit(2);
    }
    return v;
}

static const char *last_error(void) {
    static char buf[1024];
    agent_last_error(buf, sizeof buf);
    return buf;
}

/*
 * stub_status "accepts", read over a plain socket (so the count never depends on the code under
 * test). nginx counts every accepted connection of the worker, on every listener, so each read
 * is itself one accept: the value returned excludes all the reads made so far, and two
 * consecutive reads give the same number.
 */
static long long nginx_accepts(void) {
    static long long reads;
    int port = atoi(env("NGINX_ADMIN_PORT"));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect to the nginx admin port");
        exit(2);
    }
    const char req[] = "GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        perror("write /status");
        exit(2);
    }
    char buf[4096];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0) {
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    const char *marker = "server accepts handled requests";
    char *p = strstr(buf, marker);
    long long accepts = -1;
    if (p == NULL || sscanf(p + strlen(marker), "%lld", &accepts) != 1) {
        fprintf(stderr, "unexpected /status answer:\n%s\n", buf);
        exit(2);
    }
    reads++;
    return accepts - reads;
}

static agent *make_agent(bool keep_alive, const char *ca_file) {
    agent_options *opts = agent_options_new();
    agent *a = NULL;
    if (opts == NULL || agent_options_set_keep_alive(opts, keep_alive) != AGENT_CODE_OK ||
        agent_options_set_ca_file(opts, ca_file) != AGENT_CODE_OK ||
        agent_new_with_options(opts, &a) != AGENT_CODE_OK) {
        fprintf(stderr, "agent creation failed: %s\n", last_error());
        exit(2);
    }
    agent_options_free(opts);
    if (agent_keep_alive_enabled(a) != keep_alive) {
        fail("agent_keep_alive_enabled() = %d, asked for %d", agent_keep_alive_enabled(a),
             keep_alive);
    }
    return a;
}

/* 100 sequential GETs of `url`; returns the number of connections nginx accepted meanwhile. */
static long long run_hello(agent *a, const char *label, const char *url, bool keep_alive) {
    long long before = nginx_accepts();
    int reused = 0, ok = 0;
    for (int i = 0; i < REQUESTS; i++) {
        agent_response *resp = NULL;
        agent_code code = agent_request(a, "GET", url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
        if (code != AGENT_CODE_OK) {
            fail("%s: request %d: %s: %s", label, i, agent_code_str(code), last_error());
            continue;
        }
        const uint8_t *body = NULL;
        size_t len = 0;
        uint16_t status = agent_response_status(resp);
        agent_response_body(resp, &body, &len);
        if (status != 200 || len != sizeof HELLO - 1 || memcmp(body, HELLO, len) != 0) {
            fail("%s: request %d: status %u, %zu body bytes", label, i, status, len);
        } else {
            ok++;
        }
        const char *server = NULL;
        size_t server_len = 0;
        if (agent_response_header(resp, "server", &server, &server_len) != AGENT_CODE_OK ||
            server_len < 5 || memcmp(server, "nginx", 5) != 0) {
            fail("%s: request %d: no `Server: nginx` header", label, i);
        }
        if (agent_response_reused(resp)) {
            reused++;
        }
        agent_response_free(resp);
    }
    long long conns = nginx_accepts() - before;
    int want_reused = keep_alive ? REQUESTS - 1 : 0;
    if (reused != want_reused) {
        fail("%s: %d responses report reused, expected %d", label, reused, want_reused);
    }
    printf("%-28s %3d x 200 OK, nginx accepted %lld connection(s), %d reused\n", label, ok,
           conns, reused);
    return conns;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    unsigned char *buf = malloc(BIG_SIZE + 1);
    *len = buf ? fread(buf, 1, BIG_SIZE + 1, f) : 0;
    fclose(f);
    if (buf == NULL || *len != BIG_SIZE) {
        fprintf(stderr, "%s: expected %u bytes\n", path, BIG_SIZE);
        exit(2);
    }
    return buf;
}

/*
 * The 1 MiB static file, BIG_REQUESTS times on the connection the keep-alive run left in the
 * pool: every copy intact, every response reused, no new connection accepted by nginx.
 */
static void run_big(agent *a, const char *label, const char *base_url, const unsigned char *want) {
    char url[512];
    snprintf(url, sizeof url, "%s1m.bin", base_url);
    long long before = nginx_accepts();
    for (int i = 0; i < BIG_REQUESTS; i++) {
        agent_response *resp = NULL;
        agent_code code = agent_request(a, "GET", url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
        if (code != AGENT_CODE_OK) {
            fail("%s: request %d: %s: %s", label, i, agent_code_str(code), last_error());
            continue;
        }
        const uint8_t *body = NULL;
        size_t len = 0;
        agent_response_body(resp, &body, &len);
        if (!agent_response_reused(resp)) {
            fail("%s: request %d was not sent on the pooled connection", label, i);
        }
        if (agent_response_status(resp) != 200 || len != BIG_SIZE ||
            memcmp(body, want, BIG_SIZE) != 0) {
            fail("%s: request %d: status %u, %zu bytes, content %s", label, i,
                 agent_response_status(resp), len,
                 len == BIG_SIZE && memcmp(body, want, BIG_SIZE) == 0 ? "equal" : "differs");
        }
        agent_response_free(resp);
    }
    long long conns = nginx_accepts() - before;
    if (conns != 0) {
        fail("%s: nginx accepted %lld connections for %d reused requests, expected 0", label,
             conns, BIG_REQUESTS);
    }
    printf("%-28s %d x 1 MiB intact, nginx accepted %lld new connection(s)\n", label, BIG_REQUESTS,
           conns);
}

/* HTTP/2: H2_THREADS threads, H2_EACH requests each, all at once on one agent. */
#define H2_THREADS 64
#define H2_EACH 20

struct h2_job {
    agent *a;
    const char *url;
    int ok, v2, reused;
};

static void *h2_worker(void *arg) {
    struct h2_job *j = arg;
    for (int i = 0; i < H2_EACH; i++) {
        agent_response *resp = NULL;
        if (agent_request(j->a, "GET", j->url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp) !=
            AGENT_CODE_OK) {
            continue;
        }
        const uint8_t *body = NULL;
        size_t len = 0;
        agent_response_body(resp, &body, &len);
        if (agent_response_status(resp) == 200 && len == sizeof HELLO - 1 &&
            memcmp(body, HELLO, len) == 0) {
            j->ok++;
        }
        j->v2 += agent_response_version(resp) == 20;
        j->reused += agent_response_reused(resp);
        agent_response_free(resp);
    }
    return NULL;
}

static agent *make_h2_agent(uint32_t version, const char *ca_file, bool keep_alive) {
    agent_options *opts = agent_options_new();
    agent *a = NULL;
    if (opts == NULL || agent_options_set_http_version(opts, version) != AGENT_CODE_OK ||
        agent_options_set_keep_alive(opts, keep_alive) != AGENT_CODE_OK ||
        agent_options_set_ca_file(opts, ca_file) != AGENT_CODE_OK ||
        agent_new_with_options(opts, &a) != AGENT_CODE_OK) {
        fprintf(stderr, "agent creation failed: %s\n", last_error());
        exit(2);
    }
    agent_options_free(opts);
    return a;
}

/* 64 threads x 20 requests at once: one connection (nginx's count), every response HTTP/2. */
static void run_h2_concurrent(const char *label, uint32_t version, const char *url,
                              const char *ca_file) {
    agent *a = make_h2_agent(version, ca_file, true);
    long long before = nginx_accepts();
    struct h2_job jobs[H2_THREADS];
    pthread_t threads[H2_THREADS];
    for (int i = 0; i < H2_THREADS; i++) {
        jobs[i] = (struct h2_job){.a = a, .url = url};
        pthread_create(&threads[i], NULL, h2_worker, &jobs[i]);
    }
    int ok = 0, v2 = 0, reused = 0;
    for (int i = 0; i < H2_THREADS; i++) {
        pthread_join(threads[i], NULL);
        ok += jobs[i].ok;
        v2 += jobs[i].v2;
        reused += jobs[i].reused;
    }
    long long conns = nginx_accepts() - before;
    agent_pool_stats st;
    agent_stats(a, &st);
    const int n = H2_THREADS * H2_EACH;
    if (ok != n || v2 != n || conns != 1 || st.h2_connections != 1 || st.h2_streams != (uint64_t)n ||
        reused != n - 1) {
        fail("%s: %d/%d OK, %d over HTTP/2, %d reused, nginx accepted %lld connection(s), "
             "agent: %llu HTTP/2 connections, %llu streams",
             label, ok, n, v2, reused, conns, (unsigned long long)st.h2_connections,
             (unsigned long long)st.h2_streams);
    }
    printf("%-28s %d requests from %d threads at once: %d over HTTP/2, nginx accepted %lld "
           "connection(s)\n",
           label, ok, H2_THREADS, v2, conns);
    agent_free(a);
}

/* ALPN: auto against a server without h2 speaks HTTP/1.1; http2 alone is refused. */
static void run_h2_fallback(const char *https_url, const char *ca_file) {
    agent *a = make_h2_agent(AGENT_HTTP_VERSION_AUTO, ca_file, true);
    for (int i = 0; i < 3; i++) {
        agent_response *resp = NULL;
        agent_code c = agent_request(a, "GET", https_url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
        if (c != AGENT_CODE_OK || agent_response_version(resp) != 11) {
            fail("auto against an HTTP/1.1-only server: %s, version %u", agent_code_str(c),
                 resp ? agent_response_version(resp) : 0);
        }
        agent_response_free(resp);
    }
    agent_pool_stats st;
    agent_stats(a, &st);
    if (st.connections_opened != 1 || st.h2_connections != 0) {
        fail("auto fallback: %llu connections, %llu HTTP/2", (unsigned long long)st.connections_opened,
             (unsigned long long)st.h2_connections);
    }
    agent_free(a);
    agent *strict = make_h2_agent(AGENT_HTTP_VERSION_HTTP2, ca_file, true);
    agent_response *resp = NULL;
    agent_code c = agent_request(strict, "GET", https_url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
    if (c == AGENT_CODE_OK) {
        fail("http2 alone against an HTTP/1.1-only server succeeded (version %u)",
             agent_response_version(resp));
        agent_response_free(resp);
    } else {
        printf("%-28s auto: HTTP/1.1 by ALPN; http2 alone: %s (%s)\n", "https ALPN fallback",
               agent_code_str(c), last_error());
    }
    agent_free(strict);
}

int main(void) {
    const char *http_url = env("NGINX_HTTP_URL");
    const char *https_url = env("NGINX_HTTPS_URL");
    const char *ca_file = env("NGINX_CA_FILE");
    char big_path[1024];
    snprintf(big_path, sizeof big_path, "%s/www/1m.bin", env("NGINX_DIR"));
    size_t big_len = 0;
    unsigned char *big = read_file(big_path, &big_len);

    /* Sanity: reading the counter twice in a row shows no connection in between. */
    long long a0 = nginx_accepts(), a1 = nginx_accepts();
    if (a1 != a0) {
        fail("stub_status accounting: two consecutive reads differ (%lld, %lld)", a0, a1);
    }

    printf("keepalive-agent %s against nginx, %d sequential GETs per row\n", agent_version(),
           REQUESTS);
    /* Both agents live side by side: one reuses, the other never does. */
    agent *on = make_agent(true, ca_file);
    agent *off = make_agent(false, ca_file);
    const struct {
        const char *scheme, *url;
    } origins[] = {{"http", http_url}, {"https", https_url}};
    for (size_t i = 0; i < sizeof origins / sizeof origins[0]; i++) {
        char label[64];
        snprintf(label, sizeof label, "%s keep-alive on", origins[i].scheme);
        long long c_on = run_hello(on, label, origins[i].url, true);
        if (c_on != 1) {
            fail("%s: nginx accepted %lld connections, expected 1", label, c_on);
        }
        snprintf(label, sizeof label, "%s keep-alive off", origins[i].scheme);
        long long c_off = run_hello(off, label, origins[i].url, false);
        if (c_off != REQUESTS) {
            fail("%s: nginx accepted %lld connections, expected %d", label, c_off, REQUESTS);
        }
        snprintf(label, sizeof label, "%s 1 MiB keep-alive on", origins[i].scheme);
        run_big(on, label, origins[i].url, big);
    }

    /* The agent's own counters agree with nginx's: 1 + 1 connections, 2 * 100 + 2 * 5 requests. */
    agent_pool_stats st;
    if (agent_stats(on, &st) != AGENT_CODE_OK) {
        fail("agent_stats: %s", last_error());
    } else if (st.connections_opened != 2 || st.requests != 2 * (REQUESTS + BIG_REQUESTS)) {
        fail("keep-alive agent stats: %llu connections opened, %llu requests",
             (unsigned long long)st.connections_opened, (unsigned long long)st.requests);
    }
    if (agent_stats(off, &st) != AGENT_CODE_OK) {
        fail("agent_stats: %s", last_error());
    } else if (st.connections_opened != 2 * REQUESTS || st.idle != 0) {
        fail("keep-alive-off agent stats: %llu connections opened, %llu idle",
             (unsigned long long)st.connections_opened, (unsigned long long)st.idle);
    }

    agent_free(on);
    agent_free(off);

    /* HTTP/2: nginx's h2 port (ALPN) and its h2c port (prior knowledge). */
    const char *h2_url = env("NGINX_H2_URL");
    const char *h2c_url = env("NGINX_H2C_URL");
    run_h2_concurrent("h2 (auto, ALPN)", AGENT_HTTP_VERSION_AUTO, h2_url, ca_file);
    run_h2_concurrent("h2c (prior knowledge)", AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE, h2c_url,
                      ca_file);
    agent *h2 = make_h2_agent(AGENT_HTTP_VERSION_HTTP2, ca_file, true);
    run_hello(h2, "h2 sequential", h2_url, true);
    run_big(h2, "h2 1 MiB", h2_url, big);
    agent_free(h2);
    agent *h2_off = make_h2_agent(AGENT_HTTP_VERSION_HTTP2, ca_file, false);
    long long c_off = run_hello(h2_off, "h2 keep-alive off", h2_url, false);
    if (c_off != REQUESTS) {
        fail("h2 keep-alive off: nginx accepted %lld connections, expected %d", c_off, REQUESTS);
    }
    agent_free(h2_off);
    run_h2_fallback(https_url, ca_file);
    free(big);
    if (failures) {
        printf("nginx interop: %d failure(s)\n", failures);
        return 1;
    }
    printf("nginx interop: all checks passed\n");
    return 0;
}
