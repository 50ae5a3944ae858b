//! Spacing of connection attempts while a daemon cannot be reached.
//!
//! Every call on a link that has no connection makes tonic dial. While the
//! daemon is down or cut off, every retry loop of every task (background
//! stops, deletes, status feeds, output forwarders) would dial on its own:
//! a thousand tasks retrying is a thousand connection attempts per round.
//! After a failed dial the gate answers further attempts on the link with
//! that failure at once, without dialing, until [`DIAL_RETRY_GAP`] has
//! passed: one link dials at most about four times a second however many
//! callers it has. Callers see the same transport error and keep their
//! own back-off; a unary call tries once more when the gate opens, if its
//! deadline allows (a daemon restarted meanwhile then answers it: found by
//! the supervision test, where a `StartTask` right after the daemon's
//! restart failed on another call's dial that had failed just before).

use std::io;
use std::time::Duration;

use tokio::time::Instant;

/// The least time between two connection attempts of one link after a
/// failed one.
pub const DIAL_RETRY_GAP: Duration = Duration::from_millis(250);

/// The state of one link's dialing: closed for a while after a failure.
#[derive(Debug, Default)]
pub(super) struct DialGate {
    /// Until when attempts fail without dialing, and with what.
    closed: Option<(Instant, io::ErrorKind, String)>,
}

impl DialGate {
    /// `Ok` if a dial may go out at `now`; else the last failure again.
    pub(super) fn check(&self, now: Instant) -> io::Result<()> {
        match &self.closed {
            Some((until, kind, message)) if now < *until => Err(io::Error::new(
                *kind,
                format!("{message} (not dialled again for {:?})", *until - now),
            )),
            _ => Ok(()),
        }
    }

    /// How long after `now` the gate opens again, if it is closed.
    pub(super) fn reopens_after(&self, now: Instant) -> Option<Duration> {
        match &self.closed {
            Some((until, _, _)) if now < *until => Some(*until - now),
            _ => None,
        }
    }

    /// Records the outcome of a dial made at `now`.
    pub(super) fn dialled(&mut self, now: Instant, outcome: Result<(), &io::Error>) {
        self.closed = match outcome {
            Ok(()) => None,
            Err(e) => Some((now + DIAL_RETRY_GAP, e.kind(), e.to_string())),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_dial_closes_the_gate_for_the_gap_and_a_success_opens_it() {
        let start = Instant::now();
        let mut gate = DialGate::default();
        assert!(gate.check(start).is_ok());
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "daemon.sock");
        gate.dialled(start, Err(&refused));
        let early = gate.check(start + DIAL_RETRY_GAP / 2).unwrap_err();
        assert_eq!(early.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            early
                .to_string()
                .starts_with("daemon.sock (not dialled again for"),
            "{early}"
        );
        assert_eq!(
            gate.reopens_after(start + DIAL_RETRY_GAP / 2),
            Some(DIAL_RETRY_GAP - DIAL_RETRY_GAP / 2)
        );
        assert!(gate.check(start + DIAL_RETRY_GAP).is_ok());
        assert_eq!(gate.reopens_after(start + DIAL_RETRY_GAP), None);
        gate.dialled(start + DIAL_RETRY_GAP, Err(&refused));
        gate.dialled(start + DIAL_RETRY_GAP, Ok(()));
        assert!(gate.check(start + DIAL_RETRY_GAP).is_ok());
        assert_eq!(gate.reopens_after(start + DIAL_RETRY_GAP), None);
    }
}
