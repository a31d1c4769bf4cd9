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
    T(test_queue_many_with_epoll),
    T(test_queue_streams_both_ways),
    T(test_queue_errors_carry_their_message),
    T(test_queue_cancel_and_agent_free),
    T(test_queue_free_with_in_flight),
    T(test_queue_bad_arguments),
    T(test_would_block_in_callback),
    T(test_cancel),
    T(test_free_with_in_flight),
    T(test_threads_share_agent),
    T(test_fork),
    T(test_stream_download_big_in_constant_memory),
    T(test_stream_upload_content_length),
    T(test_stream_upload_chunked),
    T(test_stream_abort_closes_the_connection),
    T(test_stream_read_to_end_reuses_the_connection),
    T(test_stream_slow_reader_keeps_the_window),
    T(test_stream_server_resets_mid_upload),
    T(test_stream_source_failure_has_its_own_code),
    T(test_stream_bad_arguments_release_the_source),
    T(test_stream_stale_retry_needs_a_rewindable_source),
    T(test_stream_async_reads),
    T(test_stream_next_without_copy),
    T(test_stream_free_ends_a_waiting_async_read),
    T(test_stream_empty_bodies_have_a_length),
    T(test_stream_pending_sources_hold_no_thread),
    T(test_stream_pending_source_in_a_blocking_call),
};

int main(int argc, char **argv) {
    return ts_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
