/* tests.h: the test functions of the C suite (one binary, see main.c) and shared helpers. */
#ifndef KEEPALIVE_TESTS_TESTS_H
#define KEEPALIVE_TESTS_TESTS_H

#include "harness.h"
#include "keepalive_agent.h"

/* GET `url` with no headers, no body and a 10 s deadline. */
agent_code t_get(const agent *a, const char *url, agent_response **out);

/* The value of response header `name` copied into buf ("" when absent). */
void t_header(const agent_response *r, const char *name, char *buf, size_t cap);

/* The body copied into buf as a C string (truncated to cap - 1). */
size_t t_body(const agent_response *r, char *buf, size_t cap);

/* An agent with keep-alive on/off that trusts the test server's CA. */
agent *t_agent_with_ca(bool keep_alive);

/* test_basic.c */
void test_basic_get(void);
void test_timings_ip_literal(void);
void test_post_echo(void);
void test_status_and_sizes(void);
void test_body_in_pieces(void);
void test_keep_alive_on(void);
void test_keep_alive_off(void);
void test_on_and_off_same_process(void);
void test_tls(void);
void test_env_switch(void);

/* test_events.c */
void test_events_new_reused_and_stale(void);
void test_events_tls_failure_and_close_reasons(void);
void test_events_mask_and_headers(void);
void test_preconnect(void);

/* test_errors.c */
void test_null_arguments(void);
void test_outputs_only_on_success(void);
void test_last_error_buffer(void);
void test_connect_refused(void);
void test_invalid_url(void);
void test_header_injection(void);
void test_code_str(void);
void test_version(void);
void test_invalid_option(void);

/* test_h2.c */
void test_h2_one_connection_for_many_threads(void);
void test_h2_big_stream_in_constant_memory_with_trailers(void);
void test_h2_reset_stream_and_queue(void);
void test_h2_queue_connection_outlives_its_agent_and_its_queue(void);

/* test_stream.c */
void test_stream_download_big_in_constant_memory(void);
void test_stream_upload_content_length(void);
void test_stream_upload_chunked(void);
void test_stream_abort_closes_the_connection(void);
void test_stream_read_to_end_reuses_the_connection(void);
void test_stream_slow_reader_keeps_the_window(void);
void test_stream_server_resets_mid_upload(void);
void test_stream_source_failure_has_its_own_code(void);
void test_stream_bad_arguments_release_the_source(void);
void test_stream_stale_retry_needs_a_rewindable_source(void);
void test_stream_async_reads(void);
void test_stream_next_without_copy(void);
void test_stream_free_ends_a_waiting_async_read(void);
void test_stream_empty_bodies_have_a_length(void);
void test_stream_pending_sources_hold_no_thread(void);
void test_stream_pending_source_in_a_blocking_call(void);

/* test_queue.c */
void test_queue_many_with_epoll(void);
void test_queue_streams_both_ways(void);
void test_queue_errors_carry_their_message(void);
void test_queue_cancel_and_agent_free(void);
void test_queue_free_with_in_flight(void);
void test_queue_bad_arguments(void);

/* test_async.c */
void test_async_many(void);
void test_free_with_in_flight(void);
void test_would_block_in_callback(void);
void test_cancel(void);
void test_threads_share_agent(void);

/* test_fork.c */
void test_fork(void);

#endif
