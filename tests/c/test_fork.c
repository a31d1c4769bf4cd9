/* test_fork.c: SPEC §6.27. A child made by fork() after the parent used the library can
 * create an agent and make requests, and can use the parent's agent: each request works or
 * fails with a clear code within 1 s, never hangs. The parent keeps working. */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests.h"

/* Exit codes of the child. */
enum {
    CHILD_OK = 0,
    CHILD_NEW_AGENT_NULL = 10,
    CHILD_NEW_AGENT_FAILED = 11,
    CHILD_NEW_AGENT_SLOW = 12,
    CHILD_PARENT_AGENT_SLOW = 13,
    CHILD_PARENT_AGENT_NO_MESSAGE = 14,
    CHILD_PARENT_AGENT_REUSED_PARENT_SOCKET = 15,
    CHILD_BAD_STATUS = 16,
};

static int child(const agent *parent_agent, const char *url) {
    const double bound = 1000.0 * ts_time_scale();
    agent_response *r = NULL;
    agent_code c;
    agent *b;
    double t0;

    alarm((unsigned)(5 * ts_time_scale())); /* hang guard: SIGALRM kills the child */

    t0 = ts_now_ms();
    b = agent_new(true, 1000);
    if (b == NULL) {
        return CHILD_NEW_AGENT_NULL;
    }
    c = t_get(b, url, &r);
    if (c != AGENT_CODE_OK) {
        fprintf(stderr, "child: new agent: %s: %s\n", agent_code_name(c), ts_last_error());
        return CHILD_NEW_AGENT_FAILED;
    }
    if (agent_response_status(r) != 200) {
        return CHILD_BAD_STATUS;
    }
    agent_response_free(r);
    r = NULL;
    if (ts_now_ms() - t0 > bound) {
        return CHILD_NEW_AGENT_SLOW;
    }
    agent_free(b);

    /* The parent's agent: works on a new connection, or fails with a clear code. */
    t0 = ts_now_ms();
    c = t_get(parent_agent, url, &r);
    if (ts_now_ms() - t0 > bound) {
        return CHILD_PARENT_AGENT_SLOW;
    }
    if (c == AGENT_CODE_OK) {
        bool reused = agent_response_reused(r);
        uint16_t status = agent_response_status(r);
        agent_response_free(r);
        fprintf(stderr, "  (child: parent's agent: OK, reused=%d)\n", (int)reused);
        if (reused) {
            return CHILD_PARENT_AGENT_REUSED_PARENT_SOCKET;
        }
        if (status != 200) {
            return CHILD_BAD_STATUS;
        }
    } else {
        fprintf(stderr, "  (child: parent's agent: %s: %s)\n", agent_code_name(c), ts_last_error());
        if (ts_last_error()[0] == '\0') {
            return CHILD_PARENT_AGENT_NO_MESSAGE;
        }
    }
    return CHILD_OK;
}

void test_fork(void) {
    char url[256], port_before[32], port_after[32];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    pid_t pid;
    int status = 0;

    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/fork");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    t_header(r, "x-remote-port", port_before, sizeof port_before);
    agent_response_free(r);
    r = NULL;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int code = child(a, url);
        /* By design (SPEC §4) the child abandons the parent's runtime and agent state, so a
         * leak check of the child is meaningless. Under valgrind (C_TEST_CHILD_EXEC=1, run
         * with --trace-children=no) the child ends by exec'ing a shell that exits with the
         * result: valgrind does not leak-check a process image that is replaced. */
        if (getenv("C_TEST_CHILD_EXEC") != NULL) {
            char arg[16];
            snprintf(arg, sizeof arg, "%d", code);
            execl("/bin/sh", "sh", "-c", "exit \"$0\"", arg, (char *)NULL);
        }
        _exit(code);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status), "child killed by signal %d (hang guard: SIGALRM=%d)",
              WIFSIGNALED(status) ? WTERMSIG(status) : -1, SIGALRM);
    CHECK_MSG(WEXITSTATUS(status) == CHILD_OK, "child exit code %d", WEXITSTATUS(status));

    /* The parent goes on with its pooled connection, untouched by the child. */
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK(agent_response_reused(r));
    t_header(r, "x-remote-port", port_after, sizeof port_after);
    CHECK(strcmp(port_before, port_after) == 0);
    agent_response_free(r);
    agent_free(a);

    /* And a new agent in the parent works too. */
    a = agent_new(false, 0);
    CHECK(a != NULL);
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    agent_response_free(r);
    agent_free(a);
}
