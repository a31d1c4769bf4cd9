"""Every C declaration of the binding: library lookup, types, prototypes, error checks.

This is the only module that knows the C ABI (``include/keepalive_agent.h``). Each
function below carries its C prototype as a comment; ``argtypes``/``restype`` follow it
exactly (pointers are ``c_void_p`` or typed pointers, never the default ``int``).
Functions returning an ``agent_code`` get :func:`_check` as ``errcheck``: a non-zero code
becomes the matching :class:`~keepalive_agent.errors.AgentError` subclass, with the
message from ``agent_last_error`` read on the same thread right after the call.

What the library can list, it lists: the codes (``agent_code_name``), the limits options
are checked against (``agent_limit``) and the statistics fields
(``agent_stats_field_name``) are read from it at import, never repeated here.

ctypes releases the GIL around every call into the library, so a blocking request does
not stop other Python threads.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from . import errors
from ._version import __version__

LIBRARY_NAME = "libkeepalive_agent.so" if sys.platform != "darwin" else "libkeepalive_agent.dylib"
ENV_LIBRARY = "KEEPALIVE_AGENT_LIB"

# ---------------------------------------------------------------------------------------
# Library lookup: $KEEPALIVE_AGENT_LIB, the package's own copy, the repo's target/ dirs.


def _repo_root() -> Optional[Path]:
    """The keepalive-agent checkout this file sits in (src layout), if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cargo = parent / "Cargo.toml"
        if cargo.is_file() and (parent / "include" / "keepalive_agent.h").is_file():
            return parent
    return None


def candidate_paths() -> List[Path]:
    """Where the library is looked for, in order."""
    paths: List[Path] = []
    env = os.environ.get(ENV_LIBRARY)
    if env:
        paths.append(Path(env))
    paths.append(Path(__file__).resolve().parent / LIBRARY_NAME)
    root = _repo_root()
    if root is not None:
        paths.append(root / "target" / "release" / LIBRARY_NAME)
        paths.append(root / "target" / "debug" / LIBRARY_NAME)
    return paths


def _load() -> Tuple[ctypes.CDLL, Path]:
    tried: List[str] = []
    env = os.environ.get(ENV_LIBRARY)
    for path in candidate_paths():
        if not path.is_file():
            tried.append(f"{path} (not found)")
            continue
        try:
            dll = ctypes.CDLL(str(path))
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        if tried and env:
            warnings.warn(
                f"keepalive_agent: {ENV_LIBRARY}={env} is not usable ({tried[0]}); using {path}",
                RuntimeWarning,
                stacklevel=2,
            )
        return dll, path
    raise ImportError(
        "keepalive_agent: cannot load the native library " + LIBRARY_NAME + "; tried:\n  "
        + "\n  ".join(tried)
        + f"\nSet {ENV_LIBRARY} to its path, or build it with `cargo build --release`"
        " (or `make lib`) in the keepalive-agent repository."
    )


lib, LIBRARY_PATH = _load()
# The same library through ``PyDLL``: its functions keep the GIL while they run. Only for
# calls that neither block nor call back into Python (reading or freeing what the caller
# owns), where releasing the GIL costs more than the call and, with many threads, hands
# the GIL to another thread at every call.
lib_holding_gil = ctypes.PyDLL(str(LIBRARY_PATH))

# ---------------------------------------------------------------------------------------
# Types


class agent_header(Structure):
    # typedef struct { const char *name; const char *value; } agent_header;
    _fields_ = [("name", c_char_p), ("value", c_char_p)]


class agent_timings(Structure):
    # typedef struct { uint64_t queued_us, dns_us, connect_us, tls_us, sent_us, ttfb_us,
    #   total_us; } agent_timings;
    _fields_ = [
        ("queued_us", c_uint64),
        ("dns_us", c_uint64),
        ("connect_us", c_uint64),
        ("tls_us", c_uint64),
        ("sent_us", c_uint64),
        ("ttfb_us", c_uint64),
        ("total_us", c_uint64),
    ]


class agent_response_parts(Structure):
    # typedef struct { uint16_t status; uint32_t version; bool reused; const uint8_t *body;
    #   size_t body_len; const uint8_t *headers; size_t headers_len; size_t header_count;
    #   agent_timings timings; } agent_response_parts;
    _fields_ = [
        ("status", ctypes.c_uint16),
        ("version", ctypes.c_uint32),
        ("reused", ctypes.c_bool),
        ("body", c_void_p),
        ("body_len", c_size_t),
        ("headers", c_void_p),
        ("headers_len", c_size_t),
        ("header_count", c_size_t),
        ("timings", agent_timings),
    ]


# Opaque handles travel as c_void_p (never the default int: 64-bit pointers).
agent_p = c_void_p
agent_options_p = c_void_p
agent_response_p = c_void_p
agent_code = c_uint32

# typedef void (*agent_callback)(void *userdata, agent_code code, agent_response *response);
agent_callback = CFUNCTYPE(None, c_void_p, agent_code, agent_response_p)

# Streaming: a response read piece by piece, and a request body read from the caller.
agent_stream_p = c_void_p

# int (*read)(void *userdata, uint8_t *buf, size_t cap, size_t *n);
agent_body_read = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, POINTER(c_size_t))
# int (*rewind)(void *userdata);
agent_body_rewind = CFUNCTYPE(c_int, c_void_p)
# void (*release)(void *userdata);
agent_body_release = CFUNCTYPE(None, c_void_p)


class agent_body_source(Structure):
    # typedef struct { int (*read)(void *userdata, uint8_t *buf, size_t cap, size_t *n);
    #   int (*rewind)(void *userdata); void (*release)(void *userdata); int64_t length;
    #   void *userdata; } agent_body_source;
    _fields_ = [
        ("read", agent_body_read),
        ("rewind", agent_body_rewind),
        ("release", agent_body_release),
        ("length", c_int64),
        ("userdata", c_void_p),
    ]


# #define AGENT_SOURCE_PENDING 1885695588
#   what a body source's read returns when no data is ready yet, after taking a waker
SOURCE_PENDING = 1885695588
# typedef struct agent_body_waker agent_body_waker;   (opaque: from agent_body_source_waker,
#   woken or freed exactly once)
agent_body_waker_p = c_void_p

# typedef void (*agent_stream_callback)(void *userdata, agent_code code, agent_stream *stream);
agent_stream_callback = CFUNCTYPE(None, c_void_p, agent_code, agent_stream_p)
# typedef void (*agent_data_callback)(void *userdata, agent_code code, const uint8_t *data,
#     size_t len);
agent_data_callback = CFUNCTYPE(None, c_void_p, agent_code, c_void_p, c_size_t)

# #define AGENT_SCHEDULING_LIFO 0 / AGENT_SCHEDULING_FIFO 1
SCHEDULING = {"lifo": 0, "fifo": 1}

# #define AGENT_HTTP_VERSION_AUTO 0 / AGENT_HTTP_VERSION_HTTP1 1 / AGENT_HTTP_VERSION_HTTP2 2 /
#   AGENT_HTTP_VERSION_H2C_PRIOR_KNOWLEDGE 3   (agent_options_set_http_version)
HTTP_VERSIONS = {"auto": 0, "http1": 1, "http2": 2, "h2c-prior-knowledge": 3}

# enum agent_setting_source { AGENT_SOURCE_DEFAULT = 0, AGENT_SOURCE_ARGUMENT = 1,
#   AGENT_SOURCE_ENVIRONMENT = 2 };   (agent_keep_alive_source)
SETTING_SOURCES = {0: "default", 1: "argument", 2: "environment"}

# enum agent_trace_kind { AGENT_TRACE_QUEUED = 0, AGENT_TRACE_DEQUEUED = 1,
#   AGENT_TRACE_CONNECT_START = 2, AGENT_TRACE_CONNECT_DONE = 3, AGENT_TRACE_TLS_DONE = 4,
#   AGENT_TRACE_REQUEST_SENT = 5, AGENT_TRACE_RESPONSE_HEAD = 6, AGENT_TRACE_RETRY = 7,
#   AGENT_TRACE_CONNECTION_CLOSED = 8 };   bit 1 << kind selects one in the event mask
TRACE_KINDS: Tuple[str, ...] = (
    "queued",
    "dequeued",
    "connect_start",
    "connect_done",
    "tls_done",
    "request_sent",
    "response_head",
    "retry",
    "connection_closed",
)
# #define AGENT_TRACE_MASK_ALL 511
TRACE_MASK_ALL = 511
# #define AGENT_TRACE_WITH_HEADERS 2147483648
TRACE_WITH_HEADERS = 1 << 31
assert TRACE_MASK_ALL == (1 << len(TRACE_KINDS)) - 1


class agent_trace_event(Structure):
    # typedef struct { agent_trace_kind kind; uint64_t connection; const char *origin;
    #   const char *address; uint32_t family; uint32_t status; uint32_t version; bool reused;
    #   agent_code code; const char *detail; const char *headers; } agent_trace_event;
    _fields_ = [
        ("kind", c_uint32),
        ("connection", c_uint64),
        ("origin", c_char_p),
        ("address", c_char_p),
        ("family", c_uint32),
        ("status", c_uint32),
        ("version", c_uint32),
        ("reused", c_bool),
        ("code", c_uint32),
        ("detail", c_char_p),
        ("headers", c_char_p),
    ]


# typedef void (*agent_trace_callback)(void *userdata, const agent_trace_event *event);
agent_trace_callback = CFUNCTYPE(None, c_void_p, POINTER(agent_trace_event))

# ---------------------------------------------------------------------------------------
# Error checking


def last_error() -> str:
    """The message of the last failure on this thread (``agent_last_error``)."""
    buf = ctypes.create_string_buffer(256)
    n = lib.agent_last_error(buf, len(buf))
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        n = lib.agent_last_error(buf, len(buf))
    return buf.raw[: min(n, len(buf) - 1)].decode("utf-8", "replace")


def keep_alive_describe(handle: int) -> str:
    """``agent_keep_alive_describe``: the keep-alive setting and what decided it, in words."""
    buf = ctypes.create_string_buffer(256)
    n = lib.agent_keep_alive_describe(handle, buf, len(buf))
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        n = lib.agent_keep_alive_describe(handle, buf, len(buf))
    return buf.raw[: min(n, len(buf) - 1)].decode("utf-8", "replace")


def code_name(code: int) -> str:
    """``agent_code_name``: e.g. ``"AGENT_CODE_CONNECT_REFUSED"``."""
    return lib.agent_code_name(code).decode("ascii", "replace")


# The library's messages name options as C does; Python's keywords are the same names,
# except where a message names something no binding has as such. Translated here.
_PYTHON_SPELLING = (
    ("(give client_cert and client_key)",
     "(give client_cert_file and client_key_file, or client_cert_pem and client_key_pem)"),
)


def python_message(message: str) -> str:
    """``message`` with the option names spelt as Python's keywords."""
    for c_text, py_text in _PYTHON_SPELLING:
        if c_text in message:
            message = message.replace(c_text, py_text)
    return message


def error_for(code: int, message: Optional[str] = None) -> errors.AgentError:
    """The exception for a failed call; reads ``agent_last_error`` when no message is given."""
    if message is None:
        message = last_error()
    return ERROR_CLASSES.get(code, errors.AgentError)(code, python_message(message))


def _check(result: int, func: Any, args: Any) -> int:
    # errcheck of every function returning an agent_code: runs on the calling thread right
    # after the call, so agent_last_error still holds this call's message.
    if result != CODES["OK"]:
        raise error_for(result)
    return result


def _check_not_null(result: Optional[int], func: Any, args: Any) -> int:
    if not result:
        raise error_for(CODES["INTERNAL"], f"{func.__name__} returned NULL: {last_error()}")
    return result


def _declare(name: str, restype: Any, argtypes: List[Any], errcheck: Any = None) -> None:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = argtypes
    if errcheck is not None:
        f.errcheck = errcheck


# ---------------------------------------------------------------------------------------
# Prototypes (the order of the header)

# const char *agent_version(void);
_declare("agent_version", c_char_p, [])
# const char *agent_code_name(uint32_t code);
_declare("agent_code_name", c_char_p, [c_uint32])
# agent_code agent_limit(const char *name, uint64_t *out);
_declare("agent_limit", agent_code, [c_char_p, POINTER(c_uint64)], _check)
# size_t agent_last_error(char *buf, size_t cap);
_declare("agent_last_error", c_size_t, [c_char_p, c_size_t])
# agent_code agent_test_panic(void);   (only in a library built with the test-hooks feature)
if hasattr(lib, "agent_test_panic"):
    _declare("agent_test_panic", agent_code, [], _check)
# agent *agent_new(bool keep_alive, uint32_t keep_alive_msecs);   (NULL on failure)
_declare("agent_new", agent_p, [c_bool, c_uint32])
# agent_code agent_new_with_options(const agent_options *options, agent **out);
_declare("agent_new_with_options", agent_code, [agent_options_p, POINTER(agent_p)], _check)
# void agent_free(agent *agent);
_declare("agent_free", None, [agent_p])
# agent_code agent_request(const agent *agent, const char *method, const char *url,
#     const agent_header *headers, size_t header_count, const uint8_t *body,
#     size_t body_len, uint32_t timeout_msecs, agent_response **out);
_declare(
    "agent_request",
    agent_code,
    [agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p, c_size_t,
     c_uint32, POINTER(agent_response_p)],
    _check,
)
# agent_code agent_request_async(const agent *agent, const char *method, const char *url,
#     const agent_header *headers, size_t header_count, const uint8_t *body,
#     size_t body_len, uint32_t timeout_msecs, agent_callback callback, void *userdata,
#     uint64_t *out_id);
_declare(
    "agent_request_async",
    agent_code,
    [agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p, c_size_t,
     c_uint32, agent_callback, c_void_p, POINTER(c_uint64)],
    _check,
)
# agent_code agent_request_cancel(const agent *agent, uint64_t id);
#   (no errcheck: AGENT_CODE_NOT_FOUND just means "already finished")
_declare("agent_request_cancel", agent_code, [agent_p, c_uint64])
# size_t agent_stats_field_count(void);
_declare("agent_stats_field_count", c_size_t, [])
# const char *agent_stats_field_name(size_t index);   (NULL past the last one)
_declare("agent_stats_field_name", c_char_p, [c_size_t])
# agent_code agent_stats_values(const agent *agent, const char *origin_url, uint64_t *out,
#     size_t cap, size_t *count);
_declare(
    "agent_stats_values",
    agent_code,
    [agent_p, c_char_p, POINTER(c_uint64), c_size_t, POINTER(c_size_t)],
    _check,
)
# bool agent_keep_alive_enabled(const agent *agent);
_declare("agent_keep_alive_enabled", c_bool, [agent_p])
# agent_setting_source agent_keep_alive_source(const agent *agent);
_declare("agent_keep_alive_source", c_uint32, [agent_p])
# size_t agent_keep_alive_describe(const agent *agent, char *buf, size_t cap);
_declare("agent_keep_alive_describe", c_size_t, [agent_p, c_char_p, c_size_t])
# agent_code agent_preconnect(const agent *agent, const char *url, uint32_t count);
_declare("agent_preconnect", agent_code, [agent_p, c_char_p, c_uint32], _check)

# agent_options *agent_options_new(void);
_declare("agent_options_new", agent_options_p, [], _check_not_null)
# void agent_options_free(agent_options *options);
_declare("agent_options_free", None, [agent_options_p])
# agent_code agent_options_set_keep_alive(agent_options *options, bool keep_alive);
_declare("agent_options_set_keep_alive", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_set_ignore_environment(agent_options *options, bool ignore);
_declare("agent_options_set_ignore_environment", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_set_events(agent_options *options, agent_trace_callback callback,
#     void *userdata);
_declare("agent_options_set_events", agent_code, [agent_options_p, agent_trace_callback, c_void_p], _check)
# agent_code agent_options_set_event_mask(agent_options *options, uint32_t mask);
_declare("agent_options_set_event_mask", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_keep_alive_msecs(agent_options *options, uint32_t msecs);
_declare("agent_options_set_keep_alive_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_keep_alive_interval_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_keep_alive_interval_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_keep_alive_probes(agent_options *options, uint32_t probes);
_declare("agent_options_set_keep_alive_probes", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_max_sockets(agent_options *options, uint32_t max);
_declare("agent_options_set_max_sockets", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_max_total_sockets(agent_options *options, uint32_t max);
_declare("agent_options_set_max_total_sockets", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_max_free_sockets(agent_options *options, uint32_t max);
_declare("agent_options_set_max_free_sockets", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_scheduling(agent_options *options, uint32_t scheduling);
_declare("agent_options_set_scheduling", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_free_socket_timeout_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_free_socket_timeout_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_keep_alive_timeout_buffer_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_keep_alive_timeout_buffer_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_max_keep_alive_timeout_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_max_keep_alive_timeout_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_max_socket_lifetime_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_max_socket_lifetime_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_connect_timeout_msecs(agent_options *options, uint32_t msecs);
_declare("agent_options_set_connect_timeout_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_headers_timeout_msecs(agent_options *options, uint32_t msecs);
_declare("agent_options_set_headers_timeout_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_body_timeout_msecs(agent_options *options, uint32_t msecs);
_declare("agent_options_set_body_timeout_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_retry_stale(agent_options *options, bool retry);
_declare("agent_options_set_retry_stale", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_set_max_response_bytes(agent_options *options, uint64_t max);
_declare("agent_options_set_max_response_bytes", agent_code, [agent_options_p, c_uint64], _check)
# agent_code agent_options_set_ca_pem(agent_options *options, const uint8_t *pem, size_t len);
_declare("agent_options_set_ca_pem", agent_code, [agent_options_p, c_char_p, c_size_t], _check)
# agent_code agent_options_set_ca_file(agent_options *options, const char *path);
_declare("agent_options_set_ca_file", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_use_system_roots(agent_options *options,
#     bool use_system_roots);
_declare("agent_options_set_use_system_roots", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_set_danger_accept_invalid_certs(agent_options *options,
#     bool accept);
_declare("agent_options_set_danger_accept_invalid_certs", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_set_user_agent(agent_options *options, const char *user_agent);
_declare("agent_options_set_user_agent", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_proxy(agent_options *options, const char *url);
_declare("agent_options_set_proxy", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_no_proxy(agent_options *options, const char *list);
_declare("agent_options_set_no_proxy", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_proxy_from_env(agent_options *options, bool from_env);
_declare("agent_options_set_proxy_from_env", agent_code, [agent_options_p, c_bool], _check)
# agent_code agent_options_add_resolve(agent_options *options, const char *entry);
_declare("agent_options_add_resolve", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_dns_cache_msecs(agent_options *options, uint32_t msecs);
_declare("agent_options_set_dns_cache_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_happy_eyeballs_delay_msecs(agent_options *options,
#     uint32_t msecs);
_declare("agent_options_set_happy_eyeballs_delay_msecs", agent_code, [agent_options_p, c_uint32], _check)
# agent_code agent_options_set_client_cert_pem(agent_options *options, const uint8_t *pem,
#     size_t len);
_declare("agent_options_set_client_cert_pem", agent_code, [agent_options_p, c_char_p, c_size_t], _check)
# agent_code agent_options_set_client_cert_file(agent_options *options, const char *path);
_declare("agent_options_set_client_cert_file", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_client_key_pem(agent_options *options, const uint8_t *pem,
#     size_t len);
_declare("agent_options_set_client_key_pem", agent_code, [agent_options_p, c_char_p, c_size_t], _check)
# agent_code agent_options_set_client_key_file(agent_options *options, const char *path);
_declare("agent_options_set_client_key_file", agent_code, [agent_options_p, c_char_p], _check)
# agent_code agent_options_set_http_version(agent_options *options, uint32_t version);
_declare("agent_options_set_http_version", agent_code, [agent_options_p, c_uint32], _check)

# void agent_response_free(agent_response *response);
_declare("agent_response_free", None, [agent_response_p])
# uint16_t agent_response_status(const agent_response *response);
_declare("agent_response_status", c_uint16, [agent_response_p])
# uint32_t agent_response_version(const agent_response *response);   (11, or 20 for HTTP/2)
_declare("agent_response_version", c_uint32, [agent_response_p])
# bool agent_response_reused(const agent_response *response);
_declare("agent_response_reused", c_bool, [agent_response_p])
# size_t agent_response_header_count(const agent_response *response);
_declare("agent_response_header_count", c_size_t, [agent_response_p])
# agent_code agent_response_header_at(const agent_response *response, size_t index,
#     const char **name, size_t *name_len, const char **value, size_t *value_len);
_declare(
    "agent_response_header_at",
    agent_code,
    [agent_response_p, c_size_t, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_void_p),
     POINTER(c_size_t)],
    _check,
)
# agent_code agent_response_header(const agent_response *response, const char *name,
#     const char **value, size_t *value_len);
#   (no errcheck: AGENT_CODE_NOT_FOUND means "absent")
_declare(
    "agent_response_header",
    agent_code,
    [agent_response_p, c_char_p, POINTER(c_void_p), POINTER(c_size_t)],
)
# size_t agent_response_trailer_count(const agent_response *response);
_declare("agent_response_trailer_count", c_size_t, [agent_response_p])
# agent_code agent_response_trailer_at(const agent_response *response, size_t index,
#     const char **name, size_t *name_len, const char **value, size_t *value_len);
_declare(
    "agent_response_trailer_at",
    agent_code,
    [agent_response_p, c_size_t, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_void_p),
     POINTER(c_size_t)],
    _check,
)
# agent_code agent_response_body(const agent_response *response, const uint8_t **data,
#     size_t *len);
_declare("agent_response_body", agent_code, [agent_response_p, POINTER(c_void_p), POINTER(c_size_t)], _check)
# agent_code agent_response_timings(const agent_response *response, agent_timings *out);
_declare("agent_response_timings", agent_code, [agent_response_p, POINTER(agent_timings)], _check)
# agent_code agent_response_read(const agent_response *response, agent_response_parts *out);
_declare("agent_response_read", agent_code, [agent_response_p, POINTER(agent_response_parts)], _check)
# agent_code agent_response_peek(const agent_response *response, agent_response_parts *out);
_declare("agent_response_peek", agent_code, [agent_response_p, POINTER(agent_response_parts)], _check)
# agent_code agent_response_copy_body(const agent_response *response, size_t offset,
#     uint8_t *dst, size_t len, size_t *copied);
_declare(
    "agent_response_copy_body",
    agent_code,
    [agent_response_p, c_size_t, c_void_p, c_size_t, POINTER(c_size_t)],
    _check,
)

# agent_body_waker *agent_body_source_waker(void);   (NULL outside a body source's read)
_declare("agent_body_source_waker", agent_body_waker_p, [])
# void agent_body_waker_wake(agent_body_waker *waker);
_declare("agent_body_waker_wake", None, [agent_body_waker_p])
# void agent_body_waker_free(agent_body_waker *waker);
_declare("agent_body_waker_free", None, [agent_body_waker_p])

# agent_code agent_request_stream(const agent *agent, const char *method, const char *url,
#     const agent_header *headers, size_t header_count, const uint8_t *body,
#     size_t body_len, const agent_body_source *source, uint32_t timeout_msecs,
#     agent_stream **out);
_declare(
    "agent_request_stream",
    agent_code,
    [agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p, c_size_t,
     POINTER(agent_body_source), c_uint32, POINTER(agent_stream_p)],
    _check,
)
# agent_code agent_request_stream_async(const agent *agent, const char *method,
#     const char *url, const agent_header *headers, size_t header_count,
#     const uint8_t *body, size_t body_len, const agent_body_source *source,
#     uint32_t timeout_msecs, agent_stream_callback callback, void *userdata,
#     uint64_t *out_id);
_declare(
    "agent_request_stream_async",
    agent_code,
    [agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p, c_size_t,
     POINTER(agent_body_source), c_uint32, agent_stream_callback, c_void_p, POINTER(c_uint64)],
    _check,
)
# agent_code agent_stream_head(const agent_stream *stream, agent_response_parts *out);
_declare("agent_stream_head", agent_code, [agent_stream_p, POINTER(agent_response_parts)], _check)
# size_t agent_stream_trailer_count(const agent_stream *stream);
_declare("agent_stream_trailer_count", c_size_t, [agent_stream_p])
# agent_code agent_stream_trailer_at(const agent_stream *stream, size_t index,
#     const char **name, size_t *name_len, const char **value, size_t *value_len);
_declare(
    "agent_stream_trailer_at",
    agent_code,
    [agent_stream_p, c_size_t, POINTER(c_void_p), POINTER(c_size_t), POINTER(c_void_p),
     POINTER(c_size_t)],
    _check,
)
# agent_code agent_stream_read(agent_stream *stream, uint8_t *buf, size_t cap, size_t *n);
#   (no errcheck: the caller maps the code, to tell a body source's own failure apart)
_declare("agent_stream_read", agent_code, [agent_stream_p, c_void_p, c_size_t, POINTER(c_size_t)])
# uint64_t agent_stream_buffered(const agent_stream *stream);
_declare("agent_stream_buffered", c_uint64, [agent_stream_p])
# agent_code agent_stream_read_async(agent_stream *stream, agent_data_callback callback,
#     void *userdata);
#   (no errcheck, as agent_stream_read)
_declare("agent_stream_read_async", agent_code, [agent_stream_p, agent_data_callback, c_void_p])
# void agent_stream_free(agent_stream *stream);
_declare("agent_stream_free", None, [agent_stream_p])

# The event queue: requests run on the thread that drains it; results come back as events.
# typedef struct agent_queue agent_queue;   (opaque)
agent_queue_p = c_void_p

# enum agent_event_kind { AGENT_EVENT_RESPONSE = 1, AGENT_EVENT_HEAD = 2, AGENT_EVENT_DATA = 3 };
EVENT_RESPONSE = 1
EVENT_HEAD = 2
EVENT_DATA = 3


class agent_event(Structure):
    # typedef struct { uint64_t token; agent_event_kind kind; agent_code code;
    #   agent_response *response; agent_stream *stream; const uint8_t *data; size_t len;
    #   const char *message; } agent_event;
    _fields_ = [
        ("token", c_uint64),
        ("kind", c_uint32),
        ("code", c_uint32),
        ("response", c_void_p),
        ("stream", c_void_p),
        ("data", c_void_p),
        ("len", c_size_t),
        ("message", c_void_p),
    ]


# agent_code agent_queue_new(agent_queue **out);
_declare("agent_queue_new", agent_code, [POINTER(agent_queue_p)], _check)
# void agent_queue_free(agent_queue *queue);
_declare("agent_queue_free", None, [agent_queue_p])
# int32_t agent_queue_fd(const agent_queue *queue);
_declare("agent_queue_fd", ctypes.c_int32, [agent_queue_p])
# size_t agent_queue_pending(const agent_queue *queue);
_declare("agent_queue_pending", c_size_t, [agent_queue_p])
# agent_code agent_queue_submit(const agent_queue *queue, const agent *agent,
#     const char *method, const char *url, const agent_header *headers, size_t header_count,
#     const uint8_t *body, size_t body_len, uint32_t timeout_msecs, uint64_t token,
#     uint64_t *out_id);
_declare(
    "agent_queue_submit",
    agent_code,
    [agent_queue_p, agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p,
     c_size_t, c_uint32, c_uint64, POINTER(c_uint64)],
    _check,
)
# agent_code agent_queue_submit_stream(const agent_queue *queue, const agent *agent,
#     const char *method, const char *url, const agent_header *headers, size_t header_count,
#     const uint8_t *body, size_t body_len, const agent_body_source *source,
#     uint32_t timeout_msecs, uint64_t token, uint64_t *out_id);
_declare(
    "agent_queue_submit_stream",
    agent_code,
    [agent_queue_p, agent_p, c_char_p, c_char_p, POINTER(agent_header), c_size_t, c_char_p,
     c_size_t, POINTER(agent_body_source), c_uint32, c_uint64, POINTER(c_uint64)],
    _check,
)
# agent_code agent_queue_read(const agent_queue *queue, agent_stream *stream, uint64_t token);
#   (no errcheck: the caller maps the code, as for agent_stream_read)
_declare("agent_queue_read", agent_code, [agent_queue_p, agent_stream_p, c_uint64])
# agent_code agent_queue_drain(const agent_queue *queue, agent_event *events, size_t cap,
#     uint32_t timeout_msecs, size_t *n);
#   (no errcheck: called from an event loop's reader, which maps the code itself)
_declare("agent_queue_drain", agent_code, [agent_queue_p, c_void_p, c_size_t, c_uint32, POINTER(c_size_t)])

# ---------------------------------------------------------------------------------------
# Version check: the library's major.minor must be the package's.

LIBRARY_VERSION: str = lib.agent_version().decode("ascii")


def _major_minor(v: str) -> Tuple[str, ...]:
    return tuple(v.split(".")[:2])


if _major_minor(LIBRARY_VERSION) != _major_minor(__version__):
    raise ImportError(
        f"keepalive_agent {__version__} needs libkeepalive_agent {'.'.join(_major_minor(__version__))}.x,"
        f" but {LIBRARY_PATH} is version {LIBRARY_VERSION}"
    )

# ---------------------------------------------------------------------------------------
# Codes: every value the library names (as the Node binding reads them), by short name,
# e.g. CODES["CONNECT_REFUSED"]; each is also a module attribute (CONNECT_REFUSED, OK, ...).

CODES: Dict[str, int] = {}
for _code in range(128):
    _name = code_name(_code)
    if _name != "AGENT_CODE_UNKNOWN":
        CODES[_name[len("AGENT_CODE_"):]] = _code
del _code, _name
globals().update(CODES)
if TYPE_CHECKING:  # tells type checkers that those attributes exist, and are ints

    def __getattr__(name: str) -> int: ...


# Which exception class each code raises; codes not listed raise AgentError itself.
_ERROR_CLASS_BY_NAME = {
    "INVALID_ARGUMENT": errors.InvalidArgumentError,
    "INVALID_URL": errors.InvalidURLError,
    "INVALID_OPTION": errors.InvalidOptionError,
    "DNS": errors.ConnectError,
    "CONNECT_REFUSED": errors.ConnectError,
    "CONNECT": errors.ConnectError,
    "PROXY": errors.ProxyError,
    "CONNECT_TIMEOUT": errors.TimeoutError,
    "HEADERS_TIMEOUT": errors.TimeoutError,
    "BODY_TIMEOUT": errors.TimeoutError,
    "TIMEOUT": errors.TimeoutError,
    "TLS": errors.TLSError,
    "CONNECTION_RESET": errors.ProtocolError,
    "CONNECTION_CLOSED": errors.ProtocolError,
    "BROKEN_PIPE": errors.ProtocolError,
    "PROTOCOL": errors.ProtocolError,
    "STREAM_RESET": errors.StreamResetError,
    "RESPONSE_TOO_LARGE": errors.ResponseTooLargeError,
    "STALE_CONNECTION": errors.StaleConnectionError,
    "CANCELLED": errors.CancelledError,
    "BODY_SOURCE": errors.BodySourceError,
}
ERROR_CLASSES = {CODES[name]: cls for name, cls in _ERROR_CLASS_BY_NAME.items()}


def limit(name: str) -> int:
    """``agent_limit``: one of the library's bounds, e.g. ``limit("max_sockets")``."""
    out = c_uint64()
    lib.agent_limit(name.encode("ascii"), byref(out))
    return out.value


# The statistics fields, in the order agent_stats_values writes them.
STATS_FIELDS: Tuple[str, ...] = tuple(
    lib.agent_stats_field_name(i).decode("ascii") for i in range(lib.agent_stats_field_count())
)


def stats_values(handle: int, origin_url: Optional[bytes]) -> List[int]:
    """``agent_stats_values``: one value per :data:`STATS_FIELDS` entry, of the whole
    agent (``origin_url`` None) or of one origin."""
    out = (c_uint64 * len(STATS_FIELDS))()
    lib.agent_stats_values(handle, origin_url, out, len(out), None)
    return list(out)


# ---------------------------------------------------------------------------------------
# The per-request path: bare function objects and copies out of native memory


def bare(name: str, hold_gil: bool = False) -> Any:
    """``name`` as a function object of its own (``lib[name]``), with the prototype's
    ``restype`` but without its ``argtypes`` and ``errcheck``: for the per-request calls,
    whose codes the caller checks.

    Without ``argtypes`` ctypes converts no argument: it passes each as what it is. With
    them it calls the type's ``from_param`` for every argument, about 0.15 us each (2 us
    for ``agent_request``). So every argument must be given as its exact C type: what
    ``from_param`` of that type returns (``c_void_p.from_param(address)``,
    ``c_size_t.from_param(n)``, ...: made once and reused, they cost nothing more at a
    call), a ctypes object of that type (``c_void_p``, ``c_uint64``, an array, ``byref``),
    or ``bytes``/``None`` for a pointer. Never a plain ``int``: ctypes would pass it as a
    C ``int``. ``hold_gil``: through :data:`lib_holding_gil`, for the calls that may keep
    the GIL."""
    f = (lib_holding_gil if hold_gil else lib)[name]
    f.restype = getattr(lib, name).restype
    return f


# Arguments of 0 for bare functions.
SIZE_0 = c_size_t.from_param(0)
UINT32_0 = c_uint32.from_param(0)

# Every address of the process as one char array: ``memory[addr:addr + n]`` copies ``n``
# bytes at ``addr`` into a bytes object, as ``ctypes.string_at(addr, n)`` does, but as a
# slice rather than a foreign-function call (0.2 us against 0.8, and no C int length
# limit). As with string_at, ``addr`` must point at ``n`` readable bytes; ``n`` = 0 reads
# nothing. On 64-bit platforms user-space addresses are far below ``sys.maxsize``; where
# they may not be, :func:`copy_out` falls back to string_at.
_MEMORY_SIZE = sys.maxsize
memory: Optional[Any] = (
    (ctypes.c_char * _MEMORY_SIZE).from_address(0) if _MEMORY_SIZE > 1 << 62 else None
)


def _bytes_maker() -> Tuple[Optional[Any], int]:
    """CPython's ``PyBytes_FromStringAndSize`` and the offset of a bytes object's data:
    called with NULL it makes a bytes object of ``n`` bytes not yet written, which the
    caller fills before anything else sees it (what C extensions do to read straight into
    a new ``bytes``). ``(None, 0)`` where that is not available or does not behave so."""
    if sys.implementation.name != "cpython":  # pragma: no cover - other interpreters
        return None, 0
    try:
        f = ctypes.pythonapi.PyBytes_FromStringAndSize
        f.restype = ctypes.py_object
        f.argtypes = [c_void_p, ctypes.c_ssize_t]
        offset = bytes.__basicsize__ - 1  # PyBytesObject.ob_sval
        probe = f(None, 4)
        ctypes.memmove(id(probe) + offset, b"\x01\x02\x03\x04", 4)
        if probe != b"\x01\x02\x03\x04" or len(probe) != 4:  # pragma: no cover
            return None, 0
        return f, offset
    except Exception:  # pragma: no cover - no pythonapi
        return None, 0


# ``new_bytes(None, n)``: a bytes object of ``n`` bytes to fill at ``id(b) + BYTES_DATA``
# (see _bytes_maker); None where not available.
new_bytes, BYTES_DATA = _bytes_maker()


def copy_out(addr: int, n: int) -> bytes:
    """``n`` bytes at ``addr`` as bytes (b"" when ``n`` is 0)."""
    if memory is not None:
        return memory[addr:addr + n]  # type: ignore[no-any-return]
    if not n:
        return b""
    return (ctypes.c_char * n).from_address(addr).raw  # pragma: no cover - 32-bit


# ---------------------------------------------------------------------------------------
# Small helpers over the declarations (used by _agent.py)


def _decode_value(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_response(handle: int) -> Tuple[int, int, bool, bytes, bytes, agent_timings]:
    """Copies everything out of a response handle in one C call. Does not free it.

    Headers come back as the raw block (``name: value\\r\\n`` lines): parsing is left to
    the first access (see :meth:`Headers._from_block`)."""
    p = agent_response_parts()
    lib.agent_response_read(handle, byref(p))
    block = ctypes.string_at(p.headers, p.headers_len) if p.headers_len else b""
    body = ctypes.string_at(p.body, p.body_len) if p.body_len else b""
    return p.status, p.version, p.reused, block, body, p.timings


def read_stream_head(handle: int) -> Tuple[int, int, bool, bytes, agent_timings]:
    """Copies the head of a stream (``agent_stream_head``): status, version, reused, the
    header block and the timings (``total_us`` is set once the body has ended)."""
    p = agent_response_parts()
    lib.agent_stream_head(handle, byref(p))
    block = ctypes.string_at(p.headers, p.headers_len) if p.headers_len else b""
    return p.status, p.version, p.reused, block, p.timings


def stream_timings(handle: int) -> agent_timings:
    """The timings of a stream (``agent_stream_head``), without copying its headers."""
    p = agent_response_parts()
    lib.agent_stream_head(handle, byref(p))
    return p.timings


def _read_trailers(at: Any, handle: int, count: int) -> List[Tuple[str, str]]:
    name, name_len, value, value_len = c_void_p(), c_size_t(), c_void_p(), c_size_t()
    out: List[Tuple[str, str]] = []
    for i in range(count):
        at(handle, i, byref(name), byref(name_len), byref(value), byref(value_len))
        n = ctypes.string_at(name, name_len.value) if name_len.value else b""
        v = ctypes.string_at(value, value_len.value) if value_len.value else b""
        out.append((n.decode("latin-1"), _decode_value(v)))
    return out


def response_trailers(handle: int, count: int) -> List[Tuple[str, str]]:
    """The ``count`` trailer lines of a response (``agent_response_trailer_at``), copied
    out as ``(lowercase name, value)`` pairs, decoded as header values are."""
    return _read_trailers(lib.agent_response_trailer_at, handle, count)


def stream_trailers(handle: int) -> List[Tuple[str, str]]:
    """The trailer lines of a stream whose body has ended (``agent_stream_trailer_count``
    and ``agent_stream_trailer_at``); [] when there are none."""
    count = lib.agent_stream_trailer_count(handle)
    return _read_trailers(lib.agent_stream_trailer_at, handle, count) if count else []


def parse_header_block(block: bytes) -> List[Tuple[str, str]]:
    """``name: value\\r\\n`` lines into pairs (names are lowercase already)."""
    out: List[Tuple[str, str]] = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        out.append((name.decode("latin-1"), _decode_value(value)))
    return out
