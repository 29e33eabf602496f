//! The NATS tests' harness: Halley's shared test kit (`crates/halley-testkit`: `nats-server`s of
//! the test's own, [`Node`]s on them, clients), re-exported so that tests name it
//! `common::…`. A step here may take [`WAIT`]: a message crosses a replicated stream, and the
//! nodes share two cores with three servers.

// Each test binary uses only part of it.
#![allow(dead_code, unused_imports)]

pub use halley_testkit::*;
// A step may take longer than on one server (see `halley_testkit::cluster`).
pub use halley_testkit::cluster::{WAIT, within, ws_json};
