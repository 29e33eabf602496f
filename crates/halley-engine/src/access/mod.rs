//! Access: the one decision on who may subscribe, publish, declare presence and read here.
//!
//! - [`Policy`] is built once from an [`AccessConfig`] (the publish key, token keys, the
//!   `[[namespace]]` tables of the config file) and is cheap to clone. Every entry point of every
//!   transport asks it, in two steps:
//!   1. [`Policy::authenticate`] turns what a request carries ([`Credentials`]: the backend key,
//!      a token) into a [`Principal`], once per connection or subscription, never per message;
//!   2. [`Policy::decide`] answers whether that principal may do one [`Action`].
//! - A refusal is a [`Denied`]: `Unauthenticated` (no or a bad credential, 401) or `Forbidden`
//!   (a good credential that does not cover this, 403), with a reason a client can show.
//!
//! With nothing configured ([`Policy::open`]) everything is allowed, as before this module. With a
//! publish key only, publishing from anywhere (HTTP, rupy, WebSocket frames, Bayeux) needs the key;
//! subscribing stays open. With namespaces, the first namespace whose pattern covers a channel
//! decides for it; a channel no namespace covers is closed to clients (the backend key still
//! passes).
//!
//! In detail:
//! - **Tokens** (JWT, `token.rs`): HS256 with a shared secret, RS256 and ES256 with a public key.
//!   The header's `alg` must be the algorithm of a configured key (`none` and key confusion are
//!   refused). Claims: `sub`, `exp`, `nbf`, `iat`, `aud`/`iss` (required and checked only when
//!   configured), `channels`, `publish`, `info`. An empty `channels` claim is the same as none.
//! - **The backend key** is compared in constant time; a key presented where none is configured
//!   is ignored.
//! - **Without namespaces** (a key or token keys set): publishing needs the backend key or a
//!   token whose `publish` claim covers the channel; everything else is open.
//! - **With namespaces**: subscribe rules `anyone | token | user`, publish rules
//!   `backend | claim | anyone | nobody`; the backend passes everything but `nobody` and
//!   `presence = false`. A pattern is in a namespace only if every channel it can match is
//!   (`covers.rs`). History and reading presence are judged as subscribing; listing channels is
//!   the backend's.
//! - **Asking the application** (`ask.rs`): a namespace whose subscribe or publish rule is `app`
//!   makes [`Policy::judge`] answer [`Verdict::Ask`]; [`crate::Engine::authorize`] then asks the
//!   configured [`Application`] with what the caller presented ([`Forwarded`]: cookies,
//!   `Authorization`, `Origin`), keeps the answer ([`AskCache`]) and fails closed.
//! - **The control API** needs the backend key, so it is closed when none is configured, even
//!   on an open policy.
//! - Refusals a credential could lift are 401 for a caller who presented none, 403 otherwise.
//! - **Stamping** (`stamp.rs`): in a namespace with `stamp = true`, [`Policy::stamp`] gives what
//!   a client's publish must carry under `"from"` (its token's `sub` and `info`, or `null`), so
//!   that who said something is the server's word, not the client's.
//!
//! Limits: [`CLOCK_LEEWAY_SECS`] (clock skew on `exp`/`nbf`), [`MAX_TOKEN_LEN`] (bytes of a
//! token read before its signature is checked), [`MAX_REVOCATIONS`] (users with a revocation in
//! force; beyond it [`Policy::revoke`] refuses).
//!
//! Invariant: pure decisions over parsed inputs — no I/O, no clock reads other than
//! [`Policy::now`], which tests can replace.

mod ask;
mod config;
mod covers;
mod stamp;
mod token;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use halley_proto::{Channel, Pattern};
use subtle::ConstantTimeEq;

pub use self::ask::{
    Application, AskCache, AskKind, Forwarded, MAX_CACHE_TIME, MAX_CACHED_ANSWERS, MAX_VOUCHED,
    Question, Vouched,
};
pub use self::config::{
    AccessConfig, AccessError, AppConfig, MAX_REVOCATIONS, MintClaims, NamespaceConfig,
    PublishRule, SubscribeRule, TokenConfig,
};
use self::covers::{NsPattern, NsPatternError, Target, pattern_covers};
pub use self::stamp::{NotAnObject, Stamp};
pub use self::token::{CLOCK_LEEWAY_SECS, MAX_TOKEN_LEN};
use self::token::{MintedClaims, Verifier, seconds};

/// What a request presents. Extracting these from HTTP headers, query strings or a Bayeux
/// handshake's `ext` is the transport's job; judging them is this module's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The backend (publish) key, from `X-Halley-Key`, `?key=` or a Bayeux `ext.key`.
    pub key: Option<&'a str>,
    /// A JWT, from `Authorization: Bearer`, `?token=` or a Bayeux `ext.token`.
    pub token: Option<&'a str>,
    /// What the application may recognise the caller by (`Cookie`, the whole `Authorization`
    /// header, `Origin`), forwarded to it when a namespace asks it (`ask.rs`).
    pub cookie: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub origin: Option<&'a str>,
}

/// Who a caller is, once authenticated. Shared (an `Arc`) by everything a connection holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// Presented the backend key: may do everything, including the control API.
    pub backend: bool,
    /// Holds a valid token.
    pub token: bool,
    /// The token's `sub`.
    pub user: Option<Box<str>>,
    /// The token's `exp`, Unix seconds: an open connection ends then, with a notice.
    pub expires: Option<u64>,
    /// The token's `iat`, Unix seconds (for revocation).
    pub issued_at: Option<u64>,
    /// The token's `info`: presence info the application vouches for, compact JSON.
    pub info: Option<Box<str>>,
    /// The token's `channels` claim: patterns the holder may subscribe to.
    pub channels: Vec<Pattern>,
    /// The token's `publish` claim: patterns the holder may publish to.
    pub publish: Vec<Pattern>,
    /// What the caller presented for the application to judge: kept only when some namespace
    /// asks the application (`subscribe`/`publish = "app"`).
    pub forwarded: Option<Box<Forwarded>>,
}

/// What an open connection keeps of its token to end it when the token lapses: not the whole
/// identity (its claims' patterns and info are needed only when the connection starts).
#[derive(Debug, Clone, PartialEq)]
pub struct Lapse {
    pub expires: Option<u64>,
    pub issued_at: Option<u64>,
    /// Shared with the hub's user index (the control API), which is keyed by it.
    pub user: Option<Arc<str>>,
}

impl Lapse {
    /// What can make `who`'s token lapse; `None` when nothing can (no token, or a token with
    /// neither an expiry nor a subject to revoke).
    pub fn from_identity(who: &Identity) -> Option<Lapse> {
        (who.token && (who.expires.is_some() || who.user.is_some())).then(|| Lapse::of(who))
    }

    fn of(who: &Identity) -> Lapse {
        Lapse {
            expires: who.expires,
            issued_at: who.issued_at,
            user: who.user.as_deref().map(Arc::from),
        }
    }
}

/// An authenticated caller.
pub type Principal = Arc<Identity>;

/// Where a publish comes from: the application's side, or a client's open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST`/`GET /pub`, rupy `/push`, an inbox send: an HTTP request of its own.
    Http,
    /// A frame on a native WebSocket, or a Bayeux publish (any Bayeux transport). Namespaces
    /// may forbid these (`client_publish = false`).
    Client,
}

/// One thing a caller wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Receive what is published on a channel or pattern (every `/sub` transport, `/pull`,
    /// Bayeux subscribe).
    Subscribe(&'a Pattern),
    Publish(&'a Channel, Via),
    /// Declare presence (be seen) on a channel.
    Presence(&'a Channel),
    /// Read a channel's recent messages (`/api/history`).
    History(&'a Channel),
    /// Read who is present on a channel or under a prefix (`/api/presence`).
    ReadPresence(&'a Pattern),
    /// List channels and subscriber counts (`/api/channels`).
    ListChannels,
    /// Open a Bayeux session.
    Handshake,
    /// The application's control API (disconnect a user, unsubscribe a user, list).
    Control,
}

/// Why a caller may not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential where one is needed, or one that is not valid (bad signature, expired,
    /// wrong audience, revoked, wrong key…). HTTP 401, Bayeux `401::`.
    #[error("{0}")]
    Unauthenticated(Cow<'static, str>),
    /// A valid credential that does not allow this. HTTP 403, Bayeux `403::`.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// The application that decides this could not be asked (down, slow, busy): refused
    /// rather than allowed. HTTP 503, Bayeux `503::`.
    #[error("{0}")]
    Unavailable(Cow<'static, str>),
}

/// What the policy says when it does not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The application decides (a namespace with `subscribe`/`publish = "app"`): ask it about
    /// this, through [`crate::Engine::authorize`].
    Ask(AskKind, String),
}

/// The policy. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    shared: Arc<Shared>,
}

struct Namespace {
    pattern: NsPattern,
    config: NamespaceConfig,
}

struct Shared {
    anonymous: Principal,
    backend: Principal,
    /// No key, no token keys, no namespaces: everything allowed (but the control API).
    open: bool,
    publish_key: Option<Box<[u8]>>,
    verifier: Option<Verifier>,
    namespaces: Vec<Namespace>,
    /// Answers of the application, when some namespace asks it.
    asked: Option<AskCache>,
    /// user → tokens issued (`iat`) before this Unix second are refused.
    revoked: Mutex<HashMap<Box<str>, u64>>,
    /// Whether `revoked` has anything, so the common case takes no lock.
    any_revoked: AtomicBool,
    clock: Clock,
}

type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("open", &self.shared.open)
            .field("publish_key", &self.shared.publish_key.is_some())
            .field("tokens", &self.shared.verifier.is_some())
            .field("namespaces", &self.shared.namespaces.len())
            .finish()
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::open()
    }
}

fn unauthenticated(why: &'static str) -> Denied {
    Denied::Unauthenticated(Cow::Borrowed(why))
}

fn forbidden(why: &'static str) -> Denied {
    Denied::Forbidden(Cow::Borrowed(why))
}

/// A refusal that a credential might lift: 401 for a caller who presented none, 403 for one
/// whose credential does not cover it.
fn refuse(who: &Identity, why: String) -> Denied {
    if who.backend || who.token {
        Denied::Forbidden(Cow::Owned(why))
    } else {
        Denied::Unauthenticated(Cow::Owned(why))
    }
}

impl Policy {
    /// Everything allowed to everyone: nothing configured.
    pub fn open() -> Policy {
        Policy::build(AccessConfig::default(), Box::new(system_clock))
            .expect("an empty configuration is valid")
    }

    /// The policy `config` describes, on the system clock.
    pub fn new(config: AccessConfig) -> Result<Policy, AccessError> {
        Policy::build(config, Box::new(system_clock))
    }

    /// The same, with `clock` (Unix seconds) instead of the system clock: for tests.
    pub fn with_clock(
        config: AccessConfig,
        clock: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<Policy, AccessError> {
        Policy::build(config, Box::new(clock))
    }

    fn build(config: AccessConfig, clock: Clock) -> Result<Policy, AccessError> {
        let verifier = Verifier::new(&config.tokens)?;
        let mut namespaces = Vec::with_capacity(config.namespaces.len());
        for ns in config.namespaces {
            let bad = |reason: String| AccessError::BadNamespace {
                pattern: ns.channels.clone(),
                reason,
            };
            let pattern = NsPattern::parse(&ns.channels).map_err(|e| {
                bad(match e {
                    NsPatternError::Channel(e) => e.to_string(),
                    NsPatternError::MisplacedSub => "{sub} must be a whole segment".to_owned(),
                })
            })?;
            if ns.subscribe == SubscribeRule::User && !pattern.has_sub() {
                return Err(bad("subscribe = \"user\" needs a {sub} segment".to_owned()));
            }
            let app_rule = if ns.subscribe == SubscribeRule::App {
                Some("subscribe")
            } else if ns.publish == PublishRule::App {
                Some("publish")
            } else {
                None
            };
            if let (Some(rule), None) = (app_rule, &config.app) {
                return Err(AccessError::NoApplication {
                    pattern: ns.channels.clone(),
                    rule,
                });
            }
            namespaces.push(Namespace {
                pattern,
                config: ns,
            });
        }
        let publish_key = config
            .publish_key
            .filter(|k| !k.is_empty())
            .map(|k| k.into_bytes().into_boxed_slice());
        let asks = namespaces.iter().any(|ns| {
            ns.config.subscribe == SubscribeRule::App || ns.config.publish == PublishRule::App
        });
        let asked = config
            .app
            .filter(|_| asks)
            .map(|app| AskCache::new(app.cache_ttl));
        Ok(Policy {
            shared: Arc::new(Shared {
                anonymous: Arc::new(Identity::default()),
                backend: Arc::new(Identity {
                    backend: true,
                    ..Identity::default()
                }),
                open: publish_key.is_none() && verifier.is_none() && namespaces.is_empty(),
                publish_key,
                verifier,
                namespaces,
                asked,
                revoked: Mutex::new(HashMap::new()),
                any_revoked: AtomicBool::new(false),
                clock,
            }),
        })
    }

    /// Nothing configured: every decision but the control API is yes.
    pub fn is_open(&self) -> bool {
        self.shared.open
    }

    /// Now, in Unix seconds: the only clock this module reads.
    pub fn now(&self) -> u64 {
        (self.shared.clock)()
    }

    /// The caller who presents nothing. One shared allocation.
    pub fn anonymous(&self) -> Principal {
        self.shared.anonymous.clone()
    }

    /// The first namespace (in config order) whose pattern covers `channel`, `{sub}` standing
    /// for any one segment.
    pub fn namespace(&self, channel: &Channel) -> Option<&NamespaceConfig> {
        self.find(Target::Channel(channel)).map(|ns| &ns.config)
    }

    /// The namespaces, in config order.
    pub fn namespaces(&self) -> impl Iterator<Item = &NamespaceConfig> {
        self.shared.namespaces.iter().map(|ns| &ns.config)
    }

    fn find(&self, target: Target<'_>) -> Option<&Namespace> {
        self.shared
            .namespaces
            .iter()
            .find(|ns| ns.pattern.covers(target, None))
    }

    /// Refuse tokens of `user` issued (`iat`) before `before` (Unix seconds), from now on
    /// and at the next [`Policy::check_open`] of connections already open. A token of that
    /// user without `iat` is refused too. Bounded by [`MAX_REVOCATIONS`].
    pub fn revoke(&self, user: &str, before: u64) -> Result<(), AccessError> {
        let mut table = self
            .shared
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(at) = table.get_mut(user) {
            *at = (*at).max(before);
        } else if table.len() >= MAX_REVOCATIONS {
            return Err(AccessError::RevocationsFull);
        } else {
            table.insert(user.into(), before);
        }
        self.shared.any_revoked.store(true, Ordering::Release);
        Ok(())
    }

    /// Drops revocations older than `before` (Unix seconds): once every token issued before
    /// a revocation has expired anyway, the entry protects nothing.
    pub fn prune_revocations(&self, before: u64) {
        let mut table = self
            .shared
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        table.retain(|_, at| *at >= before);
        self.shared
            .any_revoked
            .store(!table.is_empty(), Ordering::Release);
    }

    fn is_revoked(&self, user: Option<&str>, issued_at: Option<u64>) -> bool {
        let Some(user) = user else { return false };
        if !self.shared.any_revoked.load(Ordering::Acquire) {
            return false;
        }
        let table = self
            .shared
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        table
            .get(user)
            .is_some_and(|&before| issued_at.is_none_or(|iat| iat < before))
    }

    /// Whether an open connection's identity still holds now: its token not expired, not
    /// revoked. Called at heartbeat ticks.
    pub fn check_open(&self, who: &Identity) -> Result<(), Denied> {
        if who.backend || !who.token {
            return Ok(());
        }
        self.check_lapse(&Lapse::of(who))
    }

    /// [`Policy::check_open`] for what an open connection keeps of its token ([`Lapse`]).
    pub fn check_lapse(&self, lapse: &Lapse) -> Result<(), Denied> {
        if lapse
            .expires
            .is_some_and(|exp| self.now() >= exp.saturating_add(CLOCK_LEEWAY_SECS))
        {
            return Err(unauthenticated("token expired"));
        }
        if self.is_revoked(lapse.user.as_deref(), lapse.issued_at) {
            return Err(unauthenticated("token revoked"));
        }
        Ok(())
    }

    /// Who presents `credentials`. Nothing presented is [`Policy::anonymous`], not an error;
    /// a credential presented and not valid is `Unauthenticated` (a wrong key, a bad token).
    /// An empty key or token counts as none. A key presented where none is configured grants
    /// nothing and is ignored (an open server stays open to clients that send one); when both
    /// are presented, a right key wins.
    ///
    /// When some namespace asks the application, what the application may recognise the caller
    /// by ([`Forwarded`]) is kept in the principal, and a token presented where no token key
    /// is configured is the application's to judge (forwarded, not refused).
    pub fn authenticate(&self, credentials: Credentials<'_>) -> Result<Principal, Denied> {
        let s = &*self.shared;
        if let (Some(key), Some(expected)) =
            (credentials.key.filter(|k| !k.is_empty()), &s.publish_key)
        {
            return if bool::from(key.as_bytes().ct_eq(expected)) {
                Ok(s.backend.clone())
            } else {
                Err(unauthenticated("wrong key"))
            };
        }
        let forwarded = s.asked.as_ref().and_then(|_| {
            let text = |v: Option<&str>| v.filter(|v| !v.is_empty()).map(Box::from);
            let forwarded = Forwarded {
                cookie: text(credentials.cookie),
                authorization: text(credentials.authorization),
                origin: text(credentials.origin),
                token: text(credentials.token).filter(|_| s.verifier.is_none()),
            };
            (!forwarded.is_empty()).then(|| Box::new(forwarded))
        });
        let token = credentials
            .token
            .filter(|t| !t.is_empty())
            .filter(|_| !(s.verifier.is_none() && s.asked.is_some()));
        let Some(token) = token else {
            return Ok(match forwarded {
                None => self.anonymous(),
                Some(forwarded) => Arc::new(Identity {
                    forwarded: Some(forwarded),
                    ..Identity::default()
                }),
            });
        };
        let verifier = s
            .verifier
            .as_ref()
            .ok_or_else(|| unauthenticated("tokens are not configured"))?;
        let claims = verifier.verify(token)?;
        let now = self.now();
        let expires = seconds(claims.exp)?;
        if expires.is_some_and(|exp| now >= exp.saturating_add(CLOCK_LEEWAY_SECS)) {
            return Err(unauthenticated("token expired"));
        }
        if seconds(claims.nbf)?.is_some_and(|nbf| now.saturating_add(CLOCK_LEEWAY_SECS) < nbf) {
            return Err(unauthenticated("token not yet valid"));
        }
        let issued_at = seconds(claims.iat)?;
        if self.is_revoked(claims.sub.as_deref(), issued_at) {
            return Err(unauthenticated("token revoked"));
        }
        let patterns = |list: Vec<String>| -> Result<Vec<Pattern>, Denied> {
            list.iter()
                .map(|p| Pattern::parse(p).map_err(|_| unauthenticated("malformed token")))
                .collect()
        };
        Ok(Arc::new(Identity {
            backend: false,
            token: true,
            user: claims.sub.map(String::into_boxed_str),
            expires,
            issued_at,
            info: claims.info.map(|v| v.to_string().into_boxed_str()),
            channels: patterns(claims.channels)?,
            publish: patterns(claims.publish)?,
            forwarded,
        }))
    }

    /// An HS256 token for development (`halley token`), signed with the configured secret,
    /// `iat` now and `aud`/`iss` as configured, so that this policy accepts it.
    pub fn mint(&self, claims: &MintClaims) -> Result<String, AccessError> {
        for p in claims.channels.iter().chain(&claims.publish) {
            Pattern::parse(p).map_err(|e| AccessError::BadPattern {
                pattern: p.clone(),
                reason: e.to_string(),
            })?;
        }
        let verifier = self.shared.verifier.as_ref().ok_or(AccessError::NoSecret)?;
        let iat = self.now();
        verifier.mint(MintedClaims {
            sub: claims.sub.as_deref(),
            iat,
            exp: claims.ttl.map(|ttl| iat.saturating_add(ttl.as_secs())),
            aud: None,
            iss: None,
            channels: &claims.channels,
            publish: &claims.publish,
            info: claims.info.as_ref(),
        })
    }

    /// May `who` do `action`? For what the application decides ([`Verdict::Ask`]) this is a
    /// refusal (`Unavailable`): entry points that can meet such namespaces ask through
    /// [`crate::Engine::authorize`], which asks the application.
    pub fn decide(&self, who: &Identity, action: Action<'_>) -> Result<(), Denied> {
        match self.judge(who, action)? {
            Verdict::Allow => Ok(()),
            Verdict::Ask(..) => Err(Denied::Unavailable(Cow::Borrowed(
                "the application decides this and was not asked",
            ))),
        }
    }

    /// What the policy says of `who` doing `action`: yes, no, or ask the application.
    pub fn judge(&self, who: &Identity, action: Action<'_>) -> Result<Verdict, Denied> {
        let s = &*self.shared;
        if let Action::Control = action {
            return match (&s.publish_key, who.backend) {
                (None, _) => Err(forbidden("the control API needs --publish-key")),
                (Some(_), true) => Ok(Verdict::Allow),
                (Some(_), false) if who.token => {
                    Err(forbidden("the control API needs the publish key"))
                }
                (Some(_), false) => Err(unauthenticated("the control API needs the publish key")),
            };
        }
        if s.open || matches!(action, Action::Handshake) {
            return Ok(Verdict::Allow);
        }
        if s.namespaces.is_empty() {
            return match action {
                Action::Publish(channel, _) => self.publish_by_claim(who, channel),
                _ => Ok(Verdict::Allow),
            };
        }
        match action {
            Action::Subscribe(p) | Action::ReadPresence(p) => {
                self.subscribe(who, Target::Pattern(p))
            }
            Action::History(c) => self.subscribe(who, Target::Channel(c)),
            Action::Presence(c) => {
                let target = Target::Channel(c);
                match self.find(target) {
                    Some(ns) if !ns.config.presence => Err(Denied::Forbidden(Cow::Owned(format!(
                        "presence is off on {c}"
                    )))),
                    _ => self.subscribe(who, target),
                }
            }
            Action::Publish(c, via) => self.publish(who, c, via),
            Action::ListChannels if who.backend => Ok(Verdict::Allow),
            Action::ListChannels => Err(refuse(
                who,
                "listing channels needs the publish key".to_owned(),
            )),
            Action::Handshake | Action::Control => Ok(Verdict::Allow),
        }
    }

    /// The application's answer to `question` if one is kept ([`AskCache`]).
    pub fn cached_answer(&self, question: &Question<'_>) -> Option<Result<Vouched, Denied>> {
        let cache = self.shared.asked.as_ref()?;
        cache.get(&AskCache::key(question), self.now())
    }

    /// Keeps the application's answer to `question` (a refusal for being unreachable is not
    /// kept).
    pub fn remember_answer(&self, question: &Question<'_>, answer: &Result<Vouched, Denied>) {
        if let Some(cache) = &self.shared.asked {
            cache.put(AskCache::key(question), answer, self.now());
        }
    }

    /// Whether some namespace asks the application.
    pub fn asks_application(&self) -> bool {
        self.shared.asked.is_some()
    }

    /// Publishing with no namespaces: the backend, or a token whose `publish` claim covers it.
    fn publish_by_claim(&self, who: &Identity, channel: &Channel) -> Result<Verdict, Denied> {
        if who.backend || claims_cover(&who.publish, Target::Channel(channel)) {
            Ok(Verdict::Allow)
        } else if who.token {
            Err(Denied::Forbidden(Cow::Owned(format!(
                "token does not allow publishing to {channel}"
            ))))
        } else {
            Err(unauthenticated(
                "publishing needs the publish key or a token",
            ))
        }
    }

    fn subscribe(&self, who: &Identity, target: Target<'_>) -> Result<Verdict, Denied> {
        let Some(ns) = self.find(target) else {
            return uncovered(who, target);
        };
        if who.backend {
            return Ok(Verdict::Allow);
        }
        match ns.config.subscribe {
            SubscribeRule::Anyone => Ok(Verdict::Allow),
            SubscribeRule::App => Ok(Verdict::Ask(AskKind::Subscribe, target.to_string())),
            SubscribeRule::Token if !who.token => Err(refuse(
                who,
                format!("subscribing to {target} needs a token"),
            )),
            SubscribeRule::Token
                if who.channels.is_empty() || claims_cover(&who.channels, target) =>
            {
                Ok(Verdict::Allow)
            }
            SubscribeRule::Token => Err(Denied::Forbidden(Cow::Owned(format!(
                "token does not allow {target}"
            )))),
            SubscribeRule::User => match who.user.as_deref() {
                Some(user) if who.token && ns.pattern.covers(target, Some(user)) => {
                    Ok(Verdict::Allow)
                }
                Some(_) if who.token => Err(Denied::Forbidden(Cow::Owned(format!(
                    "{target} belongs to another user"
                )))),
                _ => Err(refuse(
                    who,
                    format!("{target} needs a token with a subject"),
                )),
            },
        }
    }

    fn publish(&self, who: &Identity, channel: &Channel, via: Via) -> Result<Verdict, Denied> {
        let target = Target::Channel(channel);
        let Some(ns) = self.find(target) else {
            return uncovered(who, target);
        };
        let rule = ns.config.publish;
        if rule == PublishRule::Nobody {
            return Err(Denied::Forbidden(Cow::Owned(format!(
                "nobody may publish to {channel}"
            ))));
        }
        if who.backend {
            return Ok(Verdict::Allow);
        }
        if via == Via::Client && !ns.config.client_publish {
            return Err(Denied::Forbidden(Cow::Owned(format!(
                "clients may not publish to {channel} from a connection"
            ))));
        }
        match rule {
            PublishRule::Anyone => Ok(Verdict::Allow),
            PublishRule::App => Ok(Verdict::Ask(AskKind::Publish, channel.to_string())),
            PublishRule::Claim if claims_cover(&who.publish, target) => Ok(Verdict::Allow),
            PublishRule::Claim if who.token => Err(Denied::Forbidden(Cow::Owned(format!(
                "token does not allow publishing to {channel}"
            )))),
            PublishRule::Claim => Err(refuse(
                who,
                format!("publishing to {channel} needs a token"),
            )),
            PublishRule::Backend | PublishRule::Nobody => Err(refuse(
                who,
                format!("publishing to {channel} needs the publish key"),
            )),
        }
    }
}

/// `who`, with what the application vouched for (a user, presence info) when it did.
pub fn vouched(who: &Principal, vouched: Vouched) -> Principal {
    if vouched.user.is_none() && vouched.info.is_none() {
        return who.clone();
    }
    let mut identity = Identity::clone(who);
    if let Some(user) = vouched.user {
        identity.user = Some(user);
    }
    if let Some(info) = vouched.info {
        identity.info = Some(info);
    }
    Arc::new(identity)
}

fn claims_cover(claims: &[Pattern], target: Target<'_>) -> bool {
    claims.iter().any(|claim| pattern_covers(claim, target))
}

fn uncovered(who: &Identity, target: Target<'_>) -> Result<Verdict, Denied> {
    if who.backend {
        Ok(Verdict::Allow)
    } else {
        Err(refuse(who, format!("no namespace allows {target}")))
    }
}
