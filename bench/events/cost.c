/*
 * What events cost: blocking GETs at c=1 over one keep-alive connection, with events off
 * (the default), with a callback that counts them, and with the callback masked down to
 * one kind that never happens here. Prints requests per second for each, in rounds that
 * alternate the three, so that a noisy machine affects them alike.
 *
 *   cost URL [seconds-per-round] [rounds]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "keepalive_agent.h"

static atomic_ulong seen;

static void count(void *userdata, const agent_trace_event *e) {
    (void)userdata;
    (void)e;
    atomic_fetch_add_explicit(&seen, 1, memory_order_relaxed);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* mode 0: off; 1: every event to the callback; 2: callback, mask = retry only. */
static agent *make(int mode) {
    agent_options *o = agent_options_new();
    agent *a = NULL;
    if (mode > 0) agent_options_set_events(o, count, NULL);
    if (mode == 2) agent_options_set_event_mask(o, 1u << AGENT_TRACE_RETRY);
    if (agent_new_with_options(o, &a) != AGENT_CODE_OK) a = NULL;
    agent_options_free(o);
    return a;
}

static double run(agent *a, const char *url, double secs) {
    unsigned long n = 0;
    double start = now(), t;
    /* Bounded in time and in count. */
    while ((t = now()) - start < secs && n < 10000000ul) {
        agent_response *r = NULL;
        if (agent_request(a, "GET", url, NULL, 0, NULL, 0, 10000, &r) != AGENT_CODE_OK) {
            fprintf(stderr, "request failed\n");
            exit(1);
        }
        agent_response_free(r);
        n++;
    }
    return n / (t - start);
}

int main(int argc, char **argv) {
    static const char *names[3] = {"events off", "events on (counted)", "events masked out"};
    double secs = argc > 2 ? atof(argv[2]) : 1.0, sum[3] = {0};
    int rounds = argc > 3 ? atoi(argv[3]) : 5, r, m;
    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [seconds-per-round] [rounds]\n", argv[0]);
        return 2;
    }
    for (r = 0; r < rounds; r++) {
        for (m = 0; m < 3; m++) {
            int mode = (m + r) % 3;
            agent *a = make(mode);
            if (a == NULL) return 1;
            run(a, argv[1], 0.1); /* warm */
            sum[mode] += run(a, argv[1], secs);
            agent_free(a);
        }
    }
    for (m = 0; m < 3; m++) {
        printf("%-22s %9.0f req/s (%.3fx events off)\n", names[m], sum[m] / rounds, sum[m] / sum[0]);
    }
    printf("events delivered: %lu\n", (unsigned long)atomic_load(&seen));
    return 0;
}
