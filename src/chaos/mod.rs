//! Building blocks of the chaos harness (DESIGN §11): so far the fault-injecting TCP proxy
//! that goes between a daemon and each of its services.

pub mod proxy;
