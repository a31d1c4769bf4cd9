/* test_async.c: async requests, cancellation, agent_free with requests in flight, callbacks
 * that call back into the library, and one agent shared by threads. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests.h"

#define MAX_SLOTS 128

typedef struct tracker tracker;

typedef struct {
    tracker *t;
    int calls;
    agent_code code;
    uint16_t status;
    bool had_response;
    char message[256];
} slot;

struct tracker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    slot slots[MAX_SLOTS];
};

static void tracker_init(tracker *t) {
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
}

static void tracker_destroy(tracker *t) {
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
}

/* Waits until `n` callbacks have run or `ms` pass; returns the number that ran. */
static int tracker_wait(tracker *t, int n, int ms) {
    struct timespec deadline;
    int done;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->mu);
    while (t->done < n) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    done = t->done;
    pthread_mutex_unlock(&t->mu);
    return done;
}

static void on_done(void *userdata, agent_code code, agent_response *r) {
    slot *s = userdata;
    tracker *t = s->t;
    char msg[256] = "";
    if (code != AGENT_CODE_OK) {
        agent_last_error(msg, sizeof msg);
    }
    pthread_mutex_lock(&t->mu);
    s->calls++;
    s->code = code;
    s->had_response = r != NULL;
    s->status = agent_response_status(r);
    memcpy(s->message, msg, sizeof msg);
    t->done++;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    agent_response_free(r);
}

void test_async_many(void) {
    char url[256];
    int n = ts_light() ? 20 : 100, i, j;
    uint64_t ids[MAX_SLOTS];
    tracker *t = malloc(sizeof *t);
    agent *a = agent_new(true, 1000);
    agent_pool_stats st;
    ts_stats ss;

    CHECK(t != NULL && a != NULL);
    tracker_init(t);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/async?delay_ms=20");
    for (i = 0; i < n; i++) {
        t->slots[i].t = t;
        CHECK_CODE(agent_request_async(a, "GET", url, NULL, 0, NULL, 0, 30000, on_done,
                                       &t->slots[i], &ids[i]),
                   AGENT_CODE_OK);
    }
    CHECK_EQ(tracker_wait(t, n, 30000 * ts_time_scale()), n);
    ts_sleep_ms(100); /* a second call would show up here */
    for (i = 0; i < n; i++) {
        CHECK_MSG(t->slots[i].calls == 1, "request %d: %d callbacks", i, t->slots[i].calls);
        CHECK_MSG(t->slots[i].code == AGENT_CODE_OK, "request %d: %s (%s)", i,
                  agent_code_name(t->slots[i].code), t->slots[i].message);
        CHECK(t->slots[i].had_response);
        CHECK_EQ(t->slots[i].status, 200);
        for (j = 0; j < i; j++) {
            CHECK(ids[i] != ids[j]);
        }
    }
    CHECK_EQ(t->done, n);
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.requests, n);
    CHECK(ss.max_open > 1); /* they really ran concurrently */
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, (uint64_t)n);
    CHECK_EQ(st.active, 0);
    CHECK_EQ(st.idle, st.connections_opened - st.connections_closed);
    agent_free(a);
    tracker_destroy(t);
    free(t);
}

/* Polls until no server-side socket of the http port is ESTABLISHED any more (each one is
 * in CLOSE_WAIT, i.e. the client sent its FIN, or gone). The test server cannot notice a
 * client's FIN while it sleeps in delay_ms, so the kernel is asked. */
static bool wait_client_fins(int ms) {
    double deadline = ts_now_ms() + ms;
    do {
        if (ts_tcp_count(ts_srv.http_port, TS_TCP_ESTABLISHED) == 0) {
            return true;
        }
        ts_sleep_ms(10);
    } while (ts_now_ms() < deadline);
    return false;
}

void test_free_with_in_flight(void) {
    char head_url[256], body_url[256];
    enum { N_HEAD = 3, N_BODY = 2, N = N_HEAD + N_BODY };
    int i;
    tracker *t = malloc(sizeof *t);
    agent *a = agent_new(true, 1000);
    ts_stats ss;
    double deadline;

    CHECK(t != NULL && a != NULL);
    tracker_init(t);
    /* Three wait for the head (delay_ms), two are mid-body (a chunk every 100 ms). */
    ts_url(head_url, sizeof head_url, "http", ts_srv.http_port, "/slow?delay_ms=3000");
    ts_url(body_url, sizeof body_url, "http", ts_srv.http_port,
           "/slow-body?bytes=100000&chunked=1&chunks=100&chunk_delay_ms=100");
    for (i = 0; i < N; i++) {
        t->slots[i].t = t;
        CHECK_CODE(agent_request_async(a, "GET", i < N_HEAD ? head_url : body_url, NULL, 0, NULL,
                                       0, 0, on_done, &t->slots[i], NULL),
                   AGENT_CODE_OK);
    }
    /* Wait until the server holds all of them. */
    deadline = ts_now_ms() + 5000.0 * ts_time_scale();
    do {
        CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
        if (ss.requests == N) {
            break;
        }
        ts_sleep_ms(10);
    } while (ts_now_ms() < deadline);
    CHECK_EQ(ss.requests, N);
    CHECK_EQ(ss.open, N);
    ts_sleep_ms(150); /* the chunked ones are now mid-body */
    CHECK_EQ(t->done, 0);
    CHECK_EQ(ts_tcp_count(ts_srv.http_port, TS_TCP_ESTABLISHED), N);

    agent_free(a);

    /* agent_free waited for the callbacks: each ran once, cancelled, without a response. */
    pthread_mutex_lock(&t->mu);
    i = t->done;
    pthread_mutex_unlock(&t->mu);
    CHECK_EQ(i, N);
    for (i = 0; i < N; i++) {
        CHECK_EQ(t->slots[i].calls, 1);
        CHECK_CODE(t->slots[i].code, AGENT_CODE_CANCELLED);
        CHECK(!t->slots[i].had_response);
        CHECK(t->slots[i].message[0] != '\0');
    }
    /* Every connection was closed by the client: the kernel shows the FINs at once, and the
     * server, which watches its connections while it delays, counts each close. */
    CHECK_MSG(wait_client_fins(1000 * ts_time_scale()), "%d server sockets still ESTABLISHED",
              ts_tcp_count(ts_srv.http_port, TS_TCP_ESTABLISHED));
    deadline = ts_now_ms() + 1000.0 * ts_time_scale();
    do {
        CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
        if (ss.client_closed >= N) {
            break;
        }
        ts_sleep_ms(10);
    } while (ts_now_ms() < deadline);
    CHECK_EQ(ss.client_closed, N);
    CHECK_EQ(ss.open, 0);
    tracker_destroy(t);
    free(t);
}

typedef struct {
    const agent *a;
    const char *url;
    tracker *t;
    agent_code blocking_code;
    bool blocking_out_untouched;
    char blocking_message[256];
    agent_code stats_code;
    agent_code nested_code;
} reentry;

static void on_reentry(void *userdata, agent_code code, agent_response *r) {
    reentry *e = userdata;
    agent_response *const untouched = (agent_response *)&e->blocking_code;
    agent_response *inner = untouched;
    agent_pool_stats st;
    (void)code;
    agent_response_free(r);
    e->blocking_code = agent_request(e->a, "GET", e->url, NULL, 0, NULL, 0, 1000, &inner);
    agent_last_error(e->blocking_message, sizeof e->blocking_message);
    e->blocking_out_untouched = inner == untouched;
    if (inner != untouched) {
        agent_response_free(inner);
    }
    e->stats_code = agent_stats(e->a, &st);
    e->t->slots[1].t = e->t;
    e->nested_code = agent_request_async(e->a, "GET", e->url, NULL, 0, NULL, 0, 10000, on_done,
                                         &e->t->slots[1], NULL);
    /* Report this callback last: its fields are complete once `done` moves. */
    on_done(&e->t->slots[0], code, NULL);
}

void test_would_block_in_callback(void) {
    char url[256];
    tracker *t = malloc(sizeof *t);
    agent *a = agent_new(true, 1000);
    reentry e;

    CHECK(t != NULL && a != NULL);
    tracker_init(t);
    t->slots[0].t = t;
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/reentry");
    memset(&e, 0, sizeof e);
    e.a = a;
    e.url = url;
    e.t = t;
    CHECK_CODE(agent_request_async(a, "GET", url, NULL, 0, NULL, 0, 10000, on_reentry, &e, NULL),
               AGENT_CODE_OK);
    CHECK_EQ(tracker_wait(t, 2, 10000 * ts_time_scale()), 2);
    CHECK_CODE(t->slots[0].code, AGENT_CODE_OK);
    CHECK_CODE(e.blocking_code, AGENT_CODE_WOULD_BLOCK);
    CHECK(e.blocking_out_untouched);
    CHECK(e.blocking_message[0] != '\0');
    CHECK_CODE(e.stats_code, AGENT_CODE_OK);
    CHECK_CODE(e.nested_code, AGENT_CODE_OK);
    CHECK_CODE(t->slots[1].code, AGENT_CODE_OK);
    CHECK_EQ(t->slots[1].status, 200);
    agent_free(a);
    tracker_destroy(t);
    free(t);
}

void test_cancel(void) {
    char fast[256], slow[256];
    tracker *t = malloc(sizeof *t);
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    uint64_t id_fast = 0, id_slow = 0;
    ts_stats ss;
    double deadline;

    CHECK(t != NULL && a != NULL);
    tracker_init(t);
    t->slots[0].t = t;
    t->slots[1].t = t;
    ts_url(fast, sizeof fast, "http", ts_srv.http_port, "/fast");
    ts_url(slow, sizeof slow, "http", ts_srv.http_port,
           "/slow-body?bytes=100000&chunked=1&chunks=100&chunk_delay_ms=100");

    /* Cancelling a completed request: NOT_FOUND, and its pooled connection stays. */
    CHECK_CODE(agent_request_async(a, "GET", fast, NULL, 0, NULL, 0, 10000, on_done, &t->slots[0],
                                   &id_fast),
               AGENT_CODE_OK);
    CHECK_EQ(tracker_wait(t, 1, 10000 * ts_time_scale()), 1);
    CHECK_CODE(t->slots[0].code, AGENT_CODE_OK);
    CHECK_CODE(agent_request_cancel(a, id_fast), AGENT_CODE_NOT_FOUND);
    CHECK_CODE(t_get(a, fast, &r), AGENT_CODE_OK);
    CHECK(agent_response_reused(r));
    agent_response_free(r);

    /* Cancelling one in flight: its callback runs once with CANCELLED, its connection closes. */
    CHECK_CODE(agent_request_async(a, "GET", slow, NULL, 0, NULL, 0, 0, on_done, &t->slots[1],
                                   &id_slow),
               AGENT_CODE_OK);
    CHECK(id_slow != id_fast);
    deadline = ts_now_ms() + 5000.0 * ts_time_scale();
    do {
        CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
        ts_sleep_ms(5);
    } while (ss.requests < 3 && ts_now_ms() < deadline);
    CHECK_EQ(ss.requests, 3);
    ts_sleep_ms(150); /* mid-body */
    CHECK_EQ(t->done, 1);
    CHECK_CODE(agent_request_cancel(a, id_slow), AGENT_CODE_OK);
    CHECK_EQ(tracker_wait(t, 2, 5000 * ts_time_scale()), 2);
    CHECK_CODE(t->slots[1].code, AGENT_CODE_CANCELLED);
    CHECK(!t->slots[1].had_response);
    CHECK(wait_client_fins(1000 * ts_time_scale()));
    CHECK(ts_wait_open(&ts_srv, 0, 1000 * ts_time_scale()));
    CHECK_CODE(agent_request_cancel(a, id_slow), AGENT_CODE_NOT_FOUND);
    CHECK_CODE(agent_request_cancel(a, 0xFFFFFFFFFFFFull), AGENT_CODE_NOT_FOUND);

    /* The agent goes on, on a new connection. */
    CHECK_CODE(t_get(a, fast, &r), AGENT_CODE_OK);
    CHECK(!agent_response_reused(r));
    agent_response_free(r);
    CHECK_EQ(t->slots[0].calls, 1);
    CHECK_EQ(t->slots[1].calls, 1);
    agent_free(a);
    tracker_destroy(t);
    free(t);
}

typedef struct {
    const agent *a;
    const char *url;
    int requests;
    int ok;
} worker;

static void *worker_main(void *arg) {
    worker *w = arg;
    int i;
    for (i = 0; i < w->requests; i++) {
        agent_response *r = NULL;
        if (t_get(w->a, w->url, &r) == AGENT_CODE_OK && agent_response_status(r) == 200) {
            w->ok++;
        }
        agent_response_free(r);
    }
    return NULL;
}

void test_threads_share_agent(void) {
    enum { THREADS = 8 };
    char url[256];
    pthread_t th[THREADS];
    worker w[THREADS];
    int per = ts_light() ? 5 : 25, i;
    agent *a = agent_new(true, 1000);
    agent_pool_stats st;
    ts_stats ss;

    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/threads");
    for (i = 0; i < THREADS; i++) {
        w[i].a = a;
        w[i].url = url;
        w[i].requests = per;
        w[i].ok = 0;
        CHECK(pthread_create(&th[i], NULL, worker_main, &w[i]) == 0);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
    }
    for (i = 0; i < THREADS; i++) {
        CHECK_EQ(w[i].ok, per);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.requests, THREADS * per);
    CHECK(ss.accepted >= 1 && ss.accepted <= THREADS); /* never more than one per thread */
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, (uint64_t)(THREADS * per));
    CHECK_EQ(st.connections_opened, (uint64_t)ss.accepted);
    CHECK_EQ(st.reused_requests, (uint64_t)(THREADS * per - ss.accepted));
    agent_free(a);
}
