//! The waits of tests on several nodes and a shared broker: a step may take [`WAIT`], longer
//! than a single server's [`crate::WAIT`], as a message crosses the broker (replicated with
//! Sentinel and NATS) and the nodes share two cores with its servers. A cluster test crate's
//! `tests/common/mod.rs` takes these over the single-server ones:
//! `pub use halley_testkit::cluster::{WAIT, within, ws_json};`.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::{Ws, within_for, ws_json_within};

/// The longest any single step may take before it counts as a failure.
pub const WAIT: Duration = crate::NODE_WAIT;

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(WAIT, what, future).await
}

/// The next WebSocket text frame, parsed as JSON (pings and pongs skipped), within [`WAIT`].
pub async fn ws_json(ws: &mut Ws) -> Value {
    ws_json_within(WAIT, ws).await
}
