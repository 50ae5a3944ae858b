//! gRPC contracts of the project, generated at build time from the `.proto`
//! files in this crate.
//!
//! * [`elide::daemon::v1`]: the execution daemon API (see `proto/README.md`).

/// Elide packages.
pub mod elide {
    /// The execution daemon.
    pub mod daemon {
        /// Daemon API version 1 (`elide.daemon.v1`).
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("elide.daemon.v1");
        }
    }
}
