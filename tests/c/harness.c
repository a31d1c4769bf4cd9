/* harness.c: see harness.h. */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keepalive_agent.h"

ts_server ts_srv;

static int failures;
static const char *current_test = "";

void ts_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    failures++;
    fprintf(stderr, "FAIL [%s] %s:%d: ", current_test, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

int ts_failures(void) { return failures; }

double ts_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void ts_sleep_ms(int ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

bool ts_light(void) {
    const char *v = getenv("C_TEST_LIGHT");
    return v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

int ts_time_scale(void) {
    const char *v = getenv("C_TEST_TIME_SCALE");
    int n = v ? atoi(v) : 1;
    return n > 0 ? n : 1;
}

const char *ts_last_error(void) {
    static _Thread_local char buf[1024];
    size_t n = agent_last_error(buf, sizeof buf);
    if (n == 0) {
        buf[0] = '\0';
    }
    return buf;
}

void ts_copy(char *buf, size_t cap, const char *p, size_t len) {
    if (cap == 0) {
        return;
    }
    if (len >= cap) {
        len = cap - 1;
    }
    if (len > 0) {
        memcpy(buf, p, len);
    }
    buf[len] = '\0';
}

void ts_url(char *buf, size_t cap, const char *scheme, int port, const char *path_query) {
    snprintf(buf, cap, "%s://127.0.0.1:%d%s", scheme, port, path_query);
}

long ts_json_int(const char *json, const char *key) {
    char pat[128];
    const char *p;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(json, pat);
    if (p == NULL) {
        return -1;
    }
    p += strlen(pat);
    while (*p == ' ') {
        p++;
    }
    if (*p == '"') {
        p++;
    }
    return strtol(p, NULL, 10);
}

static void json_str(const char *json, const char *key, char *out, size_t cap) {
    char pat[128];
    const char *p, *e;
    size_t n = 0;
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    out[0] = '\0';
    p = strstr(json, pat);
    if (p == NULL) {
        return;
    }
    p += strlen(pat);
    e = p;
    while (*e != '\0' && *e != '"' && n + 1 < cap) {
        if (*e == '\\' && e[1] != '\0') {
            e++;
        }
        out[n++] = *e++;
    }
    out[n] = '\0';
}

static void set_cloexec(int fd) { (void)fcntl(fd, F_SETFD, FD_CLOEXEC); }

int ts_server_start(ts_server *s) {
    int in[2], out[2];
    const char *exe = getenv("KEEPALIVE_TESTSERVER");
    char line[2048];
    size_t n = 0;
    double deadline;

    memset(s, 0, sizeof *s);
    if (exe == NULL || *exe == '\0') {
        exe = "target/release/keepalive-testserver";
    }
    if (pipe(in) != 0 || pipe(out) != 0) {
        perror("pipe");
        return -1;
    }
    s->pid = fork();
    if (s->pid < 0) {
        perror("fork");
        return -1;
    }
    if (s->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(exe, exe, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    s->stdin_fd = in[1];
    s->stdout_fd = out[0];
    set_cloexec(s->stdin_fd);
    set_cloexec(s->stdout_fd);

    /* One JSON line. */
    deadline = ts_now_ms() + 10000.0;
    while (n + 1 < sizeof line && ts_now_ms() < deadline) {
        ssize_t r = read(s->stdout_fd, line + n, 1);
        if (r == 1) {
            if (line[n] == '\n') {
                break;
            }
            n++;
        } else if (r == 0 || (r < 0 && errno != EINTR)) {
            break;
        }
    }
    line[n] = '\0';
    s->http_port = (int)ts_json_int(line, "http_port");
    s->https_port = (int)ts_json_int(line, "https_port");
    s->https_tls12_port = (int)ts_json_int(line, "https_tls12_port");
    s->https_wrong_host_port = (int)ts_json_int(line, "https_wrong_host_port");
    s->https_expired_port = (int)ts_json_int(line, "https_expired_port");
    s->https_self_signed_port = (int)ts_json_int(line, "https_self_signed_port");
    s->admin_port = (int)ts_json_int(line, "admin_port");
    s->h2_port = (int)ts_json_int(line, "h2_port");
    s->h2c_port = (int)ts_json_int(line, "h2c_port");
    json_str(line, "ca_pem_path", s->ca_pem_path, sizeof s->ca_pem_path);
    if (s->http_port <= 0 || s->admin_port <= 0 || s->ca_pem_path[0] == '\0') {
        fprintf(stderr, "test server (%s) did not start: %s\n", exe, line);
        ts_server_stop(s);
        return -1;
    }
    return 0;
}

void ts_server_stop(ts_server *s) {
    if (s->stdin_fd > 0) {
        close(s->stdin_fd);
        s->stdin_fd = -1;
    }
    if (s->pid > 0) {
        int st, i;
        for (i = 0; i < 300; i++) {
            if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
                s->pid = 0;
                break;
            }
            ts_sleep_ms(10);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
        }
    }
    if (s->stdout_fd > 0) {
        close(s->stdout_fd);
        s->stdout_fd = -1;
    }
}

int ts_admin_get(const ts_server *s, const char *path, char *buf, size_t cap) {
    struct sockaddr_in sa;
    char req[512];
    char *resp;
    size_t rcap = 1 << 16, n = 0;
    int fd, status = -1;
    const char *body;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    set_cloexec(fd);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)s->admin_port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    snprintf(req, sizeof req,
             "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
        close(fd);
        return -1;
    }
    resp = malloc(rcap);
    if (resp == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t r;
        if (n + 1 >= rcap) {
            char *bigger = realloc(resp, rcap * 2);
            if (bigger == NULL) {
                break;
            }
            resp = bigger;
            rcap *= 2;
        }
        r = read(fd, resp + n, rcap - n - 1);
        if (r > 0) {
            n += (size_t)r;
        } else if (r == 0 || errno != EINTR) {
            break;
        }
    }
    close(fd);
    resp[n] = '\0';
    if (strncmp(resp, "HTTP/1.1 ", 9) == 0) {
        status = atoi(resp + 9);
    }
    body = strstr(resp, "\r\n\r\n");
    if (buf != NULL && cap > 0) {
        ts_copy(buf, cap, body ? body + 4 : "", body ? strlen(body + 4) : 0);
    }
    free(resp);
    return status;
}

int ts_admin_stats(const ts_server *s, ts_stats *out) {
    static _Thread_local char body[1 << 16];
    if (ts_admin_get(s, "/stats", body, sizeof body) != 200) {
        return -1;
    }
    out->accepted = ts_json_int(body, "accepted");
    out->open = ts_json_int(body, "open");
    out->max_open = ts_json_int(body, "max_open");
    out->requests = ts_json_int(body, "requests");
    out->client_closed = ts_json_int(body, "client_closed");
    out->server_closed = ts_json_int(body, "server_closed");
    return 0;
}

int ts_admin_reset(const ts_server *s) {
    char body[64];
    return ts_admin_get(s, "/reset", body, sizeof body) == 200 ? 0 : -1;
}

bool ts_wait_open(const ts_server *s, long want, int timeout_ms) {
    double deadline = ts_now_ms() + timeout_ms;
    ts_stats st;
    do {
        if (ts_admin_stats(s, &st) == 0 && st.open == want) {
            return true;
        }
        ts_sleep_ms(10);
    } while (ts_now_ms() < deadline);
    return false;
}

int ts_tcp_count(int port, int state) {
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    int count = 0;
    size_t i;
    for (i = 0; i < 2; i++) {
        char line[512];
        FILE *f = fopen(files[i], "r");
        if (f == NULL) {
            if (i == 0) {
                return -1;
            }
            continue;
        }
        while (fgets(line, sizeof line, f) != NULL) {
            /* "  sl  local_address rem_address   st ..." ; addresses are HEXIP:HEXPORT */
            char local[128], remote[128];
            unsigned st;
            const char *colon;
            if (sscanf(line, "%*s %127s %127s %x", local, remote, &st) != 3) {
                continue;
            }
            colon = strrchr(local, ':');
            if (colon != NULL && (int)strtol(colon + 1, NULL, 16) == port && (int)st == state) {
                count++;
            }
        }
        fclose(f);
    }
    return count;
}

int ts_refusing_port(void) {
    /* Bound but not listening: connects are refused, and nobody else can take the port. */
    static int fd = -1;
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (fd < 0) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        set_cloexec(fd);
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = 0;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            return -1;
        }
    }
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        return -1;
    }
    return ntohs(sa.sin_port);
}

static bool skipped(const char *name) {
    /* C_TEST_SKIP: comma-separated exact test names to leave out. */
    const char *s = getenv("C_TEST_SKIP");
    size_t n = strlen(name);
    while (s != NULL && *s != '\0') {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len == n && strncmp(s, name, n) == 0) {
            return true;
        }
        s = end ? end + 1 : NULL;
    }
    return false;
}

static bool selected(const char *name, int argc, char **argv) {
    const char *f = getenv("C_TEST_FILTER");
    int i;
    if (skipped(name)) {
        return false;
    }
    if (argc <= 1) {
        return f == NULL || *f == '\0' || strstr(name, f) != NULL;
    }
    for (i = 1; i < argc; i++) {
        if (strstr(name, argv[i]) != NULL) {
            return true;
        }
    }
    return false;
}

int ts_main(int argc, char **argv, const ts_test *tests, size_t n) {
    size_t i;
    int ran = 0;
    double t0 = ts_now_ms();

    signal(SIGPIPE, SIG_IGN);
    if (ts_server_start(&ts_srv) != 0) {
        return 2;
    }
    for (i = 0; i < n; i++) {
        int before = failures;
        double t = ts_now_ms();
        if (!selected(tests[i].name, argc, argv)) {
            continue;
        }
        current_test = tests[i].name;
        /* Start from a quiet server: connections of the previous test have closed (a failed
         * test may have leaked an agent: its idle connections go after 4 s). */
        (void)ts_wait_open(&ts_srv, 0, (failures > 0 ? 5000 : 1000) * ts_time_scale());
        ts_admin_reset(&ts_srv);
        tests[i].fn();
        ran++;
        printf("%s %-34s %7.0f ms\n", failures == before ? "ok  " : "FAIL", tests[i].name,
               ts_now_ms() - t);
        fflush(stdout);
    }
    current_test = "";
    ts_server_stop(&ts_srv);
    printf("%d tests, %d failures, %.1f s\n", ran, failures, (ts_now_ms() - t0) / 1e3);
    if (ran == 0) {
        fprintf(stderr, "no test matched\n");
        return 1;
    }
    return failures == 0 ? 0 : 1;
}
