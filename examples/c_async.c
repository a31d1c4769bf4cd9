/* c_async.c: start requests without blocking; a callback per request runs exactly once on a
 * library thread. The main thread waits on a condition variable.
 * Usage: c_async URL
 * Build: cc c_async.c $(pkg-config --cflags --libs keepalive-agent) -pthread */
#include <pthread.h>
#include <stdio.h>

#include <keepalive_agent.h>

#define N 10

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done, ok;

/* Runs on a library thread: keep it short, never call the blocking agent_request here. */
static void on_response(void *userdata, agent_code code, agent_response *r) {
    int index = *(const int *)userdata;
    if (code == AGENT_CODE_OK) {
        printf("request %d: status=%u\n", index, (unsigned)agent_response_status(r));
        agent_response_free(r); /* the callback owns the response */
    } else {
        char msg[256];
        agent_last_error(msg, sizeof msg); /* this callback's failure */
        printf("request %d: %s: %s\n", index, agent_code_name(code), msg);
    }
    pthread_mutex_lock(&mu);
    ok += code == AGENT_CODE_OK;
    done++;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv) {
    static int index[N]; /* userdata must outlive the callback */
    agent *a;
    int i, started = 0;

    if (argc < 2 || (a = agent_new(true, 0)) == NULL) {
        fprintf(stderr, "usage: %s URL\n", argv[0]);
        return 2;
    }
    for (i = 0; i < N; i++) {
        index[i] = i;
        if (agent_request_async(a, "GET", argv[1], NULL, 0, NULL, 0, 10000, on_response,
                                &index[i], NULL) == AGENT_CODE_OK) {
            started++; /* on failure the callback is never called */
        }
    }
    pthread_mutex_lock(&mu);
    while (done < started) {
        pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
    printf("ok=%d/%d\n", ok, N);
    agent_free(a);
    return ok == N ? 0 : 1;
}
