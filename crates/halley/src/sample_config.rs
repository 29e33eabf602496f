//! Tests that keep `packaging/halley.toml`, the sample configuration the Debian package
//! installs as `/etc/halley/halley.toml`, true: it lists every option, the values it gives as
//! defaults are the defaults, and every line of it, uncommented, is a valid configuration.
//!
//! The sample's form: a setting is a line `#key = value` (no space after `#`), a table header
//! `#[table]`; prose comments start with `# `. A setting marked `# example` has no default
//! and shows a value. Plain settings come first, then the tables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use halley_engine::observe::Kinds;
use halley_http::auth::AuthConfig;
use halley_http::hooks;
use halley_http::rpc;

use crate::config::{self, Cli, ServeArgs, Settings};

const SAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../packaging/halley.toml"
));

/// Key files the uncommented sample's `[tokens]` names, from the engine's test keys.
const KEYS: [(&str, &str); 2] = [
    ("rs256.pem", "../halley-engine/tests/keys/rsa-public.pem"),
    ("es256.pem", "../halley-engine/tests/keys/ec-public.pem"),
];

/// The setting or table header a line of the sample holds, uncommented.
fn setting(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[')
        .then_some(rest)
}

/// The sample with every setting and table uncommented: examples included when `examples`,
/// else only the plain settings that state a default (the lines before the first table).
fn uncommented(examples: bool) -> String {
    let mut text = String::new();
    for line in SAMPLE.lines() {
        let Some(line) = setting(line) else { continue };
        if !examples {
            if line.starts_with('[') {
                break;
            }
            if line.contains("# example") {
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halley-sample-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn resolve(dir: &Path, text: &str) -> anyhow::Result<Settings> {
    let path = dir.join("halley.toml");
    std::fs::write(&path, text).unwrap();
    ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
}

/// What the settings configure, for comparing two of them (the policy aside).
fn described(s: &Settings) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.http, s.engine, s.bayeux, s.broker, s.presence_grace, s.idempotency
    )
}

#[test]
fn the_sample_lists_every_option_of_serve() {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve exists");
    let mut listed = 0;
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "config" | "help" | "version") {
            continue;
        }
        let key = format!("#{long} = ");
        assert!(
            SAMPLE.lines().any(|l| l.starts_with(&key)),
            "packaging/halley.toml lacks `{key}…`"
        );
        listed += 1;
    }
    assert!(listed > 30, "only {listed} options found");
    for table in ["#[tokens]", "#[webhooks]", "#[[namespace]]"] {
        assert!(SAMPLE.lines().any(|l| l == table), "{table} missing");
    }
}

#[test]
fn the_sample_as_shipped_is_the_defaults() {
    let dir = scratch("shipped");
    let shipped = resolve(&dir, SAMPLE).expect("the sample parses");
    let defaults = ServeArgs::default().resolve().unwrap();
    assert_eq!(described(&shipped), described(&defaults));
    assert_eq!(shipped.policy.namespaces().count(), 0);
}

#[test]
fn the_defaults_the_sample_states_are_the_defaults() {
    let text = uncommented(false);
    assert!(text.lines().count() >= 20, "too few defaults:\n{text}");
    let dir = scratch("defaults");
    let stated = resolve(&dir, &text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    let defaults = ServeArgs::default().resolve().unwrap();
    assert_eq!(described(&stated), described(&defaults), "\n{text}");
}

#[test]
fn every_line_of_the_sample_uncommented_is_valid() {
    let text = uncommented(true);
    let dir = scratch("every");
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, source) in KEYS {
        std::fs::copy(base.join(source), dir.join(name)).unwrap();
    }
    // deny_unknown_fields: a misspelt key or a value of the wrong type fails here.
    let s = resolve(&dir, &text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    // The defaults the tables and the calls' options state.
    let auth = s.http.auth.as_ref().expect("auth-url is set");
    assert_eq!(auth.timeout, AuthConfig::DEFAULT_TIMEOUT);
    assert_eq!(auth.concurrency, AuthConfig::DEFAULT_CONCURRENCY);
    let rpc = s.http.rpc.as_ref().expect("rpc-url is set");
    assert_eq!(rpc.timeout, rpc::DEFAULT_RPC_TIMEOUT);
    assert_eq!(rpc.concurrency, rpc::DEFAULT_RPC_CONCURRENCY);
    let webhooks = s.http.webhooks.as_ref().expect("webhooks are set");
    assert_eq!(webhooks.events, Kinds::DEFAULT);
    assert_eq!(webhooks.queue_size, hooks::DEFAULT_QUEUE_SIZE);
    assert_eq!(webhooks.timeout, hooks::DEFAULT_TIMEOUT);
    assert_eq!(webhooks.attempts, hooks::DEFAULT_ATTEMPTS);
    let namespaces: Vec<String> = s.policy.namespaces().map(config::describe).collect();
    assert_eq!(
        namespaces,
        [
            "/chat/** subscribe=anyone publish=backend client-publish=true presence=true \
          history-size=100 history-ttl=86400 max-subscribers=1000 webhooks=presence,publish"
        ]
    );
    let chat = halley_proto::Channel::parse("/chat/a").unwrap();
    assert_eq!(s.engine.history(&chat).ttl, Duration::from_secs(86400));
}
