//! The config file (crates/halley/src/config.rs, compiled in here as it is: the binary crate
//! has no library): TOML into `ServeArgs`, then `resolve`'s validation into settings, the
//! access policy and the calls to the application.
//!
//! Key file paths (`[tokens] rs256-public-key`, `es256-public-key`) are dropped before
//! resolving: reading files is not parsing, and a fuzzer must not read `/dev/zero`.
//! Invariants: a file that resolves gives settings `resolve` promises (a cometd path starting
//! with `/`, a heartbeat, a policy whose namespaces can be described).
#![no_main]

#[path = "../../crates/halley/src/config.rs"]
#[allow(dead_code)]
mod halley_config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut args) = toml::from_str::<halley_config::ServeArgs>(text) else {
        return;
    };
    if let Some(tokens) = &mut args.tokens {
        tokens.rs256_public_key = None;
        tokens.es256_public_key = None;
    }
    let Ok(settings) = args.resolve() else {
        return;
    };
    assert!(settings.http.cometd_path.starts_with('/'));
    assert!(!settings.http.heartbeat_interval.is_zero());
    for ns in settings.policy.namespaces() {
        assert!(!halley_config::describe(ns).is_empty());
    }
    let _ = halley_config::describe_calls(&settings.http);
});
