/* Header hygiene: keepalive_agent.h compiles as C11 with -Wall -Wextra -Wpedantic -Werror,
 * included twice, and declares what the documentation promises. */
#include "keepalive_agent.h"
#include "keepalive_agent.h"

#include <stddef.h>

typedef char version_macros_are_numbers[(KEEPALIVE_AGENT_VERSION_MAJOR >= 0 &&
                                         KEEPALIVE_AGENT_VERSION_MINOR >= 0 &&
                                         KEEPALIVE_AGENT_VERSION_PATCH >= 0)
                                            ? 1
                                            : -1];
typedef char code_is_32_bits[sizeof(agent_code) == 4 ? 1 : -1];

static agent_callback callback_type_exists;

int main(void) {
    agent_header h = {"x-name", "value"};
    agent_pool_stats st = {0};
    agent_timings t = {0};
    const char *v = KEEPALIVE_AGENT_VERSION;
    agent_code c = AGENT_CODE_OK;
    (void)callback_type_exists;
    (void)sizeof(version_macros_are_numbers);
    (void)sizeof(code_is_32_bits);
    return (int)c + (int)st.keep_alive + (int)t.total_us + (h.name == NULL) + (v == NULL) +
           (AGENT_SCHEDULING_LIFO + AGENT_SCHEDULING_FIFO != 1);
}
