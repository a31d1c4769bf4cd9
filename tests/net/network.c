/*
 * Networks as users have them, from C, against real servers on loopback (started by
 * tests/net/run.sh): squid and tinyproxy from Debian's packages (scripts/proxies.sh) in front
 * of nginx (scripts/nginx.sh), nginx's self-signed and mutual-TLS servers.
 *
 *   squid, keep-alive on:   HTTP through the proxy (absolute form) and HTTPS (CONNECT) reuse
 *                           one connection to the proxy (counted in squid's access log)
 *   squid, keep-alive off:  one connection to the proxy per request
 *   tinyproxy:              closes after every plain-HTTP response; every request still
 *                           succeeds (the close is absorbed), CONNECT tunnels are reused
 *   no_proxy, environment:  bypass; https_proxy read at creation; proxy_from_env off
 *   squid with Basic auth:  CONNECT without credentials -> AGENT_CODE_PROXY naming the 407,
 *                           with the URL's (percent-encoded) credentials -> 200; plain HTTP
 *                           without -> the proxy's 407 as a response
 *   https:// proxy:         squid's TLS port, for HTTP and for HTTPS (TLS inside TLS);
 *                           the proxy's certificate is verified
 *   TLS:                    the `openssl req -x509` default certificate (CA:TRUE) trusted as
 *                           ca_file; refused without, with a sentence; mutual TLS with a
 *                           client certificate from files and from PEM bytes, nginx's 400
 *                           without one
 *
 * Environment: the keys printed by scripts/nginx.sh and scripts/proxies.sh.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keepalive_agent.h"

#define N 20
#define TIMEOUT_MS 10000u

static int failures;
static unsigned char *read_file(const char *path, size_t *len);

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
        fprintf(stderr, "%s is not set: run this through tests/net/run.sh\n", name);
        exit(2);
    }
    return v;
}

static const char *last_error(void) {
    static char buf[1024];
    agent_last_error(buf, sizeof buf);
    return buf;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Proxy URL for a port of the local squid or tinyproxy. */
static const char *proxy_url(const char *port_var) {
    static char buf[4][128];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "http://127.0.0.1:%s", env(port_var));
    return b;
}

struct opts {
    bool keep_alive;
    const char *proxy;    /* NULL: not set */
    const char *no_proxy; /* NULL: not set */
    int from_env;         /* -1: not set */
    const char *ca_file;
    const unsigned char *ca_pem;
    size_t ca_len;
    const char *client_cert_file, *client_key_file;
    const unsigned char *client_cert_pem, *client_key_pem;
    size_t client_cert_len, client_key_len;
};

/* NULL with the message in *why when creation fails. */
static agent *make(const struct opts *o, agent_code *code) {
    agent_options *opts = agent_options_new();
    agent *a = NULL;
    agent_code c = opts ? AGENT_CODE_OK : AGENT_CODE_INTERNAL;
    if (c == AGENT_CODE_OK) c = agent_options_set_keep_alive(opts, o->keep_alive);
    if (c == AGENT_CODE_OK && o->proxy) c = agent_options_set_proxy(opts, o->proxy);
    if (c == AGENT_CODE_OK && o->no_proxy) c = agent_options_set_no_proxy(opts, o->no_proxy);
    if (c == AGENT_CODE_OK && o->from_env >= 0) {
        c = agent_options_set_proxy_from_env(opts, o->from_env != 0);
    }
    if (c == AGENT_CODE_OK && o->ca_file) c = agent_options_set_ca_file(opts, o->ca_file);
    if (c == AGENT_CODE_OK && o->ca_pem) c = agent_options_set_ca_pem(opts, o->ca_pem, o->ca_len);
    if (c == AGENT_CODE_OK && o->client_cert_file) {
        c = agent_options_set_client_cert_file(opts, o->client_cert_file);
    }
    if (c == AGENT_CODE_OK && o->client_key_file) {
        c = agent_options_set_client_key_file(opts, o->client_key_file);
    }
    if (c == AGENT_CODE_OK && o->client_cert_pem) {
        c = agent_options_set_client_cert_pem(opts, o->client_cert_pem, o->client_cert_len);
    }
    if (c == AGENT_CODE_OK && o->client_key_pem) {
        c = agent_options_set_client_key_pem(opts, o->client_key_pem, o->client_key_len);
    }
    if (c == AGENT_CODE_OK) c = agent_new_with_options(opts, &a);
    agent_options_free(opts);
    if (code) *code = c;
    return c == AGENT_CODE_OK ? a : NULL;
}

static agent *make_or_die(const struct opts *o) {
    agent_code c;
    agent *a = make(o, &c);
    if (a == NULL) {
        fprintf(stderr, "agent creation failed: %s\n", last_error());
        exit(2);
    }
    return a;
}

/* One GET; returns the status (0 on failure, with the code in *code and the message in msg). */
static int get(agent *a, const char *url, agent_code *code, char *msg, size_t msg_len,
               char *body, size_t body_len) {
    agent_response *resp = NULL;
    agent_code c = agent_request(a, "GET", url, NULL, 0, NULL, 0, TIMEOUT_MS, &resp);
    if (code) *code = c;
    if (c != AGENT_CODE_OK) {
        if (msg) snprintf(msg, msg_len, "%s", last_error());
        return 0;
    }
    int status = agent_response_status(resp);
    if (body && body_len) {
        const uint8_t *b = NULL;
        size_t len = 0;
        agent_response_body(resp, &b, &len);
        size_t n = len < body_len - 1 ? len : body_len - 1;
        memcpy(body, b, n);
        body[n] = '\0';
    }
    agent_response_free(resp);
    return status;
}

/* n GETs that must all be 200. */
static void get_n(agent *a, const char *label, const char *url, int n) {
    for (int i = 0; i < n; i++) {
        agent_code c;
        char msg[1024];
        int status = get(a, url, &c, msg, sizeof msg, NULL, 0);
        if (status != 200) {
            fail("%s: request %d: status %d, code %s: %s", label, i, status, agent_code_name(c),
                 status ? "" : msg);
            return;
        }
    }
}

static agent_pool_stats stats(agent *a) {
    agent_pool_stats st;
    memset(&st, 0, sizeof st);
    if (agent_stats(a, &st) != AGENT_CODE_OK) fail("agent_stats: %s", last_error());
    return st;
}

/*
 * squid's access log: lines whose method is `method` (NULL: any but "-") and whose URL
 * contains `needle`; *clients gets the number of distinct client ip:port among those
 * written since the last squid_mark(). Only since then: the kernel hands out ephemeral
 * ports again, so a port in an older line (the run before this one, say) may be a new
 * connection's now.
 */
static int squid_mark_line;

static int squid_log(const char *method, const char *needle, int *clients) {
    FILE *f = fopen(env("SQUID_ACCESS_LOG"), "r");
    int lines = 0, n_clients = 0, raw = 0;
    static char seen[4096][48];
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char when[64], client[48], meth[32], url[2048];
        bool counted = raw++ >= squid_mark_line;
        if (sscanf(line, "%63s %47s %31s %2047s", when, client, meth, url) != 4) continue;
        if (strcmp(meth, "-") == 0) continue;
        if (method && strcmp(meth, method) != 0) continue;
        if (needle && strstr(url, needle) == NULL) continue;
        lines++;
        if (!counted) continue;
        bool known = false;
        for (int i = 0; i < n_clients; i++) known = known || strcmp(seen[i], client) == 0;
        if (!known && n_clients < 4096) snprintf(seen[n_clients++], sizeof seen[0], "%s", client);
    }
    if (f) fclose(f);
    if (clients) *clients = n_clients;
    return lines;
}

/* From now on squid_log counts the clients of new lines only. */
static void squid_mark(void) {
    FILE *f = fopen(env("SQUID_ACCESS_LOG"), "r");
    int raw = 0;
    char line[4096];
    while (f && fgets(line, sizeof line, f)) raw++;
    if (f) fclose(f);
    squid_mark_line = raw;
}

/* The host:port of a URL such as http://127.0.0.1:8080/ (for matching the access log). */
static const char *authority(const char *url) {
    static char buf[4][128];
    static int next;
    char *b = buf[next++ % 4];
    const char *p = strstr(url, "://");
    snprintf(b, sizeof buf[0], "%s", p ? p + 3 : url);
    char *slash = strchr(b, '/');
    if (slash) *slash = '\0';
    return b;
}

/* Polls the access log (CONNECT lines are written when the tunnel closes). */
static int squid_log_wait(const char *method, const char *needle, int want, int *clients) {
    int got = 0;
    for (int i = 0; i < 60; i++) {
        got = squid_log(method, needle, clients);
        if (got >= want) break;
        sleep_ms(50);
    }
    return got;
}

static void squid_reuse(const char *http_url, const char *https_url, const char *ca) {
    const char *squid = proxy_url("SQUID_PORT");
    const char *http_host = authority(http_url), *https_host = authority(https_url);
    int before_lines = squid_log("GET", http_host, NULL), clients;
    squid_mark();

    struct opts on = {.keep_alive = true, .proxy = squid, .from_env = -1, .ca_file = ca};
    agent *a = make_or_die(&on);
    get_n(a, "squid http keep-alive on", http_url, N);
    int lines = squid_log_wait("GET", http_host, before_lines + N, NULL) - before_lines;
    squid_log("GET", http_host, &clients);
    agent_pool_stats st = stats(a);
    if (lines != N || clients != 1 || st.connections_opened != 1 ||
        st.reused_requests != N - 1) {
        fail("squid http keep-alive on: %d requests at the proxy over %d new connections; "
             "agent: %llu opened, %llu reused",
             lines, clients, (unsigned long long)st.connections_opened,
             (unsigned long long)st.reused_requests);
    }
    /* HTTPS through the same agent: one tunnel, written to the log when it closes. */
    int connects_before = squid_log("CONNECT", https_host, NULL);
    get_n(a, "squid https keep-alive on", https_url, N);
    st = stats(a);
    agent_free(a);
    int connects = squid_log_wait("CONNECT", https_host, connects_before + 1, NULL) -
                   connects_before;
    if (connects != 1 || st.connections_opened != 2) {
        fail("squid https keep-alive on: %d CONNECT tunnels, %llu connections opened (want 1, 2)",
             connects, (unsigned long long)st.connections_opened);
    }
    printf("squid, keep-alive on: %d HTTP requests over 1 proxy connection, %d HTTPS over 1 tunnel\n",
           N, N);

    struct opts off = on;
    off.keep_alive = false;
    a = make_or_die(&off);
    squid_mark();
    get_n(a, "squid http keep-alive off", http_url, N);
    squid_log_wait("GET", http_host, before_lines + 2 * N, NULL);
    squid_log("GET", http_host, &clients);
    if (clients != N) {
        fail("squid http keep-alive off: %d connections at the proxy for %d requests",
             clients, N);
    }
    connects_before = squid_log("CONNECT", https_host, NULL);
    get_n(a, "squid https keep-alive off", https_url, N);
    connects = squid_log_wait("CONNECT", https_host, connects_before + N, NULL) - connects_before;
    if (connects != N) fail("squid https keep-alive off: %d tunnels for %d requests", connects, N);
    st = stats(a);
    if (st.connections_opened != 2 * N) {
        fail("squid keep-alive off: %llu connections opened", (unsigned long long)st.connections_opened);
    }
    agent_free(a);
    printf("squid, keep-alive off: %d proxy connections for %d HTTP requests, %d tunnels for %d HTTPS\n",
           clients, N, connects, N);
}

static void tinyproxy_absorbs_closes(const char *http_url, const char *https_url, const char *ca) {
    struct opts o = {.keep_alive = true, .proxy = proxy_url("TINYPROXY_PORT"), .from_env = -1,
                     .ca_file = ca};
    agent *a = make_or_die(&o);
    for (int i = 0; i < 10; i++) {
        get_n(a, "tinyproxy http", http_url, 1);
        sleep_ms(i % 2 ? 0 : 20); /* some requests find the close already seen, some not */
    }
    agent_pool_stats st = stats(a);
    if (st.errors != 0 || st.requests != 10 || st.connections_opened < 2) {
        fail("tinyproxy http: %llu errors, %llu requests, %llu connections opened",
             (unsigned long long)st.errors, (unsigned long long)st.requests,
             (unsigned long long)st.connections_opened);
    }
    unsigned long long http_conns = st.connections_opened;
    get_n(a, "tinyproxy https", https_url, 10);
    st = stats(a);
    if (st.connections_opened != http_conns + 1 || st.errors != 0) {
        fail("tinyproxy https: %llu connections for 10 requests through one tunnel",
             (unsigned long long)(st.connections_opened - http_conns));
    }
    printf("tinyproxy: 10 HTTP requests over %llu connections (it closes after each), 10 HTTPS over 1 tunnel, 0 errors\n",
           http_conns);
    agent_free(a);
}

static void bypass_and_environment(const char *http_url) {
    const char *host = authority(http_url);
    int before = squid_log("GET", host, NULL);
    struct opts o = {.keep_alive = true, .proxy = proxy_url("SQUID_PORT"), .no_proxy = "localhost, 127.0.0.0/8",
                     .from_env = -1};
    agent *a = make_or_die(&o);
    get_n(a, "no_proxy", http_url, 3);
    agent_free(a);
    if (squid_log("GET", host, NULL) != before) fail("no_proxy: requests reached the proxy");

    /* The environment, read when the agent is created. */
    setenv("http_proxy", proxy_url("SQUID_PORT"), 1);
    struct opts e = {.keep_alive = true, .from_env = -1};
    a = make_or_die(&e);
    get_n(a, "http_proxy", http_url, 3);
    agent_free(a);
    int after_env = squid_log_wait("GET", host, before + 3, NULL);
    if (after_env != before + 3) fail("http_proxy: %d requests at the proxy, want 3", after_env - before);
    struct opts ignore = {.keep_alive = true, .from_env = 0};
    a = make_or_die(&ignore);
    get_n(a, "proxy_from_env off", http_url, 3);
    agent_free(a);
    /* An explicit "" means no proxy, whatever the environment says. */
    struct opts none = {.keep_alive = true, .proxy = "", .from_env = -1};
    a = make_or_die(&none);
    get_n(a, "proxy \"\"", http_url, 3);
    agent_free(a);
    unsetenv("http_proxy");
    /* HTTP_PROXY in upper case is not read for http (httpoxy), as curl. */
    setenv("HTTP_PROXY", proxy_url("SQUID_PORT"), 1);
    a = make_or_die(&e);
    get_n(a, "HTTP_PROXY", http_url, 3);
    agent_free(a);
    unsetenv("HTTP_PROXY");
    if (squid_log("GET", host, NULL) != after_env) {
        fail("requests reached the proxy with proxy_from_env off, proxy \"\" or only HTTP_PROXY");
    }
    printf("no_proxy bypasses; http_proxy is read at creation; proxy_from_env off, proxy \"\" and HTTP_PROXY do not proxy\n");
}

static void credentials(const char *http_url, const char *https_url, const char *ca) {
    struct opts o = {.keep_alive = true, .proxy = proxy_url("SQUID_AUTH_PORT"), .from_env = -1,
                     .ca_file = ca};
    agent *a = make_or_die(&o);
    agent_code c;
    char msg[1024] = "";
    int status = get(a, https_url, &c, msg, sizeof msg, NULL, 0);
    if (status != 0 || c != AGENT_CODE_PROXY || strstr(msg, "407") == NULL ||
        strstr(msg, "credentials") == NULL) {
        fail("CONNECT without credentials: status %d, %s: %s", status, agent_code_name(c), msg);
    } else {
        printf("CONNECT without credentials: %s: %s\n", agent_code_name(c), msg);
    }
    status = get(a, http_url, &c, msg, sizeof msg, NULL, 0);
    if (status != 407) fail("plain HTTP without credentials: status %d (%s)", status, msg);
    agent_free(a);

    o.proxy = env("SQUID_AUTH_URL");
    a = make_or_die(&o);
    get_n(a, "CONNECT with credentials", https_url, 3);
    get_n(a, "HTTP with credentials", http_url, 3);
    agent_free(a);
    printf("with credentials from the proxy URL: HTTPS and HTTP 200\n");
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    static unsigned char buf[2][16384];
    static int next;
    unsigned char *b = buf[next++ % 2];
    *len = fread(b, 1, sizeof buf[0], f);
    fclose(f);
    return b;
}

static void tls_proxy(const char *http_url, const char *https_url, const char *ca) {
    struct opts o = {.keep_alive = true, .proxy = env("SQUID_TLS_URL"), .from_env = -1,
                     .ca_file = ca};
    o.ca_pem = read_file(env("PROXY_CA_FILE"), &o.ca_len);
    agent *a = make_or_die(&o);
    get_n(a, "https:// proxy, http origin", http_url, 5);
    get_n(a, "https:// proxy, https origin (TLS inside TLS)", https_url, 5);
    agent_pool_stats st = stats(a);
    if (st.connections_opened != 2 || st.reused_requests != 8) {
        fail("https:// proxy: %llu connections, %llu reused (want 2, 8)",
             (unsigned long long)st.connections_opened, (unsigned long long)st.reused_requests);
    }
    agent_free(a);
    /* The proxy's certificate is checked like any server's. */
    struct opts untrusted = o;
    untrusted.ca_pem = NULL;
    a = make_or_die(&untrusted);
    agent_code c;
    char msg[1024] = "";
    if (get(a, http_url, &c, msg, sizeof msg, NULL, 0) != 0 || c != AGENT_CODE_TLS ||
        strstr(msg, "proxy") == NULL) {
        fail("untrusted https:// proxy: %s: %s", agent_code_name(c), msg);
    }
    agent_free(a);
    printf("https:// proxy: HTTP and HTTPS (TLS inside TLS) over 2 pooled connections; its certificate is verified\n");
}

static void tls_trust(void) {
    const char *url = env("NGINX_SELFSIGNED_URL");
    struct opts o = {.keep_alive = true, .from_env = 0, .ca_file = env("NGINX_SELFSIGNED_CERT")};
    agent *a = make_or_die(&o);
    get_n(a, "self-signed CA:TRUE certificate as ca_file", url, 2);
    agent_free(a);

    struct opts none = {.keep_alive = true, .from_env = 0};
    a = make_or_die(&none);
    agent_code c;
    char msg[1024] = "";
    int status = get(a, url, &c, msg, sizeof msg, NULL, 0);
    if (status != 0 || c != AGENT_CODE_TLS || strstr(msg, "CA certificate") == NULL ||
        strstr(msg, "Other") != NULL) {
        fail("untrusted self-signed certificate: %s: %s", agent_code_name(c), msg);
    } else {
        printf("untrusted: %s\n", msg);
    }
    agent_free(a);

    const char *mtls = env("NGINX_MTLS_URL");
    struct opts m = {.keep_alive = true, .from_env = 0, .ca_file = env("NGINX_CA_FILE"),
                     .client_cert_file = env("NGINX_CLIENT_CERT"),
                     .client_key_file = env("NGINX_CLIENT_KEY")};
    a = make_or_die(&m);
    char body[256] = "";
    status = get(a, mtls, &c, msg, sizeof msg, body, sizeof body);
    if (status != 200 || strstr(body, "CN=keepalive-agent test client") == NULL) {
        fail("mutual TLS with certificate files: status %d %s body %s", status, msg, body);
    }
    agent_free(a);
    struct opts mp = {.keep_alive = true, .from_env = 0, .ca_file = env("NGINX_CA_FILE")};
    mp.client_cert_pem = read_file(env("NGINX_CLIENT_CERT"), &mp.client_cert_len);
    mp.client_key_pem = read_file(env("NGINX_CLIENT_KEY"), &mp.client_key_len);
    a = make_or_die(&mp);
    status = get(a, mtls, &c, msg, sizeof msg, body, sizeof body);
    if (status != 200) fail("mutual TLS with PEM bytes: status %d %s", status, msg);
    agent_free(a);
    struct opts nocert = {.keep_alive = true, .from_env = 0, .ca_file = env("NGINX_CA_FILE")};
    a = make_or_die(&nocert);
    status = get(a, mtls, &c, msg, sizeof msg, NULL, 0);
    if (status != 400) fail("mutual TLS without a certificate: status %d (nginx answers 400)", status);
    agent_free(a);
    struct opts half = {.keep_alive = true, .from_env = 0,
                        .client_cert_file = env("NGINX_CLIENT_CERT")};
    if (make(&half, &c) != NULL || c != AGENT_CODE_INVALID_OPTION) {
        fail("a client certificate without its key was accepted (%s)", agent_code_name(c));
    }
    printf("TLS: self-signed CA:TRUE trusted as ca_file; mutual TLS from files and PEM bytes: 200, without: 400\n");
}

int main(void) {
    const char *http_url = env("NGINX_HTTP_URL");
    const char *https_url = env("NGINX_HTTPS_URL");
    const char *ca = env("NGINX_CA_FILE");
    /* Only this program's own settings count. */
    const char *vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                          "ALL_PROXY", "no_proxy", "NO_PROXY"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);

    printf("keepalive-agent %s: proxies and TLS against squid, tinyproxy and nginx\n", agent_version());
    squid_reuse(http_url, https_url, ca);
    tinyproxy_absorbs_closes(http_url, https_url, ca);
    bypass_and_environment(http_url);
    credentials(http_url, https_url, ca);
    tls_proxy(http_url, https_url, ca);
    tls_trust();
    if (failures) {
        printf("network: %d failure(s)\n", failures);
        return 1;
    }
    printf("network: all checks passed\n");
    return 0;
}
