// test_hpp.cpp: the C++17 wrapper (include/keepalive_agent.hpp) against the test server.
// Built with g++ and with clang++ -fsanitize=address,undefined; uses the C harness.
#include "keepalive_agent.hpp"

#include <cstdlib>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

namespace {

std::string url(const char *scheme, int port, const char *path) {
    char buf[256];
    ts_url(buf, sizeof buf, scheme, port, path);
    return buf;
}

// Runs f, expects keepalive::Error with `code`; returns true if so.
template <typename F> bool throws_code(F &&f, agent_code code, std::string *message = nullptr) {
    try {
        f();
    } catch (const keepalive::Error &e) {
        if (message != nullptr) {
            *message = e.message();
        }
        if (e.code() != code) {
            fprintf(stderr, "  got %s (%s), want %s\n", e.code_name(), e.what(),
                    keepalive::code_name(code));
        }
        return e.code() == code && !e.message().empty() &&
               std::string(e.what()).find(keepalive::code_name(code)) == 0;
    }
    return false;
}

// Counts completions; wait(n) blocks until n arrived (bounded).
struct Latch {
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    void arrive() {
        std::lock_guard<std::mutex> g(mu);
        done++;
        cv.notify_all();
    }
    int wait(int n, int ms) {
        std::unique_lock<std::mutex> g(mu);
        cv.wait_for(g, std::chrono::milliseconds(ms), [&] { return done >= n; });
        return done;
    }
};

void test_hpp_get_and_accessors() {
    keepalive::Agent agent;
    CHECK(agent.keep_alive_enabled());
    std::string u = url("http", ts_srv.http_port, "/hpp");
    keepalive::Response r = agent.get(u);
    CHECK(static_cast<bool>(r));
    CHECK_EQ(r.status(), 200);
    CHECK_EQ(r.version(), 11);
    CHECK(!r.reused());
    CHECK(r.body() == "hello, world\n");
    CHECK(r.header("Content-Length").value_or("") == "13");
    CHECK(!r.header("x-absent").has_value());
    std::vector<keepalive::HeaderView> hs = r.headers();
    CHECK_EQ(hs.size(), r.header_count());
    bool saw_port = false;
    for (const auto &h : hs) {
        saw_port = saw_port || (h.name == "x-remote-port" && !h.value.empty());
    }
    CHECK(saw_port);
    CHECK(throws_code([&] { r.header_at(r.header_count()); }, AGENT_CODE_NOT_FOUND));
    CHECK(r.timings().total_us > 0);

    // Move-only ownership: a moved Response keeps working, the source is empty.
    keepalive::Response moved = std::move(r);
    CHECK(!r); // NOLINT(bugprone-use-after-move): documented empty state
    CHECK(moved.body().size() == 13);
    CHECK_EQ(r.status(), 0);

    keepalive::Response r2 = agent.get(u);
    CHECK(r2.reused());
    keepalive::Agent other = std::move(agent);
    keepalive::Response r3 = other.get(u);
    CHECK(r3.reused());
    CHECK(throws_code([&] { agent.get(u); }, AGENT_CODE_INVALID_ARGUMENT)); // moved-from

    agent_pool_stats st = other.stats();
    CHECK_EQ(st.requests, 3);
    CHECK_EQ(st.connections_opened, 1);
    CHECK_EQ(other.origin_stats(url("http", ts_srv.http_port, "")).requests, 3);
    CHECK(std::strcmp(keepalive::version(), KEEPALIVE_AGENT_VERSION) == 0);
}

void test_hpp_post_headers_body() {
    keepalive::Agent agent(keepalive::Options().user_agent("hpp-test/1"));
    std::string body("a\0b", 3); // bytes, with a NUL
    keepalive::Response r = agent.post(url("http", ts_srv.http_port, "/echo?echo=1"), body,
                                       {{"X-One", "1"}, {"X-Rep", "a"}, {"X-Rep", "b"}});
    std::string echo(r.body());
    CHECK(echo.find("\"body_len\":3") != std::string::npos);
    CHECK(echo.find("[\"x-rep\",\"a\"],[\"x-rep\",\"b\"]") != std::string::npos ||
          (echo.find("[\"x-rep\",\"a\"]") != std::string::npos &&
           echo.find("[\"x-rep\",\"b\"]") != std::string::npos));
    CHECK(echo.find("\"hpp-test/1\"") != std::string::npos);
}

void test_hpp_keep_alive_on_off() {
    keepalive::Agent on(true);
    keepalive::Agent off(false);
    CHECK(!off.keep_alive_enabled());
    std::string u = url("http", ts_srv.http_port, "/hpp-ka");
    for (int i = 0; i < 5; i++) {
        CHECK(on.get(u).reused() == (i > 0));
        CHECK(!off.get(u).reused());
    }
    ts_stats ss;
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.accepted, 1 + 5);

    // The environment switch is a kill switch: Agent() and Agent(true) both follow it; only
    // ignore_environment keeps reuse on.
    CHECK(keepalive::Agent().keep_alive_enabled());
    CHECK(setenv("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED", "false", 1) == 0);
    bool by_env = keepalive::Agent().keep_alive_enabled();
    keepalive::Agent explicit_on(true);
    keepalive::Agent escape(keepalive::Options().keep_alive(true).ignore_environment(true));
    CHECK(unsetenv("KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED") == 0);
    CHECK(!by_env);
    CHECK(!explicit_on.keep_alive_enabled());
    CHECK(explicit_on.keep_alive_source() == AGENT_SOURCE_ENVIRONMENT);
    CHECK(explicit_on.keep_alive_describe() ==
          "off: environment, KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED=\"false\"");
    CHECK(escape.keep_alive_enabled());
    CHECK(escape.keep_alive_source() == AGENT_SOURCE_ARGUMENT);

    // Pre-warming from C++: two idle connections before any request; a bad URL throws.
    keepalive::Agent warm(true);
    warm.preconnect(url("http", ts_srv.http_port, "/"), 2);
    for (int i = 0; i < 500 && warm.stats().idle < 2; i++) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(warm.stats().idle == 2);
    CHECK(throws_code([&] { warm.preconnect("not a url", 1); }, AGENT_CODE_INVALID_URL));
}

void test_hpp_errors() {
    keepalive::Agent agent;
    std::string msg;
    CHECK(throws_code([&] { agent.get(url("http", ts_refusing_port(), "/")); },
                      AGENT_CODE_CONNECT_REFUSED, &msg));
    CHECK(throws_code([&] { agent.get("not a url"); }, AGENT_CODE_INVALID_URL));
    CHECK(throws_code([&] { agent.get(url("http", ts_srv.http_port, "/"), {{"X-A", "x\r\nY: z"}}); },
                      AGENT_CODE_INVALID_ARGUMENT));
    // A NUL inside a std::string is caught by the wrapper (C would silently truncate).
    CHECK(throws_code(
        [&] { agent.get(url("http", ts_srv.http_port, "/"), {{"X-A", std::string("a\0b", 3)}}); },
        AGENT_CODE_INVALID_ARGUMENT));
    CHECK(throws_code([&] { agent.request(std::string("GET\0", 4), "http://127.0.0.1:1/"); },
                      AGENT_CODE_INVALID_ARGUMENT));
    CHECK(throws_code([&] { keepalive::Agent bad(keepalive::Options().scheduling(9)); },
                      AGENT_CODE_INVALID_OPTION));
    CHECK(throws_code([&] { keepalive::Agent bad(true, 4000000000u); },
                      AGENT_CODE_INVALID_OPTION));
    CHECK(throws_code([&] { keepalive::Agent bad(keepalive::Options().proxy("socks5://x:1")); },
                      AGENT_CODE_INVALID_OPTION));
    ts_stats ss;
    CHECK(ts_admin_stats(&ts_srv, &ss) == 0);
    CHECK_EQ(ss.requests, 0); // nothing refused above reached the server
}

void test_hpp_tls() {
    keepalive::Agent agent(keepalive::Options().ca_file(ts_srv.ca_pem_path));
    std::string u = url("https", ts_srv.https_port, "/hpp-tls");
    CHECK_EQ(agent.get(u).status(), 200);
    CHECK(agent.get(u).reused());
    keepalive::Agent no_ca;
    CHECK(throws_code([&] { no_ca.get(u); }, AGENT_CODE_TLS));
    // A name of our own through a resolve override; the certificate names 127.0.0.1 only.
    std::string entry = "hpp.test:" + std::to_string(ts_srv.https_port) + ":127.0.0.1";
    keepalive::Agent named(keepalive::Options().ca_file(ts_srv.ca_pem_path).resolve(entry)
                               .proxy("").dns_cache_msecs(0).happy_eyeballs_delay_msecs(100));
    std::string msg;
    CHECK(throws_code(
        [&] { named.get("https://hpp.test:" + std::to_string(ts_srv.https_port) + "/"); },
        AGENT_CODE_TLS, &msg));
    CHECK(msg.find("not valid for hpp.test") != std::string::npos);
}

void test_hpp_async() {
    const int n = ts_light() ? 10 : 50;
    auto owner = std::make_shared<int>(0); // each closure holds a copy: use_count tracks them
    Latch latch;
    std::vector<std::atomic<int>> calls(static_cast<size_t>(n));
    std::vector<int> status(static_cast<size_t>(n), -1);
    std::string u = url("http", ts_srv.http_port, "/hpp-async?delay_ms=10");
    {
        keepalive::Agent agent;
        std::vector<std::uint64_t> ids;
        for (int i = 0; i < n; i++) {
            ids.push_back(agent.get_async(u, [i, owner, &latch, &calls, &status](keepalive::AsyncResult res) {
                calls[static_cast<size_t>(i)]++;
                status[static_cast<size_t>(i)] = res.ok() ? res.value().status() : -static_cast<int>(res.code);
                latch.arrive();
            }));
        }
        CHECK_EQ(latch.wait(n, 30000 * ts_time_scale()), n);
        for (int i = 0; i < n; i++) {
            CHECK_EQ(calls[static_cast<size_t>(i)].load(), 1);
            CHECK_EQ(status[static_cast<size_t>(i)], 200);
            CHECK(!agent.cancel(ids[static_cast<size_t>(i)])); // finished: NOT_FOUND -> false
        }

        // A failure arrives as an AsyncResult; value() throws it.
        Latch one;
        agent_code code = AGENT_CODE_OK;
        std::string message;
        bool threw = false;
        agent.get_async(url("http", ts_refusing_port(), "/"), [&](keepalive::AsyncResult res) {
            code = res.code;
            message = res.message;
            try {
                res.value();
            } catch (const keepalive::Error &e) {
                threw = e.code() == AGENT_CODE_CONNECT_REFUSED;
            }
            one.arrive();
        });
        CHECK_EQ(one.wait(1, 10000 * ts_time_scale()), 1);
        CHECK_CODE(code, AGENT_CODE_CONNECT_REFUSED);
        CHECK(!message.empty());
        CHECK(threw);

        // A request that cannot start throws, and its closure is freed at once.
        long before = owner.use_count();
        CHECK(throws_code([&] { agent.get_async("not a url", [owner](keepalive::AsyncResult) {}); },
                          AGENT_CODE_INVALID_URL));
        CHECK_EQ(owner.use_count(), before);
    }
    CHECK_EQ(owner.use_count(), 1); // every closure was deleted after its single call
}

void test_hpp_destroy_with_in_flight() {
    auto owner = std::make_shared<int>(0);
    std::atomic<int> cancelled{0}, other{0};
    const int n = 3;
    {
        keepalive::Agent agent;
        keepalive::Agent::Callback cb = [owner, &cancelled, &other](keepalive::AsyncResult res) {
            (res.code == AGENT_CODE_CANCELLED && !res.response ? cancelled : other)++;
        };
        for (int i = 0; i < n; i++) {
            agent.get_async(url("http", ts_srv.http_port, "/slow?delay_ms=3000"), cb);
        }
        double deadline = ts_now_ms() + 5000.0 * ts_time_scale();
        ts_stats ss{};
        while (ts_admin_stats(&ts_srv, &ss) == 0 && ss.requests < n && ts_now_ms() < deadline) {
            ts_sleep_ms(10);
        }
        CHECK_EQ(ss.requests, n);
        // One more, cancelled by id.
        std::uint64_t id = agent.get_async(url("http", ts_srv.http_port, "/slow?delay_ms=3000"), cb);
        CHECK(agent.cancel(id));
        CHECK(!agent.cancel(id));
    } // ~Agent: agent_free
    CHECK_EQ(cancelled.load(), n + 1);
    CHECK_EQ(other.load(), 0);
    CHECK_EQ(owner.use_count(), 1);
}

} // namespace

int main(int argc, char **argv) {
    static const ts_test tests[] = {
        {"test_hpp_get_and_accessors", test_hpp_get_and_accessors},
        {"test_hpp_post_headers_body", test_hpp_post_headers_body},
        {"test_hpp_keep_alive_on_off", test_hpp_keep_alive_on_off},
        {"test_hpp_errors", test_hpp_errors},
        {"test_hpp_tls", test_hpp_tls},
        {"test_hpp_async", test_hpp_async},
        {"test_hpp_destroy_with_in_flight", test_hpp_destroy_with_in_flight},
    };
    return ts_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
