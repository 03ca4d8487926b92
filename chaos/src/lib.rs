//! The chaos harness (DESIGN §11): it runs daemons under load against real services, each
//! behind a fault-injecting TCP proxy, injects faults from a seeded schedule, and checks the
//! promises of DESIGN §12 afterwards. `primed-chaos` is its command line.

mod daemons;
pub mod election;
pub mod harness;
mod invariants;
mod load;
pub mod options;
pub mod proxy;
pub mod report;
pub mod schedule;
pub mod services;
mod settle;
