//! The binary's access commands: `halley check-config` and `halley token`.

use std::path::PathBuf;
use std::process::{Command, Output};

use halley_engine::access::{AccessConfig, Action, Credentials, Policy, TokenConfig, Via};
use halley_proto::{Channel, Pattern};

fn halley(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halley"))
        .args(args)
        .env_remove("HALLEY_TOKEN_SECRET")
        .env_remove("HALLEY_CONFIG")
        .env_remove("HALLEY_WEBHOOK_URL")
        .env_remove("HALLEY_WEBHOOK_SECRET")
        .env_remove("HALLEY_RPC_URL")
        .output()
        .expect("run halley")
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("halley-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"
publish-key = "k"

[tokens]
hs256-secret = "s3cret"
audience = "halley"

[[namespace]]
channels = "/chat/**"
subscribe = "token"
publish = "claim"
history-size = 50

[[namespace]]
channels = "/user/{sub}/**"
subscribe = "user"
client-publish = false
presence = false
"#;

#[test]
fn check_config_prints_the_namespaces() {
    let path = write("good.toml", GOOD);
    let out = halley(&["check-config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "/chat/** subscribe=token publish=claim client-publish=true presence=true history-size=50",
            "/user/{sub}/** subscribe=user publish=backend client-publish=false presence=false",
        ]
    );
}

#[test]
fn check_config_prints_webhooks_and_rpc() {
    let path = write(
        "calls.toml",
        "rpc-url = \"http://127.0.0.1:9000/rpc\"\nrpc-secret = \"r\"\n\n\
         [webhooks]\nurl = \"http://127.0.0.1:9000/events\"\nsecret = \"s\"\n\n\
         [[namespace]]\nchannels = \"/chat/**\"\nwebhooks = [\"publish\"]\n",
    );
    let out = halley(&["check-config", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "/chat/** subscribe=anyone publish=backend client-publish=true presence=true webhooks=publish",
            "webhooks http://127.0.0.1:9000/events events=presence,occupancy queue-size=10000 timeout=5 attempts=5",
            "rpc http://127.0.0.1:9000/rpc timeout=5 concurrency=64 signed=true",
        ]
    );
}

#[test]
fn check_config_refuses_bad_files() {
    let check = |name: &str, text: &str, needle: &str| {
        let path = write(name, text);
        let out = halley(&["check-config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    };
    check(
        "misplaced.toml",
        "[[namespace]]\nchannels = \"/user/x{sub}/**\"\n",
        "whole segment",
    );
    check(
        "rule.toml",
        "[[namespace]]\nchannels = \"/a/**\"\nsubscribe = \"everyone\"\n",
        "unknown variant",
    );
    check(
        "unknown.toml",
        "[[namespace]]\nchannels = \"/a/**\"\nsubscrib = \"anyone\"\n",
        "unknown field",
    );
    check(
        "webhook-url.toml",
        "[webhooks]\nurl = \"https://app.example/events\"\nsecret = \"s\"\n",
        "only http:// is supported",
    );
    check(
        "webhook-secret.toml",
        "[webhooks]\nurl = \"http://127.0.0.1:9000/events\"\n",
        "webhooks need a secret",
    );
    check(
        "nokey.toml",
        "[tokens]\nrs256-public-key = \"missing.pem\"\n",
        "rs256-public-key",
    );
}

#[test]
fn minted_token_is_accepted_by_the_same_secret() {
    let path = write("mint.toml", GOOD);
    let out = halley(&[
        "token",
        "--sub",
        "alice",
        "--channel",
        "/chat/**",
        "--publish",
        "/chat/room",
        "--info",
        r#"{"name": "Alice"}"#,
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let policy = Policy::new(AccessConfig {
        tokens: TokenConfig {
            hs256_secret: Some("s3cret".into()),
            audience: Some("halley".into()),
            ..TokenConfig::default()
        },
        ..AccessConfig::default()
    })
    .unwrap();
    let who = policy
        .authenticate(Credentials {
            token: Some(&token),
            ..Credentials::default()
        })
        .unwrap();
    assert_eq!(who.user.as_deref(), Some("alice"));
    assert_eq!(who.info.as_deref(), Some(r#"{"name":"Alice"}"#));
    assert_eq!(who.channels, vec![Pattern::parse("/chat/**").unwrap()]);
    let room = Channel::parse("/chat/room").unwrap();
    assert_eq!(
        policy.decide(&who, Action::Publish(&room, Via::Client)),
        Ok(())
    );

    // --secret alone works too; a token needs a secret from somewhere.
    let out = halley(&["token", "--sub", "bob", "--secret", "other"]);
    assert!(out.status.success());
    let out = halley(&["token", "--sub", "bob"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an HS256 secret"));
}
