//! Noticing a dead daemon stream from the stream itself: the driver asks
//! for heartbeats ([`HEARTBEAT_INTERVAL`]) on its long-lived streams, and
//! once a stream has sent one, silence for [`HEARTBEAT_TIMEOUT`] means the
//! connection under it is dead (a partition, a peer gone without a reset).
//! HTTP/2 keepalive covers the same ground in production, but on the
//! wall clock of the transport; this runs on tokio time, in the driver's
//! own logic, so the simulation exercises it too.

use std::time::Duration;

use futures::{Stream, StreamExt};

use super::DaemonLink;

/// Heartbeat interval the driver asks the daemon for.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after which a stream that sends heartbeats is given up.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

/// [`HEARTBEAT_INTERVAL`] as the request field.
pub fn requested_interval() -> Option<prost_types::Duration> {
    Some(elide_proto::duration_to_proto(HEARTBEAT_INTERVAL))
}

/// What reading a stream gave.
#[derive(Debug)]
pub enum Next<T> {
    /// The next item, or `None` at the end of the stream.
    Item(Option<T>),
    /// Nothing, not even a heartbeat, for [`HEARTBEAT_TIMEOUT`].
    Silent,
    /// The connection the stream was opened on has been retired.
    Retired,
}

/// Reads a stream, timing out on silence once it has shown heartbeats (a
/// daemon that does not send them is never timed out).
#[derive(Default)]
pub struct Watchdog {
    armed: bool,
    /// The link and connection generation the stream was opened on.
    opened_on: Option<(DaemonLink, u64)>,
}

impl Watchdog {
    /// A watchdog for a stream about to be opened on `link`: besides
    /// silence, it gives the stream up ([`Next::Retired`]) once the
    /// connection in use now is retired. Made before the stream is opened,
    /// so a connection replaced in between costs one spurious reopen, never
    /// a missed one.
    pub fn on(link: &DaemonLink) -> Self {
        Self {
            armed: false,
            opened_on: Some((link.clone(), link.generation())),
        }
    }

    /// A heartbeat arrived: from now on silence counts.
    pub fn heartbeat(&mut self) {
        self.armed = true;
    }

    /// The next item of `stream`, [`Next::Silent`] or [`Next::Retired`].
    pub async fn next<S: Stream + Unpin>(&self, stream: &mut S) -> Next<S::Item> {
        let read = async {
            if !self.armed {
                return Next::Item(stream.next().await);
            }
            match tokio::time::timeout(HEARTBEAT_TIMEOUT, stream.next()).await {
                Ok(item) => Next::Item(item),
                Err(_) => Next::Silent,
            }
        };
        match &self.opened_on {
            None => read.await,
            Some((link, generation)) => tokio::select! {
                biased;
                next = read => next,
                () = link.retired(*generation) => Next::Retired,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_counts_only_after_a_heartbeat() {
        let mut silent = futures::stream::pending::<u8>();
        let mut dog = Watchdog::default();
        let unarmed = tokio::time::timeout(HEARTBEAT_TIMEOUT * 2, dog.next(&mut silent)).await;
        assert!(
            unarmed.is_err(),
            "an unarmed watchdog waits as long as it takes"
        );
        dog.heartbeat();
        assert!(matches!(dog.next(&mut silent).await, Next::Silent));
        let mut one = futures::stream::iter([7u8]);
        assert!(matches!(dog.next(&mut one).await, Next::Item(Some(7))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_on_a_retired_connection_is_given_up_at_once() {
        // Nothing is dialled: the client connects lazily, on first use.
        let link = DaemonLink::new(
            std::sync::Arc::new(super::super::UnixDialer("/nonexistent/elide.sock".into())),
            Duration::from_secs(10),
        );
        let dog = Watchdog::on(&link);
        let mut silent = futures::stream::pending::<u8>();
        let waiting = tokio::time::timeout(HEARTBEAT_TIMEOUT * 2, dog.next(&mut silent)).await;
        assert!(
            waiting.is_err(),
            "an unarmed watchdog on a live connection waits"
        );
        link.retire_connection();
        let after = tokio::time::timeout(HEARTBEAT_TIMEOUT, dog.next(&mut silent)).await;
        assert!(matches!(after, Ok(Next::Retired)), "given up once retired");
        let fresh = Watchdog::on(&link);
        let mut one = futures::stream::iter([7u8]);
        assert!(
            matches!(fresh.next(&mut one).await, Next::Item(Some(7))),
            "a stream opened after the retirement is read as usual"
        );
    }
}
