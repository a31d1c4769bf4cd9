/*
 * Events from inside the engine (agent_options_set_events): the exact sequence for a new
 * connection, a reused one, a retried stale one and a TLS failure; the reasons connections
 * close; the mask; headers only when asked for, and credentials never.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests.h"

#define MAX_EVENTS 64

typedef struct {
    agent_trace_kind kind;
    uint64_t connection;
    uint32_t family, status, version;
    bool reused;
    agent_code code;
    char address[64];
    char detail[256];
    char headers[1024];
    bool has_headers;
} rec;

typedef struct {
    pthread_mutex_t mu;
    rec ev[MAX_EVENTS];
    int n;
} recorder;

static void on_event(void *userdata, const agent_trace_event *e) {
    recorder *r = userdata;
    pthread_mutex_lock(&r->mu);
    if (r->n < MAX_EVENTS) {
        rec *x = &r->ev[r->n++];
        memset(x, 0, sizeof *x);
        x->kind = e->kind;
        x->connection = e->connection;
        x->family = e->family;
        x->status = e->status;
        x->version = e->version;
        x->reused = e->reused;
        x->code = e->code;
        if (e->address) snprintf(x->address, sizeof x->address, "%s", e->address);
        snprintf(x->detail, sizeof x->detail, "%s", e->detail);
        if (e->headers) {
            x->has_headers = true;
            snprintf(x->headers, sizeof x->headers, "%s", e->headers);
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static void rec_init(recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

/* The kinds recorded so far, leaving out connection-closed events (they come from each
 * connection's monitor, in no fixed order with a request's own events). */
static int kinds(recorder *r, agent_trace_kind *out, int cap) {
    int i, n = 0;
    pthread_mutex_lock(&r->mu);
    for (i = 0; i < r->n && n < cap; i++) {
        if (r->ev[i].kind != AGENT_TRACE_CONNECTION_CLOSED) out[n++] = r->ev[i].kind;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Waits up to 5 s for a connection-closed event of `conn`; copies its detail. */
static bool wait_closed(recorder *r, uint64_t conn, char *detail, size_t cap) {
    int tries, i;
    for (tries = 0; tries < 500; tries++) {
        bool found = false;
        pthread_mutex_lock(&r->mu);
        for (i = 0; i < r->n; i++) {
            if (r->ev[i].kind == AGENT_TRACE_CONNECTION_CLOSED && r->ev[i].connection == conn) {
                snprintf(detail, cap, "%s", r->ev[i].detail);
                found = true;
            }
        }
        pthread_mutex_unlock(&r->mu);
        if (found) return true;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    return false;
}

static agent *traced(recorder *r, bool keep_alive, uint32_t mask, bool with_ca) {
    agent *a = NULL;
    agent_options *o = agent_options_new();
    if (o == NULL) return NULL;
    if (agent_options_set_keep_alive(o, keep_alive) != AGENT_CODE_OK ||
        agent_options_set_events(o, on_event, r) != AGENT_CODE_OK ||
        agent_options_set_event_mask(o, mask) != AGENT_CODE_OK ||
        (with_ca && agent_options_set_ca_file(o, ts_srv.ca_pem_path) != AGENT_CODE_OK) ||
        agent_new_with_options(o, &a) != AGENT_CODE_OK) {
        a = NULL;
    }
    agent_options_free(o);
    return a;
}

void test_events_new_reused_and_stale(void) {
    recorder r;
    agent_trace_kind k[MAX_EVENTS];
    char url[256], detail[256];
    agent_response *resp = NULL;
    uint64_t first;
    agent *a;
    int n;
    rec_init(&r);
    a = traced(&r, true, 0, false);
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/events");

    /* A new connection. */
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    n = kinds(&r, k, MAX_EVENTS);
    CHECK_EQ(n, 4);
    CHECK_EQ(k[0], AGENT_TRACE_CONNECT_START);
    CHECK_EQ(k[1], AGENT_TRACE_CONNECT_DONE);
    CHECK_EQ(k[2], AGENT_TRACE_REQUEST_SENT);
    CHECK_EQ(k[3], AGENT_TRACE_RESPONSE_HEAD);
    first = r.ev[0].connection;
    CHECK(first != 0);
    CHECK_EQ(r.ev[0].family, 4);
    CHECK(strncmp(r.ev[0].address, "127.0.0.1:", 10) == 0);
    CHECK_EQ(r.ev[1].code, AGENT_CODE_OK);
    CHECK_EQ(r.ev[2].connection, first);
    CHECK(!r.ev[2].reused);
    CHECK(strcmp(r.ev[2].detail, "GET /events HTTP/1.1") == 0);
    CHECK(!r.ev[2].has_headers); /* never without AGENT_TRACE_WITH_HEADERS */
    CHECK_EQ(r.ev[3].status, 200);
    CHECK_EQ(r.ev[3].version, 11);

    /* A reused one: two events on the same connection. */
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    n = kinds(&r, k, MAX_EVENTS);
    CHECK_EQ(n, 6);
    CHECK_EQ(k[4], AGENT_TRACE_REQUEST_SENT);
    CHECK_EQ(k[5], AGENT_TRACE_RESPONSE_HEAD);
    CHECK(r.ev[4].reused);
    CHECK_EQ(r.ev[4].connection, first);

    /* A stale one: the server resets the reused connection; the GET goes again on a new
     * connection, and the old one closes because its request failed. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/?rst_if_reused=1");
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(resp), 200);
    agent_response_free(resp);
    n = kinds(&r, k, MAX_EVENTS);
    CHECK_EQ(n, 12);
    CHECK_EQ(k[6], AGENT_TRACE_REQUEST_SENT);
    CHECK_EQ(k[7], AGENT_TRACE_RETRY);
    CHECK_EQ(k[8], AGENT_TRACE_CONNECT_START);
    CHECK_EQ(k[9], AGENT_TRACE_CONNECT_DONE);
    CHECK_EQ(k[10], AGENT_TRACE_REQUEST_SENT);
    CHECK_EQ(k[11], AGENT_TRACE_RESPONSE_HEAD);
    CHECK(wait_closed(&r, first, detail, sizeof detail));
    CHECK(strcmp(detail, "a request on it failed") == 0);
    {
        /* The retry names the failure and the connection it happened on. */
        int i, seen = 0;
        pthread_mutex_lock(&r.mu);
        for (i = 0; i < r.n; i++) {
            if (r.ev[i].kind == AGENT_TRACE_RETRY) {
                seen++;
                CHECK_EQ(r.ev[i].connection, first);
                CHECK(r.ev[i].code != AGENT_CODE_OK);
                CHECK(strlen(r.ev[i].detail) > 0);
            }
            if (r.ev[i].kind == AGENT_TRACE_REQUEST_SENT && r.ev[i].connection != first) {
                CHECK(!r.ev[i].reused);
            }
        }
        pthread_mutex_unlock(&r.mu);
        CHECK_EQ(seen, 1);
    }
    agent_free(a);
    pthread_mutex_destroy(&r.mu);
}

void test_events_tls_failure_and_close_reasons(void) {
    recorder r;
    agent_trace_kind k[MAX_EVENTS];
    char url[256], detail[256];
    agent_response *resp = NULL;
    agent *a;
    int n;

    /* TLS to a server whose certificate names another host. */
    rec_init(&r);
    a = traced(&r, true, 0, true);
    CHECK(a != NULL);
    ts_url(url, sizeof url, "https", ts_srv.https_wrong_host_port, "/");
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_TLS);
    n = kinds(&r, k, MAX_EVENTS);
    CHECK_EQ(n, 3);
    CHECK_EQ(k[0], AGENT_TRACE_CONNECT_START);
    CHECK_EQ(k[1], AGENT_TRACE_CONNECT_DONE);
    CHECK_EQ(k[2], AGENT_TRACE_TLS_DONE);
    CHECK_EQ(r.ev[2].code, AGENT_CODE_TLS);
    CHECK(strstr(r.ev[2].detail, "failed") != NULL);

    /* A good handshake says what it chose. */
    ts_url(url, sizeof url, "https", ts_srv.https_port, "/");
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    n = kinds(&r, k, MAX_EVENTS);
    CHECK_EQ(n, 8);
    CHECK_EQ(k[5], AGENT_TRACE_TLS_DONE);
    CHECK_EQ(r.ev[5].code, AGENT_CODE_OK);
    CHECK(strncmp(r.ev[5].detail, "TLSv1.3, ALPN http/1.1, new session", 35) == 0);
    agent_free(a);
    pthread_mutex_destroy(&r.mu);

    /* Keep-alive off: the connection closes after its response, and says why. */
    rec_init(&r);
    a = traced(&r, false, 0, false);
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/off");
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    CHECK(wait_closed(&r, r.ev[0].connection, detail, sizeof detail));
    CHECK(strcmp(detail, "keep-alive is off") == 0);
    agent_free(a);
    pthread_mutex_destroy(&r.mu);

    /* Freeing the agent closes its idle connection: "the agent was closed". */
    rec_init(&r);
    a = traced(&r, true, 1u << AGENT_TRACE_CONNECTION_CLOSED | 1u << AGENT_TRACE_CONNECT_START,
               false);
    CHECK(a != NULL);
    CHECK_CODE(t_get(a, url, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    agent_free(a);
    CHECK(wait_closed(&r, r.ev[0].connection, detail, sizeof detail));
    CHECK(strcmp(detail, "the agent was closed") == 0);
    pthread_mutex_destroy(&r.mu);
}

void test_events_mask_and_headers(void) {
    recorder r;
    char url[256];
    agent_response *resp = NULL;
    agent_header h[2] = {{"Authorization", "Bearer top-secret"}, {"X-Trace", "visible"}};
    agent *a;
    agent_options *o;
    int i;

    /* Only response heads, with headers. */
    rec_init(&r);
    a = traced(&r, true, 1u << AGENT_TRACE_RESPONSE_HEAD | 1u << AGENT_TRACE_REQUEST_SENT |
                             AGENT_TRACE_WITH_HEADERS,
               false);
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/headers");
    CHECK_CODE(agent_request(a, "GET", url, h, 2, NULL, 0, 10000, &resp), AGENT_CODE_OK);
    agent_response_free(resp);
    agent_free(a);
    CHECK_EQ(r.n, 2);
    CHECK_EQ(r.ev[0].kind, AGENT_TRACE_REQUEST_SENT);
    CHECK_EQ(r.ev[1].kind, AGENT_TRACE_RESPONSE_HEAD);
    for (i = 0; i < r.n; i++) {
        CHECK(r.ev[i].has_headers);
        CHECK(strstr(r.ev[i].headers, "top-secret") == NULL);
    }
    CHECK(strstr(r.ev[0].headers, "authorization: [redacted]\r\n") != NULL);
    CHECK(strstr(r.ev[0].headers, "x-trace: visible\r\n") != NULL);
    CHECK(strstr(r.ev[1].headers, "content-length: ") != NULL);
    pthread_mutex_destroy(&r.mu);

    /* Unknown mask bits are refused at creation; NULL options are refused by the setters. */
    o = agent_options_new();
    CHECK(o != NULL);
    CHECK_CODE(agent_options_set_event_mask(o, 1u << 20), AGENT_CODE_OK);
    a = NULL;
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_INVALID_OPTION);
    CHECK(strstr(ts_last_error(), "event_mask") != NULL);
    /* A NULL callback is no callback. */
    CHECK_CODE(agent_options_set_event_mask(o, 0), AGENT_CODE_OK);
    CHECK_CODE(agent_options_set_events(o, NULL, NULL), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &a), AGENT_CODE_OK);
    agent_free(a);
    agent_options_free(o);
    CHECK_CODE(agent_options_set_events(NULL, on_event, NULL), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_options_set_event_mask(NULL, 0), AGENT_CODE_INVALID_ARGUMENT);
}

typedef struct {
    agent *a;
    const char *url;
    agent_code code;
} pre_job;

static void *pre_get(void *arg) {
    pre_job *j = arg;
    agent_response *r = NULL;
    j->code = t_get(j->a, j->url, &r);
    agent_response_free(r);
    return NULL;
}

/* agent_preconnect: four warm TLS connections before any request; the next four concurrent
 * requests open none. */
void test_preconnect(void) {
    char url[256];
    agent_pool_stats st;
    ts_stats srv;
    pthread_t th[4];
    pre_job jobs[4];
    agent *a = t_agent_with_ca(true), *off = t_agent_with_ca(false);
    int i, tries;
    CHECK(a != NULL && off != NULL);
    CHECK_EQ(ts_admin_reset(&ts_srv), 0);
    ts_url(url, sizeof url, "https", ts_srv.https_port, "/warm");

    CHECK_CODE(agent_preconnect(a, url, 4), AGENT_CODE_OK);
    for (tries = 0; tries < 500; tries++) {
        CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
        if (st.idle == 4) break;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    CHECK_EQ(st.idle, 4);
    CHECK_EQ(st.connections_opened, 4);
    CHECK_EQ(st.requests, 0);
    CHECK_EQ(ts_admin_stats(&ts_srv, &srv), 0);
    CHECK_EQ(srv.accepted, 4);
    CHECK_EQ(srv.requests, 0);
    /* Asking again for fewer than exist opens nothing. */
    CHECK_CODE(agent_preconnect(a, url, 2), AGENT_CODE_OK);

    for (i = 0; i < 4; i++) {
        jobs[i] = (pre_job){a, url, AGENT_CODE_PANIC};
        CHECK(pthread_create(&th[i], NULL, pre_get, &jobs[i]) == 0);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_CODE(jobs[i].code, AGENT_CODE_OK);
    }
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.connections_opened, 4);
    CHECK_EQ(st.reused_requests, 4);
    CHECK_EQ(ts_admin_stats(&ts_srv, &srv), 0);
    CHECK_EQ(srv.accepted, 4);

    /* Keep-alive off: nothing to warm. Bad arguments get their codes. */
    CHECK_CODE(agent_preconnect(off, url, 4), AGENT_CODE_OK);
    CHECK_CODE(agent_stats(off, &st), AGENT_CODE_OK);
    CHECK_EQ(st.connections_opened, 0);
    CHECK_CODE(agent_preconnect(a, "not a url", 1), AGENT_CODE_INVALID_URL);
    CHECK_CODE(agent_preconnect(a, NULL, 1), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_preconnect(NULL, url, 1), AGENT_CODE_INVALID_ARGUMENT);
    agent_free(a);
    agent_free(off);
}
