/* c_threads.c: several threads share one agent (its functions are thread-safe); the pool
 * hands each thread an idle connection, so a few connections serve every request.
 * Usage: c_threads URL
 * Build: cc c_threads.c $(pkg-config --cflags --libs keepalive-agent) -pthread */
#include <pthread.h>
#include <stdio.h>

#include <keepalive_agent.h>

#define THREADS 4
#define REQUESTS 25

struct job {
    const agent *agent; /* shared: const, usable from any thread */
    const char *url;
    int ok;
};

static void *worker(void *arg) {
    struct job *j = arg;
    int i;
    for (i = 0; i < REQUESTS; i++) {
        agent_response *r = NULL;
        if (agent_request(j->agent, "GET", j->url, NULL, 0, NULL, 0, 10000, &r) == AGENT_CODE_OK &&
            agent_response_status(r) == 200) {
            j->ok++;
        }
        agent_response_free(r); /* NULL-safe */
    }
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t th[THREADS];
    struct job jobs[THREADS];
    agent_pool_stats st;
    int i, ok = 0;
    agent *a;

    if (argc < 2) {
        fprintf(stderr, "usage: %s URL\n", argv[0]);
        return 2;
    }
    if ((a = agent_new(true, 0)) == NULL) {
        return 1;
    }
    for (i = 0; i < THREADS; i++) {
        jobs[i].agent = a;
        jobs[i].url = argv[1];
        jobs[i].ok = 0;
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL); /* all calls are done before agent_free */
        ok += jobs[i].ok;
    }
    agent_stats(a, &st);
    printf("ok=%d/%d connections=%llu reused=%llu\n", ok, THREADS * REQUESTS,
           (unsigned long long)st.connections_opened, (unsigned long long)st.reused_requests);
    agent_free(a);
    return ok == THREADS * REQUESTS ? 0 : 1;
}
