//! `agent_response`: a complete response, owned by the caller until `agent_response_free`.

use std::ffi::c_char;
use std::sync::{Mutex, MutexGuard};

use super::{agent_code, borrow, c_str, guard, guard_value, out_ptr, write_if_wanted};
use crate::error::{Error, ErrorKind};
use crate::http::Response;
use bytes::{Bytes, BytesMut};

/// A complete response: status, version, headers, whole body, whether the connection was
/// reused, timings. Returned by `agent_request` and passed to completion callbacks; the
/// caller owns it and frees it with `agent_response_free`. Pointers obtained from it
/// (header names and values, body) stay valid until then. Not synchronized: one thread at
/// a time (reading from several threads at once is fine, freeing is not).
pub struct agent_response {
    pub(crate) resp: Response,
    /// The header block of `agent_response_read`, built on first use.
    header_block: std::sync::OnceLock<Box<[u8]>>,
    /// The body's length: `resp.body` and the pieces after it.
    body_len: usize,
    /// The body arrived in more than one piece: `resp.body` is the first.
    in_pieces: bool,
    /// The pieces after the first, until `joined` takes them.
    rest: Mutex<Vec<Bytes>>,
    /// The body in one buffer, made (under `rest`'s lock) the first time it is asked for
    /// that way; the pieces are dropped then.
    joined: std::sync::OnceLock<Bytes>,
}

impl agent_response {
    pub(crate) fn boxed(mut resp: Response) -> *mut agent_response {
        let rest = std::mem::take(&mut resp.rest);
        let body_len = resp.body.len() + rest.iter().map(Bytes::len).sum::<usize>();
        Box::into_raw(Box::new(agent_response {
            resp,
            header_block: std::sync::OnceLock::new(),
            body_len,
            in_pieces: !rest.is_empty(),
            rest: Mutex::new(rest),
            joined: std::sync::OnceLock::new(),
        }))
    }

    fn header_block(&self) -> &[u8] {
        self.header_block
            .get_or_init(|| header_block(&self.resp.headers))
    }

    fn rest(&self) -> MutexGuard<'_, Vec<Bytes>> {
        self.rest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body in one buffer (the pieces copied into one on first use).
    fn body(&self) -> &Bytes {
        if !self.in_pieces {
            return &self.resp.body;
        }
        if let Some(b) = self.joined.get() {
            return b;
        }
        let mut rest = self.rest();
        self.joined.get_or_init(|| {
            let mut b = BytesMut::with_capacity(self.body_len);
            b.extend_from_slice(&self.resp.body);
            for p in std::mem::take(&mut *rest) {
                b.extend_from_slice(&p);
            }
            b.freeze()
        })
    }

    /// The body in one buffer if it is one already: None for a body in pieces that
    /// [`agent_response::body`] has not joined.
    fn body_if_contiguous(&self) -> Option<&Bytes> {
        if self.in_pieces {
            self.joined.get()
        } else {
            Some(&self.resp.body)
        }
    }

    /// Copies the body from `offset` into `dst`; returns the bytes copied.
    fn copy_body(&self, offset: usize, dst: &mut [u8]) -> usize {
        if !self.in_pieces {
            return copy_pieces([&self.resp.body], offset, dst);
        }
        let rest = self.rest();
        match self.joined.get() {
            Some(b) => copy_pieces([b], offset, dst),
            None => copy_pieces(
                std::iter::once(&self.resp.body).chain(rest.iter()),
                offset,
                dst,
            ),
        }
    }
}

/// Copies from the concatenation of `pieces`, starting at `offset`, into `dst`; returns
/// the bytes copied.
fn copy_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a Bytes>,
    mut offset: usize,
    dst: &mut [u8],
) -> usize {
    let mut copied = 0;
    for p in pieces {
        if copied == dst.len() {
            break;
        }
        if offset >= p.len() {
            offset -= p.len();
            continue;
        }
        let n = (p.len() - offset).min(dst.len() - copied);
        dst[copied..copied + n].copy_from_slice(&p[offset..offset + n]);
        copied += n;
        offset = 0;
    }
    copied
}

/// All header lines as `name: value\r\n` (see `agent_response_parts.headers`).
pub(crate) fn header_block(h: &http::HeaderMap) -> Box<[u8]> {
    let size = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let mut b = Vec::with_capacity(size);
    for (k, v) in h {
        b.extend_from_slice(k.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.into_boxed_slice()
}

/// Everything about a response in one call (for bindings, where each call costs): see
/// `agent_response_read`. Pointers stay valid until the response is freed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct agent_response_parts {
    /// The status code.
    pub status: u16,
    /// 10 for HTTP/1.0, 11 for HTTP/1.1, 20 for HTTP/2.
    pub version: u32,
    /// Whether the connection had served an earlier request.
    pub reused: bool,
    /// The body (`body_len` bytes, not NUL-terminated).
    pub body: *const u8,
    pub body_len: usize,
    /// All header lines as `name: value\r\n`, names lowercase, in the order of
    /// `agent_response_header_at` (`headers_len` bytes, not NUL-terminated). Values never
    /// contain CR or LF, so splitting on "\r\n" and the first ": " is exact.
    pub headers: *const u8,
    pub headers_len: usize,
    /// The number of header lines.
    pub header_count: usize,
    /// As `agent_response_timings`.
    pub timings: agent_timings,
}

/// Timings of one request in microseconds. `queued_us`, `dns_us`, `connect_us` and `tls_us`
/// are phase durations (0 when the phase did not happen, e.g. no connect on a reused
/// connection). `sent_us`, `ttfb_us` and `total_us` count from the start of the request,
/// like curl's `CURLINFO_PRETRANSFER_TIME_T`, `CURLINFO_STARTTRANSFER_TIME_T` and
/// `CURLINFO_TOTAL_TIME_T`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct agent_timings {
    /// Waiting for a connection or a free slot (max_sockets, max_total_sockets).
    pub queued_us: u64,
    /// Name resolution (0 for IP literals and reused connections).
    pub dns_us: u64,
    /// TCP connect.
    pub connect_us: u64,
    /// TLS handshake.
    pub tls_us: u64,
    /// From the start until the request was handed to the connection.
    pub sent_us: u64,
    /// From the start until the response head was received.
    pub ttfb_us: u64,
    /// From the start until the body was complete.
    pub total_us: u64,
}

/// Fills `*out` with the status, version, reused flag, body, all headers as one block, and
/// timings: what the individual getters give, in one call. A body that arrived in several
/// pieces is copied into one buffer at the first call (see `agent_response_peek` for a
/// way around that copy).
///
/// # Safety
/// `response` is NULL or a live response; `out` must be writable (NULL is refused with
/// `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_read(
    response: *const agent_response,
    out: *mut agent_response_parts,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { read_parts(response, out, true) }
}

/// `agent_response_read` (`join`) or `agent_response_peek`.
///
/// # Safety
/// As `agent_response_read`.
unsafe fn read_parts(
    response: *const agent_response,
    out: *mut agent_response_parts,
    join: bool,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let full = unsafe { borrow(response, "response") }?;
        let out = out_ptr(out, "out")?;
        let body = if join {
            Some(full.body())
        } else {
            full.body_if_contiguous()
        };
        let r = &full.resp;
        let block = full.header_block();
        out.write(agent_response_parts {
            status: r.status,
            version: r.version_number(),
            reused: r.reused,
            body: body.map_or(std::ptr::null(), |b| b.as_ptr()),
            body_len: full.body_len,
            headers: block.as_ptr(),
            headers_len: block.len(),
            header_count: r.headers.len(),
            timings: timings(r),
        });
        Ok(())
    })
}

/// As `agent_response_read`, without copying a body that arrived in several pieces into
/// one buffer: then `out->body` is NULL (and `out->body_len` the body's length), and
/// `agent_response_copy_body` copies the pieces straight into a buffer of the caller's.
/// For bindings that keep the body in memory of their own (one copy instead of two); a
/// body of one piece is given as `agent_response_read` gives it.
///
/// # Safety
/// `response` is NULL or a live response; `out` must be writable (NULL is refused with
/// `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_peek(
    response: *const agent_response,
    out: *mut agent_response_parts,
) -> agent_code {
    // SAFETY: forwarded contract.
    unsafe { read_parts(response, out, false) }
}

/// Copies up to `len` bytes of the body, starting `offset` bytes into it, to `dst`; `*copied`
/// (if not NULL) receives how many were copied: `len`, or fewer at the end of the body (0
/// from an offset at or past the end). The body stays in the response.
///
/// # Safety
/// `response` is NULL or a live response; `dst` is writable for `len` bytes (NULL only
/// with `len` 0, else `AGENT_CODE_INVALID_ARGUMENT`); `copied` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_copy_body(
    response: *const agent_response,
    offset: usize,
    dst: *mut u8,
    len: usize,
    copied: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let full = unsafe { borrow(response, "response") }?;
        if dst.is_null() && len > 0 {
            return Err(Error::invalid_argument("dst is NULL"));
        }
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: non-NULL and writable for `len` bytes (caller's promise).
            unsafe { std::slice::from_raw_parts_mut(dst, len) }
        };
        let n = full.copy_body(offset, dst);
        // SAFETY: forwarded contract.
        unsafe { write_if_wanted(copied, n) };
        Ok(())
    })
}

pub(crate) fn timings(r: &Response) -> agent_timings {
    let t = r.timings;
    agent_timings {
        queued_us: t.queued_us,
        dns_us: t.dns_us,
        connect_us: t.connect_us,
        tls_us: t.tls_us,
        sent_us: t.sent_us,
        ttfb_us: t.ttfb_us,
        total_us: t.total_us,
    }
}

/// Frees a response. NULL is ignored.
///
/// # Safety
/// `response` is NULL or a response from this library not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_free(response: *mut agent_response) {
    guard_value((), || {
        if !response.is_null() {
            // SAFETY: created by Box::into_raw in `agent_response::boxed`, freed once.
            drop(unsafe { Box::from_raw(response) });
        }
    })
}

/// Borrows the response for a getter.
///
/// # Safety
/// `response` is NULL or a live response.
unsafe fn resp<'a>(response: *const agent_response) -> Option<&'a Response> {
    // SAFETY: per this function's contract.
    unsafe { response.as_ref() }.map(|r| &r.resp)
}

/// The status code (e.g. 200), or 0 for NULL.
///
/// # Safety
/// `response` is NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_status(response: *const agent_response) -> u16 {
    // SAFETY: forwarded contract.
    guard_value(0, || unsafe { resp(response) }.map_or(0, |r| r.status))
}

/// The HTTP version as a number: 10 for HTTP/1.0, 11 for HTTP/1.1, 20 for HTTP/2; 0 for NULL.
///
/// # Safety
/// `response` is NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_version(response: *const agent_response) -> u32 {
    // SAFETY: forwarded contract.
    guard_value(0, || {
        unsafe { resp(response) }.map_or(0, |r| r.version_number())
    })
}

/// Whether the request was sent on a connection that had served an earlier request
/// (false for NULL).
///
/// # Safety
/// `response` is NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_reused(response: *const agent_response) -> bool {
    // SAFETY: forwarded contract.
    guard_value(false, || {
        unsafe { resp(response) }.is_some_and(|r| r.reused)
    })
}

/// The number of header lines (repeated names count once per line); 0 for NULL.
///
/// # Safety
/// `response` is NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_header_count(response: *const agent_response) -> usize {
    // SAFETY: forwarded contract.
    guard_value(0, || {
        unsafe { resp(response) }.map_or(0, |r| r.headers.len())
    })
}

/// The header line at `index` (0-based, < `agent_response_header_count`): its name
/// (lowercase) and value as pointer + length. The bytes are NOT NUL-terminated and stay
/// valid until the response is freed. Repeated names appear once per line, grouped by
/// name in first-seen order. Out of range: `AGENT_CODE_NOT_FOUND`.
///
/// # Safety
/// `response` is NULL or a live response; each out pointer must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_header_at(
    response: *const agent_response,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = &unsafe { borrow(response, "response") }?.resp;
        // SAFETY: forwarded contract.
        unsafe {
            write_field(
                &r.headers, "header", index, name, name_len, value, value_len,
            )
        }
    })
}

/// Writes field `index` of `map` (a header or trailer block) through the out pointers.
///
/// # Safety
/// Each out pointer is NULL (refused) or writable.
pub(crate) unsafe fn write_field(
    map: &http::HeaderMap,
    what: &str,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> crate::error::Result<()> {
    let (name, name_len) = (out_ptr(name, "name")?, out_ptr(name_len, "name_len")?);
    let (value, value_len) = (out_ptr(value, "value")?, out_ptr(value_len, "value_len")?);
    let (k, v) = map.iter().nth(index).ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("{what} index {index} out of range ({} {what}s)", map.len()),
        )
    })?;
    name.write(k.as_str().as_ptr().cast());
    name_len.write(k.as_str().len());
    value.write(v.as_bytes().as_ptr().cast());
    value_len.write(v.as_bytes().len());
    Ok(())
}

/// The number of trailer lines after the body (HTTP/2, or a chunked HTTP/1.1 body); 0 for
/// none and for NULL.
///
/// # Safety
/// `response` is NULL or a live response.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_trailer_count(response: *const agent_response) -> usize {
    // SAFETY: forwarded contract.
    guard_value(0, || {
        unsafe { resp(response) }.map_or(0, |r| r.trailers.as_ref().map_or(0, |t| t.len()))
    })
}

/// The trailer line at `index` (< `agent_response_trailer_count`), as
/// `agent_response_header_at` gives header lines: lowercase name and value as pointer +
/// length, not NUL-terminated, valid until the response is freed. Out of range:
/// `AGENT_CODE_NOT_FOUND`.
///
/// # Safety
/// `response` is NULL or a live response; each out pointer must be writable (NULL is
/// refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_trailer_at(
    response: *const agent_response,
    index: usize,
    name: *mut *const c_char,
    name_len: *mut usize,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = &unsafe { borrow(response, "response") }?.resp;
        let empty = http::HeaderMap::new();
        let map = r.trailers.as_deref().unwrap_or(&empty);
        // SAFETY: forwarded contract.
        unsafe { write_field(map, "trailer", index, name, name_len, value, value_len) }
    })
}

/// Looks up the first value of header `name` (case-insensitive). The value is pointer +
/// length, NOT NUL-terminated, valid until the response is freed. Absent:
/// `AGENT_CODE_NOT_FOUND` (outputs untouched). To read every value of a repeated header,
/// iterate with `agent_response_header_at`.
///
/// # Safety
/// `response` is NULL or a live response; `name` is a NUL-terminated string; out pointers
/// must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_header(
    response: *const agent_response,
    name: *const c_char,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = &unsafe { borrow(response, "response") }?.resp;
        // SAFETY: forwarded contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: forwarded contract.
        unsafe {
            write_value(r.header(name), value, value_len, || {
                format!("no header {name:?} in the response")
            })
        }
    })
}

/// Writes a found field value to the out pointers, or fails with `AGENT_CODE_NOT_FOUND`
/// and the message `missing` gives (outputs untouched).
///
/// # Safety
/// The out pointers are NULL (refused) or writable.
pub(super) unsafe fn write_value(
    found: Option<&http::HeaderValue>,
    value: *mut *const c_char,
    value_len: *mut usize,
    missing: impl FnOnce() -> String,
) -> crate::error::Result<()> {
    let (value, value_len) = (out_ptr(value, "value")?, out_ptr(value_len, "value_len")?);
    match found {
        Some(v) => {
            value.write(v.as_bytes().as_ptr().cast());
            value_len.write(v.as_bytes().len());
            Ok(())
        }
        None => Err(Error::new(ErrorKind::NotFound, missing())),
    }
}

/// The first value of trailer field `name` (case-insensitive), sent after the body (HTTP/2,
/// or a chunked HTTP/1.1 body). Not NUL-terminated; valid until the response is freed.
/// `AGENT_CODE_NOT_FOUND` when the response has no such trailer.
///
/// # Safety
/// `response` is NULL or a live response; `name` is a NUL-terminated string; out pointers
/// must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_trailer(
    response: *const agent_response,
    name: *const c_char,
    value: *mut *const c_char,
    value_len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = &unsafe { borrow(response, "response") }?.resp;
        // SAFETY: forwarded contract.
        let name = unsafe { c_str(name, "name") }?;
        let found = r.trailers.as_ref().and_then(|t| t.get(name));
        // SAFETY: forwarded contract.
        unsafe {
            write_value(found, value, value_len, || {
                format!("no trailer {name:?} after the response body")
            })
        }
    })
}

/// The whole body as pointer + length (valid until the response is freed; the pointer may
/// be non-NULL with length 0). Not NUL-terminated. A body that arrived in several pieces is
/// copied into one buffer at the first call (or the first `agent_response_read`).
///
/// # Safety
/// `response` is NULL or a live response; out pointers must be writable (NULL is refused
/// with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_body(
    response: *const agent_response,
    data: *mut *const u8,
    len: *mut usize,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let full = unsafe { borrow(response, "response") }?;
        let (data, len) = (out_ptr(data, "data")?, out_ptr(len, "len")?);
        let body = full.body();
        data.write(body.as_ptr());
        len.write(body.len());
        Ok(())
    })
}

/// The request's timings (see `agent_timings`).
///
/// # Safety
/// `response` is NULL or a live response; `out` must be writable (NULL is refused with `AGENT_CODE_INVALID_ARGUMENT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn agent_response_timings(
    response: *const agent_response,
    out: *mut agent_timings,
) -> agent_code {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = &unsafe { borrow(response, "response") }?.resp;
        let out = out_ptr(out, "out")?;
        out.write(timings(r));
        Ok(())
    })
}
