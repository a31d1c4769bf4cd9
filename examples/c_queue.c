/* c_queue.c: many requests in flight from one thread, driven by an event loop: here a plain
 * poll() loop watching the queue's descriptor; libuv, libev or epoll work the same way.
 * Requests run on this thread (in agent_queue_drain); each completion is one event.
 * Usage: c_queue URL [TOTAL [IN_FLIGHT]]
 * Build: cc c_queue.c $(pkg-config --cflags --libs keepalive-agent) */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#include <keepalive_agent.h>

int main(int argc, char **argv) {
    agent *a;
    agent_queue *q = NULL;
    agent_event ev[64];
    agent_pool_stats st;
    long total = argc > 2 ? atol(argv[2]) : 1000, in_flight = argc > 3 ? atol(argv[3]) : 64;
    long submitted = 0, done = 0, ok = 0;

    if (argc < 2 || total < 1 || in_flight < 1 || (a = agent_new(true, 0)) == NULL ||
        agent_queue_new(&q) != AGENT_CODE_OK) {
        fprintf(stderr, "usage: %s URL [TOTAL [IN_FLIGHT]]\n", argv[0]);
        return 2;
    }
    struct pollfd pfd = {.fd = agent_queue_fd(q), .events = POLLIN};
    for (; submitted < in_flight && submitted < total; submitted++) {
        agent_queue_submit(q, a, "GET", argv[1], NULL, 0, NULL, 0, 10000, (uint64_t)submitted,
                           NULL);
    }
    while (done < submitted) {
        size_t n = 0;
        if (poll(&pfd, 1, 10000) <= 0) { /* the loop waits on the queue with everything else */
            break;
        }
        if (agent_queue_drain(q, ev, 64, 0, &n) != AGENT_CODE_OK) {
            break;
        }
        for (size_t i = 0; i < n; i++, done++) {
            if (ev[i].code == AGENT_CODE_OK) {
                ok += agent_response_status(ev[i].response) == 200;
                agent_response_free(ev[i].response); /* the event hands it over */
            } else {
                fprintf(stderr, "request %llu: %s: %s\n", (unsigned long long)ev[i].token,
                        agent_code_name(ev[i].code), ev[i].message);
            }
            if (submitted < total) { /* keep IN_FLIGHT requests going */
                agent_queue_submit(q, a, "GET", argv[1], NULL, 0, NULL, 0, 10000,
                                   (uint64_t)submitted++, NULL);
            }
        }
    }
    agent_stats(a, &st);
    printf("ok=%ld/%ld connections=%llu\n", ok, total, (unsigned long long)st.connections_opened);
    agent_queue_free(q);
    agent_free(a);
    return ok == total ? 0 : 1;
}
