//! The pipeline's actors and the ports (traits) they need.
//!
//! Each actor lives in its own module with its messages, state and tests; each port is a
//! trait an adapter in the daemon implements. No actor here knows which backend it talks to.
#![warn(missing_docs)]

pub mod heartbeat;

pub use heartbeat::{
    HealthReport, HealthSink, HealthSinkError, Heartbeat, HeartbeatArgs, HeartbeatMsg,
};
