/* main.c: the C test suite of keepalive-agent. Usage: c_tests [name-substring...] */
#include "tests.h"

#define T(name) {#name, name}

static const ts_test tests[] = {
    T(test_version),
    T(test_code_str),
    T(test_basic_get),
    T(test_timings_ip_literal),
    T(test_post_echo),
    T(test_status_and_sizes),
    T(test_keep_alive_on),
    T(test_keep_alive_off),
    T(test_on_and_off_same_process),
    T(test_tls),
    T(test_env_switch),
    T(test_null_arguments),
    T(test_outputs_only_on_success),
    T(test_last_error_buffer),
    T(test_connect_refused),
    T(test_invalid_url),
    T(test_header_injection),
    T(test_invalid_option),
    T(test_async_many),
    T(test_would_block_in_callback),
    T(test_cancel),
    T(test_free_with_in_flight),
    T(test_threads_share_agent),
    T(test_fork),
};

int main(int argc, char **argv) {
    return ts_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
