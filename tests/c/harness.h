/*
 * harness.h: a tiny test harness for the C tests of keepalive-agent.
 *
 *  - ts_server_*: spawns target/release/keepalive-testserver (path from $KEEPALIVE_TESTSERVER)
 *    with a stdin pipe (the server exits when it closes) and parses its JSON line.
 *  - ts_admin_*: a raw-socket HTTP GET to the admin port for /stats and /reset.
 *  - CHECK*: assertions that record a failure and return from the test function.
 *
 * Environment knobs: C_TEST_LIGHT=1 (shorter loops, for valgrind), C_TEST_TIME_SCALE=N
 * (multiplies time bounds, for valgrind), C_TEST_FILTER (substring of test names to run),
 * C_TEST_SKIP (comma-separated test names to leave out), C_TEST_CHILD_EXEC=1 (test_fork's
 * child ends by exec, so that valgrind does not leak-check the abandoned parent state).
 */
#ifndef KEEPALIVE_TESTS_HARNESS_H
#define KEEPALIVE_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    pid_t pid;
    int stdin_fd;  /* write end of the server's stdin: closing it stops the server */
    int stdout_fd; /* read end of the server's stdout */
    int http_port;
    int https_port;
    int https_tls12_port;
    int https_wrong_host_port;
    int https_expired_port;
    int https_self_signed_port;
    int h2_port;  /* TLS, ALPN h2 only */
    int h2c_port; /* HTTP/2 with prior knowledge */
    int admin_port;
    char ca_pem_path[1024];
} ts_server;

/* The process-wide server used by the tests (started by ts_main). */
extern ts_server ts_srv;

int ts_server_start(ts_server *s);
void ts_server_stop(ts_server *s);

/* GET http://127.0.0.1:<admin_port><path>; the body goes to buf (NUL-terminated).
 * Returns the HTTP status, or -1 on a transport failure. */
int ts_admin_get(const ts_server *s, const char *path, char *buf, size_t cap);

typedef struct {
    long accepted, open, max_open, requests, client_closed, server_closed;
} ts_stats;

/* /stats into *out; returns 0 on success. */
int ts_admin_stats(const ts_server *s, ts_stats *out);
/* /reset; returns 0 on success. */
int ts_admin_reset(const ts_server *s);
/* Polls /stats every 10 ms until field `open` equals `want` or `timeout_ms` passes. */
bool ts_wait_open(const ts_server *s, long want, int timeout_ms);

/* First integer value of "key": in a flat JSON text; -1 when absent. */
long ts_json_int(const char *json, const char *key);

/* URL of the test server: scheme "http" or "https", port, and a path+query ("/x?y=1"). */
void ts_url(char *buf, size_t cap, const char *scheme, int port, const char *path_query);

/* Kernel view (/proc/net/tcp and tcp6): sockets whose LOCAL port is `port` in TCP state
 * `state` (1 = ESTABLISHED, 8 = CLOSE_WAIT: the peer sent its FIN). For the server side of
 * loopback connections; -1 on error. */
#define TS_TCP_ESTABLISHED 1
#define TS_TCP_CLOSE_WAIT 8
int ts_tcp_count(int port, int state);

/* A loopback port where nothing listens (bound, never listening, held open until exit). */
int ts_refusing_port(void);

/* Monotonic milliseconds. */
double ts_now_ms(void);
void ts_sleep_ms(int ms);

/* Environment knobs. */
bool ts_light(void);
int ts_time_scale(void);

/* Reads agent_last_error into a static per-thread buffer; returns it. */
const char *ts_last_error(void);

/* Copies a non-NUL-terminated (ptr, len) into buf as a C string (truncating). */
void ts_copy(char *buf, size_t cap, const char *p, size_t len);

/* Failure recording. */
void ts_fail(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
int ts_failures(void);

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            ts_fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);                    \
            return;                                                                    \
        }                                                                              \
    } while (0)

#define CHECK_MSG(cond, ...)                                                           \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            ts_fail(__FILE__, __LINE__, __VA_ARGS__);                                  \
            return;                                                                    \
        }                                                                              \
    } while (0)

#define CHECK_EQ(a, b)                                                                 \
    do {                                                                               \
        long long ts_a_ = (long long)(a), ts_b_ = (long long)(b);                      \
        if (ts_a_ != ts_b_) {                                                          \
            ts_fail(__FILE__, __LINE__, "CHECK_EQ(%s, %s): %lld != %lld", #a, #b,      \
                    ts_a_, ts_b_);                                                     \
            return;                                                                    \
        }                                                                              \
    } while (0)

/* Checks a code; on mismatch prints both names and the thread's last error message. */
#define CHECK_CODE(expr, want)                                                         \
    do {                                                                               \
        unsigned ts_got_ = (unsigned)(expr), ts_want_ = (unsigned)(want);              \
        if (ts_got_ != ts_want_) {                                                     \
            ts_fail(__FILE__, __LINE__, "%s: got %s, want %s (last error: %s)", #expr,  \
                    agent_code_name(ts_got_), agent_code_name(ts_want_), ts_last_error()); \
            return;                                                                    \
        }                                                                              \
    } while (0)

typedef struct {
    const char *name;
    void (*fn)(void);
} ts_test;

/* Starts the server, runs the tests (filtered by argv[1..] or C_TEST_FILTER as substrings),
 * stops the server, prints a summary; returns the process exit code. */
int ts_main(int argc, char **argv, const ts_test *tests, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* KEEPALIVE_TESTS_HARNESS_H */
