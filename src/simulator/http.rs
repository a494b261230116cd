//! HTTP/1.1 framing for the simulator's server: a request read from the
//! bytes received so far, and a reply written into a buffer. No IO (the
//! connection in [`super::server`] owns the socket), no allocation per
//! request: requests borrow the connection's input buffer, replies are
//! written into its reused output buffer.
//!
//! Covered: keep-alive (HTTP/1.1 by default, HTTP/1.0 when asked),
//! `Connection: close`, pipelined requests, `Content-Length` and chunked
//! bodies, `Expect: 100-continue`. Head parsing is httparse's. Anything it
//! cannot frame is answered with a 4xx/5xx and the connection closed.
//!
//! A hand-written server rather than hyper because the simulator's cost
//! bounds every benchmark: for the same fixed answer, measured on the
//! project's 2-core machine, this framing costs about 6 µs of CPU per
//! request where hyper's `http1` connection costs 8 and axum on a
//! multi-threaded runtime 11.

use std::io::Write as _;

/// The longest request head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The most header lines in one request.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// One request, borrowed from the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query (after `?`), if any.
    pub query: Option<&'a str>,
    /// The `User-Agent` header (empty when absent).
    pub user_agent: &'a [u8],
    /// The body (de-chunked).
    pub body: &'a [u8],
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// What the bytes received so far hold.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole request, `length` bytes of the input.
    Request {
        /// The request.
        request: Request<'a>,
        /// How many input bytes it took.
        length: usize,
    },
    /// Not yet a whole request. `expects_continue`: the head is complete and
    /// asks for `100 Continue` before it sends its body.
    Partial {
        /// Answer `100 Continue` (once) before reading on.
        expects_continue: bool,
    },
}

/// A request that cannot be framed; the connection answers and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The head is not HTTP/1.x.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The head is longer than [`MAX_HEAD_BYTES`] or has too many lines.
    #[error("request head too large")]
    HeadTooLarge,
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("request body too large")]
    BodyTooLarge,
    /// A transfer coding other than chunked.
    #[error("unsupported transfer encoding")]
    UnsupportedTransferEncoding,
}

impl FramingError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            FramingError::BadRequest(_) => 400,
            FramingError::HeadTooLarge => 431,
            FramingError::BodyTooLarge => 413,
            FramingError::UnsupportedTransferEncoding => 501,
        }
    }
}

/// Reads the first request in `input`. A chunked body is decoded into
/// `chunked` (reused between requests), which the request then borrows.
pub fn parse_request<'a>(
    input: &'a [u8],
    chunked: &'a mut Vec<u8>,
) -> Result<Parsed<'a>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let head_length = match head.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD_BYTES => {
            return Err(FramingError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Parsed::Partial {
                expects_continue: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::HeadTooLarge),
        Err(_) => return Err(FramingError::BadRequest("not an HTTP/1.x request head")),
    };
    // Complete heads always have these.
    let (Some(method), Some(target), Some(version)) = (head.method, head.path, head.version) else {
        return Err(FramingError::BadRequest("incomplete request line"));
    };

    let mut content_length: Option<usize> = None;
    let mut is_chunked = false;
    let mut user_agent: &[u8] = b"";
    let mut keep_alive = version == 1;
    let mut expects_continue = false;
    for header in head.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .map(str::trim)
                .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse::<usize>().ok())
                .ok_or(FramingError::BadRequest("invalid content-length"))?;
            if content_length.is_some_and(|known| known != length) {
                return Err(FramingError::BadRequest("conflicting content-length"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::UnsupportedTransferEncoding);
            }
            is_chunked = true;
        } else if name.eq_ignore_ascii_case("user-agent") {
            user_agent = value;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if is_chunked && content_length.is_some() {
        return Err(FramingError::BadRequest(
            "both content-length and transfer-encoding",
        ));
    }

    let rest = &input[head_length..];
    let (body, body_length): (&'a [u8], usize) = if is_chunked {
        match decode_chunked(rest, chunked)? {
            Some(length) => {
                let decoded: &'a Vec<u8> = chunked;
                (decoded.as_slice(), length)
            }
            None => {
                return Ok(Parsed::Partial {
                    expects_continue: expects_continue && rest.is_empty(),
                })
            }
        }
    } else {
        let length = content_length.unwrap_or(0);
        if length > MAX_BODY_BYTES {
            return Err(FramingError::BodyTooLarge);
        }
        if rest.len() < length {
            return Ok(Parsed::Partial {
                expects_continue: expects_continue && rest.is_empty(),
            });
        }
        (&rest[..length], length)
    };

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    Ok(Parsed::Request {
        request: Request {
            method,
            path,
            query,
            user_agent,
            body,
            keep_alive,
        },
        length: head_length + body_length,
    })
}

/// Decodes a chunked body from the start of `data` into `out`: the bytes it
/// took, or `None` when it is not complete yet.
fn decode_chunked(data: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, FramingError> {
    out.clear();
    let mut rest = data;
    loop {
        let Some(line) = crlf_line(rest)? else {
            return Ok(None);
        };
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = size_text.trim_ascii();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(FramingError::BadRequest("invalid chunk size"));
        }
        // Checked above: at most 15 hex digits.
        let size = size_text.iter().fold(0usize, |size, &digit| {
            size * 16 + (char::from(digit).to_digit(16).unwrap_or(0) as usize)
        });
        rest = &rest[line.len() + 2..];
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let Some(line) = crlf_line(rest)? else {
                    return Ok(None);
                };
                rest = &rest[line.len() + 2..];
                if line.is_empty() {
                    return Ok(Some(data.len() - rest.len()));
                }
            }
        }
        if out.len() + size > MAX_BODY_BYTES {
            return Err(FramingError::BodyTooLarge);
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(FramingError::BadRequest("chunk without its line end"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The line at the start of `data` without its CRLF; `None` when the CRLF
/// has not arrived yet.
fn crlf_line(data: &[u8]) -> Result<Option<&[u8]>, FramingError> {
    match data.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) => Ok(Some(&data[..end])),
        None if data.len() > MAX_CHUNK_LINE => Err(FramingError::BadRequest("chunk line too long")),
        None => Ok(None),
    }
}

/// An answer being built: status, content type and body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: 200,
            content_type: "text/plain",
            body: Vec::with_capacity(1024),
        }
    }
}

impl Reply {
    /// Starts a new answer: 200, `content_type`, empty body (its buffer
    /// kept).
    pub fn start(&mut self, content_type: &'static str) {
        self.status = 200;
        self.content_type = content_type;
        self.body.clear();
    }

    /// Replaces the answer with `status`, `content_type` and `body`.
    pub fn set(&mut self, status: u16, content_type: &'static str, body: &[u8]) {
        self.start(content_type);
        self.status = status;
        self.body.extend_from_slice(body);
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends `reply` to `out` as an HTTP/1.1 response; `close` announces that
/// the connection closes after it.
pub fn write_reply(out: &mut Vec<u8>, reply: &Reply, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{} {}", reply.status, reason_phrase(reply.status));
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(reply.content_type.as_bytes());
    let _ = write!(out, "\r\ncontent-length: {}\r\n", reply.body.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reply.body);
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "",
    }
}

/// `Content-Type` of the HTML pages.
pub(super) const CONTENT_TYPE_HTML: &str = "text/html";
/// `Content-Type` of plain text.
pub(super) const CONTENT_TYPE_TEXT: &str = "text/plain";

/// The 404 page (as IIS-fronted sites answer).
const NOT_FOUND_PAGE: &str =
    "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n";

/// 404 with the HTML page.
pub(super) fn not_found(reply: &mut Reply) {
    reply.set(404, CONTENT_TYPE_HTML, NOT_FOUND_PAGE.as_bytes());
}

/// 405, empty.
pub(super) fn method_not_allowed(reply: &mut Reply) {
    reply.set(405, CONTENT_TYPE_TEXT, b"");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` and returns the request and its length, or panics.
    fn request<'a>(input: &'a [u8], chunked: &'a mut Vec<u8>) -> (Request<'a>, usize) {
        match parse_request(input, chunked) {
            Ok(Parsed::Request { request, length }) => (request, length),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn partial(input: &[u8]) -> bool {
        let mut chunked = Vec::new();
        match parse_request(input, &mut chunked) {
            Ok(Parsed::Partial { expects_continue }) => expects_continue,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn error(input: &[u8]) -> FramingError {
        let mut chunked = Vec::new();
        match parse_request(input, &mut chunked) {
            Err(error) => error,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let input = b"POST /xml/agent/xml.asp HTTP/1.1\r\nHost: x\r\nUser-Agent: pbx2mqtt/0.1.0 (a)\r\nContent-Length: 5\r\n\r\nhelloGET /p";
        let mut chunked = Vec::new();
        let (post, length) = request(input, &mut chunked);
        assert_eq!(
            post,
            Request {
                method: "POST",
                path: "/xml/agent/xml.asp",
                query: None,
                user_agent: b"pbx2mqtt/0.1.0 (a)",
                body: b"hello",
                keep_alive: true,
            }
        );
        assert_eq!(&input[length..], b"GET /p");

        let (get, length) = request(
            b"GET /pbx/proxyapi.php?key=k&a=b HTTP/1.0\r\n\r\n",
            &mut chunked,
        );
        assert_eq!(
            (get.path, get.query, get.body),
            ("/pbx/proxyapi.php", Some("key=k&a=b"), &b""[..])
        );
        assert!(!get.keep_alive, "HTTP/1.0 closes by default");
        assert_eq!(length, 44);
        let (get, _) = request(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            &mut chunked,
        );
        assert!(get.keep_alive);
        let (get, _) = request(
            b"GET / HTTP/1.1\r\nconnection: TE, close\r\n\r\n",
            &mut chunked,
        );
        assert!(!get.keep_alive);
    }

    #[test]
    fn incomplete_requests_wait_for_more() {
        assert!(!partial(b""));
        assert!(!partial(b"POST / HTTP/1.1\r\nContent-Len"));
        assert!(!partial(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"));
        assert!(partial(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!partial(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        ));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut chunked = Vec::new();
        let (post, length) = request(input, &mut chunked);
        assert_eq!(post.body, b"hello!");
        assert_eq!(&input[length..], b"NEXT");
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            FramingError::BadRequest("invalid chunk size")
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n"),
            FramingError::BadRequest("chunk without its line end")
        );
    }

    #[test]
    fn what_cannot_be_framed() {
        assert_eq!(error(b"\x16\x03\x01 tls hello\r\n\r\n").status(), 400);
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            FramingError::BadRequest("invalid content-length")
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            FramingError::BadRequest("conflicting content-length")
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            FramingError::UnsupportedTransferEncoding
        );
        assert_eq!(
            error(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            FramingError::BodyTooLarge
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(error(&huge), FramingError::HeadTooLarge);
    }

    #[test]
    fn replies_are_framed_with_their_length() {
        let mut reply = Reply::default();
        reply.set(200, "text/xml", b"<x/>");
        let mut out = b"before|".to_vec();
        write_reply(&mut out, &reply, false);
        assert_eq!(
            out,
            b"before|HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: 4\r\n\r\n<x/>"
        );
        reply.set(404, "text/html", b"");
        out.clear();
        write_reply(&mut out, &reply, true);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}
