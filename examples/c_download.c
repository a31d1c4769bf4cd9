/* c_download: streams a response body to a file with progress, in constant memory, then
 * uploads the file back from a read callback (the request body is never held whole).
 *
 *   c_download URL FILE [UPLOAD_URL]
 *
 * Build: cc -Iinclude examples/c_download.c -Ltarget/release -lkeepalive_agent -lpthread
 */
#include <keepalive_agent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, agent_code c) {
    char msg[512];
    agent_last_error(msg, sizeof msg);
    fprintf(stderr, "%s: %s: %s\n", what, agent_code_name(c), msg);
    return 1;
}

/* The request body source: reads the file piece by piece. */
static int file_read(void *userdata, uint8_t *buf, size_t cap, size_t *n) {
    FILE *f = userdata;
    *n = fread(buf, 1, cap, f);
    return ferror(f) ? -1 : 0;
}

static int file_rewind(void *userdata) {
    return fseek((FILE *)userdata, 0, SEEK_SET) == 0 ? 0 : -1;
}

static void file_release(void *userdata) {
    fclose((FILE *)userdata);
}

int main(int argc, char **argv) {
    static uint8_t buf[64 * 1024];
    agent *a;
    agent_stream *s = NULL;
    agent_response_parts head;
    agent_code c;
    FILE *out;
    unsigned long long got = 0, want = 0, next_report = 0;
    size_t i, n;

    if (argc < 3) {
        fprintf(stderr, "usage: %s URL FILE [UPLOAD_URL]\n", argv[0]);
        return 2;
    }
    a = agent_new(true, 1000);
    if (a == NULL) return fail("agent_new", AGENT_CODE_INTERNAL);

    /* Download: the head first, then the body piece by piece. */
    c = agent_request_stream(a, "GET", argv[1], NULL, 0, NULL, 0, NULL, 0, &s);
    if (c != AGENT_CODE_OK) return fail("request", c);
    agent_stream_head(s, &head);
    for (i = 0; i + 16 < head.headers_len; i++) { /* content-length, if any, for progress */
        if (strncmp((const char *)head.headers + i, "content-length: ", 16) == 0) {
            want = strtoull((const char *)head.headers + i + 16, NULL, 10);
            break;
        }
    }
    out = fopen(argv[2], "wb");
    if (out == NULL) {
        perror(argv[2]);
        agent_stream_free(s);
        agent_free(a);
        return 1;
    }
    for (;;) {
        c = agent_stream_read(s, buf, sizeof buf, &n);
        if (c != AGENT_CODE_OK) {
            fclose(out);
            agent_stream_free(s); /* aborts: the connection is closed */
            agent_free(a);
            return fail("read", c);
        }
        if (n == 0) break; /* the end: the connection is back in the pool */
        fwrite(buf, 1, n, out);
        got += n;
        if (got >= next_report) {
            if (want) fprintf(stderr, "\r%llu / %llu bytes (%llu%%)", got, want, got * 100 / want);
            else fprintf(stderr, "\r%llu bytes", got);
            next_report = got + (8ull << 20);
        }
    }
    fclose(out);
    agent_stream_free(s);
    fprintf(stderr, "\r%llu bytes\n", got);
    printf("status=%u bytes=%llu\n", head.status, got);

    /* Upload the file back, read from disk by the callback (Content-Length from its size). */
    if (argc > 3) {
        agent_body_source src;
        FILE *in = fopen(argv[2], "rb");
        char echo[1024];
        size_t used = 0;
        if (in == NULL) {
            perror(argv[2]);
            agent_free(a);
            return 1;
        }
        src.read = file_read;
        src.rewind = file_rewind; /* replayable: a stale keep-alive connection is retried */
        src.release = file_release;
        src.length = (int64_t)got;
        src.userdata = in;
        c = agent_request_stream(a, "PUT", argv[3], NULL, 0, NULL, 0, &src, 0, &s);
        if (c != AGENT_CODE_OK) return fail("upload", c);
        for (;;) { /* the server's answer (the test server echoes what it received) */
            c = agent_stream_read(s, (uint8_t *)echo + used, sizeof echo - 1 - used, &n);
            if (c != AGENT_CODE_OK || n == 0) break;
            used += n;
            if (used == sizeof echo - 1) break;
        }
        if (c != AGENT_CODE_OK) {
            agent_stream_free(s);
            agent_free(a);
            return fail("upload response", c);
        }
        echo[used] = '\0';
        agent_stream_head(s, &head);
        printf("upload status=%u reused=%d\n", head.status, head.reused);
        agent_stream_free(s);
    }
    agent_free(a);
    return 0;
}
