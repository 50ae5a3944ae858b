//! A simulated daemon machine: the production `DaemonService` and
//! `SessionRegistry`, with the scripted runtime (recorded as ground truth),
//! a virtual clock and a state store that survives crashes of the host (the
//! "disk"). Optionally an older daemon without the `WatchSession` stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use elide_daemon::{
    DaemonService, Limits, MemoryStore, RegistryDeps, ScriptedRuntime, SequentialIds,
    SessionRegistry,
};
use elide_proto::wall_clock::TokioClock;

use crate::net::incoming;
use crate::truth::{GroundTruth, RecordingRuntime};

/// One daemon host of a simulated cluster.
#[derive(Clone)]
pub struct DaemonHost {
    /// Host name (what clients dial).
    pub name: String,
    /// Port the daemon listens on.
    pub port: u16,
    /// Limits of the daemon.
    pub limits: Limits,
    /// Durable state: outlives crashes because the host factory only
    /// borrows it; [`DaemonHost::wipe`] replaces it with an empty one.
    disk: Arc<Mutex<Arc<MemoryStore>>>,
    /// Whether the daemon serves `WatchSession` (an older daemon does not:
    /// the driver must fall back to polling).
    pub watch_stream: bool,
    /// What runs its programs.
    pub runtime: ScriptedRuntime,
    /// Where program runs are recorded.
    pub truth: GroundTruth,
    boots: Arc<AtomicU64>,
    /// Every request it served.
    pub requests: RequestCounts,
    /// Whether it breaks off its output streams now
    /// ([`crate::scenario::FaultKind::BreakOutputStreams`]).
    breaking_streams: Arc<AtomicBool>,
}

impl DaemonHost {
    /// A daemon host with default limits and an empty disk.
    pub fn new(name: &str, port: u16) -> Self {
        DaemonHost {
            name: name.to_string(),
            port,
            limits: Limits::default(),
            disk: Arc::default(),
            watch_stream: true,
            runtime: ScriptedRuntime::default(),
            truth: GroundTruth::default(),
            boots: Arc::default(),
            requests: RequestCounts::default(),
            breaking_streams: Arc::default(),
        }
    }

    /// Records its programs into `truth`.
    pub fn recording_into(mut self, truth: GroundTruth) -> Self {
        self.truth = truth;
        self
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Empties the disk: the next boot finds no sessions and no
    /// executions (meant for a crashed host).
    pub fn wipe(&self) {
        *self.disk.lock().unwrap_or_else(|p| p.into_inner()) = Arc::default();
    }

    /// Runs its programs on `runtime`.
    pub fn with_runtime(mut self, runtime: ScriptedRuntime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Starts or stops breaking off every `StreamOutput` stream after the
    /// next message it sends.
    pub fn break_output_streams(&self, on: bool) {
        self.breaking_streams.store(on, Ordering::SeqCst);
    }

    /// Serves (or not) the `WatchSession` stream.
    pub fn with_watch_stream(mut self, served: bool) -> Self {
        self.watch_stream = served;
        self
    }

    /// How many times the host has booted.
    pub fn boots(&self) -> u64 {
        self.boots.load(Ordering::SeqCst)
    }

    /// Registers the host; turmoil re-runs the factory on every restart.
    pub fn install(&self, sim: &mut turmoil::Sim<'_>) {
        let host = self.clone();
        sim.host(self.name.as_str(), move || {
            let host = host.clone();
            async move {
                let boot = host.boots.fetch_add(1, Ordering::SeqCst) + 1;
                let epoch = SystemTime::UNIX_EPOCH + turmoil::since_epoch().unwrap_or_default();
                let registry = SessionRegistry::open(RegistryDeps {
                    runtime: Arc::new(RecordingRuntime::new(
                        host.runtime.clone(),
                        host.truth.clone(),
                        &host.name,
                        boot,
                        host.limits.output_retention_bytes_per_stream,
                    )),
                    store: host.disk.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    clock: Arc::new(TokioClock::starting_at(epoch)),
                    // Instance ids differ per boot, deterministically.
                    ids: Arc::new(SequentialIds::new(&format!("{}-boot{boot}", host.name))),
                    limits: host.limits.clone(),
                    scratch_dir: "/nonexistent/elide-sim-scratch".into(),
                    version: "sim".into(),
                })?;
                registry.spawn_expiry(Duration::from_secs(1));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", host.port)).await?;
                let service = Served {
                    inner: DaemonService::new(registry).into_server(),
                    watch_stream: host.watch_stream,
                    requests: host.requests.clone(),
                    breaking_streams: host.breaking_streams.clone(),
                };
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming(listener))
                    .await?;
                Ok(())
            }
        });
    }
}

/// Every request a daemon served (across its boots), counted by method
/// name (`CancelExecution`, ...).
#[derive(Debug, Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl RequestCounts {
    fn count(&self, method: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(method.to_owned())
            .or_default() += 1;
    }

    /// The counts so far.
    pub fn all(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The daemon API as served in the simulation: every request counted,
/// without `WatchSession` when the scenario says so (it then answers
/// `UNIMPLEMENTED`, as a daemon predating the stream would), and with
/// output streams that a fault can break off.
#[derive(Clone)]
struct Served<S> {
    inner: S,
    watch_stream: bool,
    requests: RequestCounts,
    breaking_streams: Arc<AtomicBool>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Served<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Served<S>
where
    S: tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        self.requests.count(path.rsplit('/').next().unwrap_or(path));
        if !self.watch_stream && path.ends_with("/WatchSession") {
            let status = tonic::Status::unimplemented("this daemon has no WatchSession");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if !self.watch_stream && path == V1_CAPABILITIES {
            // Nor does it list the feature it does not have.
            let response = self.inner.call(request);
            return Box::pin(async move {
                let (parts, body) = response.await?.into_parts();
                let body = without_watch_session(body).await;
                Ok(http::Response::from_parts(parts, body))
            });
        }
        if path.ends_with("/StreamOutput") {
            let response = self.inner.call(request);
            let breaking = self.breaking_streams.clone();
            return Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|body| tonic::body::Body::new(Breakable::new(body, breaking))))
            });
        }
        Box::pin(self.inner.call(request))
    }
}

/// The v1 API's `GetCapabilities` (v1alpha1 has its own).
const V1_CAPABILITIES: &str = "/elide.daemon.v1.ElideDaemon/GetCapabilities";

/// A `GetCapabilities` response body with `WatchSession` taken out of its
/// `features` (a daemon from before the stream). A body that cannot be
/// read as one is passed on as it came.
async fn without_watch_session(mut body: tonic::body::Body) -> tonic::body::Body {
    use http_body::Body as _;
    use prost::Message as _;
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) =
        futures::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    // One gRPC message: a compression flag (0), its length, the message.
    let decoded = (data.len() >= 5 && data[0] == 0)
        .then(|| elide_proto::elide::daemon::v1::GetCapabilitiesResponse::decode(&data[5..]).ok())
        .flatten();
    let mut frames = std::collections::VecDeque::new();
    match decoded {
        Some(mut capabilities) => {
            capabilities.features.retain(|f| f != "WatchSession");
            let message = capabilities.encode_to_vec();
            let mut framed = bytes::BytesMut::with_capacity(5 + message.len());
            framed.extend_from_slice(&[0]);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            frames.push_back(http_body::Frame::data(framed.freeze()));
        }
        None => frames.push_back(http_body::Frame::data(data.freeze())),
    }
    if let Some(trailers) = trailers {
        frames.push_back(http_body::Frame::trailers(trailers));
    }
    tonic::body::Body::new(Replayed(frames))
}

/// A body of frames already at hand.
struct Replayed(std::collections::VecDeque<http_body::Frame<bytes::Bytes>>);

impl http_body::Body for Replayed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A streaming response that, while `breaking` is set, is broken off after
/// the next message it sends: that data frame, then the trailers of an
/// `UNAVAILABLE` status, as a daemon that ends a stream early sends them.
struct Breakable {
    inner: tonic::body::Body,
    breaking: Arc<AtomicBool>,
    /// Set once a message went out while breaking: the stream ends next.
    cut: bool,
    done: bool,
}

impl Breakable {
    fn new(inner: tonic::body::Body, breaking: Arc<AtomicBool>) -> Self {
        Breakable {
            inner,
            breaking,
            cut: false,
            done: false,
        }
    }
}

impl http_body::Body for Breakable {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        if self.cut {
            self.done = true;
            let mut trailers = http::HeaderMap::new();
            let status = tonic::Status::unavailable("the daemon broke off this stream");
            if let Err(e) = status.add_header(&mut trailers) {
                return Poll::Ready(Some(Err(e)));
            }
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_data() {
                self.cut = self.breaking.load(Ordering::SeqCst);
            } else {
                // The stream ended by itself (its trailers).
                self.done = true;
            }
        }
        polled
    }
}
