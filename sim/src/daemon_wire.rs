//! The daemon API as the simulation serves it: the reference daemon's
//! gRPC service behind a wrapper that counts every request and can make
//! the daemon behave as others may: one from before `WatchSession`, one
//! that follows `after_seq` to the letter, one whose output streams break
//! off, one that fails or refuses the calls that stop and delete
//! executions, one whose answers to starts are lost. It works on the HTTP/2 bodies (gRPC frames), below tonic's
//! codec, so the daemon itself stays the production one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use elide_proto::elide::daemon::v1 as pb;
use http_body::{Body as _, Frame};

/// The daemon API as served in the simulation: every request counted,
/// without `WatchSession` when the scenario says so (it then answers
/// `UNIMPLEMENTED` and does not list it, as a daemon predating the stream
/// would), with `after_seq` followed to the letter when the scenario says
/// so, and with output streams that a fault can break off.
#[derive(Clone)]
pub(crate) struct Served<S> {
    pub inner: S,
    /// Whether it serves `WatchSession` (and lists it).
    pub watch_stream: bool,
    /// Whether `WatchSession` sends only events after `after_seq`, even
    /// after the gap for a cursor from another log.
    pub strict_after_seq: bool,
    pub requests: RequestCounts,
    /// While set, output streams break off.
    pub breaking_streams: Arc<AtomicBool>,
    /// While set, every `CancelExecution` and `DeleteExecution` is
    /// answered with its code.
    pub refusing_stops: StopRefusal,
    /// The calls it refused so.
    pub refusals: Refusals,
    /// The executions it answered `ExecuteSnippet` with `created = false`
    /// for.
    pub existing_starts: ExistingStarts,
    /// While set, every `ExecuteSnippet` is carried out but its answer is
    /// lost (the caller gets `UNAVAILABLE`).
    pub losing_start_answers: Arc<AtomicBool>,
    /// When it first answered a `DeleteExecution` with OK, by execution.
    pub deletes: Deletes,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Served<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Served<S>
where
    S: GrpcService + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        self.requests.count(path.rsplit('/').next().unwrap_or(path));
        let stopping = match path {
            V1_CANCEL => Some(StopCall::Cancel),
            V1_DELETE => Some(StopCall::Delete),
            _ => None,
        };
        if let (Some(call), Some(code)) = (stopping, self.refusing_stops.now()) {
            return Box::pin(refuse(call, code, request, self.refusals.clone()));
        }
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
        if self.strict_after_seq && path == V1_WATCH_SESSION {
            let inner = self.inner.clone();
            return Box::pin(after_seq_to_the_letter(inner, request));
        }
        if path == V1_DELETE {
            return Box::pin(noting_delete(
                self.inner.clone(),
                request,
                self.deletes.clone(),
            ));
        }
        if path == V1_EXECUTE_SNIPPET {
            let response = self.inner.call(request);
            let existing = self.existing_starts.clone();
            let losing = self.losing_start_answers.load(Ordering::SeqCst);
            return Box::pin(async move {
                let (parts, body) = response.await?.into_parts();
                if losing {
                    // Carried out (the handler has returned), then the
                    // connection drops before the answer goes out.
                    drop(read_all(body).await);
                    let status = tonic::Status::unavailable("connection reset before the answer");
                    return Ok(status.into_http());
                }
                let body = noting_existing_start(body, existing).await;
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

/// The daemon's gRPC service, as this wrapper takes it and passes requests
/// on to it.
pub(crate) trait GrpcService:
    tower::Service<
    http::Request<tonic::body::Body>,
    Response = http::Response<tonic::body::Body>,
    Error = std::convert::Infallible,
>
{
}

impl<S> GrpcService for S where
    S: tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    >
{
}

/// Every request a daemon served (across its boots), counted by method
/// name (`CancelExecution`, ...).
#[derive(Debug, Clone, Default)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<String, u64>>>);

impl RequestCounts {
    pub(crate) fn count(&self, method: &str) {
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

/// Whether (and with which code) the daemon refuses every call that stops
/// or deletes an execution now
/// ([`crate::scenario::FaultKind::FailStops`],
/// [`crate::scenario::FaultKind::DenyStops`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct StopRefusal(Arc<Mutex<Option<tonic::Code>>>);

impl StopRefusal {
    /// Refuses with `code` from now on; takes the calls again with `None`.
    pub(crate) fn set(&self, code: Option<tonic::Code>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = code;
    }

    fn now(&self) -> Option<tonic::Code> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call a daemon refused because a fault told it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// When (simulated time).
    pub at: Duration,
    /// `CancelExecution` or `DeleteExecution`.
    pub method: &'static str,
    /// The execution it named (empty if the request could not be read).
    pub execution_id: String,
    /// The answer.
    pub code: tonic::Code,
}

/// Every call a daemon refused on a fault's orders, in order.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<Vec<Refusal>>>);

impl Refusals {
    fn record(&self, refusal: Refusal) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(refusal);
    }

    /// The refusals so far.
    pub fn all(&self) -> Vec<Refusal> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A call that stops or deletes an execution.
#[derive(Debug, Clone, Copy)]
enum StopCall {
    Cancel,
    Delete,
}

/// Answers `request` (a [`StopCall`]) with `code`, recording which
/// execution it named.
async fn refuse(
    call: StopCall,
    code: tonic::Code,
    request: http::Request<tonic::body::Body>,
    refusals: Refusals,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible> {
    let (data, _) = read_all(request.into_body()).await;
    let (method, execution_id) = match call {
        StopCall::Cancel => (
            "CancelExecution",
            one_message::<pb::CancelExecutionRequest>(&data).map(|r| r.execution_id),
        ),
        StopCall::Delete => (
            "DeleteExecution",
            one_message::<pb::DeleteExecutionRequest>(&data).map(|r| r.execution_id),
        ),
    };
    refusals.record(Refusal {
        at: turmoil::sim_elapsed().unwrap_or_default(),
        method,
        execution_id: execution_id.unwrap_or_default(),
        code,
    });
    let message = match code {
        tonic::Code::PermissionDenied => format!("this client may not call {method}"),
        _ => format!("the daemon could not record the {method}"),
    };
    Ok(tonic::Status::new(code, message).into_http())
}

/// When a daemon answered a `DeleteExecution` with OK (a forced one once
/// the program is gone): the execution is let go from then on.
#[derive(Debug, Clone, Default)]
pub struct Deletes(Arc<Mutex<BTreeMap<String, Duration>>>);

impl Deletes {
    /// The first such answer for each execution.
    pub fn all(&self) -> BTreeMap<String, Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `DeleteExecution`, passed on to the daemon as it came; an OK answer is
/// noted in `deletes`.
async fn noting_delete<S>(
    mut inner: S,
    request: http::Request<tonic::body::Body>,
    deletes: Deletes,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    S: GrpcService,
{
    let (delete, request) = read_request::<pb::DeleteExecutionRequest>(request).await;
    futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let (parts, body) = inner.call(request).await?.into_parts();
    let (data, trailers) = read_all(body).await;
    // An error is a trailers-only response (`grpc-status` in the headers);
    // an answer has `grpc-status: 0` in its trailers.
    let ok = !parts.headers.contains_key("grpc-status")
        && trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|status| status == "0");
    if let Some(delete) = delete.filter(|_| ok) {
        deletes
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(delete.execution_id)
            .or_insert(turmoil::sim_elapsed().unwrap_or_default());
    }
    Ok(http::Response::from_parts(
        parts,
        replayed(data.freeze(), trailers),
    ))
}

/// The executions a daemon answered `ExecuteSnippet` with `created = false`
/// for (the request matched an execution it already had).
#[derive(Debug, Clone, Default)]
pub struct ExistingStarts(Arc<Mutex<BTreeSet<String>>>);

impl ExistingStarts {
    /// Them so far.
    pub fn all(&self) -> BTreeSet<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An `ExecuteSnippet` response body, passed on as it came, noting its
/// execution in `existing` when it says `created = false`.
async fn noting_existing_start(
    body: tonic::body::Body,
    existing: ExistingStarts,
) -> tonic::body::Body {
    let (data, trailers) = read_all(body).await;
    if let Some(response) = one_message::<pb::ExecuteSnippetResponse>(&data) {
        if !response.created {
            let execution_id = response.status.unwrap_or_default().execution_id;
            existing
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(execution_id);
        }
    }
    replayed(data.freeze(), trailers)
}

/// The v1 API's `GetCapabilities` (v1alpha1 has its own).
const V1_CAPABILITIES: &str = "/elide.daemon.v1.ElideDaemon/GetCapabilities";
/// The v1 API's `CancelExecution`.
const V1_CANCEL: &str = "/elide.daemon.v1.ElideDaemon/CancelExecution";
/// The v1 API's `ExecuteSnippet`.
const V1_EXECUTE_SNIPPET: &str = "/elide.daemon.v1.ElideDaemon/ExecuteSnippet";
/// The v1 API's `DeleteExecution`.
const V1_DELETE: &str = "/elide.daemon.v1.ElideDaemon/DeleteExecution";
/// The v1 API's `WatchSession`.
const V1_WATCH_SESSION: &str = "/elide.daemon.v1.ElideDaemon/WatchSession";

/// A `GetCapabilities` response body with `WatchSession` taken out of its
/// `features` (a daemon from before the stream). A body that cannot be
/// read as one is passed on as it came.
async fn without_watch_session(body: tonic::body::Body) -> tonic::body::Body {
    let (data, trailers) = read_all(body).await;
    let data = match one_message::<pb::GetCapabilitiesResponse>(&data) {
        Some(mut capabilities) => {
            capabilities.features.retain(|f| f != "WatchSession");
            framed(&capabilities)
        }
        None => data.freeze(),
    };
    replayed(data, trailers)
}

/// `WatchSession` by the contract's letter: only status events with
/// `seq > after_seq`, also after the `gap` that tells a cursor from
/// another log (a wiped daemon's new log). The reference daemon replays
/// its new log from the start then, which hides a client that does not
/// re-open the stream at the listing's seq.
async fn after_seq_to_the_letter<S>(
    mut inner: S,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    S: GrpcService,
{
    let (watch, request) = read_request::<pb::WatchSessionRequest>(request).await;
    let after_seq = watch.map_or(0, |r| r.after_seq);
    futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let response = inner.call(request).await?;
    Ok(response.map(|body| {
        tonic::body::Body::new(AfterSeqOnly {
            inner: body,
            after_seq,
            unread: BytesMut::new(),
            out: VecDeque::new(),
            done: false,
        })
    }))
}

/// The message a unary request carries (if it reads as an `M`), and the
/// same request to pass on.
async fn read_request<M: prost::Message + Default>(
    request: http::Request<tonic::body::Body>,
) -> (Option<M>, http::Request<tonic::body::Body>) {
    let (parts, body) = request.into_parts();
    let (data, trailers) = read_all(body).await;
    let message = one_message::<M>(&data);
    let request = http::Request::from_parts(parts, replayed(data.freeze(), trailers));
    (message, request)
}

/// A whole body: its data, and its trailers if any.
async fn read_all(mut body: tonic::body::Body) -> (BytesMut, Option<http::HeaderMap>) {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (data, trailers)
}

/// The one uncompressed gRPC message `data` holds (a flag byte, a 4-byte
/// length, the message), if it is one.
fn one_message<M: prost::Message + Default>(data: &[u8]) -> Option<M> {
    (data.len() >= 5 && data[0] == 0)
        .then(|| M::decode(&data[5..]).ok())
        .flatten()
}

/// `message` as a gRPC frame.
fn framed(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + encoded.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    out.freeze()
}

/// Splits the first whole gRPC frame off `unread`, if it holds one.
fn next_frame(unread: &mut BytesMut) -> Option<Bytes> {
    if unread.len() < 5 {
        return None;
    }
    let len = (&unread[1..5]).get_u32() as usize;
    (unread.len() >= 5 + len).then(|| unread.split_to(5 + len).freeze())
}

/// A `WatchSession` response without the status events at or before
/// `after_seq` ([`after_seq_to_the_letter`]).
struct AfterSeqOnly {
    inner: tonic::body::Body,
    after_seq: u64,
    /// Bytes of a message not yet whole.
    unread: BytesMut,
    /// Frames ready to pass on.
    out: VecDeque<Frame<Bytes>>,
    done: bool,
}

impl AfterSeqOnly {
    fn passes(&self, frame: &[u8]) -> bool {
        let seq = match one_message::<pb::SessionEvent>(frame).and_then(|e| e.event) {
            Some(pb::session_event::Event::Status(status)) => status.seq,
            _ => return true,
        };
        seq > self.after_seq
    }
}

impl http_body::Body for AfterSeqOnly {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        loop {
            if let Some(frame) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let this = &mut *self;
                    this.unread.extend_from_slice(&data);
                    while let Some(message) = next_frame(&mut this.unread) {
                        if this.passes(&message) {
                            this.out.push_back(Frame::data(message));
                        }
                    }
                }
                // The trailers: the stream's end.
                Err(frame) => self.out.push_back(frame),
            }
        }
    }
}

/// A body read whole ([`read_all`]) as a body again: `data` as one frame,
/// then the trailers if any.
fn replayed(data: Bytes, trailers: Option<http::HeaderMap>) -> tonic::body::Body {
    let mut frames = VecDeque::from([Frame::data(data)]);
    frames.extend(trailers.map(Frame::trailers));
    tonic::body::Body::new(Replayed(frames))
}

/// A body of frames already at hand.
struct Replayed(VecDeque<Frame<Bytes>>);

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
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
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
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
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
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
