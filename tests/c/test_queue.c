/* test_queue.c: the event queue driven by the test's own epoll loop: thousands of requests,
 * batches, streamed bodies, errors with messages, cancellation, agent and queue free. */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "tests.h"

/* An epoll instance of the test's own, watching the queue's descriptor. */
static int loop_new(const agent_queue *q) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, agent_queue_fd(q), &ev) != 0) {
        close(ep);
        return -1;
    }
    return ep;
}

/* Waits (the test's loop) until the queue's descriptor is readable or `ms` pass. */
static bool loop_wait(int ep, int ms) {
    struct epoll_event ev;
    return epoll_wait(ep, &ev, 1, ms) == 1;
}

void test_queue_many_with_epoll(void) {
    enum { IN_FLIGHT = 64, BATCH = 16 };
    char url[256];
    int n = ts_light() ? 300 : 3000, submitted = 0, completed = 0, batches = 0, most = 0, i;
    unsigned char *seen = calloc((size_t)n, 1);
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event evs[BATCH];
    agent_pool_stats st;
    ts_stats ss;
    double deadline = ts_now_ms() + 60000.0 * ts_time_scale();
    int ep;

    CHECK(seen != NULL && a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    CHECK(agent_queue_fd(q) >= 0);
    ep = loop_new(q);
    CHECK(ep >= 0);
    CHECK(ts_admin_reset(&ts_srv) == 0);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/bytes?bytes=100");
    for (; submitted < IN_FLIGHT; submitted++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 30000,
                                      (uint64_t)submitted, NULL),
                   AGENT_CODE_OK);
    }
    while (completed < n && ts_now_ms() < deadline) {
        size_t got = 0;
        if (!loop_wait(ep, 1000)) {
            continue;
        }
        CHECK_CODE(agent_queue_drain(q, evs, BATCH, 0, &got), AGENT_CODE_OK);
        CHECK(got <= BATCH);
        if (got > 0) {
            batches++;
        }
        if ((int)got > most) {
            most = (int)got;
        }
        for (size_t k = 0; k < got; k++) {
            const uint8_t *body = NULL;
            size_t len = 0;
            CHECK_MSG(evs[k].code == AGENT_CODE_OK, "token %llu: %s (%s)",
                      (unsigned long long)evs[k].token, agent_code_name(evs[k].code),
                      evs[k].message ? evs[k].message : "");
            CHECK_EQ(evs[k].kind, AGENT_EVENT_RESPONSE);
            CHECK(evs[k].token < (uint64_t)n);
            CHECK_MSG(seen[evs[k].token] == 0, "token %llu reported twice",
                      (unsigned long long)evs[k].token);
            seen[evs[k].token] = 1;
            CHECK(evs[k].message == NULL && evs[k].stream == NULL);
            CHECK_EQ(agent_response_status(evs[k].response), 200);
            CHECK_CODE(agent_response_body(evs[k].response, &body, &len), AGENT_CODE_OK);
            CHECK_EQ(len, 100);
            agent_response_free(evs[k].response);
            completed++;
            if (submitted < n) {
                CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 30000,
                                              (uint64_t)submitted, NULL),
                           AGENT_CODE_OK);
                submitted++;
            }
        }
    }
    CHECK_EQ(completed, n);
    for (i = 0; i < n; i++) {
        CHECK_MSG(seen[i] == 1, "token %d never reported", i);
    }
    CHECK_EQ(agent_queue_pending(q), 0);
    CHECK(most > 1); /* events came in batches */
    CHECK(batches < n);
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, (uint64_t)n);
    CHECK_EQ(st.errors, 0);
    CHECK_EQ(st.reused_requests, (uint64_t)n - st.connections_opened);
    CHECK(st.connections_opened <= IN_FLIGHT);
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.requests, n);
    CHECK_EQ(ss.accepted, (long)st.connections_opened);
    close(ep);
    agent_queue_free(q);
    agent_free(a);
    free(seen);
}

void test_queue_streams_both_ways(void) {
    enum { SIZE = 300000 };
    char url[256], upload[256];
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event ev;
    agent_stream *s = NULL;
    size_t got = 0, total = 0;
    int reads = 0, heads = 0;
    double deadline = ts_now_ms() + 30000.0 * ts_time_scale();
    static uint8_t body[SIZE];
    agent_response_parts head;

    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/bytes?bytes=300000");
    CHECK_CODE(agent_queue_submit_stream(q, a, "GET", url, NULL, 0, NULL, 0, NULL, 30000, 7, NULL),
               AGENT_CODE_OK);
    /* No loop of its own: the drain waits. */
    while (s == NULL && ts_now_ms() < deadline) {
        CHECK_CODE(agent_queue_drain(q, &ev, 1, 1000, &got), AGENT_CODE_OK);
        if (got == 1) {
            heads++;
            CHECK_EQ(ev.kind, AGENT_EVENT_HEAD);
            CHECK_EQ(ev.token, 7);
            CHECK_CODE(ev.code, AGENT_CODE_OK);
            CHECK(ev.stream != NULL && ev.response == NULL);
            s = ev.stream;
        }
    }
    CHECK(s != NULL);
    CHECK_CODE(agent_stream_head(s, &head), AGENT_CODE_OK);
    CHECK_EQ(head.status, 200);
    CHECK_CODE(agent_queue_read(q, s, 8), AGENT_CODE_OK);
    /* One read at a time. */
    CHECK_CODE(agent_queue_read(q, s, 9), AGENT_CODE_INVALID_ARGUMENT);
    for (;;) {
        CHECK(ts_now_ms() < deadline);
        CHECK_CODE(agent_queue_drain(q, &ev, 1, 1000, &got), AGENT_CODE_OK);
        if (got == 0) {
            continue;
        }
        CHECK_EQ(ev.kind, AGENT_EVENT_DATA);
        CHECK_EQ(ev.token, 8);
        CHECK_CODE(ev.code, AGENT_CODE_OK);
        reads++;
        if (ev.len == 0) {
            break;
        }
        CHECK(total + ev.len <= SIZE);
        memcpy(body + total, ev.data, ev.len);
        total += ev.len;
        CHECK_CODE(agent_queue_read(q, s, 8), AGENT_CODE_OK);
    }
    CHECK_EQ(total, SIZE);
    for (size_t i = 0; i < SIZE; i += 997) {
        CHECK_EQ(body[i], (uint8_t)('a' + i % 26));
    }
    CHECK(reads > 2);
    CHECK_EQ(heads, 1);
    agent_stream_free(s);

    /* A body uploaded from bytes through the streaming form, echoed back. */
    ts_url(upload, sizeof upload, "http", ts_srv.http_port, "/echo?echo=1");
    s = NULL;
    CHECK_CODE(agent_queue_submit_stream(q, a, "POST", upload, NULL, 0, body, 1000, NULL, 30000,
                                         10, NULL),
               AGENT_CODE_OK);
    while (s == NULL && ts_now_ms() < deadline) {
        CHECK_CODE(agent_queue_drain(q, &ev, 1, 1000, &got), AGENT_CODE_OK);
        if (got == 1) {
            CHECK_CODE(ev.code, AGENT_CODE_OK);
            s = ev.stream;
        }
    }
    CHECK(s != NULL);
    agent_stream_free(s);
    agent_queue_free(q);
    agent_free(a);
}

void test_queue_errors_carry_their_message(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event ev;
    size_t got = 0;
    double deadline = ts_now_ms() + 10000.0 * ts_time_scale();

    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    ts_url(url, sizeof url, "http", ts_refusing_port(), "/");
    CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 5000, 42, NULL),
               AGENT_CODE_OK);
    while (got == 0 && ts_now_ms() < deadline) {
        CHECK_CODE(agent_queue_drain(q, &ev, 1, 1000, &got), AGENT_CODE_OK);
    }
    CHECK_EQ(got, 1);
    CHECK_EQ(ev.token, 42);
    CHECK_EQ(ev.kind, AGENT_EVENT_RESPONSE);
    CHECK_CODE(ev.code, AGENT_CODE_CONNECT_REFUSED);
    CHECK(ev.response == NULL);
    CHECK(ev.message != NULL && strstr(ev.message, "refused") != NULL);
    /* Refused submissions produce no event. */
    CHECK_CODE(agent_queue_submit(q, a, "GET", "ftp://x/", NULL, 0, NULL, 0, 0, 43, NULL),
               AGENT_CODE_INVALID_URL);
    CHECK_CODE(agent_queue_drain(q, &ev, 1, 50, &got), AGENT_CODE_OK);
    CHECK_EQ(got, 0);
    CHECK_EQ(agent_queue_pending(q), 0);
    agent_queue_free(q);
    agent_free(a);
}

void test_queue_cancel_and_agent_free(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event evs[8];
    uint64_t ids[3];
    int seen[3] = {0, 0, 0}, done = 0;
    size_t got = 0;
    double t0, deadline = ts_now_ms() + 10000.0 * ts_time_scale();

    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/slow?delay_ms=5000");
    for (int i = 0; i < 3; i++) {
        CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 0, (uint64_t)i, &ids[i]),
                   AGENT_CODE_OK);
    }
    CHECK_CODE(agent_queue_drain(q, evs, 8, 100, &got), AGENT_CODE_OK); /* sent, waiting */
    CHECK_EQ(got, 0);
    CHECK_CODE(agent_request_cancel(a, ids[1]), AGENT_CODE_OK);
    CHECK_CODE(agent_queue_drain(q, evs, 8, 2000, &got), AGENT_CODE_OK);
    CHECK_EQ(got, 1);
    CHECK_EQ(evs[0].token, 1);
    CHECK_CODE(evs[0].code, AGENT_CODE_CANCELLED);
    seen[1]++;
    done++;
    /* Freeing the agent does not wait for the queue's requests: they end at the next drain. */
    t0 = ts_now_ms();
    agent_free(a);
    CHECK(ts_now_ms() - t0 < 2000.0 * ts_time_scale());
    while (done < 3 && ts_now_ms() < deadline) {
        CHECK_CODE(agent_queue_drain(q, evs, 8, 1000, &got), AGENT_CODE_OK);
        for (size_t k = 0; k < got; k++) {
            CHECK(evs[k].token < 3);
            CHECK_CODE(evs[k].code, AGENT_CODE_CANCELLED);
            CHECK(evs[k].response == NULL && evs[k].message != NULL);
            seen[evs[k].token]++;
            done++;
        }
    }
    CHECK_EQ(seen[0], 1);
    CHECK_EQ(seen[1], 1);
    CHECK_EQ(seen[2], 1);
    CHECK_EQ(agent_queue_pending(q), 0);
    agent_queue_free(q);
}

void test_queue_free_with_in_flight(void) {
    char url[256], big[256];
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event ev;
    agent_stream *s = NULL;
    size_t got = 0;
    agent_pool_stats st;
    double t0, deadline = ts_now_ms() + 10000.0 * ts_time_scale();

    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/slow?delay_ms=5000");
    ts_url(big, sizeof big, "http", ts_srv.http_port, "/bytes?bytes=2000000");
    CHECK_CODE(agent_queue_submit(q, a, "GET", url, NULL, 0, NULL, 0, 0, 1, NULL), AGENT_CODE_OK);
    CHECK_CODE(agent_queue_submit_stream(q, a, "GET", big, NULL, 0, NULL, 0, NULL, 0, 2, NULL),
               AGENT_CODE_OK);
    while (s == NULL && ts_now_ms() < deadline) {
        CHECK_CODE(agent_queue_drain(q, &ev, 1, 1000, &got), AGENT_CODE_OK);
        if (got == 1) {
            CHECK_EQ(ev.token, 2);
            s = ev.stream;
        }
    }
    CHECK(s != NULL);
    CHECK_CODE(agent_queue_read(q, s, 3), AGENT_CODE_OK);
    CHECK_EQ(agent_queue_pending(q), 2); /* the slow request and the read */
    /* Freed with a request and a read in flight: both are dropped, their connections
     * closed; the handed-out stream stays valid. */
    agent_queue_free(q);
    CHECK_CODE(agent_stream_head(s, &(agent_response_parts){0}), AGENT_CODE_OK);
    agent_stream_free(s);
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, 2);
    CHECK_EQ(st.errors, 2);
    CHECK_EQ(st.idle, 0);
    /* Both sockets are closed (their idle monitors report it shortly). */
    deadline = ts_now_ms() + 5000.0 * ts_time_scale();
    while (st.active > 0 && ts_now_ms() < deadline) {
        ts_sleep_ms(10);
        CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    }
    CHECK_EQ(st.active, 0);
    CHECK_EQ(st.connections_closed, st.connections_opened);
    t0 = ts_now_ms();
    agent_free(a);
    CHECK(ts_now_ms() - t0 < 1000.0 * ts_time_scale());
}

void test_queue_bad_arguments(void) {
    agent *a = agent_new(true, 1000);
    agent_queue *q = NULL;
    agent_event ev;
    size_t got = 0;

    CHECK(a != NULL);
    CHECK_CODE(agent_queue_new(NULL), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_new(&q), AGENT_CODE_OK);
    CHECK_EQ(agent_queue_fd(NULL), -1);
    CHECK_EQ(agent_queue_pending(NULL), 0);
    CHECK_CODE(agent_queue_drain(NULL, &ev, 1, 0, &got), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_drain(q, NULL, 1, 0, &got), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_drain(q, &ev, 0, 0, &got), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_drain(q, &ev, 1, 0, NULL), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_submit(NULL, a, "GET", "http://127.0.0.1:1/", NULL, 0, NULL, 0, 0, 1,
                                  NULL),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_submit(q, NULL, "GET", "http://127.0.0.1:1/", NULL, 0, NULL, 0, 0, 1,
                                  NULL),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_submit(q, a, NULL, "http://127.0.0.1:1/", NULL, 0, NULL, 0, 0, 1, NULL),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_submit_stream(q, NULL, "GET", "http://127.0.0.1:1/", NULL, 0, NULL, 0,
                                         NULL, 0, 1, NULL),
               AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_read(q, NULL, 1), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_queue_read(NULL, NULL, 1), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_EQ(agent_queue_pending(q), 0);
    CHECK_CODE(agent_queue_drain(q, &ev, 1, 0, &got), AGENT_CODE_OK);
    CHECK_EQ(got, 0);
    agent_queue_free(q);
    agent_queue_free(NULL);
    agent_free(a);
}
