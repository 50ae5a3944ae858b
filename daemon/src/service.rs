//! The `elide.daemon.v1.ElideDaemon` gRPC service: translates requests to
//! [`SessionRegistry`] calls and registry state into (resumable) streams.

use std::sync::Arc;
use std::time::Duration;

use elide_proto::elide::daemon::v1 as pb;
use elide_proto::elide::daemon::v1::elide_daemon_server::ElideDaemon;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::DaemonError;
use crate::output::{Read, Stream};
use crate::prometheus::MetricsEndpoint;
use crate::registry::{is_terminal, SessionRegistry};
use crate::request_counts::RequestCounts;
use crate::signal::parse_signal;
use crate::time::std_duration;

/// How long DeleteExecution with force waits for the program to be gone.
const FORCE_DELETE_WAIT: Duration = Duration::from_secs(10);
/// Messages buffered per open stream before the sender waits for the client.
const STREAM_BUFFER: usize = 16;

/// The daemon's gRPC service.
#[derive(Clone)]
pub struct DaemonService {
    registry: Arc<SessionRegistry>,
    requests: RequestCounts,
}

impl DaemonService {
    /// A service over `registry`.
    pub fn new(registry: Arc<SessionRegistry>) -> Self {
        DaemonService {
            registry,
            requests: RequestCounts::default(),
        }
    }

    /// The registry this service translates to.
    pub fn registry(&self) -> &Arc<SessionRegistry> {
        &self.registry
    }

    /// Counts one request of `rpc`.
    fn count(&self, rpc: &'static str) {
        self.requests.count(rpc);
    }

    /// The Prometheus endpoint over this service's daemon: its registry's
    /// figures and execution metrics, and the requests this service counts.
    pub fn metrics_endpoint(&self) -> MetricsEndpoint {
        MetricsEndpoint::new(
            self.registry.clone(),
            self.registry.execution_metrics(),
            self.requests.clone(),
        )
    }

    /// The tonic server wrapper, with message sizes that fit the limits.
    pub fn into_server(self) -> pb::elide_daemon_server::ElideDaemonServer<Self> {
        let max_in = self.registry.limits().max_code_bytes as usize + 4 * 1024 * 1024;
        pb::elide_daemon_server::ElideDaemonServer::new(self)
            .max_decoding_message_size(max_in)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

fn optional_duration(
    d: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, Status> {
    d.map(|d| std_duration(d, field))
        .transpose()
        .map_err(|e| Status::from(DaemonError::InvalidArgument(e)))
}

type EventStream<T> = ReceiverStream<Result<T, Status>>;

/// The session's events after `cursor`, marking what the watcher has seen
/// first (so later events wake it). `None` ends the stream: the session is
/// gone (the client is told so) or the client left.
async fn next_batch<T>(
    registry: &SessionRegistry,
    guard: &mut crate::registry::WatchGuard,
    tx: &mpsc::Sender<Result<T, Status>>,
    session_id: &str,
    cursor: u64,
) -> Option<crate::events::EventBatch> {
    guard.changed.borrow_and_update();
    match registry.events_after(session_id, cursor) {
        Ok(batch) => Some(batch),
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            None
        }
    }
}

/// Shortest heartbeat interval a client may ask for.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The heartbeat interval a stream request asks for, if any (raised to
/// [`MIN_HEARTBEAT_INTERVAL`]).
fn heartbeat_interval(asked: Option<&prost_types::Duration>) -> Result<Option<Duration>, Status> {
    Ok(optional_duration(asked, "heartbeat_interval")?
        .filter(|d| !d.is_zero())
        .map(|d| d.max(MIN_HEARTBEAT_INTERVAL)))
}

/// Completes after `interval` (a heartbeat is due); never without one.
async fn heartbeat_due(interval: Option<Duration>) {
    match interval {
        Some(interval) => tokio::time::sleep(interval).await,
        None => std::future::pending().await,
    }
}

/// Waits until the watched session has a new event, sending `heartbeat`
/// after each `interval` without one. False when the stream should end: the
/// client went away, or the session was deleted (then the client is told
/// so).
async fn next_session_change<T: Clone>(
    guard: &mut crate::registry::WatchGuard,
    tx: &mpsc::Sender<Result<T, Status>>,
    session_id: &str,
    heartbeat: Option<(Duration, T)>,
) -> bool {
    loop {
        tokio::select! {
            biased;
            changed = guard.changed.changed() => {
                if changed.is_err() {
                    let gone = Status::not_found(format!("session {session_id:?} was deleted"));
                    let _ = tx.send(Err(gone)).await;
                    return false;
                }
                return true;
            }
            _ = tx.closed() => return false,
            _ = heartbeat_due(heartbeat.as_ref().map(|(interval, _)| *interval)) => {
                if let Some((_, beat)) = &heartbeat {
                    if tx.send(Ok(beat.clone())).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl ElideDaemon for DaemonService {
    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.count("Health");
        Ok(Response::new(self.registry.health()))
    }

    async fn get_capabilities(
        &self,
        _: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        self.count("GetCapabilities");
        Ok(Response::new(self.registry.capabilities()))
    }

    async fn get_daemon_stats(
        &self,
        _: Request<pb::GetDaemonStatsRequest>,
    ) -> Result<Response<pb::GetDaemonStatsResponse>, Status> {
        self.count("GetDaemonStats");
        let (sessions, running_executions, queued_executions) = self.registry.load();
        let health = self.registry.health();
        let starts = self.registry.runtime().start_stats();
        let by_name = |counts: std::collections::BTreeMap<crate::language::Language, u64>| {
            counts
                .into_iter()
                .map(|(language, n)| (language.name().to_string(), n))
                .collect()
        };
        let requests = self
            .requests
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Ok(Response::new(pb::GetDaemonStatsResponse {
            instance_id: health.instance_id,
            uptime: health.uptime,
            requests,
            sessions,
            running_executions,
            queued_executions,
            warm_starts: by_name(starts.warm),
            cold_starts: by_name(starts.cold),
            zygote_restarts: starts.restarts,
        }))
    }

    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        self.count("CreateSession");
        let (session, created) = self.registry.create_session(req.into_inner()).await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session),
            created,
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        self.count("GetSession");
        let session = self.registry.get_session(&req.into_inner().session_id)?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
        }))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.count("ListSessions");
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: self.registry.list_sessions(),
        }))
    }

    async fn delete_session(
        &self,
        req: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        self.count("DeleteSession");
        let req = req.into_inner();
        let grace = optional_duration(req.grace.as_ref(), "grace")?;
        let cancelled = self
            .registry
            .delete_session(&req.session_id, grace, "session deleted")?;
        Ok(Response::new(pb::DeleteSessionResponse {
            cancelled_executions: cancelled,
        }))
    }

    async fn execute_snippet(
        &self,
        req: Request<pb::ExecuteSnippetRequest>,
    ) -> Result<Response<pb::ExecuteSnippetResponse>, Status> {
        self.count("ExecuteSnippet");
        let (status, created) = self.registry.execute(req.into_inner()).await?;
        Ok(Response::new(pb::ExecuteSnippetResponse {
            status: Some(status),
            created,
        }))
    }

    async fn get_execution_status(
        &self,
        req: Request<pb::GetExecutionStatusRequest>,
    ) -> Result<Response<pb::GetExecutionStatusResponse>, Status> {
        self.count("GetExecutionStatus");
        let req = req.into_inner();
        let status = self.registry.status(&req.session_id, &req.execution_id)?;
        Ok(Response::new(pb::GetExecutionStatusResponse {
            status: Some(status),
        }))
    }

    async fn list_executions(
        &self,
        req: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        self.count("ListExecutions");
        let req = req.into_inner();
        let (executions, last_seq) = self
            .registry
            .list_executions(&req.session_id, req.active_only)?;
        Ok(Response::new(pb::ListExecutionsResponse {
            executions,
            last_seq,
        }))
    }

    async fn signal_execution(
        &self,
        req: Request<pb::SignalExecutionRequest>,
    ) -> Result<Response<pb::SignalExecutionResponse>, Status> {
        self.count("SignalExecution");
        let req = req.into_inner();
        let sig = parse_signal(&req.signal).map_err(DaemonError::from)?;
        let status = self
            .registry
            .signal(&req.session_id, &req.execution_id, sig)?;
        Ok(Response::new(pb::SignalExecutionResponse {
            status: Some(status),
        }))
    }

    async fn cancel_execution(
        &self,
        req: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        self.count("CancelExecution");
        let req = req.into_inner();
        let sig = if req.signal.is_empty() {
            Signal::SIGTERM
        } else {
            parse_signal(&req.signal).map_err(DaemonError::from)?
        };
        let grace = optional_duration(req.grace.as_ref(), "grace")?;
        let status = self
            .registry
            .cancel(&req.session_id, &req.execution_id, sig, grace)?;
        Ok(Response::new(pb::CancelExecutionResponse {
            status: Some(status),
        }))
    }

    async fn delete_execution(
        &self,
        req: Request<pb::DeleteExecutionRequest>,
    ) -> Result<Response<pb::DeleteExecutionResponse>, Status> {
        self.count("DeleteExecution");
        let req = req.into_inner();
        self.registry
            .delete_execution(
                &req.session_id,
                &req.execution_id,
                req.force,
                FORCE_DELETE_WAIT,
            )
            .await?;
        Ok(Response::new(pb::DeleteExecutionResponse {}))
    }

    async fn get_execution_metrics(
        &self,
        req: Request<pb::GetExecutionMetricsRequest>,
    ) -> Result<Response<pb::GetExecutionMetricsResponse>, Status> {
        self.count("GetExecutionMetrics");
        let req = req.into_inner();
        let metrics = self.registry.metrics(&req.session_id, &req.execution_id)?;
        Ok(Response::new(pb::GetExecutionMetricsResponse {
            metrics: Some(metrics),
        }))
    }

    type WatchSessionStream = EventStream<pb::SessionEvent>;

    async fn watch_session(
        &self,
        req: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        self.count("WatchSession");
        let req = req.into_inner();
        let heartbeat = heartbeat_interval(req.heartbeat_interval.as_ref())?;
        let mut guard = self.registry.watch_session(&req.session_id)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            use pb::session_event::Event;
            let sid = req.session_id;
            let mut cursor = req.after_seq;
            let opened = pb::WatchOpened {
                daemon_instance_id: registry.instance_id().to_string(),
                last_seq: registry.get_session(&sid).map(|s| s.last_seq).unwrap_or(0),
            };
            if tx
                .send(Ok(pb::SessionEvent {
                    event: Some(Event::Opened(opened)),
                }))
                .await
                .is_err()
            {
                return;
            }
            let beat = pb::SessionEvent {
                event: Some(Event::Heartbeat(pb::Heartbeat {})),
            };
            // The first heartbeat tells the client to expect them.
            if heartbeat.is_some() && tx.send(Ok(beat.clone())).await.is_err() {
                return;
            }
            let heartbeat = heartbeat.map(|interval| (interval, beat));
            loop {
                let Some(batch) = next_batch(&registry, &mut guard, &tx, &sid, cursor).await else {
                    return;
                };
                if let Some((first_missing_seq, first_available_seq)) = batch.gap {
                    let gap = pb::EventGap {
                        first_missing_seq,
                        first_available_seq,
                    };
                    if tx
                        .send(Ok(pb::SessionEvent {
                            event: Some(Event::Gap(gap)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    cursor = first_available_seq.saturating_sub(1);
                    continue;
                }
                for status in batch.events {
                    cursor = status.seq;
                    if tx
                        .send(Ok(pb::SessionEvent {
                            event: Some(Event::Status(status)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !next_session_change(&mut guard, &tx, &sid, heartbeat.clone()).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchExecutionStream = EventStream<pb::ExecutionStatus>;

    async fn watch_execution(
        &self,
        req: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        self.count("WatchExecution");
        let req = req.into_inner();
        let mut guard = self.registry.watch_session(&req.session_id)?;
        let first = self.registry.status(&req.session_id, &req.execution_id)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let (sid, eid) = (req.session_id, req.execution_id);
            let mut cursor = first.seq;
            let mut done = is_terminal(first.state());
            if tx.send(Ok(first)).await.is_err() || done {
                return;
            }
            while !done {
                let Some(batch) = next_batch(&registry, &mut guard, &tx, &sid, cursor).await else {
                    return;
                };
                let mut mine = Vec::new();
                if batch.gap.is_some() {
                    // Events were missed: the current status stands for them.
                    match registry.status(&sid, &eid) {
                        Ok(s) if s.seq > cursor => mine.push(s),
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
                let floor = mine.last().map_or(cursor, |s: &pb::ExecutionStatus| s.seq);
                if let Some(last) = batch.events.last() {
                    cursor = cursor.max(last.seq);
                }
                mine.extend(
                    batch
                        .events
                        .into_iter()
                        .filter(|s| s.execution_id == eid && s.seq > floor),
                );
                for status in mine {
                    cursor = cursor.max(status.seq);
                    done = is_terminal(status.state());
                    if tx.send(Ok(status)).await.is_err() || done {
                        return;
                    }
                }
                if !next_session_change(&mut guard, &tx, &sid, None).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ExecInExecutionStream = crate::command_stream::ExecOutputStream;

    async fn exec_in_execution(
        &self,
        req: Request<tonic::Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecInExecutionStream>, Status> {
        self.count("ExecInExecution");
        crate::command_stream::open(&self.registry, req.into_inner())
            .await
            .map(Response::new)
    }

    type StreamOutputStream = EventStream<pb::OutputEvent>;

    async fn stream_output(
        &self,
        req: Request<pb::StreamOutputRequest>,
    ) -> Result<Response<Self::StreamOutputStream>, Status> {
        self.count("StreamOutput");
        let req = req.into_inner();
        let heartbeat = heartbeat_interval(req.heartbeat_interval.as_ref())?;
        let log = self.registry.output(&req.session_id, &req.execution_id)?;
        let chunk = self.registry.limits().max_output_chunk_bytes as usize;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            use pb::output_event::Event;
            let mut changed = log.subscribe();
            let mut offsets = [req.stdout_offset, req.stderr_offset];
            let beat = || {
                Ok(pb::OutputEvent {
                    event: Some(Event::Heartbeat(pb::Heartbeat {})),
                })
            };
            // The first heartbeat tells the client to expect them.
            if heartbeat.is_some() && req.follow && tx.send(beat()).await.is_err() {
                return;
            }
            loop {
                changed.borrow_and_update();
                // Closed before reading: then what we read is all there is.
                let closed = log.is_closed();
                let mut progressed = false;
                for (i, stream) in Stream::ALL.into_iter().enumerate() {
                    let pb_stream = match stream {
                        Stream::Stdout => pb::OutputStream::Stdout,
                        Stream::Stderr => pb::OutputStream::Stderr,
                    } as i32;
                    let event = match log.read(stream, offsets[i], chunk) {
                        Read::Pending => continue,
                        Read::Data { offset, data } => {
                            offsets[i] = offset + data.len() as u64;
                            log.mark_sent(stream, offsets[i]);
                            Event::Chunk(pb::OutputChunk {
                                stream: pb_stream,
                                offset,
                                data,
                            })
                        }
                        Read::Dropped { from, to } => {
                            offsets[i] = to;
                            Event::Dropped(pb::OutputDropped {
                                stream: pb_stream,
                                from_offset: from,
                                to_offset: to,
                            })
                        }
                    };
                    progressed = true;
                    if tx
                        .send(Ok(pb::OutputEvent { event: Some(event) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if progressed {
                    continue;
                }
                if closed {
                    let (stdout_bytes, stderr_bytes) = log.totals();
                    let state = registry
                        .status(&req.session_id, &req.execution_id)
                        .map(|s| s.state)
                        .unwrap_or_default();
                    let end = pb::OutputEnd {
                        stdout_bytes,
                        stderr_bytes,
                        state,
                    };
                    let _ = tx
                        .send(Ok(pb::OutputEvent {
                            event: Some(Event::End(end)),
                        }))
                        .await;
                    return;
                }
                if !req.follow {
                    return;
                }
                tokio::select! {
                    biased;
                    _ = changed.changed() => {},
                    _ = tx.closed() => return,
                    _ = heartbeat_due(heartbeat) => {
                        if tx.send(beat()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
