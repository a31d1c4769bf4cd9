/* c_client.c: the smallest useful keepalive-agent program.
 * Usage: c_client URL   (sends GET twice on one agent: the second reuses the connection)
 * Build: cc c_client.c $(pkg-config --cflags --libs keepalive-agent) -o c_client */
#include <stdio.h>

#include <keepalive_agent.h>

static int fail(const char *what, agent_code code) {
    char msg[512];
    agent_last_error(msg, sizeof msg); /* truncated if longer; always NUL-terminated */
    fprintf(stderr, "%s: %s: %s\n", what, agent_code_name(code), msg);
    return 1;
}

int main(int argc, char **argv) {
    agent *a;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s URL\n", argv[0]);
        return 2;
    }
    a = agent_new(true, 0); /* keep-alive on; TCP keep-alive probes after the default 1 s */
    if (a == NULL) {
        fprintf(stderr, "agent_new failed\n");
        return 1;
    }
    for (i = 0; i < 2; i++) {
        agent_response *r = NULL;
        const uint8_t *body;
        size_t len;
        agent_header headers[] = {{"Accept", "*/*"}};
        agent_code c = agent_request(a, "GET", argv[1], headers, 1, NULL, 0, 10000, &r);
        if (c != AGENT_CODE_OK) {
            agent_free(a);
            return fail("GET", c);
        }
        agent_response_body(r, &body, &len);
        printf("status=%u bytes=%zu reused=%d\n", (unsigned)agent_response_status(r), len,
               (int)agent_response_reused(r));
        agent_response_free(r);
    }
    agent_free(a);
    return 0;
}
