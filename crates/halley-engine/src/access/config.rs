//! What the policy is built from: the access parts of the configuration (the publish key,
//! token keys, the application to ask, the `[[namespace]]` tables), the errors of building it,
//! and what a development token carries.

/// Everything the policy is built from (the `[access]`-related parts of the config file and
/// the `--publish-key` flag). Key material is passed in already read: this crate reads no files.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub publish_key: Option<String>,
    pub tokens: TokenConfig,
    pub namespaces: Vec<NamespaceConfig>,
    /// Asking the application (`auth-url`); namespaces may use the `app` rules only with it.
    pub app: Option<AppConfig>,
}

/// How the application's answers are kept. Where and how it is asked is the transport's
/// business ([`Application`](super::Application)).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// How long an answer (yes or no) is kept per (credentials, action, channel).
    pub cache_ttl: std::time::Duration,
}

/// How tokens are verified. With no key set, tokens are refused (401) wherever presented.
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// RS256 public key, PEM.
    pub rs256_public_key: Option<Vec<u8>>,
    /// ES256 public key, PEM.
    pub es256_public_key: Option<Vec<u8>>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
}

/// Who may subscribe in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeRule {
    #[default]
    Anyone,
    /// Any valid token; when the token has a `channels` claim, the claim must cover the pattern.
    Token,
    /// The namespace pattern has a `{sub}` segment that must equal the token's subject.
    User,
    /// The application decides (`auth-url`), from the caller's cookies, `Authorization` and
    /// `Origin`.
    App,
}

/// Who may publish in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishRule {
    /// The backend key only.
    #[default]
    Backend,
    /// A token whose `publish` claim covers the channel (or the backend key).
    Claim,
    Anyone,
    /// Not even the backend.
    Nobody,
    /// The application decides (`auth-url`); the backend key passes.
    App,
}

/// One `[[namespace]]` of the config file.
#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    /// A pattern (`/chat/**`), possibly with a `{sub}` segment (`/user/{sub}/**`).
    pub channels: String,
    pub subscribe: SubscribeRule,
    pub publish: PublishRule,
    /// Whether clients may publish from an open connection (WebSocket frames, Bayeux).
    pub client_publish: bool,
    pub presence: bool,
    pub history_size: Option<usize>,
    pub history_ttl: Option<std::time::Duration>,
    pub max_subscribers: Option<usize>,
    /// Whether the server writes each client publish's sender into its data (`"from"`, see
    /// [`Stamp`](super::Stamp)), so that a chat name cannot be forged.
    pub stamp: bool,
    /// The kinds of events the application is told about for these channels (`webhooks`),
    /// instead of the server-wide default ([`crate::Engine::set_observer`]).
    pub webhooks: Option<crate::observe::Kinds>,
}

impl NamespaceConfig {
    /// A namespace with the defaults of the config file: anyone subscribes, the backend
    /// publishes, clients may publish (where the rule allows), presence on.
    pub fn new(channels: impl Into<String>) -> NamespaceConfig {
        NamespaceConfig {
            channels: channels.into(),
            subscribe: SubscribeRule::default(),
            publish: PublishRule::default(),
            client_publish: true,
            presence: true,
            history_size: None,
            history_ttl: None,
            max_subscribers: None,
            stamp: false,
            webhooks: None,
        }
    }
}

/// Why a policy could not be built, or a token minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{key} is not a usable PEM public key: {reason}")]
    BadPem { key: &'static str, reason: String },
    #[error("hs256-secret is empty")]
    EmptySecret,
    #[error("hs256-secret is not usable: {0}")]
    BadSecret(String),
    #[error("namespace {pattern:?}: {reason}")]
    BadNamespace { pattern: String, reason: String },
    #[error("pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("minting needs an hs256-secret")]
    NoSecret,
    #[error("minting a token: {0}")]
    Mint(String),
    #[error("the revocation table is full ({MAX_REVOCATIONS} users)")]
    RevocationsFull,
    #[error("namespace {pattern:?}: {rule} = \"app\" needs auth-url (the application to ask)")]
    NoApplication { pattern: String, rule: &'static str },
}

/// Most users with a revocation in force. Each entry is a user name and a time, kept until
/// [`Policy::prune_revocations`](super::Policy::prune_revocations) drops it, so the table is bounded: at the limit
/// [`Policy::revoke`](super::Policy::revoke) refuses a new user (`AccessError::RevocationsFull`) rather than drop an
/// older revocation, which would silently let revoked tokens back in. Re-revoking a user
/// already in the table always succeeds.
pub const MAX_REVOCATIONS: usize = 100_000;

/// What a development token carries ([`Policy::mint`](super::Policy::mint), `halley token`).
#[derive(Debug, Clone, Default)]
pub struct MintClaims {
    pub sub: Option<String>,
    /// Patterns the holder may subscribe to.
    pub channels: Vec<String>,
    /// Patterns the holder may publish to.
    pub publish: Vec<String>,
    pub info: Option<serde_json::Value>,
    /// Lifetime from [`Policy::now`](super::Policy::now); `None` mints a token that does not expire.
    pub ttl: Option<std::time::Duration>,
}
