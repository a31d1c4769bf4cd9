/* The panic boundary, from C. agent_test_panic exists only in a library built with the
 * `test-hooks` cargo feature (never in a release library or the header), so this program
 * declares it itself and `make test-c` links it against that build. */
#include <string.h>

#include "keepalive_agent.h"
#include "harness.h"

agent_code agent_test_panic(void);

static void test_panic_becomes_a_code(void) {
    char url[256];
    agent *a;
    agent_response *r = NULL;
    CHECK_CODE(agent_test_panic(), AGENT_CODE_PANIC);
    CHECK_MSG(strstr(ts_last_error(), "agent_test_panic") != NULL, "message: %s", ts_last_error());
    CHECK(strcmp(agent_code_name(AGENT_CODE_PANIC), "AGENT_CODE_PANIC") == 0);
    /* The library keeps working. */
    a = agent_new(true, 1000);
    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/after-panic");
    CHECK_CODE(agent_request(a, "GET", url, NULL, 0, NULL, 0, 0, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 200);
    agent_response_free(r);
    agent_free(a);
}

int main(int argc, char **argv) {
    static const ts_test tests[] = {
        {"test_panic_becomes_a_code", test_panic_becomes_a_code},
    };
    return ts_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
