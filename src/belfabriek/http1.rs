//! A small HTTP/1.1 client for the Belfabriek posts, and nothing else: POST
//! one body to one endpoint, read the whole answer.
//!
//! Why not reqwest (which the TRiNG client uses): a poll is one or two tiny
//! requests, thousands a second, and a pooled general-purpose client spent
//! more CPU than the whole rest of a poll (issue #13's profile): a
//! connection task per connection and two channel hops per request, a URL
//! turned into a `Uri` per request, header maps, ~24 KB of buffers per
//! connection. Here a request is one write from a buffer the connection
//! keeps, the answer is read by the polling future itself (no task, no
//! channel) into the same buffer and parsed with `httparse`; a connection
//! costs its socket and a kilobyte.
//!
//! What it does: keep-alive connections reused newest first (at most
//! `max_idle` kept), `TCP_NODELAY`, TLS through rustls (webpki roots) for
//! `https` URLs, `Content-Length`, chunked and read-to-close bodies, bodies
//! over a limit refused, 1xx answers skipped, one retry on a fresh
//! connection when a reused one was closed before its answer began (the
//! server's keep-alive timeout racing the request; both Belfabriek methods
//! only read), and one deadline for the whole exchange. No redirects, no
//! proxies, no cookies, no compression.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

/// The most response head bytes read before giving up.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Headers parsed in one response head.
const MAX_HEADERS: usize = 64;

/// A connection's buffer starts this large (a Belfabriek answer is well under
/// a kilobyte) and is shrunk back to it after a larger answer.
const BUFFER_BYTES: usize = 1024;

/// What the client sends to and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query, as sent on the request line.
    pub path: String,
    /// TLS (an `https` URL).
    pub tls: bool,
}

impl Target {
    /// The target of an `http` or `https` URL.
    pub fn from_url(url: &url::Url) -> Result<Self, String> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        let host = url
            .host_str()
            .ok_or_else(|| "the url has no host".to_owned())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "the url has no port".to_owned())?;
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Self {
            host,
            port,
            path,
            tls,
        })
    }
}

/// A failed exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No complete answer within the deadline.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection (or the TLS handshake) failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// What the system or rustls said.
        source: io::Error,
    },
    /// The connection was closed or reset before the answer began.
    #[error("the connection was closed before the answer began")]
    ClosedBeforeAnswer,
    /// Reading or writing failed midway.
    #[error("the connection failed: {0}")]
    Io(io::Error),
    /// The peer's answer is not HTTP/1.x as this client reads it.
    #[error("invalid http answer: {0}")]
    Protocol(String),
    /// The body is larger than the limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The answer's status.
        status: u16,
        /// The limit.
        limit: usize,
    },
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 client for one endpoint. Share it behind an `Arc`.
pub struct Http1Client {
    /// Host, port, path, TLS.
    target: Target,
    /// The TLS connector and server name, for `https`.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The request line and fixed headers, up to `Content-Length: `.
    head: Box<[u8]>,
    /// Idle kept-alive connections, newest last.
    idle: Mutex<Vec<Connection>>,
    /// The most idle connections kept.
    max_idle: usize,
    /// The deadline of one exchange, retry included.
    timeout: Duration,
    /// The largest body accepted.
    max_body: usize,
}

impl std::fmt::Debug for Http1Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Http1Client")
            .field("target", &self.target)
            .field("max_idle", &self.max_idle)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Http1Client {
    /// A client posting `content_type` bodies to `target` as `user_agent`.
    pub fn new(
        target: Target,
        user_agent: &str,
        content_type: &str,
        max_idle: usize,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Self, String> {
        let tls = if target.tls {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|error| format!("{:?} is not a tls server name: {error}", target.host))?;
            Some((tokio_rustls::TlsConnector::from(tls_config()?), name))
        } else {
            None
        };
        let default_port = if target.tls { 443 } else { 80 };
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let host = if target.port == default_port {
            host
        } else {
            format!("{host}:{}", target.port)
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: {user_agent}\r\ncontent-type: {content_type}\r\naccept: */*\r\ncontent-length: ",
            target.path
        );
        if [
            target.path.as_str(),
            user_agent,
            content_type,
            target.host.as_str(),
        ]
        .iter()
        .any(|part| part.contains(['\r', '\n']))
        {
            return Err("the url or the user agent holds a line break".to_owned());
        }
        Ok(Self {
            target,
            tls,
            head: head.into_bytes().into_boxed_slice(),
            idle: Mutex::new(Vec::new()),
            max_idle,
            timeout,
            max_body,
        })
    }

    /// Posts `body` and reads the whole answer, within the timeout.
    pub async fn post(&self, body: &[u8]) -> Result<Answer, HttpError> {
        tokio::time::timeout(self.timeout, self.post_once_or_twice(body))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    async fn post_once_or_twice(&self, body: &[u8]) -> Result<Answer, HttpError> {
        if let Some(mut connection) = self.take_idle() {
            match self.exchange(&mut connection, body).await {
                Err(HttpError::ClosedBeforeAnswer) => {
                    tracing::debug!(
                        "kept-alive connection closed under the request; retrying once"
                    );
                }
                other => return self.finish(connection, other),
            }
        }
        let mut connection = self.connect().await?;
        let result = self.exchange(&mut connection, body).await;
        self.finish(connection, result)
    }

    /// Returns a connection that can be reused to the idle stack.
    fn finish(
        &self,
        mut connection: Connection,
        result: Result<(Answer, bool), HttpError>,
    ) -> Result<Answer, HttpError> {
        let (answer, reusable) = result?;
        if reusable {
            if connection.buffer.capacity() > 16 * BUFFER_BYTES {
                connection.buffer = Vec::with_capacity(BUFFER_BYTES);
            }
            let mut idle = self.lock_idle();
            if idle.len() < self.max_idle {
                idle.push(connection);
            }
        }
        Ok(answer)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A poisoned lock means a holder panicked around a push or pop; the
        // stack is still valid.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_idle(&self) -> Option<Connection> {
        self.lock_idle().pop()
    }

    async fn connect(&self) -> Result<Connection, HttpError> {
        let address = format!("{}:{}", self.target.host, self.target.port);
        let failed = |source| HttpError::Connect {
            address: address.clone(),
            source,
        };
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector.connect(name.clone(), tcp).await.map_err(failed)?,
            )),
        };
        Ok(Connection {
            stream,
            buffer: Vec::with_capacity(BUFFER_BYTES),
        })
    }

    /// One request and its answer on `connection`; the answer and whether
    /// the connection can carry another request.
    async fn exchange(
        &self,
        connection: &mut Connection,
        body: &[u8],
    ) -> Result<(Answer, bool), HttpError> {
        let buffer = &mut connection.buffer;
        buffer.clear();
        buffer.extend_from_slice(&self.head);
        buffer.extend_from_slice(body.len().to_string().as_bytes());
        buffer.extend_from_slice(b"\r\n\r\n");
        buffer.extend_from_slice(body);
        let written = async {
            connection.stream.write_all(&connection.buffer).await?;
            connection.stream.flush().await
        };
        written.await.map_err(|error| closed_or_io(error, true))?;
        connection.buffer.clear();
        read_answer(connection, self.max_body).await
    }
}

/// A write or a read before any answer byte failing like a closed
/// connection is [`HttpError::ClosedBeforeAnswer`]; anything else is
/// [`HttpError::Io`].
fn closed_or_io(error: io::Error, before_answer: bool) -> HttpError {
    let closed = matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    );
    if closed && before_answer {
        HttpError::ClosedBeforeAnswer
    } else {
        HttpError::Io(error)
    }
}

/// The parts of a response head the client acts on.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// Bytes of the head, blank line included.
    length: usize,
    /// The status code.
    status: u16,
    /// How the body is delimited.
    body: Framing,
    /// The server keeps the connection open.
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
    /// No body (204, 304).
    Empty,
}

/// Parses a complete response head at the start of `bytes`; `None` when
/// more bytes are needed.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(HttpError::Protocol(error.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let http11 = response.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut close = !http11;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value.parse::<usize>().map_err(|_| {
                HttpError::Protocol(format!("content-length {} is not a number", shown(value)))
            })?;
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return Err(HttpError::Protocol(
                    "two different content-length headers".to_owned(),
                ));
            }
            content_length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    let body = if status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        length,
        status,
        keep_alive: !close && body != Framing::UntilClose,
        body,
    }))
}

/// Reads more bytes into the connection's buffer; the count (0 at the end
/// of the stream).
async fn read_more(connection: &mut Connection) -> io::Result<usize> {
    if connection.buffer.capacity() - connection.buffer.len() < BUFFER_BYTES / 2 {
        connection
            .buffer
            .reserve(BUFFER_BYTES.max(connection.buffer.len()));
    }
    connection.stream.read_buf(&mut connection.buffer).await
}

/// Reads one answer (skipping 1xx heads) into an [`Answer`]; whether the
/// connection can be reused.
async fn read_answer(
    connection: &mut Connection,
    max_body: usize,
) -> Result<(Answer, bool), HttpError> {
    let head = loop {
        match parse_head(&connection.buffer)? {
            Some(head) if (100..200).contains(&head.status) => {
                connection.buffer.drain(..head.length);
            }
            Some(head) => break head,
            None => {
                if connection.buffer.len() > MAX_HEAD_BYTES {
                    return Err(HttpError::Protocol(format!(
                        "the head is larger than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                let before_answer = connection.buffer.is_empty();
                match read_more(connection).await {
                    Ok(0) if before_answer => return Err(HttpError::ClosedBeforeAnswer),
                    Ok(0) => {
                        return Err(HttpError::Protocol(
                            "the connection closed within the head".to_owned(),
                        ))
                    }
                    Ok(_) => {}
                    Err(error) => return Err(closed_or_io(error, before_answer)),
                }
            }
        }
    };
    let too_large = HttpError::TooLarge {
        status: head.status,
        limit: max_body,
    };
    let start = head.length;
    let (body, end) = match head.body {
        Framing::Empty => (Vec::new(), start),
        Framing::Length(length) if length > max_body => return Err(too_large),
        Framing::Length(length) => {
            fill(connection, start + length).await?;
            (
                connection.buffer[start..start + length].to_vec(),
                start + length,
            )
        }
        Framing::UntilClose => {
            while read_more(connection).await.map_err(HttpError::Io)? > 0 {
                if connection.buffer.len() - start > max_body {
                    return Err(too_large);
                }
            }
            (connection.buffer[start..].to_vec(), connection.buffer.len())
        }
        Framing::Chunked => read_chunked(connection, start, max_body).await?,
    };
    let reusable = head.keep_alive && end == connection.buffer.len();
    Ok((
        Answer {
            status: head.status,
            body,
        },
        reusable,
    ))
}

/// Reads until the buffer holds `length` bytes.
async fn fill(connection: &mut Connection, length: usize) -> Result<(), HttpError> {
    while connection.buffer.len() < length {
        if read_more(connection).await.map_err(HttpError::Io)? == 0 {
            return Err(HttpError::Protocol(
                "the connection closed within the body".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Reads a chunked body starting at `start`; the body and where the answer
/// ends in the buffer.
async fn read_chunked(
    connection: &mut Connection,
    start: usize,
    max_body: usize,
) -> Result<(Vec<u8>, usize), HttpError> {
    let mut body = Vec::new();
    let mut at = start;
    loop {
        let line_end = loop {
            if let Some(offset) = find_line_end(&connection.buffer[at..]) {
                break at + offset;
            }
            if connection.buffer.len() - at > 1024 {
                return Err(HttpError::Protocol(
                    "a chunk size line is too long".to_owned(),
                ));
            }
            let wanted = connection.buffer.len() + 1;
            fill(connection, wanted).await?;
        };
        let line = std::str::from_utf8(&connection.buffer[at..line_end]).unwrap_or("");
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            HttpError::Protocol(format!(
                "chunk size {} is not hexadecimal",
                shown(size_text)
            ))
        })?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, if any, up to the blank line.
            loop {
                let offset = loop {
                    if let Some(offset) = find_line_end(&connection.buffer[at..]) {
                        break offset;
                    }
                    let wanted = connection.buffer.len() + 1;
                    fill(connection, wanted).await?;
                };
                at += offset + 2;
                if offset == 0 {
                    return Ok((body, at));
                }
            }
        }
        if body.len() + size > max_body {
            return Err(HttpError::TooLarge {
                status: 200,
                limit: max_body,
            });
        }
        fill(connection, at + size + 2).await?;
        body.extend_from_slice(&connection.buffer[at..at + size]);
        if &connection.buffer[at + size..at + size + 2] != b"\r\n" {
            return Err(HttpError::Protocol(
                "a chunk does not end with CRLF".to_owned(),
            ));
        }
        at += size + 2;
    }
}

/// The offset of the first `\r\n` in `bytes`.
/// A value from the answer for an error message: quoted whole when short,
/// else only its length. Never cut: the Belfabriek client redacts the PIN
/// from the message afterwards, and a cut could leave half of it.
fn shown(value: &str) -> String {
    match crate::text::quote_cut(value, crate::text::QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some(_) => format!("of {} characters", value.chars().count()),
    }
}

fn find_line_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

/// rustls with the webpki roots (as reqwest's `rustls-tls`), ring.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("tls setup: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A kept-alive connection and its buffer (the request, then the answer).
struct Connection {
    /// The socket, plain or TLS.
    stream: Stream,
    /// Bytes written or read.
    buffer: Vec<u8>,
}

/// A plain or a TLS stream.
enum Stream {
    /// `http`.
    Plain(TcpStream),
    /// `https`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, bytes),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes())
            .expect("parses")
            .expect("complete")
    }

    #[test]
    fn a_head_says_how_the_body_is_framed_and_whether_to_keep_the_connection() {
        let plain = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (plain.status, plain.body, plain.keep_alive),
            (200, Framing::Length(12), true)
        );
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.body, Framing::Chunked);
        let close = head("HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!close.keep_alive);
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert!(!old.keep_alive);
        let old_kept =
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 3\r\n\r\n");
        assert!(old_kept.keep_alive);
        let unframed = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            (unframed.body, unframed.keep_alive),
            (Framing::UntilClose, false)
        );
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").body, Framing::Empty);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len")
            .unwrap()
            .is_none());
        assert!(parse_head(b"<html>hello</html>\r\n\r\n").is_err());
        let two = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(matches!(two, Err(HttpError::Protocol(_))));
    }

    #[test]
    fn targets_come_from_http_and_https_urls_only() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        let target = Target::from_url(&url("http://api1.example.nl/xml/agent/xml.asp")).unwrap();
        assert_eq!(
            target,
            Target {
                host: "api1.example.nl".into(),
                port: 80,
                path: "/xml/agent/xml.asp".into(),
                tls: false
            }
        );
        let secure = Target::from_url(&url("https://[::1]:8443/x?y=1")).unwrap();
        assert_eq!(
            (
                secure.host.as_str(),
                secure.port,
                secure.path.as_str(),
                secure.tls
            ),
            ("::1", 8443, "/x?y=1", true)
        );
        assert!(Target::from_url(&url("ftp://example.nl/")).is_err());
    }

    /// Serves `answers` (raw bytes, one per connection) and returns the
    /// address.
    async fn serve(answers: Vec<&'static [u8]>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            }
        });
        address
    }

    fn client(address: std::net::SocketAddr, max_body: usize) -> Http1Client {
        let target = Target {
            host: address.ip().to_string(),
            port: address.port(),
            path: "/".into(),
            tls: false,
        };
        Http1Client::new(
            target,
            "test",
            "text/xml",
            4,
            Duration::from_secs(2),
            max_body,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn chunked_and_read_to_close_bodies_are_read_whole() {
        let address = serve(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ])
        .await;
        let client = client(address, 1024);
        let chunked = client.post(b"<x/>").await.unwrap();
        assert_eq!(
            (chunked.status, chunked.body.as_slice()),
            (200, b"hello, world".as_slice())
        );
        let closed = client.post(b"<x/>").await.unwrap();
        assert_eq!(closed.body, b"until the end");
    }

    #[tokio::test]
    async fn a_broken_length_or_chunk_size_is_quoted_short() {
        let garbage = "\"\\".repeat(2_000);
        let answers = [
            format!("HTTP/1.1 200 OK\r\nContent-Length: {garbage}\r\n\r\n"),
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}\r\n",
                &garbage[..900]
            ),
        ];
        // The test server serves `'static` answers.
        let answers = answers.map(|answer| &*Box::leak(answer.into_bytes().into_boxed_slice()));
        let address = serve(answers.to_vec()).await;
        let client = client(address, 16 * 1024);
        for expected in [
            "content-length of 4000 characters is not",
            "chunk size of 900 characters is not",
        ] {
            let error = client.post(b"").await.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.chars().count() < 200, "{error}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_and_broken_answers_are_errors() {
        let address = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"NOT HTTP AT ALL\r\n\r\n",
        ])
        .await;
        let client = client(address, 16);
        assert!(matches!(
            client.post(b"").await,
            Err(HttpError::TooLarge {
                status: 200,
                limit: 16
            })
        ));
        assert!(matches!(
            client.post(b"").await,
            Err(HttpError::TooLarge { .. })
        ));
        let short = client.post(b"").await.unwrap_err();
        assert!(
            short.to_string().contains("closed within the body"),
            "{short}"
        );
        assert!(matches!(
            client.post(b"").await,
            Err(HttpError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut client = client(address, 16);
        client.timeout = Duration::from_millis(200);
        let error = client.post(b"").await.unwrap_err();
        assert!(matches!(error, HttpError::Timeout(_)), "{error}");
        drop(listener);
    }

    #[tokio::test]
    async fn an_https_target_speaks_tls_and_a_failed_handshake_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let first_bytes = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 2];
            stream.read_exact(&mut hello).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Not TLS\r\n\r\n")
                .await
                .unwrap();
            hello
        });
        let target = Target {
            host: "localhost".into(),
            port: address.port(),
            path: "/".into(),
            tls: true,
        };
        let client =
            Http1Client::new(target, "test", "text/xml", 1, Duration::from_secs(2), 16).unwrap();
        let error = client.post(b"secret body").await.unwrap_err();
        assert!(matches!(error, HttpError::Connect { .. }), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        // A TLS record of type handshake (0x16), version 3.x: a ClientHello.
        assert_eq!(first_bytes.await.unwrap(), [0x16, 0x03]);
    }
}
