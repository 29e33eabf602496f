//! The access policy against hostile and honest tokens: every kind of credential × every
//! action, each with the answer it must get (Ok, 401 or 403).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use halley_engine::access::{
    AccessConfig, AccessError, Action, AppConfig, AskKind, Credentials, Denied, NamespaceConfig,
    Policy, PublishRule, SubscribeRule, TokenConfig, Verdict, Via,
};
use halley_proto::{Channel, Pattern};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("keys/ec-public.pem");
const NOW: u64 = 1_800_000_000;
const KEY: &str = "backend-key";

fn namespace(channels: &str, subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
    NamespaceConfig {
        subscribe,
        publish,
        ..NamespaceConfig::new(channels)
    }
}

fn config() -> AccessConfig {
    AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            rs256_public_key: Some(RSA_PUBLIC.to_vec()),
            es256_public_key: Some(EC_PUBLIC.to_vec()),
            audience: Some("halley".into()),
            issuer: Some("app".into()),
            ..TokenConfig::default()
        },
        namespaces: vec![
            namespace("/chat/**", SubscribeRule::Token, PublishRule::Claim),
            namespace("/user/{sub}/**", SubscribeRule::User, PublishRule::Backend),
            NamespaceConfig {
                client_publish: false,
                presence: false,
                ..namespace("/news/**", SubscribeRule::Anyone, PublishRule::Anyone)
            },
            namespace("/locked/**", SubscribeRule::Anyone, PublishRule::Nobody),
        ],
        app: None,
    }
}

fn policy(config: AccessConfig) -> (Policy, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(NOW));
    let c = clock.clone();
    let policy = Policy::with_clock(config, move || c.load(Ordering::Relaxed)).unwrap();
    (policy, clock)
}

fn claims(extra: Value) -> Value {
    let mut base = json!({
        "sub": "alice", "aud": "halley", "iss": "app",
        "iat": NOW - 10, "exp": NOW + 3600,
        "channels": ["/chat/**", "/user/alice/**"],
        "publish": ["/chat/room"],
        "info": {"name": "Alice",   "n": 1},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    let key = EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `alg: none`, no signature.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// A valid token whose signature has one byte changed.
fn tampered(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.to_owned().into_bytes();
    sig[4] = if sig[4] == b'A' { b'B' } else { b'A' };
    format!("{rest}.{}", String::from_utf8(sig).unwrap())
}

/// What an outcome is, for the table: `ok`, `401` or `403`, and the reason.
fn outcome(result: Result<(), Denied>) -> String {
    match result {
        Ok(()) => "ok".into(),
        Err(Denied::Unauthenticated(why)) => format!("401 {why}"),
        Err(Denied::Forbidden(why)) => format!("403 {why}"),
        Err(Denied::Unavailable(why)) => format!("503 {why}"),
    }
}

fn code(result: &str) -> &str {
    result.split(' ').next().unwrap()
}

#[test]
fn credentials_times_actions() {
    let (policy, _) = policy(config());
    policy.revoke("mallory", NOW - 5).unwrap();
    let p = |s: &str| Pattern::parse(s).unwrap();
    let c = |s: &str| Channel::parse(s).unwrap();
    let (chat, chat_all, mine, theirs, news, locked, nowhere) = (
        p("/chat/room"),
        p("/chat/**"),
        p("/user/alice/inbox"),
        p("/user/bob/inbox"),
        p("/news/today"),
        c("/locked/x"),
        p("/nowhere"),
    );
    let (room, other_room, news_c, alice_c) = (
        c("/chat/room"),
        c("/chat/other"),
        c("/news/today"),
        c("/user/alice/inbox"),
    );
    let actions: Vec<(&str, Action<'_>)> = vec![
        ("sub chat", Action::Subscribe(&chat)),
        ("sub chat/**", Action::Subscribe(&chat_all)),
        ("sub mine", Action::Subscribe(&mine)),
        ("sub theirs", Action::Subscribe(&theirs)),
        ("sub news", Action::Subscribe(&news)),
        ("sub nowhere", Action::Subscribe(&nowhere)),
        ("pub room http", Action::Publish(&room, Via::Http)),
        ("pub room client", Action::Publish(&room, Via::Client)),
        ("pub other", Action::Publish(&other_room, Via::Http)),
        ("pub news http", Action::Publish(&news_c, Via::Http)),
        ("pub news client", Action::Publish(&news_c, Via::Client)),
        ("pub mine", Action::Publish(&alice_c, Via::Http)),
        ("pub locked", Action::Publish(&locked, Via::Http)),
        ("presence room", Action::Presence(&room)),
        ("presence news", Action::Presence(&news_c)),
        ("history room", Action::History(&room)),
        ("read presence", Action::ReadPresence(&chat_all)),
        ("list", Action::ListChannels),
        ("handshake", Action::Handshake),
        ("control", Action::Control),
    ];
    let valid = rs256(&claims(json!({})));
    let tokens: Vec<(&str, String)> = vec![
        ("expired", rs256(&claims(json!({"exp": NOW - 60})))),
        ("not yet valid", rs256(&claims(json!({"nbf": NOW + 60})))),
        ("bad signature", tampered(&valid)),
        ("alg none", unsigned(&claims(json!({})))),
        // The public key's PEM as an HMAC secret: the classic key confusion.
        ("key confusion", hs256(&claims(json!({})), RSA_PUBLIC)),
        ("wrong audience", rs256(&claims(json!({"aud": "other"})))),
        ("no audience", rs256(&claims(json!({"aud": null})))),
        ("wrong issuer", rs256(&claims(json!({"iss": "evil"})))),
        ("revoked", rs256(&claims(json!({"sub": "mallory"})))),
        ("malformed", "not.a.token".to_owned()),
        (
            "wrong channel",
            rs256(&claims(json!({"channels": ["/other/**"], "publish": []}))),
        ),
        ("valid", valid.clone()),
        ("valid es256", es256(&claims(json!({})))),
    ];
    // Expected codes per credential, in the order of `actions`.
    // A credential that does not authenticate gets 401 whatever it asks.
    let all_401 = "401 ".repeat(actions.len());
    let expected: Vec<(&str, String)> = vec![
        (
            "none",
            "401 401 401 401 ok 401 401 401 401 ok 403 401 403 401 403 401 401 401 ok 401".into(),
        ),
        (
            "backend",
            "ok ok ok ok ok ok ok ok ok ok ok ok 403 ok 403 ok ok ok ok ok".into(),
        ),
        ("wrong key", all_401.clone()),
        ("expired", all_401.clone()),
        ("not yet valid", all_401.clone()),
        ("bad signature", all_401.clone()),
        ("alg none", all_401.clone()),
        ("key confusion", all_401.clone()),
        ("wrong audience", all_401.clone()),
        ("no audience", all_401.clone()),
        ("wrong issuer", all_401.clone()),
        ("revoked", all_401.clone()),
        ("malformed", all_401.clone()),
        (
            "wrong channel",
            "403 403 ok 403 ok 403 403 403 403 ok 403 403 403 403 403 403 403 403 ok 403".into(),
        ),
        (
            "valid",
            "ok ok ok 403 ok 403 ok ok 403 ok 403 403 403 ok 403 ok ok 403 ok 403".into(),
        ),
        (
            "valid es256",
            "ok ok ok 403 ok 403 ok ok 403 ok 403 403 403 ok 403 ok ok 403 ok 403".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, want) in &expected {
        let token = tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str());
        let creds = match *name {
            "none" => Credentials::default(),
            "backend" => Credentials {
                key: Some(KEY),
                token: None,
                ..Credentials::default()
            },
            "wrong key" => Credentials {
                key: Some("nope"),
                token: None,
                ..Credentials::default()
            },
            _ => Credentials {
                key: None,
                token: Some(token.unwrap()),
                ..Credentials::default()
            },
        };
        let want: Vec<&str> = want.split_whitespace().collect();
        assert_eq!(want.len(), actions.len(), "row {name}");
        for ((label, action), want) in actions.iter().zip(want) {
            let got = match policy.authenticate(creds) {
                Ok(who) => outcome(policy.decide(&who, *action)),
                Err(denied) => outcome(Err(denied)),
            };
            if code(&got) != want {
                failures.push(format!("{name} × {label}: want {want}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn reason(policy: &Policy, token: &str) -> String {
    match policy.authenticate(Credentials {
        key: None,
        token: Some(token),
        ..Credentials::default()
    }) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn refusals_say_why() {
    let (policy, _) = policy(config());
    policy.revoke("mallory", NOW - 5).unwrap();
    let valid = rs256(&claims(json!({})));
    let check = |token: String, want: &str| assert_eq!(reason(&policy, &token), want);
    check(rs256(&claims(json!({"exp": NOW - 60}))), "token expired");
    check(
        rs256(&claims(json!({"nbf": NOW + 60}))),
        "token not yet valid",
    );
    check(tampered(&valid), "token signature is invalid");
    check(
        unsigned(&claims(json!({}))),
        "token algorithm none is not accepted",
    );
    check(
        hs256(&claims(json!({})), RSA_PUBLIC),
        "token algorithm HS256 is not accepted here",
    );
    check(
        rs256(&claims(json!({"aud": "x"}))),
        "token audience is wrong",
    );
    check(rs256(&claims(json!({"iss": "x"}))), "token issuer is wrong");
    check(rs256(&claims(json!({"sub": "mallory"}))), "token revoked");
    check(rs256(&claims(json!({"sub": "mallory", "iat": NOW}))), "ok");
    check("garbage".into(), "malformed token");
    check(
        rs256(&claims(json!({"channels": ["nope"]}))),
        "malformed token",
    );
    check(valid, "ok");
    let (open, _) = self::policy(AccessConfig::default());
    assert_eq!(reason(&open, "a.b.c"), "tokens are not configured");
    let who = policy
        .authenticate(Credentials {
            key: Some("nope"),
            token: None,
            ..Credentials::default()
        })
        .unwrap_err();
    assert_eq!(who.to_string(), "wrong key");
}

#[test]
fn identity_carries_the_claims() {
    let (policy, _) = policy(config());
    let who = policy
        .authenticate(Credentials {
            key: None,
            token: Some(&rs256(&claims(json!({})))),
            ..Credentials::default()
        })
        .unwrap();
    assert!(who.token && !who.backend);
    assert_eq!(who.user.as_deref(), Some("alice"));
    assert_eq!(who.expires, Some(NOW + 3600));
    assert_eq!(who.issued_at, Some(NOW - 10));
    assert_eq!(who.info.as_deref(), Some(r#"{"n":1,"name":"Alice"}"#));
    assert_eq!(who.channels.len(), 2);
    assert_eq!(who.publish, vec![Pattern::parse("/chat/room").unwrap()]);
}

#[test]
fn open_connections_end_on_expiry_and_revocation() {
    let (policy, clock) = policy(config());
    let who = policy
        .authenticate(Credentials {
            key: None,
            token: Some(&rs256(&claims(json!({})))),
            ..Credentials::default()
        })
        .unwrap();
    assert_eq!(policy.check_open(&who), Ok(()));
    clock.store(NOW + 3600 + 60, Ordering::Relaxed);
    assert_eq!(outcome(policy.check_open(&who)), "401 token expired");
    clock.store(NOW, Ordering::Relaxed);
    policy.revoke("alice", NOW).unwrap();
    assert_eq!(outcome(policy.check_open(&who)), "401 token revoked");
    policy.prune_revocations(NOW + 1);
    assert_eq!(policy.check_open(&who), Ok(()));
    let backend = policy
        .authenticate(Credentials {
            key: Some(KEY),
            token: None,
            ..Credentials::default()
        })
        .unwrap();
    assert_eq!(policy.check_open(&backend), Ok(()));
}

#[test]
fn open_policy_allows_everything_but_control() {
    let policy = Policy::open();
    assert!(policy.is_open());
    let who = policy
        .authenticate(Credentials {
            key: Some("whatever"),
            token: None,
            ..Credentials::default()
        })
        .unwrap();
    let ch = Channel::parse("/a").unwrap();
    let pat = Pattern::parse("/**").unwrap();
    for action in [
        Action::Subscribe(&pat),
        Action::Publish(&ch, Via::Http),
        Action::Publish(&ch, Via::Client),
        Action::Presence(&ch),
        Action::History(&ch),
        Action::ReadPresence(&pat),
        Action::ListChannels,
        Action::Handshake,
    ] {
        assert_eq!(policy.decide(&who, action), Ok(()), "{action:?}");
    }
    assert_eq!(
        outcome(policy.decide(&who, Action::Control)),
        "403 the control API needs --publish-key"
    );
}

#[test]
fn publish_key_without_namespaces() {
    let (policy, _) = policy(AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some("s3cret".into()),
            ..TokenConfig::default()
        },
        namespaces: vec![],
        app: None,
    });
    assert!(!policy.is_open());
    let anon = policy.anonymous();
    let room = Channel::parse("/chat/room").unwrap();
    let pat = Pattern::parse("/chat/**").unwrap();
    assert_eq!(
        outcome(policy.decide(&anon, Action::Publish(&room, Via::Client))),
        "401 publishing needs the publish key or a token"
    );
    assert_eq!(policy.decide(&anon, Action::Subscribe(&pat)), Ok(()));
    assert_eq!(policy.decide(&anon, Action::ListChannels), Ok(()));
    assert_eq!(code(&outcome(policy.decide(&anon, Action::Control))), "401");
    let minted = policy
        .mint(&halley_engine::access::MintClaims {
            sub: Some("bob".into()),
            publish: vec!["/chat/*".into()],
            ttl: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        })
        .unwrap();
    let bob = policy
        .authenticate(Credentials {
            key: None,
            token: Some(&minted),
            ..Credentials::default()
        })
        .unwrap();
    assert_eq!(
        policy.decide(&bob, Action::Publish(&room, Via::Http)),
        Ok(())
    );
    let other = Channel::parse("/other").unwrap();
    assert_eq!(
        code(&outcome(
            policy.decide(&bob, Action::Publish(&other, Via::Http))
        )),
        "403"
    );
    assert_eq!(code(&outcome(policy.decide(&bob, Action::Control))), "403");
    // An RS256 token is refused where only HS256 is configured.
    assert_eq!(
        reason(&policy, &rs256(&claims(json!({})))),
        "token algorithm RS256 is not accepted here"
    );
}

#[test]
fn bad_configurations_are_errors() {
    let bad = |config: AccessConfig| Policy::new(config).unwrap_err().to_string();
    let with_ns = |ns: NamespaceConfig| AccessConfig {
        namespaces: vec![ns],
        ..AccessConfig::default()
    };
    assert!(
        bad(AccessConfig {
            tokens: TokenConfig {
                rs256_public_key: Some(b"nope".to_vec()),
                ..TokenConfig::default()
            },
            ..AccessConfig::default()
        })
        .contains("rs256-public-key")
    );
    assert!(bad(with_ns(NamespaceConfig::new("/u/x{sub}"))).contains("whole segment"));
    assert!(bad(with_ns(NamespaceConfig::new("chat"))).contains("start with"));
    assert!(
        bad(with_ns(namespace(
            "/u/**",
            SubscribeRule::User,
            PublishRule::Backend
        )))
        .contains("{sub}")
    );
    let (policy, _) = policy(config());
    assert_eq!(
        policy
            .namespace(&Channel::parse("/user/bob/x").unwrap())
            .map(|n| n.channels.as_str()),
        Some("/user/{sub}/**")
    );
    assert!(
        policy
            .namespace(&Channel::parse("/nowhere").unwrap())
            .is_none()
    );
}

/// Namespaces whose rules are `app`: the policy answers "ask the application", except for the
/// backend key, and only with an application configured.
#[test]
fn app_namespaces_ask_the_application() {
    let app_config = |app: Option<AppConfig>| AccessConfig {
        publish_key: Some(KEY.into()),
        namespaces: vec![namespace("/app/**", SubscribeRule::App, PublishRule::App)],
        app,
        ..AccessConfig::default()
    };
    assert!(matches!(
        Policy::new(app_config(None)),
        Err(AccessError::NoApplication {
            rule: "subscribe",
            ..
        })
    ));
    let (policy, _) = policy(app_config(Some(AppConfig {
        cache_ttl: std::time::Duration::from_secs(30),
    })));
    let room = Channel::parse("/app/room").unwrap();
    let all = Pattern::parse("/app/**").unwrap();
    let who = policy
        .authenticate(Credentials {
            cookie: Some("session=abc"),
            origin: Some("http://app.example"),
            // No token key is configured: a token is the application's to judge.
            token: Some("opaque"),
            ..Credentials::default()
        })
        .unwrap();
    let forwarded = who.forwarded.as_deref().expect("kept for the application");
    assert_eq!(forwarded.cookie.as_deref(), Some("session=abc"));
    assert_eq!(forwarded.token.as_deref(), Some("opaque"));
    let check = |action, expected: Verdict| {
        assert_eq!(policy.judge(&who, action), Ok(expected));
    };
    check(
        Action::Subscribe(&all),
        Verdict::Ask(AskKind::Subscribe, "/app/**".into()),
    );
    check(
        Action::History(&room),
        Verdict::Ask(AskKind::Subscribe, "/app/room".into()),
    );
    check(
        Action::Presence(&room),
        Verdict::Ask(AskKind::Subscribe, "/app/room".into()),
    );
    check(
        Action::Publish(&room, Via::Client),
        Verdict::Ask(AskKind::Publish, "/app/room".into()),
    );
    // `decide` alone cannot ask: it refuses rather than allows.
    assert!(matches!(
        policy.decide(&who, Action::Subscribe(&all)),
        Err(Denied::Unavailable(_))
    ));
    let backend = policy
        .authenticate(Credentials {
            key: Some(KEY),
            ..Credentials::default()
        })
        .unwrap();
    assert_eq!(
        policy.judge(&backend, Action::Publish(&room, Via::Http)),
        Ok(Verdict::Allow)
    );
    // Outside the app namespace nothing is asked (and nothing is allowed: no namespace).
    let other = Pattern::parse("/other").unwrap();
    assert!(policy.judge(&who, Action::Subscribe(&other)).is_err());
}

/// Without a namespace that asks the application, nothing of the caller's cookies is kept.
#[test]
fn forwarded_credentials_are_kept_only_for_the_application() {
    let (policy, _) = policy(config());
    let who = policy
        .authenticate(Credentials {
            cookie: Some("session=abc"),
            ..Credentials::default()
        })
        .unwrap();
    assert!(who.forwarded.is_none());
    assert!(Arc::ptr_eq(&who, &policy.anonymous()));
}
