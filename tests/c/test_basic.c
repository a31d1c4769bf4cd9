/* test_basic.c: requests, response accessors, keep-alive on/off, TLS, the environment switch. */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"

agent_code t_get(const agent *a, const char *url, agent_response **out) {
    return agent_request(a, "GET", url, NULL, 0, NULL, 0, 10000, out);
}

void t_header(const agent_response *r, const char *name, char *buf, size_t cap) {
    const char *v = NULL;
    size_t n = 0;
    if (agent_response_header(r, name, &v, &n) != AGENT_CODE_OK) {
        v = "";
        n = 0;
    }
    ts_copy(buf, cap, v, n);
}

size_t t_body(const agent_response *r, char *buf, size_t cap) {
    const uint8_t *p = NULL;
    size_t n = 0;
    if (agent_response_body(r, &p, &n) != AGENT_CODE_OK) {
        n = 0;
    }
    ts_copy(buf, cap, (const char *)p, n);
    return n;
}

agent *t_agent_with_ca(bool keep_alive) {
    agent *a = NULL;
    agent_options *o = agent_options_new();
    if (o == NULL) {
        return NULL;
    }
    if (agent_options_set_keep_alive(o, keep_alive) != AGENT_CODE_OK ||
        agent_options_set_ca_file(o, ts_srv.ca_pem_path) != AGENT_CODE_OK ||
        agent_new_with_options(o, &a) != AGENT_CODE_OK) {
        a = NULL;
    }
    agent_options_free(o);
    return a;
}

static void lower(char *s) {
    for (; *s; s++) {
        *s = (char)tolower((unsigned char)*s);
    }
}

void test_basic_get(void) {
    char url[256], buf[256];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL, *r2 = NULL;
    agent_timings t;
    agent_pool_stats st;
    size_t i, count;
    bool saw_port = false;
    const char *name, *value;
    size_t name_len, value_len;

    CHECK(a != NULL);
    CHECK(agent_keep_alive_enabled(a));
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/basic");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK(r != NULL);
    CHECK_EQ(agent_response_status(r), 200);
    CHECK_EQ(agent_response_version(r), 11);
    CHECK(!agent_response_reused(r));
    CHECK_EQ(t_body(r, buf, sizeof buf), 13);
    CHECK(strcmp(buf, "hello, world\n") == 0);

    /* One header by name, case-insensitively. */
    t_header(r, "content-length", buf, sizeof buf);
    CHECK(strcmp(buf, "13") == 0);
    t_header(r, "Content-LENGTH", buf, sizeof buf);
    CHECK(strcmp(buf, "13") == 0);
    t_header(r, "X-Conn-Requests", buf, sizeof buf);
    CHECK(strcmp(buf, "1") == 0);
    CHECK_CODE(agent_response_header(r, "x-absent", &value, &value_len), AGENT_CODE_NOT_FOUND);
    CHECK(strstr(ts_last_error(), "x-absent") != NULL);

    /* Every header by index: lowercase names, X-Remote-Port among them. */
    count = agent_response_header_count(r);
    CHECK(count >= 4);
    for (i = 0; i < count; i++) {
        size_t k;
        CHECK_CODE(agent_response_header_at(r, i, &name, &name_len, &value, &value_len),
                   AGENT_CODE_OK);
        CHECK(name_len > 0);
        for (k = 0; k < name_len; k++) {
            CHECK_MSG(!isupper((unsigned char)name[k]), "header name not lowercase");
        }
        if (name_len == 13 && memcmp(name, "x-remote-port", 13) == 0) {
            saw_port = value_len > 0;
        }
    }
    CHECK(saw_port);
    CHECK_CODE(agent_response_header_at(r, count, &name, &name_len, &value, &value_len),
               AGENT_CODE_NOT_FOUND);

    /* Timings of a fresh connection to an IP literal over plain http. */
    CHECK_CODE(agent_response_timings(r, &t), AGENT_CODE_OK);
    CHECK(t.connect_us > 0);
    CHECK_EQ(t.tls_us, 0); /* dns_us: see test_timings_ip_literal */
    CHECK(t.sent_us <= t.ttfb_us);
    CHECK(t.ttfb_us <= t.total_us);
    CHECK(t.total_us > 0);

    /* The second request reuses the connection: no connect phase. */
    CHECK_CODE(t_get(a, url, &r2), AGENT_CODE_OK);
    CHECK(agent_response_reused(r2));
    t_header(r2, "x-conn-requests", buf, sizeof buf);
    CHECK(strcmp(buf, "2") == 0);
    CHECK_CODE(agent_response_timings(r2, &t), AGENT_CODE_OK);
    CHECK_EQ(t.connect_us, 0);
    CHECK(t.total_us > 0);

    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.connections_opened, 1);
    CHECK_EQ(st.requests, 2);
    CHECK_EQ(st.reused_requests, 1);
    CHECK_EQ(st.active, 0);
    CHECK_EQ(st.idle, 1);
    CHECK_EQ(st.errors, 0);
    CHECK(st.keep_alive);

    /* Per origin: this one has the requests, another one is all zeros. */
    ts_url(buf, sizeof buf, "http", ts_srv.http_port, "/ignored/path");
    CHECK_CODE(agent_origin_stats(a, buf, &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, 2);
    CHECK_EQ(st.connections_opened, 1);
    CHECK_CODE(agent_origin_stats(a, "http://127.0.0.1:1", &st), AGENT_CODE_OK);
    CHECK_EQ(st.requests, 0);
    CHECK_EQ(st.connections_opened, 0);

    agent_response_free(r);
    agent_response_free(r2);
    agent_free(a);
}

/* agent_timings documents dns_us as "0 for IP literals and reused connections". */
void test_timings_ip_literal(void) {
    char url[256];
    int i, nonzero = 0;
    uint64_t worst = 0;
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/dns");
    for (i = 0; i < 20; i++) {
        agent *a = agent_new(false, 0); /* a fresh connection every time */
        agent_response *r = NULL;
        agent_timings t;
        memset(&t, 0, sizeof t);
        if (a != NULL && t_get(a, url, &r) == AGENT_CODE_OK) {
            agent_response_timings(r, &t);
        }
        agent_response_free(r);
        agent_free(a);
        if (t.dns_us != 0) {
            nonzero++;
            worst = t.dns_us > worst ? t.dns_us : worst;
        }
    }
    CHECK_MSG(nonzero == 0, "dns_us > 0 for an IP literal in %d of 20 requests (max %llu us)",
              nonzero, (unsigned long long)worst);
}

void test_post_echo(void) {
    char url[256];
    char *buf;
    uint8_t body[1000];
    agent_header h[4];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    char want[128];
    size_t i, n;

    CHECK(a != NULL);
    for (i = 0; i < sizeof body; i++) {
        body[i] = (uint8_t)(i % 7); /* includes NUL bytes */
    }
    h[0].name = "X-One";
    h[0].value = "1";
    h[1].name = "X-Rep";
    h[1].value = "a";
    h[2].name = "X-Rep";
    h[2].value = "b\tc"; /* tab is allowed */
    h[3].name = "Content-Type";
    h[3].value = "application/octet-stream";
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/echo?echo=1");
    CHECK_CODE(agent_request(a, "POST", url, h, 4, body, sizeof body, 10000, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 200);
    buf = malloc(1 << 16);
    CHECK(buf != NULL);
    n = t_body(r, buf, 1 << 16);
    CHECK(n > 0);
    lower(buf);
    CHECK_MSG(strstr(buf, "\"method\":\"post\"") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "\"target\":\"/echo?echo=1\"") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "\"body_len\":1000") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "[\"x-one\",\"1\"]") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "[\"x-rep\",\"a\"]") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "[\"x-rep\",\"b\\tc\"]") != NULL, "echo: %s", buf);
    CHECK_MSG(strstr(buf, "[\"content-length\",\"1000\"]") != NULL, "echo: %s", buf);
    snprintf(want, sizeof want, "[\"user-agent\",\"keepalive-agent/%s\"]", KEEPALIVE_AGENT_VERSION);
    CHECK_MSG(strstr(buf, want) != NULL, "default user agent: %s", buf);
    snprintf(want, sizeof want, "[\"host\",\"127.0.0.1:%d\"]", ts_srv.http_port);
    CHECK_MSG(strstr(buf, want) != NULL, "host: %s", buf);
    /* Keep-alive on: no Connection: close. */
    CHECK_MSG(strstr(buf, "[\"connection\",\"close\"]") == NULL, "echo: %s", buf);
    free(buf);
    agent_response_free(r);
    agent_free(a);
}

void test_status_and_sizes(void) {
    char url[256];
    agent *a = agent_new(true, 1000);
    agent_response *r = NULL;
    const uint8_t *p = NULL;
    size_t n = 0;

    CHECK(a != NULL);
    /* 4xx and 5xx are successes with that status. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/?status=404");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 404);
    agent_response_free(r);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/?status=503");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 503);
    agent_response_free(r);

    /* A large body and a chunked one arrive whole. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/?bytes=300000");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_CODE(agent_response_body(r, &p, &n), AGENT_CODE_OK);
    CHECK_EQ(n, 300000);
    CHECK(p != NULL);
    agent_response_free(r);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/?bytes=5000&chunked=1&chunks=7");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_CODE(agent_response_body(r, &p, &n), AGENT_CODE_OK);
    CHECK_EQ(n, 5000);
    CHECK(agent_response_reused(r));
    agent_response_free(r);

    /* HEAD: no body. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/");
    CHECK_CODE(agent_request(a, "HEAD", url, NULL, 0, NULL, 0, 10000, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 200);
    CHECK_CODE(agent_response_body(r, &p, &n), AGENT_CODE_OK);
    CHECK_EQ(n, 0);
    agent_response_free(r);
    agent_free(a);
}

/* A body that arrived in pieces is copied out piece by piece (agent_response_peek,
   agent_response_copy_body) and made contiguous only when asked (agent_response_body). */
void test_body_in_pieces(void) {
    enum { N = 200000 };
    char url[256];
    agent_response *r = NULL;
    agent_response_parts parts;
    const uint8_t *p = NULL;
    size_t n = 0, copied = 0;
    uint8_t *buf = malloc(N);
    agent *a = agent_new(true, 1000);
    CHECK(a != NULL && buf != NULL);

    /* Eight chunks 5 ms apart: several reads, so several pieces. */
    ts_url(url, sizeof url, "http", ts_srv.http_port,
           "/?bytes=200000&chunked=1&chunks=8&chunk_delay_ms=5");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_CODE(agent_response_peek(r, &parts), AGENT_CODE_OK);
    CHECK_EQ(parts.status, 200);
    CHECK(parts.body == NULL); /* not joined */
    CHECK_EQ(parts.body_len, N);
    CHECK(parts.header_count > 0 && parts.headers != NULL);

    CHECK_CODE(agent_response_copy_body(r, 0, buf, N, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, N);
    for (size_t i = 0; i < N; i++) {
        if (buf[i] != (uint8_t)('a' + i % 26)) {
            CHECK_MSG(false, "byte %zu is %d", i, buf[i]);
            break;
        }
    }
    /* From an offset, across pieces, and past the end. */
    memset(buf, 0, 1000);
    CHECK_CODE(agent_response_copy_body(r, 12345, buf, 1000, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 1000);
    CHECK_EQ(buf[0], 'a' + 12345 % 26);
    CHECK_EQ(buf[999], 'a' + (12345 + 999) % 26);
    CHECK_CODE(agent_response_copy_body(r, N - 10, buf, 100, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 10);
    CHECK_CODE(agent_response_copy_body(r, N + 5, buf, 100, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 0);
    CHECK_CODE(agent_response_copy_body(r, 0, buf, 0, NULL), AGENT_CODE_OK);
    CHECK_CODE(agent_response_copy_body(r, 0, NULL, 0, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 0);
    CHECK_CODE(agent_response_copy_body(r, 0, NULL, 10, &copied), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_response_copy_body(NULL, 0, buf, 10, &copied), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_response_peek(NULL, &parts), AGENT_CODE_INVALID_ARGUMENT);
    CHECK_CODE(agent_response_peek(r, NULL), AGENT_CODE_INVALID_ARGUMENT);

    /* Asked for in one buffer: joined once, the same pointer from then on. */
    CHECK_CODE(agent_response_body(r, &p, &n), AGENT_CODE_OK);
    CHECK_EQ(n, N);
    CHECK(p != NULL);
    CHECK_EQ(p[0], 'a');
    CHECK_EQ(p[N - 1], 'a' + (N - 1) % 26);
    CHECK_CODE(agent_response_peek(r, &parts), AGENT_CODE_OK);
    CHECK(parts.body == p);
    CHECK_CODE(agent_response_read(r, &parts), AGENT_CODE_OK);
    CHECK(parts.body == p);
    CHECK_EQ(parts.body_len, N);
    /* Copies come from the joined buffer now (the pieces are gone). */
    memset(buf, 0, 1000);
    CHECK_CODE(agent_response_copy_body(r, 12345, buf, 1000, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 1000);
    CHECK(memcmp(buf, p + 12345, 1000) == 0);
    agent_response_free(r);

    /* A body of one piece: peek gives it as read does. */
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/");
    CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
    CHECK_CODE(agent_response_peek(r, &parts), AGENT_CODE_OK);
    CHECK(parts.body != NULL);
    CHECK_EQ(parts.body_len, 13);
    CHECK_CODE(agent_response_copy_body(r, 0, buf, 100, &copied), AGENT_CODE_OK);
    CHECK_EQ(copied, 13);
    CHECK(memcmp(buf, parts.body, 13) == 0);
    agent_response_free(r);
    agent_free(a);
    free(buf);
}

void test_keep_alive_on(void) {
    char url[256], port0[32], buf[32];
    agent *a = agent_new(true, 1000);
    agent_pool_stats st;
    ts_stats ss;
    int i;

    CHECK(a != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/ka-on");
    for (i = 0; i < 10; i++) {
        agent_response *r = NULL;
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
        CHECK_EQ(agent_response_status(r), 200);
        CHECK_MSG(agent_response_reused(r) == (i > 0), "request %d: reused=%d", i + 1,
                  (int)agent_response_reused(r));
        t_header(r, i == 0 ? "x-remote-port" : "X-Remote-Port", i == 0 ? port0 : buf, 32);
        CHECK(i == 0 || strcmp(buf, port0) == 0);
        agent_response_free(r);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 1);
    CHECK_EQ(ss.requests, 10);
    CHECK_EQ(ss.open, 1);
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.connections_opened, 1);
    CHECK_EQ(st.requests, 10);
    CHECK_EQ(st.reused_requests, 9);
    CHECK_EQ(st.idle, 1);
    agent_free(a);
    /* agent_free closes the pooled connection: the server sees it go. */
    CHECK(ts_wait_open(&ts_srv, 0, 2000 * ts_time_scale()));
}

void test_keep_alive_off(void) {
    char url[256], body[8192], ports[10][32];
    agent *a = agent_new(false, 0);
    agent_pool_stats st;
    ts_stats ss;
    int i, j;

    CHECK(a != NULL);
    CHECK(!agent_keep_alive_enabled(a));
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/ka-off?echo=1");
    for (i = 0; i < 10; i++) {
        agent_response *r = NULL;
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
        CHECK_EQ(agent_response_status(r), 200);
        CHECK(!agent_response_reused(r));
        t_body(r, body, sizeof body);
        lower(body);
        CHECK_MSG(strstr(body, "[\"connection\",\"close\"]") != NULL,
                  "request %d did not send Connection: close: %s", i + 1, body);
        t_header(r, "x-remote-port", ports[i], sizeof ports[i]);
        for (j = 0; j < i; j++) {
            CHECK_MSG(strcmp(ports[i], ports[j]) != 0, "port %s reused", ports[i]);
        }
        agent_response_free(r);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 10);
    CHECK_EQ(ss.requests, 10);
    /* Nothing stays open, nothing is pooled. */
    CHECK(ts_wait_open(&ts_srv, 0, 2000 * ts_time_scale()));
    CHECK_CODE(agent_stats(a, &st), AGENT_CODE_OK);
    CHECK_EQ(st.connections_opened, 10);
    CHECK_EQ(st.reused_requests, 0);
    CHECK_EQ(st.idle, 0);
    CHECK(!st.keep_alive);
    agent_free(a);
}

void test_on_and_off_same_process(void) {
    char url[256];
    agent *on = agent_new(true, 1000);
    agent *off = agent_new(false, 1000);
    ts_stats ss;
    int i;

    CHECK(on != NULL && off != NULL);
    ts_url(url, sizeof url, "http", ts_srv.http_port, "/mixed");
    for (i = 0; i < 5; i++) {
        agent_response *r1 = NULL, *r2 = NULL;
        CHECK_CODE(t_get(on, url, &r1), AGENT_CODE_OK);
        CHECK_CODE(t_get(off, url, &r2), AGENT_CODE_OK);
        CHECK(agent_response_reused(r1) == (i > 0));
        CHECK(!agent_response_reused(r2));
        agent_response_free(r1);
        agent_response_free(r2);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 1 + 5);
    agent_free(on);
    agent_free(off);
}

void test_tls(void) {
    char url[256];
    agent *a = t_agent_with_ca(true);
    agent *off = t_agent_with_ca(false);
    agent *plain = agent_new(true, 1000);
    agent *danger = NULL;
    agent_options *o = agent_options_new();
    agent_response *r = (agent_response *)NULL;
    agent_timings t;
    ts_stats ss;
    int i;
    const int ports[3] = {ts_srv.https_self_signed_port, ts_srv.https_wrong_host_port,
                          ts_srv.https_expired_port};

    CHECK(a != NULL && off != NULL && plain != NULL && o != NULL);
    ts_url(url, sizeof url, "https", ts_srv.https_port, "/tls");
    for (i = 0; i < 10; i++) {
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_OK);
        CHECK_EQ(agent_response_status(r), 200);
        CHECK(agent_response_reused(r) == (i > 0));
        CHECK_CODE(agent_response_timings(r, &t), AGENT_CODE_OK);
        CHECK(i == 0 ? t.tls_us > 0 : t.tls_us == 0);
        agent_response_free(r);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 1);

    /* Keep-alive off over TLS: a handshake per request. */
    ts_admin_reset(&ts_srv);
    for (i = 0; i < 3; i++) {
        CHECK_CODE(t_get(off, url, &r), AGENT_CODE_OK);
        CHECK(!agent_response_reused(r));
        agent_response_free(r);
    }
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 3);

    /* Without the CA: the certificate is not trusted. */
    r = NULL;
    CHECK_CODE(t_get(plain, url, &r), AGENT_CODE_TLS);
    CHECK(r == NULL);
    CHECK(ts_last_error()[0] != '\0');

    /* Even with the CA: self-signed, wrong host and expired certificates fail. */
    for (i = 0; i < 3; i++) {
        ts_url(url, sizeof url, "https", ports[i], "/bad");
        CHECK_CODE(t_get(a, url, &r), AGENT_CODE_TLS);
    }

    /* The explicit danger switch accepts the self-signed one. */
    CHECK_CODE(agent_options_set_danger_accept_invalid_certs(o, true), AGENT_CODE_OK);
    CHECK_CODE(agent_new_with_options(o, &danger), AGENT_CODE_OK);
    ts_url(url, sizeof url, "https", ts_srv.https_self_signed_port, "/danger");
    CHECK_CODE(t_get(danger, url, &r), AGENT_CODE_OK);
    CHECK_EQ(agent_response_status(r), 200);
    agent_response_free(r);

    agent_options_free(o);
    agent_free(danger);
    agent_free(a);
    agent_free(off);
    agent_free(plain);
}

/* explicit_setting: -1 unset, 0/1 set; ignore: agent_options_set_ignore_environment. */
static bool options_agent_keep_alive(int explicit_setting, bool ignore, agent_setting_source *src) {
    agent *a = NULL;
    bool ka;
    agent_options *o = agent_options_new();
    if (explicit_setting >= 0) {
        agent_options_set_keep_alive(o, explicit_setting != 0);
    }
    if (ignore) {
        agent_options_set_ignore_environment(o, true);
    }
    if (agent_new_with_options(o, &a) != AGENT_CODE_OK) {
        agent_options_free(o);
        return false;
    }
    ka = agent_keep_alive_enabled(a);
    if (src) {
        *src = agent_keep_alive_source(a);
    }
    agent_options_free(o);
    agent_free(a);
    return ka;
}

/* SPEC §3: the process switch is a kill switch; only ignore_environment escapes it. */
void test_env_switch(void) {
    static const char *names[2] = {"KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED",
                                   "AWS_NODEJS_CONNECTION_REUSE_ENABLED"};
    agent_setting_source src;
    char text[256];
    agent *a;
    int i;
    CHECK(options_agent_keep_alive(-1, false, &src));
    CHECK_EQ(src, AGENT_SOURCE_DEFAULT);
    CHECK(options_agent_keep_alive(1, false, &src));
    CHECK_EQ(src, AGENT_SOURCE_ARGUMENT);
    for (i = 0; i < 2; i++) {
        CHECK(setenv(names[i], i == 0 ? "FALSE" : "0", 1) == 0);
        CHECK(!options_agent_keep_alive(-1, false, &src));
        CHECK_EQ(src, AGENT_SOURCE_ENVIRONMENT);
        CHECK(!options_agent_keep_alive(1, false, &src)); /* explicit true is overruled */
        CHECK_EQ(src, AGENT_SOURCE_ENVIRONMENT);
        CHECK(options_agent_keep_alive(1, true, &src)); /* the escape */
        CHECK_EQ(src, AGENT_SOURCE_ARGUMENT);
        CHECK(options_agent_keep_alive(-1, true, &src));
        CHECK_EQ(src, AGENT_SOURCE_DEFAULT);
        a = agent_new(true, 0); /* the README's first example is switched off too */
        CHECK(a != NULL);
        CHECK(!agent_keep_alive_enabled(a));
        CHECK(agent_keep_alive_describe(a, text, sizeof text) < sizeof text);
        CHECK(strstr(text, "off: environment") == text);
        CHECK(strstr(text, names[i]) != NULL);
        agent_free(a);
        CHECK(unsetenv(names[i]) == 0);
    }
    CHECK(setenv(names[0], "true", 1) == 0);
    CHECK(!options_agent_keep_alive(0, false, &src)); /* per-client disabling always works */
    CHECK_EQ(src, AGENT_SOURCE_ARGUMENT);
    CHECK(options_agent_keep_alive(-1, false, &src));
    CHECK_EQ(src, AGENT_SOURCE_ENVIRONMENT);
    CHECK(unsetenv(names[0]) == 0);
    CHECK(options_agent_keep_alive(-1, false, NULL));
    /* NULL is harmless. */
    CHECK_EQ(agent_keep_alive_source(NULL), AGENT_SOURCE_DEFAULT);
    CHECK_EQ(agent_keep_alive_describe(NULL, text, sizeof text), 0);
}
