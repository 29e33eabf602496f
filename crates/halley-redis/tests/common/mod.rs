//! The scale-out tests' harness: Halley's shared test kit (`crates/halley-testkit`: a
//! `redis-server` of the test's own, [`Node`]s on it, clients), re-exported so that tests name
//! it `common::…`. A step here may take [`WAIT`] (longer than a single server's): a message
//! crosses Redis, and the nodes share two cores with it.

// Each test binary uses only part of it.
#![allow(dead_code, unused_imports)]

pub use halley_testkit::*;
// A step may take longer than on one server (see `halley_testkit::cluster`).
pub use halley_testkit::cluster::{WAIT, within, ws_json};
