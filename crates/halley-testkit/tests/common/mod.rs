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

pub use halley_testkit::*;
// A step may take longer than on one server (see `halley_testkit::cluster`).
pub use halley_testkit::cluster::{WAIT, within, ws_json};

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
