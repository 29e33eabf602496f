//! The broker-generic cluster suite's harness: the test kit, re-exported, and
//! [`every_broker!`], which runs each test of a list once per broker.
//!
//! A test of the suite is an `async fn name(kind: BrokerKind)` that starts its own
//! [`TestBroker`] of `kind` and its nodes on it; `every_broker!(name, …)` makes `redis::name`,
//! `sentinel::name` and `nats::name` of it, so one body runs unchanged against one Redis,
//! Redis with Sentinel (a master, two replicas, three sentinels) and three clustered NATS
//! servers. `replicated_brokers!` does the same for Sentinel and NATS only: the tests that
//! kill a server and expect the broker to keep what it acknowledged.

// Each test binary uses only part of it.
#![allow(dead_code, unused_imports, unused_macros)]

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

pub use halley_testkit::*;

/// The longest any single step may take before it counts as a failure: a message crosses the
/// broker (replicated on NATS and Sentinel), and the nodes share two cores with its servers.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test (instead of hanging it) after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(WAIT, what, future).await
}

/// The next WebSocket text frame, parsed as JSON (pings and pongs skipped), within [`WAIT`].
pub async fn ws_json(ws: &mut Ws) -> Value {
    ws_json_within(WAIT, ws).await
}

/// One `#[tokio::test]` per test named and broker: `redis::t`, `sentinel::t`, `nats::t`.
#[macro_export]
macro_rules! every_broker {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::BrokerKind::Redis).await
                }
            )*
        }
        mod sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::BrokerKind::Sentinel).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::BrokerKind::Nats).await
                }
            )*
        }
    };
}

/// As [`every_broker!`], for the brokers that survive the loss of a server: `sentinel::t`,
/// `nats::t`.
#[macro_export]
macro_rules! replicated_brokers {
    ($($test:ident),* $(,)?) => {
        mod sentinel {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::BrokerKind::Sentinel).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::BrokerKind::Nats).await
                }
            )*
        }
    };
}
