/*
 * keepalive_agent.hpp: a header-only C++17 wrapper over keepalive_agent.h.
 *
 *     #include <keepalive_agent.hpp>
 *
 *     keepalive::Agent agent;          // keep-alive on (unless the environment switch says off)
 *     keepalive::Response r = agent.get("http://127.0.0.1:8080/");
 *     std::cout << r.status() << " " << r.body() << "\n";
 *
 * Ownership: Agent, Options and Response own their C handle through a std::unique_ptr with
 * the matching *_free deleter. They are move-only; a moved-from object is empty (its methods
 * report AGENT_CODE_INVALID_ARGUMENT, Response::operator bool is false).
 *
 * Errors: exceptions. Every failing call throws keepalive::Error (a std::runtime_error) that
 * carries the agent_code (code(), code_name()) and the library's message (message()). We chose
 * exceptions over a result type because a failed request is exceptional for most callers and
 * this keeps the common path to one line; an HTTP status such as 404 or 503 is NOT an error
 * (check Response::status()). The async API is the exception to the rule: its callback runs on
 * a library thread where nothing may be thrown into the C library, so it receives an
 * AsyncResult (code, message, response) instead; AsyncResult::value() throws if you prefer.
 *
 * Async callbacks: Agent::request_async copies your std::function to the heap and passes it to
 * the C library as userdata; it is called exactly once, on a library thread, and deleted right
 * after (or at once if the request could not be started, in which case request_async throws).
 * The callback must not block for long and must not call the blocking Agent::request (that is
 * refused with AGENT_CODE_WOULD_BLOCK); request_async, cancel and stats are fine. An exception
 * escaping the callback calls std::terminate (as with std::thread): catch inside it.
 *
 * Thread safety: as the C API. One Agent may be used from many threads at once (its methods
 * are const); destroying it must not race other calls. A Response is used by one thread at a
 * time. Views (std::string_view) returned by a Response stay valid until it is destroyed.
 */
#ifndef KEEPALIVE_AGENT_HPP
#define KEEPALIVE_AGENT_HPP

#include "keepalive_agent.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keepalive {

/* The message of the last failure on this thread (agent_last_error), as a string. */
inline std::string last_error() {
    std::size_t n = agent_last_error(nullptr, 0);
    if (n == 0) {
        return std::string();
    }
    std::string s(n + 1, '\0');
    std::size_t m = agent_last_error(&s[0], s.size());
    s.resize(m < n ? m : n);
    return s;
}

/* The library version, e.g. "0.1.0" (agent_version). */
inline const char *version() noexcept { return agent_version(); }

/* The name of a code, e.g. "AGENT_CODE_TLS" (agent_code_str). */
inline const char *code_name(agent_code code) noexcept {
    return agent_code_name(static_cast<std::uint32_t>(code));
}

/* A failed call: the code and the library's message. what() is "NAME: message". */
class Error : public std::runtime_error {
public:
    Error(agent_code code, std::string message)
        : std::runtime_error(std::string(keepalive::code_name(code)) + ": " + message),
          code_(code), message_(std::move(message)) {}

    agent_code code() const noexcept { return code_; }
    const char *code_name() const noexcept { return keepalive::code_name(code_); }
    const std::string &message() const { return message_; }

private:
    agent_code code_;
    std::string message_;
};

namespace detail {

inline void check(agent_code code) {
    if (code != AGENT_CODE_OK) {
        throw Error(code, last_error());
    }
}

/* Text handed to C must be NUL-terminated and must not hide a NUL inside. */
inline std::string c_string(std::string_view s, const char *what) {
    if (s.find('\0') != std::string_view::npos) {
        throw Error(AGENT_CODE_INVALID_ARGUMENT, std::string(what) + " contains a NUL byte");
    }
    return std::string(s);
}

struct AgentDeleter {
    void operator()(agent *a) const noexcept { agent_free(a); }
};
struct OptionsDeleter {
    void operator()(agent_options *o) const noexcept { agent_options_free(o); }
};
struct ResponseDeleter {
    void operator()(agent_response *r) const noexcept { agent_response_free(r); }
};

} // namespace detail

/* One request header. The same name may appear more than once. */
struct Header {
    std::string name;
    std::string value;
};
using Headers = std::vector<Header>;

/* One response header line: views into the Response (lowercase name). */
struct HeaderView {
    std::string_view name;
    std::string_view value;
};

/* A complete response (agent_response). */
class Response {
public:
    Response() noexcept = default;
    /* Takes ownership of `r` (may be NULL). */
    explicit Response(agent_response *r) noexcept : r_(r) {}
    Response(Response &&) noexcept = default;
    Response &operator=(Response &&) noexcept = default;
    Response(const Response &) = delete;
    Response &operator=(const Response &) = delete;
    ~Response() = default;

    explicit operator bool() const noexcept { return r_ != nullptr; }

    std::uint16_t status() const noexcept { return agent_response_status(r_.get()); }
    /* 10 for HTTP/1.0, 11 for HTTP/1.1. */
    std::uint32_t version() const noexcept { return agent_response_version(r_.get()); }
    /* Sent on a connection that had served an earlier request. */
    bool reused() const noexcept { return agent_response_reused(r_.get()); }

    /* The whole body (bytes; may contain NULs). */
    std::string_view body() const {
        const std::uint8_t *p = nullptr;
        std::size_t n = 0;
        detail::check(agent_response_body(r_.get(), &p, &n));
        return n == 0 ? std::string_view() : std::string_view(reinterpret_cast<const char *>(p), n);
    }

    /* The first value of header `name` (case-insensitive), or nullopt. */
    std::optional<std::string_view> header(const std::string &name) const {
        const char *v = nullptr;
        std::size_t n = 0;
        agent_code c =
            agent_response_header(r_.get(), detail::c_string(name, "header name").c_str(), &v, &n);
        if (c == AGENT_CODE_NOT_FOUND) {
            return std::nullopt;
        }
        detail::check(c);
        return std::string_view(v, n);
    }

    std::size_t header_count() const noexcept { return agent_response_header_count(r_.get()); }

    /* Header line `i` (0-based); throws Error(AGENT_CODE_NOT_FOUND) when out of range. */
    HeaderView header_at(std::size_t i) const {
        const char *name = nullptr, *value = nullptr;
        std::size_t name_len = 0, value_len = 0;
        detail::check(agent_response_header_at(r_.get(), i, &name, &name_len, &value, &value_len));
        return HeaderView{std::string_view(name, name_len), std::string_view(value, value_len)};
    }

    /* Every header line, repeated names once per line. */
    std::vector<HeaderView> headers() const {
        std::vector<HeaderView> out;
        std::size_t n = header_count();
        out.reserve(n);
        for (std::size_t i = 0; i < n; i++) {
            out.push_back(header_at(i));
        }
        return out;
    }

    agent_timings timings() const {
        agent_timings t{};
        detail::check(agent_response_timings(r_.get(), &t));
        return t;
    }

    agent_response *get() const noexcept { return r_.get(); }
    /* Gives up ownership: free the result with agent_response_free. */
    agent_response *release() noexcept { return r_.release(); }

private:
    std::unique_ptr<agent_response, detail::ResponseDeleter> r_;
};

/* What an async request's callback receives: OK with a response, or a code and message. */
struct AsyncResult {
    agent_code code = AGENT_CODE_OK;
    std::string message;
    Response response;

    bool ok() const noexcept { return code == AGENT_CODE_OK; }
    /* The response, or throws the failure as Error. */
    Response &value() {
        if (!ok()) {
            throw Error(code, message);
        }
        return response;
    }
};

/* Options for an Agent (agent_options): chain the setters, then construct an Agent. Values are
 * validated by the Agent constructor (Error with AGENT_CODE_INVALID_OPTION). See the C header
 * for each option's meaning and default. */
class Options {
public:
    Options() : o_(agent_options_new()) {
        if (!o_) {
            throw std::bad_alloc();
        }
    }
    Options(Options &&) noexcept = default;
    Options &operator=(Options &&) noexcept = default;
    Options(const Options &) = delete;
    Options &operator=(const Options &) = delete;
    ~Options() = default;

#define KEEPALIVE_HPP_SETTER(method, type)                                                   \
    Options &method(type v) {                                                              \
        detail::check(agent_options_set_##method(o_.get(), v));                            \
        return *this;                                                                      \
    }
    KEEPALIVE_HPP_SETTER(keep_alive, bool)
    KEEPALIVE_HPP_SETTER(keep_alive_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(keep_alive_interval_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(keep_alive_probes, std::uint32_t)
    KEEPALIVE_HPP_SETTER(max_sockets, std::uint32_t)
    KEEPALIVE_HPP_SETTER(max_total_sockets, std::uint32_t)
    KEEPALIVE_HPP_SETTER(max_free_sockets, std::uint32_t)
    KEEPALIVE_HPP_SETTER(scheduling, std::uint32_t)
    KEEPALIVE_HPP_SETTER(free_socket_timeout_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(keep_alive_timeout_buffer_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(max_keep_alive_timeout_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(max_socket_lifetime_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(connect_timeout_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(headers_timeout_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(body_timeout_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(retry_stale, bool)
    KEEPALIVE_HPP_SETTER(max_response_bytes, std::uint64_t)
    KEEPALIVE_HPP_SETTER(use_system_roots, bool)
    KEEPALIVE_HPP_SETTER(danger_accept_invalid_certs, bool)
    KEEPALIVE_HPP_SETTER(proxy_from_env, bool)
    KEEPALIVE_HPP_SETTER(ignore_environment, bool)
    KEEPALIVE_HPP_SETTER(dns_cache_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(happy_eyeballs_delay_msecs, std::uint32_t)
    KEEPALIVE_HPP_SETTER(http_version, std::uint32_t)
    KEEPALIVE_HPP_SETTER(event_mask, std::uint32_t)

    /* Events from inside (see agent_options_set_events): `callback` runs on library threads
     * (or yours inside a blocking call) with `userdata`, which must outlive the agent. */
    Options &events(agent_trace_callback callback, void *userdata) {
        detail::check(agent_options_set_events(o_.get(), callback, userdata));
        return *this;
    }
#undef KEEPALIVE_HPP_SETTER

    /* Extra trust anchors as PEM text (copied). */
    Options &ca_pem(std::string_view pem) {
        detail::check(agent_options_set_ca_pem(
            o_.get(), reinterpret_cast<const std::uint8_t *>(pem.data()), pem.size()));
        return *this;
    }
    /* Extra trust anchors from a PEM file (read when the Agent is constructed). */
    Options &ca_file(std::string_view path) {
        detail::check(agent_options_set_ca_file(o_.get(), detail::c_string(path, "ca_file").c_str()));
        return *this;
    }
    Options &user_agent(std::string_view ua) {
        detail::check(
            agent_options_set_user_agent(o_.get(), detail::c_string(ua, "user_agent").c_str()));
        return *this;
    }
    /* Proxy URL for every request ("" = none, whatever the environment says). */
    Options &proxy(std::string_view url) {
        detail::check(agent_options_set_proxy(o_.get(), detail::c_string(url, "proxy").c_str()));
        return *this;
    }
    /* Hosts that bypass the proxy (NO_PROXY grammar). */
    Options &no_proxy(std::string_view list) {
        detail::check(
            agent_options_set_no_proxy(o_.get(), detail::c_string(list, "no_proxy").c_str()));
        return *this;
    }
    /* One curl-style resolve entry, host:port:addr[,addr...]; call once per entry. */
    Options &resolve(std::string_view entry) {
        detail::check(
            agent_options_add_resolve(o_.get(), detail::c_string(entry, "resolve").c_str()));
        return *this;
    }
    /* Mutual TLS: the client's certificate chain and key, PEM text (copied) or files. */
    Options &client_cert_pem(std::string_view pem) {
        detail::check(agent_options_set_client_cert_pem(
            o_.get(), reinterpret_cast<const std::uint8_t *>(pem.data()), pem.size()));
        return *this;
    }
    Options &client_key_pem(std::string_view pem) {
        detail::check(agent_options_set_client_key_pem(
            o_.get(), reinterpret_cast<const std::uint8_t *>(pem.data()), pem.size()));
        return *this;
    }
    Options &client_cert_file(std::string_view path) {
        detail::check(agent_options_set_client_cert_file(
            o_.get(), detail::c_string(path, "client_cert_file").c_str()));
        return *this;
    }
    Options &client_key_file(std::string_view path) {
        detail::check(agent_options_set_client_key_file(
            o_.get(), detail::c_string(path, "client_key_file").c_str()));
        return *this;
    }

    const agent_options *get() const noexcept { return o_.get(); }

private:
    std::unique_ptr<agent_options, detail::OptionsDeleter> o_;
};

/* An HTTP/1.1 client with a keep-alive connection pool (agent). */
class Agent {
public:
    using Callback = std::function<void(AsyncResult)>;

    /* Every option at its default: keep-alive on unless the environment switch
     * (KEEPALIVE_AGENT_CONNECTION_REUSE_ENABLED / AWS_NODEJS_CONNECTION_REUSE_ENABLED) is
     * false/0. */
    Agent() : Agent(Options()) {}

    /* Keep-alive on or off explicitly (false always wins; true is overruled by the environment
     * switch set to false, unless Options().ignore_environment(true)); keep_alive_msecs is
     * the TCP keep-alive probe delay (0 = default 1000). Equivalent to agent_new, built
     * through the options so that a failure can be thrown with its code. */
    explicit Agent(bool keep_alive, std::uint32_t keep_alive_msecs = 0)
        : Agent(Options().keep_alive(keep_alive).keep_alive_msecs(keep_alive_msecs)) {}

    /* From options (copied: they may be destroyed right after). */
    explicit Agent(const Options &options) {
        agent *a = nullptr;
        detail::check(agent_new_with_options(options.get(), &a));
        a_.reset(a);
    }

    /* Takes ownership of a handle from agent_new / agent_new_with_options. */
    explicit Agent(agent *a) noexcept : a_(a) {}

    Agent(Agent &&) noexcept = default;
    Agent &operator=(Agent &&) noexcept = default;
    Agent(const Agent &) = delete;
    Agent &operator=(const Agent &) = delete;
    /* agent_free: cancels in-flight async requests (callbacks get AGENT_CODE_CANCELLED),
     * closes every connection, waits (bounded) for both. */
    ~Agent() = default;

    /* Blocking request. `body` is bytes (may contain NULs); timeout_msecs 0 = none. */
    Response request(std::string_view method, std::string_view url, const Headers &headers = {},
                     std::string_view body = {}, std::uint32_t timeout_msecs = 0) const {
        Prepared p(method, url, headers);
        agent_response *r = nullptr;
        detail::check(agent_request(a_.get(), p.method.c_str(), p.url.c_str(), p.data(),
                                    p.headers.size(), bytes(body), body.size(), timeout_msecs, &r));
        return Response(r);
    }

    Response get(std::string_view url, const Headers &headers = {},
                 std::uint32_t timeout_msecs = 0) const {
        return request("GET", url, headers, {}, timeout_msecs);
    }

    Response post(std::string_view url, std::string_view body, const Headers &headers = {},
                  std::uint32_t timeout_msecs = 0) const {
        return request("POST", url, headers, body, timeout_msecs);
    }

    /* Starts a request; `callback` runs exactly once on a library thread (see the top of this
     * file). Returns the id for cancel(). Throws (and never calls back) if it cannot start. */
    std::uint64_t request_async(std::string_view method, std::string_view url,
                                const Headers &headers, std::string_view body,
                                std::uint32_t timeout_msecs, Callback callback) const {
        Prepared p(method, url, headers);
        if (!callback) {
            throw Error(AGENT_CODE_INVALID_ARGUMENT, "callback is empty");
        }
        auto closure = std::make_unique<Callback>(std::move(callback));
        std::uint64_t id = 0;
        detail::check(agent_request_async(a_.get(), p.method.c_str(), p.url.c_str(), p.data(),
                                          p.headers.size(), bytes(body), body.size(),
                                          timeout_msecs, &Agent::trampoline, closure.get(), &id));
        closure.release(); /* owned by the pending request now; trampoline deletes it */
        return id;
    }

    std::uint64_t get_async(std::string_view url, Callback callback) const {
        return request_async("GET", url, {}, {}, 0, std::move(callback));
    }

    /* true: cancelled (its callback gets AGENT_CODE_CANCELLED); false: already finished. */
    bool cancel(std::uint64_t id) const {
        agent_code c = agent_request_cancel(a_.get(), id);
        if (c == AGENT_CODE_NOT_FOUND) {
            return false;
        }
        detail::check(c);
        return true;
    }

    agent_pool_stats stats() const {
        agent_pool_stats s{};
        detail::check(agent_stats(a_.get(), &s));
        return s;
    }

    /* Stats of one origin, e.g. "https://example.com". */
    agent_pool_stats origin_stats(std::string_view origin_url) const {
        agent_pool_stats s{};
        detail::check(agent_origin_stats(
            a_.get(), detail::c_string(origin_url, "origin_url").c_str(), &s));
        return s;
    }

    bool keep_alive_enabled() const noexcept { return agent_keep_alive_enabled(a_.get()); }
    /* Opens connections to url's origin in the background until it has `count` (see
     * agent_preconnect); returns at once. */
    void preconnect(const std::string &url, std::uint32_t count) {
        detail::check(agent_preconnect(a_.get(), detail::c_string(url, "url").c_str(), count));
    }

    /* What decided keep_alive_enabled(), and the same in words (SPEC §3's read-back). */
    agent_setting_source keep_alive_source() const noexcept {
        return agent_keep_alive_source(a_.get());
    }
    std::string keep_alive_describe() const {
        std::string s(agent_keep_alive_describe(a_.get(), nullptr, 0), '\0');
        if (!s.empty()) agent_keep_alive_describe(a_.get(), &s[0], s.size() + 1);
        return s;
    }

    agent *get() const noexcept { return a_.get(); }

private:
    /* NUL-terminated copies of what the C call needs. */
    struct Prepared {
        std::string method, url;
        std::vector<std::string> storage;
        std::vector<agent_header> headers;

        Prepared(std::string_view m, std::string_view u, const Headers &hs)
            : method(detail::c_string(m, "method")), url(detail::c_string(u, "url")) {
            storage.reserve(hs.size() * 2);
            headers.reserve(hs.size());
            for (const Header &h : hs) {
                storage.push_back(detail::c_string(h.name, "header name"));
                storage.push_back(detail::c_string(h.value, "header value"));
            }
            for (std::size_t i = 0; i < hs.size(); i++) {
                headers.push_back(agent_header{storage[2 * i].c_str(), storage[2 * i + 1].c_str()});
            }
        }
        const agent_header *data() const noexcept {
            return headers.empty() ? nullptr : headers.data();
        }
    };

    static const std::uint8_t *bytes(std::string_view s) noexcept {
        return s.empty() ? nullptr : reinterpret_cast<const std::uint8_t *>(s.data());
    }

    /* Runs on a library thread; noexcept: an exception from the callback terminates. */
    static void trampoline(void *userdata, agent_code code, agent_response *response) noexcept {
        std::unique_ptr<Callback> callback(static_cast<Callback *>(userdata));
        AsyncResult result;
        result.response = Response(response);
        result.code = code;
        if (code != AGENT_CODE_OK) {
            result.message = last_error();
        }
        (*callback)(std::move(result));
    }

    std::unique_ptr<agent, detail::AgentDeleter> a_;
};

} // namespace keepalive

#endif /* KEEPALIVE_AGENT_HPP */
