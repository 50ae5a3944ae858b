//! Reference daemon.
