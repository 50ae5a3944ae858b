//! The connection to the execution daemon.
//!
//! Everything that talks to the daemon goes through a [`DaemonLink`], which
//! is built over an injectable [`Dialer`]: [`UnixDialer`] and [`TcpDialer`]
//! are the real transports; a simulation can supply its own without
//! anything else in the driver knowing. The link adds what every call needs:
//! a deadline on each unary call ([`DaemonLink::unary`]), a fresh
//! connection after a call that got no answer at all (the connection may be
//! dead without either side being told, as after a network partition),
//! HTTP/2 keepalive, so a hung daemon is noticed even on long streams, and
//! spaced connection attempts while the daemon cannot be reached
//! ([`dial_gate::DIAL_RETRY_GAP`]).

mod dial_gate;
pub(crate) mod heartbeat;
pub(crate) mod identity;

pub use heartbeat::HEARTBEAT_TIMEOUT;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elide_proto::elide::daemon::v1::elide_daemon_client::ElideDaemonClient;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::plugin_config::DaemonEndpoint;

/// Default deadline of one unary call to the daemon.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one connection attempt may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 ping interval, also while no call is open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A connection whose ping is not answered within this is considered dead
/// (pings are answered by the daemon's HTTP/2 layer, not by its work, so a
/// busy daemon still answers in time).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from the daemon (its output chunks are at most
/// 64 KiB by default; listings of many executions are larger).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A byte stream to the daemon, whatever carries it.
pub trait DaemonIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> DaemonIo for T {}

/// A boxed [`DaemonIo`].
pub type BoxedIo = Box<dyn DaemonIo>;

/// Opens byte streams to the daemon. Called again for every reconnection.
pub trait Dialer: Send + Sync + 'static {
    /// Opens one connection.
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>>;
    /// Where it dials, for messages ("/run/elide/daemon.sock", "10.0.0.5:7070").
    fn target(&self) -> String;
    /// Whether connections use HTTP/2 keepalive pings. hyper times them on
    /// the wall clock, so a simulated transport turns them off (the
    /// streams' heartbeats still notice dead connections).
    fn keepalive(&self) -> bool {
        true
    }
}

/// Dials a unix socket.
#[derive(Debug, Clone)]
pub struct UnixDialer(pub PathBuf);

impl Dialer for UnixDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let path = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }

    fn target(&self) -> String {
        self.0.display().to_string()
    }
}

/// Dials a TCP `host:port`.
#[derive(Debug, Clone)]
pub struct TcpDialer(pub String);

impl Dialer for TcpDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxedIo>> {
        let address = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }

    fn target(&self) -> String {
        self.0.clone()
    }
}

/// Chooses the dialer for a configured endpoint: [`dialer_for`] in the
/// plugin; tests and simulations substitute their own transport.
pub type DialerFactory = Arc<dyn Fn(&DaemonEndpoint) -> Arc<dyn Dialer> + Send + Sync>;

/// The real transports: [`UnixDialer`] or [`TcpDialer`].
pub fn real_dialers() -> DialerFactory {
    Arc::new(dialer_for)
}

/// The dialer for a configured endpoint.
pub fn dialer_for(endpoint: &DaemonEndpoint) -> Arc<dyn Dialer> {
    match endpoint {
        DaemonEndpoint::Unix(path) => Arc::new(UnixDialer(path.clone())),
        DaemonEndpoint::Tcp(address) => Arc::new(TcpDialer(address.clone())),
    }
}

/// The gRPC client type of the daemon API.
pub type DaemonClient = ElideDaemonClient<Channel>;

/// Why a daemon call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The daemon answered with an error status.
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// No answer within the deadline.
    #[error("no answer from the daemon within {0:?}")]
    Timeout(Duration),
}

impl CallError {
    /// The gRPC code of the failure (`DeadlineExceeded` for a timeout).
    pub fn code(&self) -> tonic::Code {
        match self {
            CallError::Status(status) => status.code(),
            CallError::Timeout(_) => tonic::Code::DeadlineExceeded,
        }
    }

    /// Whether the daemon said the session or execution does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == tonic::Code::NotFound
    }

    /// Whether the failure is about reaching the daemon rather than about
    /// the request (worth retrying later).
    pub fn is_transport(&self) -> bool {
        matches!(
            self.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        )
    }
}

/// A lazily connected, self-reconnecting link to one daemon. Clones share
/// the connection.
#[derive(Clone)]
pub struct DaemonLink {
    connection: Arc<Connection>,
    target: String,
    call_timeout: Duration,
}

/// The current client and how to replace it.
struct Connection {
    dialer: Arc<dyn Dialer>,
    /// The client, and how many times it was replaced.
    current: Mutex<(DaemonClient, u64)>,
    /// The generation in use, announced when a connection is retired, so
    /// streams opened on the old one stop waiting on it.
    retired: tokio::sync::watch::Sender<u64>,
    /// Spaces its dials after a failed one (shared by its generations).
    gate: Arc<Mutex<dial_gate::DialGate>>,
}

impl Connection {
    fn current(&self) -> (DaemonClient, u64) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the client used at `generation` with one on a fresh
    /// connection (once, however many calls noticed).
    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.1 == generation {
            *current = (
                client_over(self.dialer.clone(), self.gate.clone()),
                generation + 1,
            );
            self.retired.send_replace(generation + 1);
            tracing::info!(daemon = %self.dialer.target(), "a call got no answer in time; dialling a fresh connection");
        }
    }
}

/// A lazily connecting client over `dialer`.
fn client_over(dialer: Arc<dyn Dialer>, gate: Arc<Mutex<dial_gate::DialGate>>) -> DaemonClient {
    let keepalive = dialer.keepalive();
    let connector = tower::service_fn(move |_: Uri| {
        let closed = gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(tokio::time::Instant::now());
        let dial = closed.is_ok().then(|| dialer.dial());
        let gate = gate.clone();
        async move {
            let Some(dial) = dial else {
                return Err(closed.unwrap_err());
            };
            let dialled = match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
                Ok(dialled) => dialled,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {DIAL_TIMEOUT:?}"),
                )),
            };
            gate.lock()
                .unwrap_or_else(|p| p.into_inner())
                .dialled(tokio::time::Instant::now(), dialled.as_ref().map(drop));
            dialled.map(TokioIo::new)
        }
    });
    // The URI is required by the API and unused: the dialer decides.
    let mut endpoint = Endpoint::from_static("http://elide-daemon.invalid");
    if keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
    }
    let channel = endpoint.connect_with_connector_lazy(connector);
    ElideDaemonClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Whether a call ended without any answer from the daemon within its
/// deadline (tonic's own deadline, or ours): the connection may be dead.
/// A `DEADLINE_EXCEEDED` from the daemon is an answer and does not count.
fn unanswered(result: &Result<tonic::Status, ()>) -> bool {
    match result {
        Err(()) => true,
        Ok(status) => {
            status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired"
        }
    }
}

impl fmt::Debug for DaemonLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonLink")
            .field("target", &self.target)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl DaemonLink {
    /// A link over `dialer`. Nothing is dialled until the first call; a
    /// broken connection is re-dialled on the next call.
    pub fn new(dialer: Arc<dyn Dialer>, call_timeout: Duration) -> Self {
        let target = dialer.target();
        let gate = Arc::new(Mutex::new(dial_gate::DialGate::default()));
        let client = client_over(dialer.clone(), gate.clone());
        DaemonLink {
            connection: Arc::new(Connection {
                dialer,
                current: Mutex::new((client, 0)),
                retired: tokio::sync::watch::Sender::new(0),
                gate,
            }),
            target,
            call_timeout,
        }
    }

    /// A link to a configured endpoint with the default call deadline.
    pub fn to_endpoint(dialers: &DialerFactory, endpoint: &DaemonEndpoint) -> Self {
        DaemonLink::new(dialers(endpoint), DEFAULT_CALL_TIMEOUT)
    }

    /// Where the link dials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Gives up the current connection (a stream on it went silent): the
    /// next call dials afresh.
    pub fn retire_connection(&self) {
        let (_, generation) = self.connection.current();
        self.connection.replace(generation);
    }

    /// The generation of the connection calls use now (see
    /// [`DaemonLink::retired`]).
    pub fn generation(&self) -> u64 {
        self.connection.current().1
    }

    /// Resolves once the connection of `generation` has been retired: a
    /// call on it went unanswered, or a stream on it fell silent. A stream
    /// opened on it is then most likely dead too (a partition that has
    /// since healed leaves such connections), and is better reopened at once
    /// than after its own heartbeat timeout.
    pub async fn retired(&self, generation: u64) {
        let mut current = self.connection.retired.subscribe();
        // The sender lives as long as the link, so this only ends by the
        // generation moving on.
        let _ = current.wait_for(|g| *g > generation).await;
    }

    /// Runs one unary call with the link's deadline: the deadline is sent to
    /// the daemon (`grpc-timeout`) and enforced here as well.
    pub async fn unary<Req, Resp, F, Fut>(&self, message: Req, call: F) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(DaemonClient, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.unary_within(self.call_timeout, message, call).await
    }

    /// [`DaemonLink::unary`] with an explicit deadline.
    ///
    /// A call that failed to connect while the dial gate was closed (a dial
    /// just failed: [`dial_gate`]) is tried once more when the gate opens,
    /// if that is within `deadline`: a daemon that came back in the
    /// meantime (restarted by the plugin's supervisor) then answers the
    /// call, instead of the call failing on another caller's dial.
    pub async fn unary_within<Req, Resp, F, Fut>(
        &self,
        deadline: Duration,
        message: Req,
        call: F,
    ) -> Result<Resp, CallError>
    where
        Req: Clone,
        F: Fn(DaemonClient, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = tokio::time::Instant::now();
        let once = |deadline: Duration| {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(deadline);
            let (client, generation) = self.connection.current();
            self.settle(deadline, generation, call(client, request))
        };
        let result = once(deadline).await;
        let reopens = match &result {
            Err(e) if e.is_transport() => self
                .connection
                .gate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reopens_after(tokio::time::Instant::now()),
            _ => None,
        };
        match reopens {
            Some(wait) if started.elapsed() + wait < deadline => {
                tokio::time::sleep(wait).await;
                once(deadline.saturating_sub(started.elapsed())).await
            }
            _ => result,
        }
    }

    /// Opens a server stream: the call must *answer* within the link's
    /// deadline, but the stream itself has none (no `grpc-timeout` is
    /// sent, which would bound the whole stream); HTTP/2 keepalive notices
    /// a dead daemon instead.
    pub async fn open_stream<Req, Resp, F, Fut>(
        &self,
        message: Req,
        call: F,
    ) -> Result<Resp, CallError>
    where
        F: FnOnce(DaemonClient, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let request = tonic::Request::new(message);
        let (client, generation) = self.connection.current();
        self.settle(self.call_timeout, generation, call(client, request))
            .await
    }

    /// Awaits a call for up to `deadline`; a call left unanswered retires
    /// the connection it used.
    async fn settle<Resp>(
        &self,
        deadline: Duration,
        generation: u64,
        call: impl Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    ) -> Result<Resp, CallError> {
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => Ok(status),
            Err(_) => Err(()),
        };
        if unanswered(&result) {
            self.connection.replace(generation);
        }
        Err(match result {
            Ok(status) => CallError::Status(status),
            Err(()) => CallError::Timeout(deadline),
        })
    }
}
