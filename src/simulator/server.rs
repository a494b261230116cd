//! The simulator's HTTP side: the accept loop, one task per connection that
//! owns its socket and buffers, and the two API endpoints with fault
//! injection applied. The control API is in [`super::control`], framing in
//! [`super::http`].
//!
//! Everything runs on the simulator's own single-threaded runtime (see
//! [`super::Simulator::start`]): no work stealing, no cross-thread wake-ups.
//! A connection reads, answers every whole request it has (pipelined ones
//! in one write), and reads again; its buffers are reused, so an answered
//! poll allocates nothing. Handlers hold a lock only for the instant it
//! takes to read or change one agent or the queues, never across an
//! `.await` (the only one is an injected latency).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::belfabriek::{self, Answer, Call};
use super::control;
use super::faults::{Api, Decision, FaultKind};
use super::http::{self, Parsed, Reply, Request};
use super::poll_log::KnownClient;
use super::tring::{self, TringAction, TringRequest};
use super::{lock, Shared, BELFABRIEK_PATH, TRING_PATH};

/// How long to wait after a failed accept (out of file descriptors and the
/// like) before accepting again, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// The input buffer of a new connection.
const INPUT_CAPACITY: usize = 4 * 1024;
/// Free space to have in the input buffer before reading.
const MIN_READ_SPACE: usize = 1024;
/// An idle connection's buffers are shrunk back when they grew beyond this
/// (after a large body).
const MAX_IDLE_BUFFER: usize = 64 * 1024;

/// Serves until `shutdown` is cancelled. Connections still open then are
/// dropped with the runtime.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Small request/response pairs on kept-alive connections: no
                // Nagle delay. Failing to set it only costs latency.
                let _ = stream.set_nodelay(true);
                tokio::spawn(Connection::new(stream, Arc::clone(&shared)).run());
            }
            Err(error) => {
                tracing::warn!(%error, "pbx simulator cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One client connection.
struct Connection {
    /// The socket.
    stream: TcpStream,
    /// What the handlers share.
    shared: Arc<Shared>,
    /// Bytes received and not yet answered.
    input: Vec<u8>,
    /// Bytes to send.
    output: Vec<u8>,
    /// A chunked request body, decoded.
    chunked: Vec<u8>,
    /// The answer being built.
    reply: Reply,
    /// The client's user agent as the poll log knows it.
    client: KnownClient,
}

impl Connection {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        Self {
            stream,
            shared,
            input: Vec::with_capacity(INPUT_CAPACITY),
            output: Vec::with_capacity(INPUT_CAPACITY),
            chunked: Vec::new(),
            reply: Reply::default(),
            client: KnownClient::default(),
        }
    }

    /// Answers requests until the client closes, asks to close, sends
    /// something that cannot be framed, or the socket fails.
    async fn run(mut self) {
        let mut continue_sent = false;
        loop {
            let mut consumed = 0;
            let mut close = false;
            while !close {
                match http::parse_request(&self.input[consumed..], &mut self.chunked) {
                    Ok(Parsed::Request { request, length }) => {
                        continue_sent = false;
                        respond(&self.shared, &request, &mut self.client, &mut self.reply).await;
                        close = !request.keep_alive;
                        http::write_reply(&mut self.output, &self.reply, close);
                        consumed += length;
                    }
                    Ok(Parsed::Partial { expects_continue }) => {
                        if expects_continue && !continue_sent {
                            self.output.extend_from_slice(http::CONTINUE);
                            continue_sent = true;
                        }
                        break;
                    }
                    Err(error) => {
                        self.reply.set(
                            error.status(),
                            CONTENT_TYPE_TEXT,
                            error.to_string().as_bytes(),
                        );
                        http::write_reply(&mut self.output, &self.reply, true);
                        close = true;
                    }
                }
            }
            self.input.drain(..consumed);
            if !self.output.is_empty() {
                if self.stream.write_all(&self.output).await.is_err() {
                    return;
                }
                self.output.clear();
            }
            if close {
                let _ = self.stream.shutdown().await;
                return;
            }
            self.make_room();
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Room to read into; buffers that grew for a large request shrink back
    /// once it is answered.
    fn make_room(&mut self) {
        if self.input.is_empty() && self.input.capacity() > MAX_IDLE_BUFFER {
            self.input = Vec::with_capacity(INPUT_CAPACITY);
        }
        if self.output.capacity() > MAX_IDLE_BUFFER {
            self.output = Vec::with_capacity(INPUT_CAPACITY);
        }
        if self.reply.body.capacity() > MAX_IDLE_BUFFER {
            self.reply = Reply::default();
        }
        if self.input.capacity() - self.input.len() < MIN_READ_SPACE {
            self.input.reserve(INPUT_CAPACITY);
        }
    }
}

/// Routes one request.
async fn respond(
    shared: &Shared,
    request: &Request<'_>,
    client: &mut KnownClient,
    reply: &mut Reply,
) {
    match (request.path, request.method) {
        (BELFABRIEK_PATH, "POST") => belfabriek_endpoint(shared, request, client, reply).await,
        (TRING_PATH, "GET") => tring_endpoint(shared, request, reply).await,
        (BELFABRIEK_PATH | TRING_PATH, _) => method_not_allowed(reply),
        (path, _) if path.starts_with("/control/") => control::respond(shared, request, reply),
        _ => not_found(reply),
    }
}

pub(super) const CONTENT_TYPE_XML: &str = "text/xml";
/// PHP's default content type: the TRiNG proxy sets no other.
const CONTENT_TYPE_PHP: &str = "text/html; charset=UTF-8";
use super::http::{method_not_allowed, not_found, CONTENT_TYPE_HTML, CONTENT_TYPE_TEXT};

/// A response whose body does not parse as XML-RPC (a closing tag that does
/// not match).
const MALFORMED_XML: &[u8] = b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n<methodResponse>\r\n  <params>\r\n    <param>\r\n      <value>\r\n        <struct>\r\n          <member>\r\n            <name>available</name>\r\n            <value><i4>1</value></i4>\r\n          </member>\r\n        </struct>\r\n  </paramz>\r\n</methodResponse>\r\n";

/// IIS's answer when the script host fails.
const IIS_500_PAGE: &str = "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\r\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<head>\r\n<title>500 - Internal server error.</title>\r\n</head>\r\n<body>\r\n<div id=\"header\"><h1>Server Error</h1></div>\r\n<div id=\"content\">\r\n <fieldset><h2>500 - Internal server error.</h2>\r\n <h3>There is a problem with the resource you are looking for, and it cannot be displayed.</h3>\r\n </fieldset></div>\r\n</body>\r\n</html>\r\n";

/// Apache's answer when PHP fails.
const APACHE_500_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n<title>500 Internal Server Error</title>\n</head><body>\n<h1>Internal Server Error</h1>\n<p>The server encountered an internal error or\nmisconfiguration and was unable to complete\nyour request.</p>\n</body></html>\n";

/// A maintenance page served with HTTP 200, as a load balancer or captive
/// proxy would.
const MAINTENANCE_PAGE: &str = "<html>\n<head><title>Onderhoud / Maintenance</title></head>\n<body>\n<h1>We zijn zo terug</h1>\n<p>Deze dienst is tijdelijk niet beschikbaar wegens onderhoud. This service is temporarily unavailable.</p>\n</body>\n</html>\n";

/// PHP printing a warning before the script's own output.
const PHP_WARNING: &str = "<br />\n<b>Warning</b>:  mysqli::query(): MySQL server has gone away in <b>/var/www/pbx/proxyapi.php</b> on line <b>214</b><br />\n";

/// The 404 page of every unknown path.
/// Counts the fault and sleeps for the decision's latency.
async fn count_and_delay(shared: &Shared, decision: &Decision) {
    if decision.is_clean() {
        return;
    }
    shared
        .counters
        .faults_applied
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
}

async fn belfabriek_endpoint(
    shared: &Shared,
    request: &Request<'_>,
    client: &mut KnownClient,
    reply: &mut Reply,
) {
    let call = Call::read(request.body);
    shared
        .counters
        .count_method(call.method().unwrap_or("other"));
    let extension = call.extension();
    if call.method() == Some(belfabriek::GET_AGENT_AVAIL) {
        if let Some(index) = extension.and_then(|extension| shared.index_of(extension)) {
            let client = client.id(request.user_agent, &shared.poll_log);
            shared.record_poll(index, client);
        }
    }
    let decision = shared
        .faults
        .take(Api::Belfabriek, |agent| extension == Some(agent));
    count_and_delay(shared, &decision).await;

    reply.start(CONTENT_TYPE_XML);
    match decision.damage {
        None | Some(FaultKind::Latency(_)) => write_answer(shared, &call, &mut reply.body),
        Some(FaultKind::Http500) => reply.set(500, CONTENT_TYPE_HTML, IIS_500_PAGE.as_bytes()),
        Some(FaultKind::XmlRpcFault) => reply.body.extend(belfabriek::render(&belfabriek::fault(
            belfabriek::FAULT_INTERNAL,
            "internal error: database unavailable",
        ))),
        Some(FaultKind::Malformed) => reply.body.extend_from_slice(MALFORMED_XML),
        Some(FaultKind::Empty) => {}
        Some(FaultKind::Truncated) => {
            write_answer(shared, &call, &mut reply.body);
            // At least one byte short of whole.
            reply.body.truncate(reply.body.len() / 2);
        }
        Some(FaultKind::HtmlErrorPage) => {
            reply.set(200, CONTENT_TYPE_HTML, MAINTENANCE_PAGE.as_bytes())
        }
        Some(FaultKind::PlainTextError(text)) => reply.set(200, CONTENT_TYPE_TEXT, text.as_bytes()),
    }
}

/// Appends the service's answer to `call` to `out`.
fn write_answer(shared: &Shared, call: &Call<'_>, out: &mut Vec<u8>) {
    match belfabriek::decide(call, &shared.account_pin, |extension| {
        shared.index_of(extension)
    }) {
        Answer::AgentAvail(index) => shared.with_agent_at(index, |agent| {
            let state = agent.view();
            belfabriek::write_agent_avail(out, state.available, state.reason, state.destination);
        }),
        Answer::ExtensionStatus(index) => shared.with_agent_at(index, |agent| {
            belfabriek::write_extension_status(out, agent.view().extension_status);
        }),
        Answer::Fault { code, message } => {
            out.extend(belfabriek::render(&belfabriek::fault(code, message)));
        }
    }
}

async fn tring_endpoint(shared: &Shared, request: &Request<'_>, reply: &mut Reply) {
    let query = TringRequest::parse(request.query.unwrap_or_default());
    shared.counters.count_action(TringAction::of(&query));
    let extension = query.get("extension");
    let decision = shared.faults.take(Api::Tring, |agent| {
        shared.tring_request_matches_agent(extension, agent)
    });
    count_and_delay(shared, &decision).await;

    let execute = || {
        let mut queues = lock(&shared.queues);
        tring::handle(&query, &shared.tring_account, &mut queues).body
    };
    let php = |body: &[u8], reply: &mut Reply| reply.set(200, CONTENT_TYPE_PHP, body);
    match decision.damage {
        None | Some(FaultKind::Latency(_)) => php(execute().as_bytes(), reply),
        Some(FaultKind::Http500) => reply.set(500, CONTENT_TYPE_HTML, APACHE_500_PAGE.as_bytes()),
        Some(FaultKind::XmlRpcFault) => php(b"ERROR: internal error", reply),
        Some(FaultKind::Malformed) => php(format!("{PHP_WARNING}{}", execute()).as_bytes(), reply),
        Some(FaultKind::Empty) => {
            execute();
            php(b"", reply);
        }
        Some(FaultKind::Truncated) => {
            let body = execute();
            php(&body.as_bytes()[..body.len() / 2], reply);
        }
        Some(FaultKind::HtmlErrorPage) => php(MAINTENANCE_PAGE.as_bytes(), reply),
        Some(FaultKind::PlainTextError(text)) => php(text.as_bytes(), reply),
    }
}
