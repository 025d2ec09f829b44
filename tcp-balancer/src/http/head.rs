//! HTTP/1.x message heads: parsed with httparse and re-emitted for the other leg in one pass.
//!
//! A request head is rewritten for the server: the request line and end-to-end headers are
//! copied verbatim; hop-by-hop connection management (`Connection`, `Keep-Alive`,
//! `Proxy-Connection`) is replaced by the balancer's own (the server leg is always kept alive,
//! an upgrade keeps `Connection: upgrade`); `X-Forwarded-For` is appended when asked; a
//! `Content-Length` beside `Transfer-Encoding: chunked` is dropped (request smuggling). A
//! response head is rewritten for the client the same way, with `Connection: close` when the
//! client leg ends after this response.

use std::io::Write as _;
use std::net::IpAddr;
use std::ops::Range;

use thiserror::Error;

/// Longest request or response head accepted (HAProxy's default `tune.bufsize`).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in one head.
pub const MAX_HEADERS: usize = 100;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`; passed through verbatim, ends after the last chunk and trailers.
    Chunked,
    /// Until the server closes (responses only): the client leg is closed afterwards.
    UntilClose,
}

/// Why a head is rejected (400 for a request, 502 for a response).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("head longer than {MAX_HEAD} bytes")]
    TooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// Not HTTP/1.x syntax.
    #[error("malformed head: {0}")]
    Syntax(&'static str),
    /// A missing, invalid or conflicting Content-Length.
    #[error("bad content-length")]
    ContentLength,
    /// A Transfer-Encoding whose last coding is not chunked (requests), or chunked twice.
    #[error("bad transfer-encoding")]
    TransferEncoding,
    /// Two Host headers, or none in an HTTP/1.1 request.
    #[error("bad host header")]
    Host,
}

fn syntax(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Syntax("header name"),
        httparse::Error::HeaderValue => HeadError::Syntax("header value"),
        httparse::Error::NewLine => HeadError::Syntax("new line"),
        httparse::Error::Status => HeadError::Syntax("status"),
        httparse::Error::Token => HeadError::Syntax("token"),
        httparse::Error::Version => HeadError::Syntax("version"),
    }
}

/// The request method, as far as framing and routing care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// CONNECT: a 2xx answer turns the connection into a tunnel.
    Connect,
    /// Anything else.
    Other,
}

/// A parsed request head; ranges index the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head in the input (the body or next request starts there).
    pub head_len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Method class.
    pub method: Method,
    /// Host (from the Host header or an absolute URI), port included if given.
    pub host: Option<Range<usize>>,
    /// The path (with query) of the target.
    pub path: Range<usize>,
    /// Body delimitation.
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Upgrade` asked for (WebSocket, SPDY): a 101 answer turns the connection into a tunnel.
    pub upgrade: bool,
}

impl Request {
    /// The Host, port stripped, as text.
    pub fn host_name<'a>(&self, buf: &'a [u8]) -> Option<&'a str> {
        let h = std::str::from_utf8(&buf[self.host.clone()?]).ok()?;
        Some(strip_port(h))
    }

    /// The path as text (httparse guarantees visible ASCII).
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(&buf[self.path.clone()]).unwrap_or("")
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.rfind(':') {
        Some(i) => &h[..i],
        None => h,
    }
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Where the start line of a parsed head begins and ends (its `\n` included): httparse skips empty
/// lines before it (RFC 9112 section 2.2), and a rewrite must not copy those instead of the line.
fn start_line(buf: &[u8]) -> (usize, usize) {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let end = buf[start..].iter().position(|&b| b == b'\n').map_or(start, |i| start + i + 1);
    (start, end)
}

/// Comma-separated tokens of a header value, trimmed.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

fn has_token(v: &[u8], tok: &str) -> bool {
    tokens(v).any(|t| t.eq_ignore_ascii_case(tok.as_bytes()))
}

/// The headers the balancer looks at; everything else is passed on untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Upgrade,
    Host,
    Other,
}

impl Name {
    /// One length dispatch and at most two comparisons per header (the hot path of http mode).
    fn of(n: &str) -> Name {
        let is = |s: &str| n.eq_ignore_ascii_case(s);
        match n.len() {
            4 if is("host") => Name::Host,
            7 if is("upgrade") => Name::Upgrade,
            10 if is("connection") => Name::Connection,
            10 if is("keep-alive") => Name::KeepAlive,
            14 if is("content-length") => Name::ContentLength,
            16 if is("proxy-connection") => Name::ProxyConnection,
            17 if is("transfer-encoding") => Name::TransferEncoding,
            _ => Name::Other,
        }
    }

    /// Connection management headers the balancer replaces with its own.
    fn hop_by_hop(self) -> bool {
        matches!(self, Name::Connection | Name::KeepAlive | Name::ProxyConnection)
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    // Several identical values ("42, 42") are allowed (RFC 9110 §8.6); digits only.
    let mut found: Option<u64> = None;
    for t in v.split(|&b| b == b',').map(|t| t.trim_ascii()) {
        if t.is_empty() || t.len() > 18 || !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(f) if f != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

/// Collected framing facts of a head, merged over repeated headers.
#[derive(Default)]
struct Facts {
    length: Option<u64>,
    length_bad: bool,
    te_seen: bool,
    te_chunked_last: bool,
    te_chunked_count: usize,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_header: bool,
}

impl Facts {
    fn see(&mut self, name: Name, v: &[u8]) {
        match name {
            Name::ContentLength => match (parse_length(v), self.length) {
                (Some(n), None) => self.length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => self.length_bad = true,
            },
            Name::TransferEncoding => {
                self.te_seen = true;
                for t in tokens(v) {
                    let chunked = t.eq_ignore_ascii_case(b"chunked");
                    self.te_chunked_count += usize::from(chunked);
                    self.te_chunked_last = chunked;
                }
            }
            Name::Connection => {
                self.close |= has_token(v, "close");
                self.keep_alive |= has_token(v, "keep-alive");
                self.upgrade_token |= has_token(v, "upgrade");
            }
            Name::Upgrade => self.upgrade_header = true,
            _ => {}
        }
    }
}

/// What the request head's rewrite adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestRewrite {
    /// Append `X-Forwarded-For: <ip>` (option forwardfor).
    pub forwarded_for: Option<IpAddr>,
}

/// Parses a request head at the start of `buf` and appends its rewrite for the server to `out`.
/// `Ok(None)`: incomplete (read more), unless `buf` already holds [`MAX_HEAD`] bytes.
pub fn parse_request(buf: &[u8], rw: RequestRewrite, out: &mut Vec<u8>) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(syntax(e)),
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let minor = req.version.unwrap_or(1);
    let method_s = req.method.unwrap_or("");
    let method = match method_s {
        "HEAD" => Method::Head,
        "CONNECT" => Method::Connect,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    // Absolute form (a client talking to a proxy): the authority is the host.
    let (mut host, path) = match target.find("://") {
        Some(i) if target[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
            let rest = &target[i + 3..];
            let end = rest.find('/').unwrap_or(rest.len());
            (Some(offset(buf, &rest.as_bytes()[..end])), offset(buf, &rest.as_bytes()[end..]))
        }
        _ => (None, offset(buf, target.as_bytes())),
    };
    let mut facts = Facts::default();
    let mut host_headers = 0;
    let mut names = [Name::Other; MAX_HEADERS];
    for (h, n) in req.headers.iter().zip(names.iter_mut()) {
        *n = Name::of(h.name);
        facts.see(*n, h.value);
        if *n == Name::Host {
            host_headers += 1;
            if host.is_none() || host_headers > 1 {
                host = Some(offset(buf, h.value));
            }
        }
    }
    if host_headers > 1 || (minor == 1 && host_headers == 0 && host.is_none()) {
        return Err(HeadError::Host);
    }
    let framing = if facts.te_seen {
        // The last coding must be chunked and appear once, else the length is unknowable.
        if !facts.te_chunked_last || facts.te_chunked_count != 1 || minor == 0 {
            return Err(HeadError::TransferEncoding);
        }
        Framing::Chunked
    } else if facts.length_bad {
        return Err(HeadError::ContentLength);
    } else {
        match facts.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let upgrade = facts.upgrade_header && facts.upgrade_token;
    let keep_alive = if minor == 0 { facts.keep_alive && !facts.close } else { !facts.close };

    // Request line verbatim (without the empty lines httparse skips before it, RFC 9112 2.2).
    let (line_start, line_end) = start_line(buf);
    out.reserve(head_len + 64);
    out.extend_from_slice(&buf[line_start..line_end]);
    for (h, &n) in req.headers.iter().zip(names.iter()) {
        if n.hop_by_hop() || (framing == Framing::Chunked && n == Name::ContentLength) || (!upgrade && n == Name::Upgrade) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = rw.forwarded_for {
        let _ = write!(out, "X-Forwarded-For: {ip}\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if minor == 0 {
        // The server leg is reused whatever the client does.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Request { head_len, minor, method, host, path, framing, keep_alive, upgrade }))
}

/// What the balancer knows when it rewrites a response head.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext {
    /// The request's method.
    pub method: Method,
    /// The request asked for an upgrade.
    pub upgrade: bool,
    /// The client leg may stay open after this response (its request allowed it, no drain).
    pub client_keep_alive: bool,
    /// The request's HTTP minor version.
    pub client_minor: u8,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// A 1xx other than an accepted 101: forwarded, then the real response follows.
    pub interim: bool,
    /// The connection becomes a tunnel after this head (101 to an upgrade, 2xx to CONNECT).
    pub tunnel: bool,
    /// Body delimitation.
    pub framing: Framing,
    /// The server leg may be reused after the body.
    pub server_keep_alive: bool,
    /// The client leg closes after this response.
    pub close_client: bool,
}

/// Parses a response head at the start of `buf` and appends its rewrite for the client to `out`.
pub fn parse_response(buf: &[u8], cx: ResponseContext, out: &mut Vec<u8>) -> Result<Option<Response>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(syntax(e)),
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let mut facts = Facts::default();
    let mut names = [Name::Other; MAX_HEADERS];
    for (h, n) in resp.headers.iter().zip(names.iter_mut()) {
        *n = Name::of(h.name);
        facts.see(*n, h.value);
    }
    let tunnel = (status == 101 && cx.upgrade) || (cx.method == Method::Connect && (200..300).contains(&status));
    if status == 101 && !cx.upgrade {
        return Err(HeadError::Syntax("101 without an upgrade request"));
    }
    let interim = (100..200).contains(&status) && status != 101;
    let framing = if interim || tunnel || status == 204 || status == 304 || cx.method == Method::Head {
        Framing::Empty
    } else if facts.te_seen {
        if facts.te_chunked_last && facts.te_chunked_count == 1 { Framing::Chunked } else { Framing::UntilClose }
    } else if facts.length_bad {
        return Err(HeadError::ContentLength);
    } else {
        match facts.length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let server_keep_alive =
        !tunnel && framing != Framing::UntilClose && if minor == 0 { facts.keep_alive && !facts.close } else { !facts.close };
    let close_client = !interim && !tunnel && (!cx.client_keep_alive || framing == Framing::UntilClose);

    let (line_start, line_end) = start_line(buf);
    out.reserve(head_len + 32);
    out.extend_from_slice(&buf[line_start..line_end]);
    for (h, &n) in resp.headers.iter().zip(names.iter()) {
        if (!tunnel && n.hop_by_hop()) || (framing == Framing::Chunked && n == Name::ContentLength) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !interim && !tunnel {
        if close_client {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if cx.client_minor == 0 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response { head_len, status, interim, tunnel, framing, server_keep_alive, close_client }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(s: &str) -> (Result<Option<Request>, HeadError>, String) {
        let mut out = Vec::new();
        let r = parse_request(s.as_bytes(), RequestRewrite { forwarded_for: Some("198.18.0.7".parse().unwrap()) }, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_keep_alive_get_is_forwarded_with_xff_and_no_connection_header() {
        let text = "GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: Api.Example:6443\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\nNEXT";
        let (r, out) = req(text);
        let r = r.unwrap().unwrap();
        assert_eq!(r.head_len, text.len() - 4);
        assert_eq!(r.framing, Framing::Empty);
        assert!(r.keep_alive && !r.upgrade);
        assert_eq!(r.host_name(text.as_bytes()), Some("Api.Example"));
        assert_eq!(r.path(text.as_bytes()), "/api/v1/pods?watch=1");
        assert_eq!(
            out,
            "GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: Api.Example:6443\r\nAccept: */*\r\nX-Forwarded-For: 198.18.0.7\r\n\r\n"
        );
    }

    #[test]
    fn http10_keep_alive_rules() {
        let (r, out) = req("GET / HTTP/1.0\r\n\r\n");
        let r = r.unwrap().unwrap();
        assert!(!r.keep_alive);
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"), "the server leg stays open: {out}");
        let (r, _) = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.unwrap().unwrap().keep_alive);
        let (r, _) = req("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!r.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn bodies_are_framed_and_smuggling_is_refused() {
        let (r, _) = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().framing, Framing::Length(12));
        let (r, out) = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().framing, Framing::Chunked);
        assert!(!out.to_ascii_lowercase().contains("content-length"), "{out}");
        let bad = [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ];
        for b in bad {
            assert!(req(b).0.is_err(), "accepted: {b:?}");
        }
        let (r, _) = req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().framing, Framing::Length(7));
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let (r, out) = req("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(r.unwrap().unwrap().upgrade);
        assert!(out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"), "{out}");
        // An Upgrade header without the Connection token is not an upgrade (and is not passed on).
        let (r, out) = req("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!r.unwrap().unwrap().upgrade);
        assert!(!out.contains("Upgrade"), "{out}");
    }

    #[test]
    fn absolute_uri_gives_host_and_path() {
        let text = "GET http://example.com:8080/x/y HTTP/1.1\r\nHost: other\r\n\r\n";
        let r = req(text).0.unwrap().unwrap();
        assert_eq!(r.host_name(text.as_bytes()), Some("example.com"));
        assert_eq!(r.path(text.as_bytes()), "/x/y");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n").0, Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(req(&big).0, Err(HeadError::TooLarge));
    }

    fn resp(s: &str, cx: ResponseContext) -> (Response, String) {
        let mut out = Vec::new();
        let r = parse_response(s.as_bytes(), cx, &mut out).unwrap().unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    const KA: ResponseContext = ResponseContext { method: Method::Other, upgrade: false, client_keep_alive: true, client_minor: 1 };

    #[test]
    fn response_framing() {
        let (r, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n", KA);
        assert_eq!((r.framing, r.server_keep_alive, r.close_client), (Framing::Length(5), true, false));
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let (r, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", KA);
        assert_eq!(r.framing, Framing::Chunked);
        assert!(!out.contains("Content-Length"));
        let (r, out) = resp("HTTP/1.1 200 OK\r\n\r\n", KA);
        assert_eq!((r.framing, r.server_keep_alive, r.close_client), (Framing::UntilClose, false, true));
        assert!(out.ends_with("Connection: close\r\n\r\n"));
        let (r, _) = resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", KA);
        assert_eq!((r.server_keep_alive, r.close_client), (false, false));
        let (r, _) = resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", KA);
        assert_eq!(r.framing, Framing::Empty);
        let head = ResponseContext { method: Method::Head, ..KA };
        assert_eq!(resp("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head).0.framing, Framing::Empty);
        let (r, _) = resp("HTTP/1.1 100 Continue\r\n\r\n", KA);
        assert!(r.interim && !r.close_client);
        let up = ResponseContext { upgrade: true, ..KA };
        let (r, out) = resp("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", up);
        assert!(r.tunnel);
        assert!(out.contains("Connection: Upgrade"));
        assert!(parse_response(b"HTTP/1.1 101 Switching\r\n\r\n", KA, &mut Vec::new()).is_err());
        let old = ResponseContext { client_minor: 0, ..KA };
        assert!(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", old).1.contains("Connection: keep-alive"));
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9-]{0,15}"
    }

    proptest! {
        /// Any well-formed head is found whole at any split, its body framing is read from its
        /// headers, and the rewrite is itself a well-formed head with the same request line.
        #[test]
        fn request_heads_parse_at_every_split(
            path in "/[a-z0-9/._-]{0,40}",
            headers in proptest::collection::vec((token(), "[ -~]{0,30}"), 0..12),
            len in proptest::option::of(0u64..1_000_000),
            split in 0usize..400,
        ) {
            let mut text = format!("POST {path} HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &headers {
                let l = n.to_ascii_lowercase();
                if ["host", "content-length", "transfer-encoding", "connection", "upgrade"].contains(&l.as_str()) {
                    continue;
                }
                text.push_str(&format!("{n}: {}\r\n", v.trim()));
            }
            if let Some(n) = len {
                text.push_str(&format!("Content-Length: {n}\r\n"));
            }
            text.push_str("\r\n");
            let bytes = text.as_bytes();
            let cut = split.min(bytes.len());
            let mut out = Vec::new();
            if cut < bytes.len() {
                prop_assert_eq!(parse_request(&bytes[..cut], RequestRewrite::default(), &mut out), Ok(None));
                prop_assert!(out.is_empty());
            }
            let r = parse_request(bytes, RequestRewrite::default(), &mut out).unwrap().unwrap();
            prop_assert_eq!(r.head_len, bytes.len());
            prop_assert_eq!(r.framing, match len { None | Some(0) => Framing::Empty, Some(n) => Framing::Length(n) });
            prop_assert_eq!(r.path(bytes), path.as_str());
            let mut again = Vec::new();
            let r2 = parse_request(&out, RequestRewrite::default(), &mut again).unwrap().unwrap();
            prop_assert_eq!(r2.head_len, out.len());
            prop_assert_eq!(r2.framing, r.framing);
            prop_assert_eq!(&again, &out, "rewriting is idempotent");
        }

        /// Arbitrary bytes never panic the parser, and what it accepts re-parses.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            if let Ok(Some(r)) = parse_request(&data, RequestRewrite::default(), &mut out) {
                prop_assert!(r.head_len <= data.len());
                let mut again = Vec::new();
                prop_assert!(matches!(parse_request(&out, RequestRewrite::default(), &mut again), Ok(Some(_))));
            }
            let _ = parse_response(&data, KA, &mut Vec::new());
        }
    }

    #[test]
    fn empty_lines_before_the_request_line_are_not_copied_instead_of_it() {
        // Found by the http_head fuzz target: the rewrite used to copy the leading empty line
        // and drop the request line.
        let mut out = Vec::new();
        let r = parse_request(b"\r\n\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n", RequestRewrite::default(), &mut out).unwrap().unwrap();
        assert!(out.starts_with(b"GET /x HTTP/1.1\r\nHost: a\r\n"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(r.head_len, 31);
        let mut again = Vec::new();
        assert!(parse_request(&out, RequestRewrite::default(), &mut again).unwrap().is_some());
        let mut out = Vec::new();
        let cx = ResponseContext { method: Method::Other, upgrade: false, client_keep_alive: true, client_minor: 1 };
        parse_response(b"\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", cx, &mut out).unwrap().unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&out));
    }

}
