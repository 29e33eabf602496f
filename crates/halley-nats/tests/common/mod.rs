//! The NATS tests' harness: Halley's shared test kit (`crates/halley-testkit`: `nats-server`s of
//! the test's own, [`Node`]s on them, clients), re-exported so that tests name it
//! `common::…`. A step here may take [`WAIT`]: a message crosses a replicated stream, and the
//! nodes share two cores with three servers.

// Each test binary uses only part of it.
#![allow(dead_code, unused_imports)]

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

pub use halley_testkit::*;

/// The longest any single step may take before it counts as a failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(WAIT, what, future).await
}

/// The next WebSocket text frame, parsed as JSON (pings and pongs skipped), within [`WAIT`].
pub async fn ws_json(ws: &mut Ws) -> Value {
    ws_json_within(WAIT, ws).await
}
