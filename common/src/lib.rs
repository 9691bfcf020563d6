//! Shared vocabulary of every Strata component: the public error kinds, the clock seam, limits,
//! name validation, metering records, the rule of persisted formats, and the internal gRPC wire
//! types.
//!
//! Nothing here depends on another Strata crate; everything else may depend on this.

pub mod clock;
pub mod error;
pub mod format;
pub mod grpc;
pub mod limits;
pub mod metering;
pub mod names;
pub mod random;

/// Internal gRPC wire types and service stubs (generated from `proto/strata.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("strata.v1");
}

pub use clock::{Clock, ClockExt, ManualClock, ShiftedClock, SystemClock};
pub use error::{ErrorKind, StrataError};
pub use random::Random;
