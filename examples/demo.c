/* demo.c: the C rows of `make demo` (see scripts/demo.sh).
 *
 * Two agents live in this one process: one with keep-alive on, one with it off. Each makes
 * DEMO_REQUESTS sequential GETs over http and over https; the server's admin endpoint counts
 * the TCP connections it accepted (reset before each row). Output: markdown rows
 *   | C | <client> | <scheme> | <requests> | <connections> | <req/s> | <p50 ms> | <p99 ms> |
 *
 * Environment: DEMO_HTTP_URL, DEMO_HTTPS_URL, DEMO_CA_FILE, DEMO_ADMIN_URL, DEMO_REQUESTS.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keepalive_agent.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr, "demo: %s is not set\n", name);
        exit(2);
    }
    return v;
}

static void die(const char *what, agent_code code) {
    char msg[512];
    agent_last_error(msg, sizeof msg);
    fprintf(stderr, "demo: %s: %s: %s\n", what, agent_code_name(code), msg);
    exit(1);
}

/* GET an admin path with `admin` (a separate agent; the admin listener is not counted) and
 * return the integer field `key` of its JSON body (or 0 for /reset). */
static long admin(const agent *admin_agent, const char *path, const char *key) {
    char url[512], pat[64], json[512];
    agent_response *r = NULL;
    const uint8_t *body;
    size_t len;
    const char *p;
    agent_code c;

    snprintf(url, sizeof url, "%s%s", env("DEMO_ADMIN_URL"), path);
    c = agent_request(admin_agent, "GET", url, NULL, 0, NULL, 0, 10000, &r);
    if (c != AGENT_CODE_OK) {
        die(url, c);
    }
    agent_response_body(r, &body, &len);
    len = len < sizeof json - 1 ? len : sizeof json - 1; /* top-level fields come first */
    memcpy(json, body, len);
    json[len] = '\0';
    agent_response_free(r);
    if (key == NULL) {
        return 0;
    }
    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(json, pat);
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, int n, double q) {
    int i = (int)(q * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : (i >= n ? n - 1 : i)];
}

static void row(const char *label, const agent *a, const agent *admin_agent, const char *scheme,
                const char *url, int n) {
    double *lat = malloc(sizeof(double) * (size_t)n);
    double t0, total;
    long connections;
    int i;

    if (lat == NULL) {
        exit(1);
    }
    admin(admin_agent, "/reset", NULL);
    t0 = now_ms();
    for (i = 0; i < n; i++) {
        agent_response *r = NULL;
        double t = now_ms();
        agent_code c = agent_request(a, "GET", url, NULL, 0, NULL, 0, 10000, &r);
        if (c != AGENT_CODE_OK) {
            die(url, c);
        }
        if (agent_response_status(r) != 200) {
            fprintf(stderr, "demo: %s: status %u\n", url, (unsigned)agent_response_status(r));
            exit(1);
        }
        agent_response_free(r);
        lat[i] = now_ms() - t;
    }
    total = now_ms() - t0;
    connections = admin(admin_agent, "/stats", "accepted");
    qsort(lat, (size_t)n, sizeof lat[0], cmp_double);
    printf("| C | %s | %s | %d | %ld | %.0f | %.3f | %.3f |\n", label, scheme, n, connections,
           n / (total / 1e3), percentile(lat, n, 0.50), percentile(lat, n, 0.99));
    fflush(stdout);
    free(lat);
}

/* https agents need the demo CA: built from options (keep_alive + ca_file). */
static agent *tls_agent(bool keep_alive, const char *ca_file) {
    agent *a = NULL;
    agent_options *o = agent_options_new();
    agent_code c;
    if (o == NULL) {
        exit(1);
    }
    agent_options_set_keep_alive(o, keep_alive);
    agent_options_set_ca_file(o, ca_file);
    c = agent_new_with_options(o, &a);
    agent_options_free(o);
    if (c != AGENT_CODE_OK) {
        die("agent_new_with_options", c);
    }
    return a;
}

int main(void) {
    const char *http = env("DEMO_HTTP_URL"), *https = env("DEMO_HTTPS_URL");
    const char *ca = env("DEMO_CA_FILE");
    const char *req = getenv("DEMO_REQUESTS");
    int n = req ? atoi(req) : 200;
    /* One process, both settings at once. */
    agent *on = agent_new(true, 1000);
    agent *off = agent_new(false, 1000);
    agent *tls_on = tls_agent(true, ca);
    agent *tls_off = tls_agent(false, ca);
    agent *admin_agent = agent_new(false, 0);

    if (n <= 0) {
        n = 200;
    }
    if (on == NULL || off == NULL || admin_agent == NULL) {
        char msg[512];
        agent_last_error(msg, sizeof msg); /* agent_new gives NULL and a message, no code */
        fprintf(stderr, "demo: agent_new failed: %s\n", msg);
        return 1;
    }
    row("agent_new(false, 1000)", off, admin_agent, "http", http, n);
    row("agent_new(true, 1000)", on, admin_agent, "http", http, n);
    row("options keep_alive=false +ca_file", tls_off, admin_agent, "https", https, n);
    row("options keep_alive=true +ca_file", tls_on, admin_agent, "https", https, n);
    agent_free(on);
    agent_free(off);
    agent_free(tls_on);
    agent_free(tls_off);
    agent_free(admin_agent);
    return 0;
}
