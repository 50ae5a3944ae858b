//! gRPC contracts of the project, generated at build time from the `.proto`
//! files in this crate.
//!
//! * [`elide::daemon::v1`]: the execution daemon API (see `proto/README.md`).
//! * [`elide::daemon::v1alpha1`]: the original daemon contract, served for
//!   compatibility (see `proto/V1ALPHA1.md`).
//! * [`hashicorp::nomad::plugins`]: the Nomad plugin protocol (base plugin,
//!   task driver, HCL spec, shared structs).
//! * [`plugin`]: go-plugin's own services (controller, stdio, broker).
//! * [`Language`]: the snippet languages, by the names the API uses;
//!   [`intrinsics`]: the host capabilities a session may grant.
//! * [`handshake`]: go-plugin's process contract (magic cookie, protocol
//!   versions, the handshake line and its parser), for the plugin and every
//!   client of it.
//! * [`recoverable`]: Nomad's `RecoverableError` status detail, written
//!   and read.
//! * [`duration_to_proto`] / [`duration_from_proto`]: the one conversion
//!   between std and protobuf durations every crate uses;
//!   [`go_duration`]: the one grammar for durations people write.
//!
//! The module tree mirrors the protobuf packages exactly, because generated
//! code refers to other packages through relative `super::` paths.

mod duration;
pub mod go_duration;
pub mod handshake;
pub mod intrinsics;
mod language;
pub mod recoverable;
pub mod wall_clock;
pub use duration::{duration_from_proto, duration_to_proto};
pub use language::Language;

/// Elide packages.
pub mod elide {
    /// The execution daemon.
    pub mod daemon {
        /// Daemon API version 1 (`elide.daemon.v1`).
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("elide.daemon.v1");
        }
        /// The original daemon contract (`elide.daemon.v1alpha1`), kept
        /// for the original Go driver and its clients.
        #[allow(missing_docs, clippy::all)]
        pub mod v1alpha1 {
            tonic::include_proto!("elide.daemon.v1alpha1");
        }
    }
}

/// HashiCorp packages.
pub mod hashicorp {
    /// Nomad packages.
    pub mod nomad {
        /// Nomad's plugin protocol.
        pub mod plugins {
            /// Services and messages every Nomad plugin serves.
            pub mod base {
                /// `hashicorp.nomad.plugins.base.proto`: the `BasePlugin`
                /// service (PluginInfo, ConfigSchema, SetConfig).
                #[allow(missing_docs, clippy::all)]
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.base.proto");
                }
            }
            /// Task drivers.
            pub mod drivers {
                /// `hashicorp.nomad.plugins.drivers.proto`: the `Driver`
                /// service and the task messages.
                #[allow(missing_docs, clippy::all)]
                pub mod proto {
                    tonic::include_proto!("hashicorp.nomad.plugins.drivers.proto");
                }
            }
            /// Messages shared by every plugin type.
            pub mod shared {
                /// `hashicorp.nomad.plugins.shared.hclspec`: the HCL decoding
                /// specification of plugin and task configuration.
                #[allow(missing_docs, clippy::all)]
                pub mod hclspec {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.hclspec");
                }
                /// `hashicorp.nomad.plugins.shared.structs`: node attribute
                /// values and the recoverable-error status detail.
                #[allow(missing_docs, clippy::all)]
                pub mod structs {
                    tonic::include_proto!("hashicorp.nomad.plugins.shared.structs");
                }
            }
        }
    }
}

/// `plugin`: go-plugin's services (GRPCController, GRPCStdio, GRPCBroker).
#[allow(missing_docs, clippy::all)]
pub mod plugin {
    tonic::include_proto!("plugin");
}
