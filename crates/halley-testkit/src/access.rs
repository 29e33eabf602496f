//! The access setup the control API tests share: `/chat/**` needs a token (HS256 with
//! [`SECRET`]) to subscribe and the backend key ([`KEY`]) to publish; everything else is open.

use std::time::Duration;

use halley_engine::access::{
    AccessConfig, MintClaims, NamespaceConfig, Policy, PublishRule, SubscribeRule, TokenConfig,
};

/// The backend key.
pub const KEY: &str = "backend-key";
/// The tokens' HS256 secret.
pub const SECRET: &str = "test-secret-of-32-bytes-or-more!";

/// `/chat/**` needs a token; the backend key is [`KEY`].
pub fn chat_access() -> AccessConfig {
    let mut chat = NamespaceConfig::new("/chat/**");
    chat.subscribe = SubscribeRule::Token;
    chat.publish = PublishRule::Backend;
    AccessConfig {
        publish_key: Some(KEY.into()),
        tokens: TokenConfig {
            hs256_secret: Some(SECRET.into()),
            ..TokenConfig::default()
        },
        namespaces: vec![chat],
        app: None,
    }
}

/// The policy of [`chat_access`] (on the system clock).
pub fn chat_policy() -> Policy {
    Policy::new(chat_access()).unwrap()
}

/// A token of `policy` for `user`, to `/chat/**`, valid for an hour.
pub fn chat_token(policy: &Policy, user: &str) -> String {
    policy
        .mint(&MintClaims {
            sub: Some(user.into()),
            channels: vec!["/chat/**".into()],
            ttl: Some(Duration::from_secs(3600)),
            ..MintClaims::default()
        })
        .unwrap()
}
