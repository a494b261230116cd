//! A TCP fault proxy for the fault suite. It sits between the bridge and one
//! upstream (the broker, the simulator's Belfabriek or TRiNG API,
//! PostgreSQL), forwards bytes both ways and injects one network fault at a
//! time: delay, drop, blackhole, reset, half-open, trickle, or refusing new
//! connections. [`FaultProxy::set`] applies a fault to new connections and
//! to the ones already open: every connection's tasks watch the fault in
//! force. The proxy knows nothing of the protocols it carries and never
//! logs what passes through it.
//!
//! ```ignore
//! let proxy = FaultProxy::start(broker_addr).await;
//! // point the bridge at proxy.addr() instead of the broker
//! proxy.set(Fault::Blackhole);
//! // ... the bridge must notice and keep going ...
//! proxy.set(Fault::Pass);
//! proxy.stop().await;
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes read from either side in one go.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes one direction holds read but not yet written (waiting out a delay
/// or a trickle) before it stops reading, so the sender feels backpressure
/// as it would from a slow network. Large enough that a delay adds latency
/// without throttling the modest traffic of a test.
const MAX_IN_FLIGHT: usize = 1024 * 1024;

/// Bytes a trickle writes at most at once.
const MAX_TRICKLE_CHUNK: u64 = 1024;

/// One network fault, in force until the next [`FaultProxy::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything as it comes.
    Pass,
    /// Every chunk is forwarded this long after it was read, both ways:
    /// latency, not throttling (reading goes on meanwhile, up to 1 MiB in
    /// flight per direction). Data already in flight when the delay changes
    /// follows the new value.
    Delay(Duration),
    /// New connections are accepted and closed at once (FIN), without an
    /// upstream connection; open connections are closed on both sides.
    Drop,
    /// New connections are accepted, read and discarded, never answered and
    /// never closed by the proxy, and get no upstream connection; open
    /// connections stop forwarding both ways (what they carry meanwhile,
    /// a FIN included, is lost) but stay open. When the blackhole lifts,
    /// open connections forward again (a FIN swallowed meanwhile is
    /// delivered then) and the connections that never reached upstream are
    /// closed.
    Blackhole,
    /// New connections are reset (RST) at once; open connections are reset
    /// on both sides.
    Reset,
    /// Client to upstream is still forwarded; upstream to client is
    /// silently discarded, its FIN included (a dead return path).
    HalfOpen,
    /// Forward at most `bytes_per_sec`, in chunks of a tenth of it (1 to
    /// 1024 bytes), both ways. `0` forwards nothing until the fault changes.
    Trickle { bytes_per_sec: u64 },
    /// Stop listening: new connections are refused (ECONNREFUSED) while
    /// open ones keep passing. Any other fault listens again, on the same
    /// address.
    RefuseNew,
}

impl Fault {
    /// How long a chunk waits before it is forwarded.
    fn delay(self) -> Duration {
        match self {
            Fault::Delay(delay) => delay,
            _ => Duration::ZERO,
        }
    }

    /// Whether what is read in `direction` is thrown away.
    fn discards(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (Fault::Blackhole, _) | (Fault::HalfOpen, Direction::ToClient)
        )
    }
}

/// A TCP proxy on `127.0.0.1` with an ephemeral port, forwarding to one
/// upstream address, with a fault that can be switched at any time.
/// Dropping it without [`FaultProxy::stop`] also ends its tasks, in the
/// background.
pub struct FaultProxy {
    /// Where clients connect: the same address for the proxy's whole life,
    /// also after a `RefuseNew`.
    addr: SocketAddr,
    /// The fault in force; the accept task and every connection watch it.
    fault: watch::Sender<Fault>,
    /// A generation bumped by `reset_all`; every connection watches it.
    resets: watch::Sender<u64>,
    /// The listener and the counters, shared with the tasks.
    shared: Arc<Shared>,
    /// Cancelled by `stop` (or on drop): every task closes its sockets and
    /// ends.
    shutdown: CancellationToken,
    /// The accept task and every connection task.
    tasks: TaskTracker,
}

impl FaultProxy {
    /// Starts listening on `127.0.0.1:0`, forwarding to `upstream`, with
    /// [`Fault::Pass`]. Connects to `upstream` only when a client connects.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("fault proxy: listen on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (fault, faults) = watch::channel(Fault::Pass);
        let (resets, reset_generations) = watch::channel(0);
        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(Listener::Tokio(listener))),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let acceptor = Acceptor {
            upstream,
            shared: shared.clone(),
            faults,
            resets: reset_generations,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        };
        tasks.spawn(acceptor.run());
        FaultProxy {
            addr,
            fault,
            resets,
            shared,
            shutdown,
            tasks,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts `fault` in force for new connections and open ones. Listening
    /// stops or starts again before this returns; open connections follow
    /// as soon as their tasks run (they are all waiting on the change), and
    /// always before any byte sent after this returns. Panics if, after a
    /// `RefuseNew`, the port cannot be listened on again.
    pub fn set(&self, fault: Fault) {
        {
            let mut listener = self.shared.listener();
            if fault == Fault::RefuseNew {
                // Closing the socket is what makes the kernel refuse.
                *listener = None;
            } else if listener.is_none() && !self.shutdown.is_cancelled() {
                // std sets SO_REUSEADDR on Unix, so the port can be bound
                // again while connections accepted on it are still open.
                let std_listener = std::net::TcpListener::bind(self.addr).unwrap_or_else(|error| {
                    panic!("fault proxy: cannot listen on {} again: {error}", self.addr)
                });
                std_listener
                    .set_nonblocking(true)
                    .expect("fault proxy: make the listener non-blocking");
                *listener = Some(Listener::Std(std_listener));
            }
        }
        // After the listener is back, so the accept task, woken by this
        // change, finds it.
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Client connections the proxy holds open now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Client connections accepted since the start, whatever became of
    /// them.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Resets (RST, `SO_LINGER` 0) every open connection on both sides, as
    /// soon as their tasks run. The fault in force does not change.
    pub fn reset_all(&self) {
        self.resets.send_modify(|generation| *generation += 1);
    }

    /// Stops listening, closes every connection on both sides and waits
    /// until every task has ended.
    pub async fn stop(self) {
        self.shared.listener().take();
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What the proxy shares with its tasks.
struct Shared {
    /// The listening socket; `None` while `RefuseNew` is in force and after
    /// `stop`. Behind a mutex, not owned by the accept task, so that `set`
    /// closes and opens it synchronously.
    listener: Mutex<Option<Listener>>,
    /// Client connections open now.
    open: AtomicUsize,
    /// Client connections accepted so far.
    accepted: AtomicU64,
}

impl Shared {
    fn listener(&self) -> MutexGuard<'_, Option<Listener>> {
        // Nothing panics while holding the lock; if it did, the listener
        // would still be in a usable state.
        self.listener.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts the next client; pending while there is no listener (the
    /// accept task is woken by the fault change that brings it back).
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let mut listener = self.listener();
        if let Some(Listener::Std(_)) = &*listener {
            // Registering with the runtime needs its context, which `set`
            // may not have but the accept task does.
            let Some(Listener::Std(std_listener)) = listener.take() else {
                unreachable!("just matched a std listener")
            };
            match TcpListener::from_std(std_listener) {
                Ok(tokio_listener) => *listener = Some(Listener::Tokio(tokio_listener)),
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        match &*listener {
            Some(Listener::Tokio(tokio_listener)) => tokio_listener
                .poll_accept(cx)
                .map(|accepted| accepted.map(|(stream, _)| stream)),
            _ => Poll::Pending,
        }
    }
}

/// The listening socket, in one of its two lives.
enum Listener {
    /// Bound again by `set`, not yet registered with the runtime.
    Std(std::net::TcpListener),
    /// Registered with the runtime, accepting.
    Tokio(TcpListener),
}

/// The task that accepts clients and spawns one task per connection.
struct Acceptor {
    /// Where connections are forwarded.
    upstream: SocketAddr,
    /// The listener and the counters.
    shared: Arc<Shared>,
    /// The fault in force; cloned into every connection.
    faults: watch::Receiver<Fault>,
    /// The reset generation; cloned into every connection.
    resets: watch::Receiver<u64>,
    /// Ends the task.
    shutdown: CancellationToken,
    /// Where connection tasks are spawned, so `stop` waits for them.
    tasks: TaskTracker,
}

impl Acceptor {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                // The listener may have come back with this change.
                changed = self.faults.changed() => if changed.is_err() { return },
                accepted = std::future::poll_fn(|cx| self.shared.poll_accept(cx)) => match accepted {
                    Ok(client) => self.spawn_connection(client),
                    // Per-connection failures (ECONNABORTED) do not stop
                    // the proxy; a pause keeps one that repeats (EMFILE)
                    // from spinning.
                    Err(error) => {
                        eprintln!("fault proxy: accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }

    fn spawn_connection(&mut self, client: TcpStream) {
        self.shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Only resets from now on concern this connection.
        self.resets.mark_unchanged();
        let connection = Connection {
            client,
            upstream: self.upstream,
            control: Control {
                faults: self.faults.clone(),
                resets: self.resets.clone(),
                shutdown: self.shutdown.clone(),
            },
            _open: OpenConnection::new(self.shared.clone()),
        };
        self.tasks.spawn(connection.run());
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Teardown {
    /// Close both sockets (FIN).
    Close,
    /// Reset both sockets (`SO_LINGER` 0, RST).
    Reset,
}

/// What a connection listens to besides its sockets.
struct Control {
    /// The fault in force.
    faults: watch::Receiver<Fault>,
    /// The reset generation: any change resets the connection.
    resets: watch::Receiver<u64>,
    /// The proxy stopping.
    shutdown: CancellationToken,
}

impl Control {
    /// Resolves when the connection must end whatever it carries: `Drop`,
    /// `Reset`, `reset_all` or the proxy stopping.
    async fn teardown(&mut self) -> Teardown {
        loop {
            let fault = *self.faults.borrow_and_update();
            match fault {
                Fault::Drop => return Teardown::Close,
                Fault::Reset => return Teardown::Reset,
                _ => {}
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Teardown::Close,
                changed = self.resets.changed() => {
                    return if changed.is_ok() { Teardown::Reset } else { Teardown::Close };
                }
                changed = self.faults.changed() => if changed.is_err() { return Teardown::Close },
            }
        }
    }
}

/// One client connection and, once connected, its upstream connection.
struct Connection {
    /// The accepted client socket.
    client: TcpStream,
    /// Where to connect.
    upstream: SocketAddr,
    /// Faults, resets, shutdown.
    control: Control,
    /// Declared last: the connection stops counting once its sockets are
    /// closed.
    _open: OpenConnection,
}

impl Connection {
    async fn run(mut self) {
        // Small writes (a trickle, an MQTT ping) go out at once.
        let _ = self.client.set_nodelay(true);
        let fault = *self.control.faults.borrow_and_update();
        let mut upstream = None;
        let teardown = match fault {
            Fault::Drop => Teardown::Close,
            Fault::Reset => Teardown::Reset,
            Fault::Blackhole => self.sinkhole().await,
            _ => match self.connect().await {
                Ok(stream) => {
                    let stream = upstream.insert(stream);
                    relay(&mut self.client, stream, &mut self.control).await
                }
                Err(teardown) => teardown,
            },
        };
        if teardown == Teardown::Reset {
            // Errors mean the socket is already gone, which is the point.
            let _ = self.client.set_zero_linger();
            if let Some(stream) = &upstream {
                let _ = stream.set_zero_linger();
            }
        }
        // Dropping the sockets closes them: FIN, or RST after zero linger.
    }

    /// A connection accepted during a blackhole: everything it sends is
    /// read and discarded until the client closes, the proxy stops, or the
    /// blackhole lifts (then it is closed, as it never reached upstream).
    async fn sinkhole(&mut self) -> Teardown {
        let mut discarded = vec![0; READ_CHUNK];
        loop {
            tokio::select! {
                biased;
                () = self.control.shutdown.cancelled() => return Teardown::Close,
                changed = self.control.resets.changed() => {
                    return if changed.is_ok() { Teardown::Reset } else { Teardown::Close };
                }
                changed = self.control.faults.changed() => {
                    if changed.is_err() {
                        return Teardown::Close;
                    }
                    let fault = *self.control.faults.borrow_and_update();
                    match fault {
                        Fault::Blackhole => {}
                        Fault::Reset => return Teardown::Reset,
                        _ => return Teardown::Close,
                    }
                }
                read = self.client.read(&mut discarded) => match read {
                    Ok(0) | Err(_) => return Teardown::Close,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Connects upstream. A refused or failed connection resets the
    /// client, the nearest a proxy can come to passing the refusal on.
    async fn connect(&mut self) -> Result<TcpStream, Teardown> {
        tokio::select! {
            biased;
            teardown = self.control.teardown() => Err(teardown),
            connected = TcpStream::connect(self.upstream) => match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    Ok(stream)
                }
                Err(_) => Err(Teardown::Reset),
            },
        }
    }
}

/// Forwards both ways until both sides have closed, one fails (then both
/// are reset, passing the failure on) or the connection is torn down.
async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    control: &mut Control,
) -> Teardown {
    let (from_client, to_client) = client.split();
    let (from_upstream, to_upstream) = upstream.split();
    let outbound =
        Pump::new(Direction::ToUpstream, control.faults.clone()).run(from_client, to_upstream);
    let inbound =
        Pump::new(Direction::ToClient, control.faults.clone()).run(from_upstream, to_client);
    tokio::select! {
        biased;
        teardown = control.teardown() => teardown,
        pumped = async { tokio::try_join!(outbound, inbound) } => match pumped {
            Ok(_) => Teardown::Close,
            Err(_) => Teardown::Reset,
        },
    }
}

/// Which way a pump forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Client to upstream.
    ToUpstream,
    /// Upstream to client.
    ToClient,
}

/// Bytes read and not yet fully written.
struct Chunk {
    /// When they were read: a delay counts from here.
    read_at: Instant,
    /// The bytes.
    bytes: Vec<u8>,
    /// How many of them are written already.
    written: usize,
}

/// One direction of a connection: reads, applies the fault, writes.
struct Pump {
    /// Which way.
    direction: Direction,
    /// The fault in force, watched for changes.
    faults: watch::Receiver<Fault>,
    /// The fault last seen.
    fault: Fault,
    /// Read, not yet written, in order.
    in_flight: VecDeque<Chunk>,
    /// Unwritten bytes in `in_flight`.
    in_flight_bytes: usize,
    /// The source has closed its side (EOF read).
    source_ended: bool,
    /// Under a trickle, no write before this.
    next_paced_write: Instant,
}

impl Pump {
    fn new(direction: Direction, faults: watch::Receiver<Fault>) -> Self {
        Pump {
            direction,
            faults,
            fault: Fault::Pass,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            source_ended: false,
            next_paced_write: Instant::now(),
        }
    }

    /// Runs until the source's EOF has been passed on (`Ok`), a socket
    /// fails (`Err`), or the proxy is gone (`Ok`). Every await is cancel
    /// safe: the connection drops this future to tear down.
    async fn run(mut self, mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> io::Result<()> {
        let mut read_buffer = vec![0; READ_CHUNK];
        self.fault = *self.faults.borrow_and_update();
        loop {
            let discarding = self.fault.discards(self.direction);
            if self.source_ended && self.in_flight.is_empty() && !discarding {
                to.shutdown().await?;
                return Ok(());
            }
            let reading = !self.source_ended && self.in_flight_bytes < MAX_IN_FLIGHT;
            let next_write = if discarding { None } else { self.next_write() };
            let (due, pending): (Instant, &[u8]) = match &next_write {
                Some((due, range)) => (*due, &self.in_flight[0].bytes[range.clone()]),
                None => (Instant::now(), &[]),
            };
            // A change first: `set` stores the fault before the caller
            // sends anything more, so bytes sent after `set` returns are
            // always handled under the new fault.
            tokio::select! {
                biased;
                changed = self.faults.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.fault_changed();
                }
                written = write_when_due(&mut to, due, pending), if next_write.is_some() => {
                    let written = written?;
                    self.written(written)?;
                }
                read = from.read(&mut read_buffer), if reading => {
                    let read = read?;
                    // The change may have come while this read was pending.
                    if self.faults.has_changed().unwrap_or(false) {
                        self.fault_changed();
                    }
                    self.read(&read_buffer[..read]);
                }
            }
        }
    }

    fn fault_changed(&mut self) {
        self.fault = *self.faults.borrow_and_update();
        if self.fault.discards(self.direction) {
            // What was in flight is lost, as in a real blackhole.
            self.in_flight.clear();
            self.in_flight_bytes = 0;
        }
    }

    /// Takes in what was read; empty means EOF.
    fn read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.source_ended = true;
        } else if !self.fault.discards(self.direction) {
            self.in_flight.push_back(Chunk {
                read_at: Instant::now(),
                bytes: bytes.to_vec(),
                written: 0,
            });
            self.in_flight_bytes += bytes.len();
        }
    }

    /// When the next write is due and which bytes of the first chunk it
    /// takes; `None` when there is nothing to write or a zero trickle.
    fn next_write(&self) -> Option<(Instant, Range<usize>)> {
        let chunk = self.in_flight.front()?;
        let due = chunk.read_at + self.fault.delay();
        let end = chunk.bytes.len();
        match self.fault {
            Fault::Trickle { bytes_per_sec: 0 } => None,
            Fault::Trickle { bytes_per_sec } => {
                let most = (bytes_per_sec / 10).clamp(1, MAX_TRICKLE_CHUNK) as usize;
                Some((
                    due.max(self.next_paced_write),
                    chunk.written..end.min(chunk.written + most),
                ))
            }
            _ => Some((due, chunk.written..end)),
        }
    }

    fn written(&mut self, written: usize) -> io::Result<()> {
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let chunk = self
            .in_flight
            .front_mut()
            .expect("a write only runs with a chunk in flight");
        chunk.written += written;
        if chunk.written == chunk.bytes.len() {
            self.in_flight.pop_front();
        }
        self.in_flight_bytes -= written;
        if let Fault::Trickle { bytes_per_sec } = self.fault {
            // `next_write` never writes under a zero trickle.
            let pause_nanos = written as u64 * 1_000_000_000 / bytes_per_sec.max(1);
            self.next_paced_write = Instant::now() + Duration::from_nanos(pause_nanos);
        }
        Ok(())
    }
}

/// Waits until `due`, then writes what it can of `bytes` (cancel safe: a
/// single `write`).
async fn write_when_due(to: &mut WriteHalf<'_>, due: Instant, bytes: &[u8]) -> io::Result<usize> {
    tokio::time::sleep_until(due).await;
    to.write(bytes).await
}

#[cfg(test)]
mod tests {
    //! Each fault against a small echo server: what the client sees, what
    //! the upstream sees, and that `Pass` restores.

    use std::io::ErrorKind;

    use tokio::sync::mpsc;
    use tokio::time::timeout;

    use super::*;
    use crate::helpers::{wait_until, SOON};

    /// How long "nothing happens" is watched for. Only for absences: an
    /// expected event is waited on, with `SOON` as the bound.
    const QUIET: Duration = Duration::from_millis(400);

    /// What the echo server saw on its side.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Data(Vec<u8>),
        Closed,
        Failed(ErrorKind),
    }

    /// An upstream that echoes every byte back and reports what it saw.
    struct EchoServer {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
        accepted: Arc<AtomicUsize>,
    }

    impl EchoServer {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (report, seen) = mpsc::unbounded_channel();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let report = report.clone();
                    tokio::spawn(async move {
                        let mut buffer = vec![0; 64 * 1024];
                        loop {
                            match stream.read(&mut buffer).await {
                                Ok(0) => {
                                    let _ = report.send(Seen::Closed);
                                    return;
                                }
                                Ok(read) => {
                                    let _ = report.send(Seen::Data(buffer[..read].to_vec()));
                                    if stream.write_all(&buffer[..read]).await.is_err() {
                                        return;
                                    }
                                }
                                Err(error) => {
                                    let _ = report.send(Seen::Failed(error.kind()));
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            EchoServer {
                addr,
                seen,
                accepted,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        async fn next(&mut self) -> Seen {
            timeout(SOON, self.seen.recv())
                .await
                .expect("the echo server saw nothing in time")
                .expect("the echo server is running")
        }

        /// Collects `len` bytes; returns them and in how many reads they
        /// came.
        async fn receive(&mut self, len: usize) -> (Vec<u8>, usize) {
            let mut received = Vec::new();
            let mut reads = 0;
            while received.len() < len {
                match self.next().await {
                    Seen::Data(bytes) => {
                        received.extend(bytes);
                        reads += 1;
                    }
                    other => panic!("expected data upstream, saw {other:?}"),
                }
            }
            (received, reads)
        }

        /// Nothing reported since the last look.
        fn assert_nothing_seen(&mut self) {
            assert_eq!(
                self.seen.try_recv().err(),
                Some(mpsc::error::TryRecvError::Empty),
                "the upstream should have seen nothing"
            );
        }
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        let stream = timeout(SOON, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Sends `message` and reads the echo; returns how long that took.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
        let started = Instant::now();
        stream.write_all(message).await.expect("send");
        let mut echo = vec![0; message.len()];
        timeout(SOON, stream.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("read the echo");
        assert_eq!(echo, message);
        started.elapsed()
    }

    /// The next read's result, which must come in time.
    async fn read_outcome(stream: &mut TcpStream) -> io::Result<usize> {
        let mut buffer = [0; 1024];
        timeout(SOON, stream.read(&mut buffer))
            .await
            .expect("the read should end in time")
    }

    /// A new connection is reset: while connecting (when the RST beats
    /// the client's side of the handshake) or at the first read.
    async fn assert_reset_at_once(addr: SocketAddr) {
        let error = match timeout(SOON, TcpStream::connect(addr)).await {
            Ok(Err(error)) => error,
            Ok(Ok(mut stream)) => read_outcome(&mut stream)
                .await
                .expect_err("the connection should be reset"),
            Err(_) => panic!("connect did not end in time"),
        };
        assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    }

    /// Nothing arrives for a while.
    async fn assert_silent(stream: &mut TcpStream) {
        let mut buffer = [0; 1024];
        if let Ok(read) = timeout(QUIET, stream.read(&mut buffer)).await {
            panic!("expected silence, the read gave {read:?}");
        }
    }

    async fn started() -> (EchoServer, FaultProxy) {
        let upstream = EchoServer::start().await;
        let proxy = FaultProxy::start(upstream.addr).await;
        (upstream, proxy)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pass_forwards_both_ways_and_counts_connections() {
        let (mut upstream, proxy) = started().await;
        assert_eq!(proxy.fault(), Fault::Pass);
        assert_ne!(proxy.addr(), upstream.addr);
        let mut client = connect(proxy.addr()).await;
        round_trip(&mut client, b"hello").await;
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        round_trip(&mut client, &big).await;
        assert_eq!(upstream.receive(5 + big.len()).await.0.len(), 5 + big.len());
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(upstream.accepted(), 1);

        // A close passes through, and the proxy lets go of the connection.
        client.shutdown().await.unwrap();
        assert_eq!(upstream.next().await, Seen::Closed);
        assert_eq!(read_outcome(&mut client).await.unwrap(), 0);
        drop(client);
        wait_until(SOON, "the connection to close", || proxy.connections() == 0).await;
        assert_eq!(proxy.accepted(), 1);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_adds_the_delay_each_way_and_pass_restores() {
        let (mut upstream, proxy) = started().await;
        let mut before = connect(proxy.addr()).await;
        round_trip(&mut before, b"warm").await;

        let delay = Duration::from_millis(250);
        proxy.set(Fault::Delay(delay));
        assert_eq!(proxy.fault(), Fault::Delay(delay));
        let rtt = round_trip(&mut before, b"slow").await;
        assert!(
            rtt >= 2 * delay,
            "an open connection took {rtt:?} under {delay:?} each way"
        );
        let mut after = connect(proxy.addr()).await;
        let rtt = round_trip(&mut after, b"slow too").await;
        assert!(
            rtt >= 2 * delay,
            "a new connection took {rtt:?} under {delay:?} each way"
        );

        // Data held by a long delay goes as soon as the delay is lifted.
        proxy.set(Fault::Delay(Duration::from_secs(3600)));
        while upstream.seen.try_recv().is_ok() {}
        before.write_all(b"held").await.unwrap();
        let mut echo = [0; 4];
        assert!(timeout(QUIET, before.read_exact(&mut echo)).await.is_err());
        upstream.assert_nothing_seen();
        proxy.set(Fault::Pass);
        timeout(SOON, before.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"held");
        round_trip(&mut after, b"quick").await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_closes_open_connections_and_new_ones_at_once() {
        let (mut upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;
        upstream.receive(6).await;

        proxy.set(Fault::Drop);
        assert_eq!(
            read_outcome(&mut open).await.unwrap(),
            0,
            "the client sees a close"
        );
        assert_eq!(
            upstream.next().await,
            Seen::Closed,
            "the upstream sees a close"
        );

        let mut new = connect(proxy.addr()).await;
        assert_eq!(read_outcome(&mut new).await.unwrap(), 0);
        assert_eq!(
            upstream.accepted(),
            1,
            "a dropped connection never reaches upstream"
        );
        wait_until(SOON, "dropped connections to go", || {
            proxy.connections() == 0
        })
        .await;
        assert_eq!(proxy.accepted(), 2);

        proxy.set(Fault::Pass);
        let mut restored = connect(proxy.addr()).await;
        round_trip(&mut restored, b"again").await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blackhole_swallows_everything_and_never_closes() {
        let (mut upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;
        upstream.receive(6).await;

        proxy.set(Fault::Blackhole);
        open.write_all(b"lost").await.unwrap();
        assert_silent(&mut open).await;
        let mut new = connect(proxy.addr()).await;
        new.write_all(b"lost too").await.unwrap();
        assert_silent(&mut new).await;
        upstream.assert_nothing_seen();
        assert_eq!(
            upstream.accepted(),
            1,
            "a blackholed connection never reaches upstream"
        );
        wait_until(SOON, "both connections held", || proxy.connections() == 2).await;
        assert_eq!(proxy.accepted(), 2);

        // The open connection forwards again; the one that never reached
        // upstream is closed.
        proxy.set(Fault::Pass);
        round_trip(&mut open, b"after").await;
        assert_eq!(upstream.receive(5).await.0, b"after");
        assert_eq!(read_outcome(&mut new).await.unwrap(), 0);
        let mut restored = connect(proxy.addr()).await;
        round_trip(&mut restored, b"new").await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_resets_open_connections_and_new_ones() {
        let (mut upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;
        upstream.receive(6).await;

        proxy.set(Fault::Reset);
        let error = read_outcome(&mut open).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionReset);
        assert_eq!(
            upstream.next().await,
            Seen::Failed(ErrorKind::ConnectionReset)
        );

        assert_reset_at_once(proxy.addr()).await;
        assert_eq!(
            upstream.accepted(),
            1,
            "a reset connection never reaches upstream"
        );

        proxy.set(Fault::Pass);
        let mut restored = connect(proxy.addr()).await;
        round_trip(&mut restored, b"again").await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_all_resets_every_open_connection_and_nothing_else() {
        let (mut upstream, proxy) = started().await;
        let mut first = connect(proxy.addr()).await;
        let mut second = connect(proxy.addr()).await;
        round_trip(&mut first, b"one").await;
        round_trip(&mut second, b"two").await;
        upstream.receive(6).await;

        proxy.reset_all();
        for client in [&mut first, &mut second] {
            let error = read_outcome(client).await.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ConnectionReset);
        }
        for _ in 0..2 {
            assert_eq!(
                upstream.next().await,
                Seen::Failed(ErrorKind::ConnectionReset)
            );
        }
        wait_until(SOON, "reset connections to go", || proxy.connections() == 0).await;

        assert_eq!(proxy.fault(), Fault::Pass);
        let mut later = connect(proxy.addr()).await;
        round_trip(&mut later, b"three").await;
        assert_eq!(proxy.connections(), 1);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_forwards_to_upstream_but_nothing_comes_back() {
        let (mut upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;
        upstream.receive(6).await;

        proxy.set(Fault::HalfOpen);
        open.write_all(b"ping").await.unwrap();
        assert_eq!(
            upstream.receive(4).await.0,
            b"ping",
            "the upstream receives"
        );
        assert_silent(&mut open).await;
        let mut new = connect(proxy.addr()).await;
        new.write_all(b"hello?").await.unwrap();
        assert_eq!(upstream.receive(6).await.0, b"hello?");
        assert_silent(&mut new).await;

        // The echo sent meanwhile is gone; what comes after passes.
        proxy.set(Fault::Pass);
        round_trip(&mut open, b"pong").await;
        round_trip(&mut new, b"there").await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trickle_bounds_the_rate_in_small_chunks() {
        let (mut upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;
        upstream.receive(6).await;

        // 1000 bytes at 1000 bytes/s go as ten chunks of 100, the last one
        // no sooner than 900 ms after the first.
        let rate = 1000;
        proxy.set(Fault::Trickle {
            bytes_per_sec: rate,
        });
        let message: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let started = Instant::now();
        open.write_all(&message).await.unwrap();
        let (received, reads) = upstream.receive(message.len()).await;
        let elapsed = started.elapsed();
        assert_eq!(received, message);
        assert!(
            elapsed >= Duration::from_millis(850),
            "1000 bytes at {rate} bytes/s arrived in {elapsed:?}"
        );
        assert!(
            reads >= 3,
            "expected small chunks, the upstream read {reads} times"
        );
        let mut echo = vec![0; message.len()];
        timeout(SOON, open.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, message);

        proxy.set(Fault::Pass);
        let big = vec![7u8; 500_000];
        round_trip(&mut open, &big).await;
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuse_new_refuses_while_open_connections_keep_working() {
        let (_upstream, proxy) = started().await;
        let mut open = connect(proxy.addr()).await;
        round_trip(&mut open, b"before").await;

        proxy.set(Fault::RefuseNew);
        let error = TcpStream::connect(proxy.addr()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
        round_trip(&mut open, b"still here").await;

        proxy.set(Fault::Pass);
        let mut new = connect(proxy.addr()).await;
        round_trip(&mut new, b"back").await;
        round_trip(&mut open, b"and still here").await;
        assert_eq!(proxy.accepted(), 2);
        proxy.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_upstream_resets_the_client() {
        // Bound but not listening: connections are refused, and no other
        // test process can take the port meanwhile (a freed one could be).
        let port_holder = tokio::net::TcpSocket::new_v4().unwrap();
        port_holder.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let nowhere = port_holder.local_addr().unwrap();
        let proxy = FaultProxy::start(nowhere).await;
        assert_reset_at_once(proxy.addr()).await;
        proxy.stop().await;
        drop(port_holder);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_closes_every_connection_and_stops_listening() {
        let (mut upstream, proxy) = started().await;
        let addr = proxy.addr();
        let mut forwarding = connect(addr).await;
        round_trip(&mut forwarding, b"open").await;
        upstream.receive(4).await;
        proxy.set(Fault::Blackhole);
        // Nothing sent on it: closing a socket with unread data is a reset.
        let mut swallowed = connect(addr).await;
        wait_until(SOON, "both connections", || proxy.connections() == 2).await;

        timeout(SOON, proxy.stop()).await.expect("stop in time");
        assert_eq!(read_outcome(&mut forwarding).await.unwrap(), 0);
        assert_eq!(read_outcome(&mut swallowed).await.unwrap(), 0);
        assert_eq!(upstream.next().await, Seen::Closed);
        let error = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
    }
}
