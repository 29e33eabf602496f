//! The HTTP integration tests' harness: Halley's shared test kit (`crates/halley-testkit`),
//! re-exported so that tests name it `common::…`. What only these tests need goes here.

// Each test binary uses only part of it.
#![allow(dead_code, unused_imports)]

pub use halley_testkit::*;
