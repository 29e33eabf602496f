//! Command line, environment and config file, merged with flags > env > file > defaults.
//!
//! clap reads each flag or its `HALLEY_*` variable (flag first); whatever neither gave is taken
//! from the TOML file named by `--config`, and the rest from the defaults of the library crates.
//!
//! Access (`halley_engine::access`) comes from `--publish-key`, `--token-secret` and the file's
//! `[tokens]` (hs256-secret, rs256-public-key and es256-public-key as paths relative to the
//! file, audience, issuer) and `[[namespace]]` tables (channels, subscribe, publish,
//! client-publish, presence, history-size, history-ttl, max-subscribers, stamp, webhooks), and
//! `--auth-url` (with its cache time, timeout and concurrency) for namespaces whose rules are
//! `app`. The key files are read here and the [`Policy`] is built here, so a bad key, pattern or
//! URL stops startup.
//!
//! Calls to the application: `[webhooks]` (url, secret, events, queue-size, timeout, attempts;
//! `--webhook-url` and `--webhook-secret` beat the table) and `rpc-url`, `rpc-timeout`,
//! `rpc-concurrency`, `rpc-secret`. URLs are checked here ([`Endpoint::parse`]), so a typo
//! stops startup rather than the first event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use halley_engine::access::{
    AccessConfig, AppConfig, MintClaims, NamespaceConfig, Policy, PublishRule, SubscribeRule,
    TokenConfig,
};
use halley_engine::bayeux::BayeuxConfig;
use halley_engine::observe::Kinds;
use halley_engine::{EngineConfig, HistoryRules};
use halley_http::auth::AuthConfig;
use halley_http::hooks::{self, WebhookConfig};
use halley_http::outbound::Endpoint;
use halley_http::rpc::RpcConfig;
use halley_http::{HttpConfig, TlsConfig};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "halley",
    version,
    about = "Halley: a Comet server with every transport in one binary."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `halley` alone means `halley serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at startup: the size of the serve variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print an HS256 token for development, signed with the configured secret.
    Token(TokenArgs),
    /// Validate a config file and print the namespaces it defines.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// `halley token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The token's subject (`sub`): the user.
    #[arg(long)]
    pub sub: Option<String>,
    /// A pattern the holder may subscribe to (repeatable), e.g. '/chat/**'.
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// A pattern the holder may publish to (repeatable).
    #[arg(long = "publish")]
    pub publish: Vec<String>,
    /// Presence info the token vouches for, as JSON.
    #[arg(long)]
    pub info: Option<String>,
    /// Seconds the token is valid; 0 for a token that does not expire [default: 3600].
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Config file whose [tokens] section (secret, audience, issuer) to use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The HS256 secret (beats the config file's).
    #[arg(long, env = "HALLEY_TOKEN_SECRET")]
    pub secret: Option<String>,
}

impl TokenArgs {
    /// The token, minted with a policy built as `halley serve` would build it.
    pub fn mint(self) -> anyhow::Result<String> {
        let mut args = ServeArgs {
            config: self.config,
            token_secret: self.secret,
            ..ServeArgs::default()
        };
        args.load_file()?;
        let policy = args.policy()?;
        let info = match &self.info {
            Some(text) => Some(serde_json::from_str(text).context("--info must be valid JSON")?),
            None => None,
        };
        policy
            .mint(&MintClaims {
                sub: self.sub,
                channels: self.channels,
                publish: self.publish,
                info,
                ttl: (self.ttl > 0).then(|| Duration::from_secs(self.ttl)),
            })
            .map_err(|e| match e {
                halley_engine::access::AccessError::NoSecret => anyhow::anyhow!(
                    "halley token needs an HS256 secret: --secret, HALLEY_TOKEN_SECRET or \
                     [tokens] hs256-secret in --config"
                ),
                other => other.into(),
            })
    }
}

/// `[tokens]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokensFile {
    pub hs256_secret: Option<String>,
    /// Path of a PEM file, relative to the config file.
    pub rs256_public_key: Option<PathBuf>,
    /// Path of a PEM file, relative to the config file.
    pub es256_public_key: Option<PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// One `[[namespace]]` of the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamespaceFile {
    pub channels: String,
    #[serde(default)]
    pub subscribe: SubscribeFile,
    #[serde(default)]
    pub publish: PublishFile,
    pub client_publish: Option<bool>,
    pub presence: Option<bool>,
    pub history_size: Option<usize>,
    /// Seconds.
    pub history_ttl: Option<u64>,
    pub max_subscribers: Option<usize>,
    /// Write each client publish's sender into its data (`"from"`).
    pub stamp: Option<bool>,
    /// The kinds of events these channels tell the application (instead of `[webhooks]`
    /// events): `presence`, `occupancy`, `publish`.
    pub webhooks: Option<Vec<String>>,
}

/// `[webhooks]` of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebhooksFile {
    pub url: Option<String>,
    pub secret: Option<String>,
    /// What every channel reports unless its namespace says [default: presence, occupancy].
    pub events: Option<Vec<String>>,
    pub queue_size: Option<usize>,
    /// Seconds one POST may take.
    pub timeout: Option<u64>,
    pub attempts: Option<u32>,
}

/// Most events a webhook queue may be configured to hold: ~0.3 KiB each, 1,000,000 is
/// ~300 MiB, more than a queue for an application that is away should take.
const MAX_WEBHOOK_QUEUE: usize = 1_000_000;

/// Longest timeout for one webhook POST or RPC call, in seconds: beyond a minute an answer is
/// of no use to anyone waiting on it.
const MAX_CALL_TIMEOUT_SECS: u64 = 60;

/// Most RPC calls in flight configurable: each holds a connection to the application and a
/// file descriptor of the 20,000 this process has.
const MAX_RPC_CONCURRENCY: usize = 10_000;

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeFile {
    #[default]
    Anyone,
    Token,
    User,
    App,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishFile {
    #[default]
    Backend,
    Claim,
    Anyone,
    Nobody,
    App,
}

impl NamespaceFile {
    fn to_config(&self) -> anyhow::Result<NamespaceConfig> {
        let webhooks = self
            .webhooks
            .as_deref()
            .map(Kinds::parse)
            .transpose()
            .with_context(|| format!("namespace {:?}: webhooks", self.channels))?;
        Ok(NamespaceConfig {
            channels: self.channels.clone(),
            subscribe: match self.subscribe {
                SubscribeFile::Anyone => SubscribeRule::Anyone,
                SubscribeFile::Token => SubscribeRule::Token,
                SubscribeFile::User => SubscribeRule::User,
                SubscribeFile::App => SubscribeRule::App,
            },
            publish: match self.publish {
                PublishFile::Backend => PublishRule::Backend,
                PublishFile::Claim => PublishRule::Claim,
                PublishFile::Anyone => PublishRule::Anyone,
                PublishFile::Nobody => PublishRule::Nobody,
                PublishFile::App => PublishRule::App,
            },
            client_publish: self.client_publish.unwrap_or(true),
            presence: self.presence.unwrap_or(true),
            history_size: self.history_size,
            history_ttl: self.history_ttl.map(Duration::from_secs),
            max_subscribers: self.max_subscribers,
            stamp: self.stamp.unwrap_or(false),
            webhooks,
        })
    }
}

/// The namespaces' `history-size` and `history-ttl`, for the brokers: a channel keeps what the
/// first namespace covering it says, the defaults where it says nothing.
fn history_rules(policy: &Policy) -> HistoryRules {
    if !policy
        .namespaces()
        .any(|ns| ns.history_size.is_some() || ns.history_ttl.is_some())
    {
        return HistoryRules::default();
    }
    let policy = policy.clone();
    HistoryRules::new(move |channel| {
        policy
            .namespace(channel)
            .map_or((None, None), |ns| (ns.history_size, ns.history_ttl))
    })
}

/// One line of `halley check-config`: a namespace and its rules.
pub fn describe(ns: &NamespaceConfig) -> String {
    let mut line = format!(
        "{} subscribe={} publish={} client-publish={} presence={}",
        ns.channels,
        format!("{:?}", ns.subscribe).to_lowercase(),
        format!("{:?}", ns.publish).to_lowercase(),
        ns.client_publish,
        ns.presence
    );
    if let Some(n) = ns.history_size {
        line.push_str(&format!(" history-size={n}"));
    }
    if let Some(ttl) = ns.history_ttl {
        line.push_str(&format!(" history-ttl={}", ttl.as_secs()));
    }
    if let Some(n) = ns.max_subscribers {
        line.push_str(&format!(" max-subscribers={n}"));
    }
    if ns.stamp {
        line.push_str(" stamp=true");
    }
    if let Some(kinds) = ns.webhooks {
        line.push_str(&format!(" webhooks={}", names(kinds)));
    }
    line
}

/// Event kinds for display: `presence,occupancy`, or `none`.
fn names(kinds: Kinds) -> String {
    if kinds.is_empty() {
        "none".to_owned()
    } else {
        kinds.names().join(",")
    }
}

/// The lines of `halley check-config` about calls to the application.
pub fn describe_calls(http: &HttpConfig) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(a) = &http.auth {
        lines.push(format!(
            "auth {} timeout={}ms concurrency={}",
            a.url,
            a.timeout.as_millis(),
            a.concurrency
        ));
    }
    if let Some(w) = &http.webhooks {
        lines.push(format!(
            "webhooks {} events={} queue-size={} timeout={} attempts={}",
            w.url,
            names(w.events),
            w.queue_size,
            w.timeout.as_secs(),
            w.attempts
        ));
    }
    if let Some(r) = &http.rpc {
        lines.push(format!(
            "rpc {} timeout={} concurrency={} signed={}",
            r.url,
            r.timeout.as_secs(),
            r.concurrency,
            r.secret.is_some()
        ));
    }
    lines
}

/// Every option; each has a HALLEY_* environment variable and a key in the TOML file.
#[derive(Args, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of the options below (keys as the long flags, e.g. hold-timeout = 25).
    #[arg(long, env = "HALLEY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "HALLEY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM file with the TLS certificate chain (the server's first); with --tls-key, the one
    /// port speaks TLS too (HTTP/2 or HTTP/1.1 by ALPN), beside plain HTTP; SIGHUP reloads
    /// both files [default: none, no TLS].
    #[arg(long, env = "HALLEY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1) [default: none].
    #[arg(long, env = "HALLEY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Address of a TLS-only listener besides the one port, once --tls-cert and --tls-key
    /// are set [default: none].
    #[arg(long, env = "HALLEY_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// Seconds a long-poll or JSONP request is held with nothing to say [default: 25].
    #[arg(long, env = "HALLEY_HOLD_TIMEOUT")]
    pub hold_timeout: Option<u64>,
    /// Seconds between heartbeats on open streams [default: 15].
    #[arg(long, env = "HALLEY_HEARTBEAT")]
    pub heartbeat: Option<u64>,
    /// Seconds allowed to send request headers (slowloris guard) [default: 10].
    #[arg(long, env = "HALLEY_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Most open connections; more get 503 [default: 19500; the fd limit here is 20000].
    #[arg(long, env = "HALLEY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest request body or WebSocket message in bytes; larger gets 413 [default: 65536].
    #[arg(long, env = "HALLEY_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Comma-separated origins allowed from browsers (CORS, JSONP, iframe, WebSocket);
    /// empty or * allows any, with credentials (cookies) [default: any].
    #[arg(long, env = "HALLEY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Comma-separated reverse proxies (addresses, or networks as 10.0.0.0/8) whose
    /// X-Forwarded-For names the client, for the per-address Bayeux handshake rate
    /// [default: none: the TCP peer is the client].
    #[arg(long, env = "HALLEY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Require this key (X-Halley-Key header or key= parameter) to publish [default: none].
    #[arg(long, env = "HALLEY_PUBLISH_KEY")]
    pub publish_key: Option<String>,
    /// HS256 secret that tokens are signed with; beats [tokens] hs256-secret [default: none].
    #[arg(long, env = "HALLEY_TOKEN_SECRET")]
    pub token_secret: Option<String>,
    /// Ask this application (`http://…`) who may subscribe and publish on namespaces whose
    /// rule is `app` (a JSON POST with the caller's Cookie, Authorization and Origin)
    /// [default: none].
    #[arg(long, env = "HALLEY_AUTH_URL")]
    pub auth_url: Option<String>,
    /// Seconds an answer of the application is kept per (credentials, action, channel); 0
    /// asks every time [default: 30].
    #[arg(long, env = "HALLEY_AUTH_CACHE_TTL")]
    pub auth_cache_ttl: Option<u64>,
    /// Milliseconds the application has to answer; slower is refused with 503 [default: 2000].
    #[arg(long, env = "HALLEY_AUTH_TIMEOUT")]
    pub auth_timeout: Option<u64>,
    /// Questions to the application in flight at once [default: 64].
    #[arg(long, env = "HALLEY_AUTH_CONCURRENCY")]
    pub auth_concurrency: Option<usize>,
    /// `[tokens]` of the config file (no flag).
    #[arg(skip)]
    pub tokens: Option<TokensFile>,
    /// `[[namespace]]` tables of the config file (no flag).
    #[arg(skip)]
    #[serde(rename = "namespace")]
    pub namespaces: Option<Vec<NamespaceFile>>,
    /// Seconds open connections get to end on SIGTERM/SIGINT [default: 5].
    #[arg(long, env = "HALLEY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u64>,
    /// Seconds one write to a client may make no progress before the connection is ended
    /// (HTTP streams, long-poll answers, WebSocket frames alike) [default: 30].
    #[arg(long, env = "HALLEY_WRITE_STALL_TIMEOUT")]
    pub write_stall_timeout: Option<u64>,
    /// Path of the Bayeux endpoint (long-polling, callback-polling, WebSocket) [default: /cometd].
    #[arg(long, env = "HALLEY_COMETD_PATH")]
    pub cometd_path: Option<String>,
    /// Seconds a Bayeux session lives without a connect before its client must handshake
    /// again (maxInterval) [default: 30].
    #[arg(long, env = "HALLEY_SESSION_TIMEOUT")]
    pub session_timeout: Option<u64>,
    /// Most Bayeux sessions at once; a handshake beyond gets `503::too many sessions`
    /// [default: 100000].
    #[arg(long, env = "HALLEY_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Bayeux handshakes a second from one address (IPv6: one /64), in bursts of up to ten
    /// seconds' worth; one more gets `429::too many handshakes from this address`. 0: no limit.
    /// Behind a reverse proxy every client has the proxy's address [default: 100].
    #[arg(long, env = "HALLEY_HANDSHAKE_RATE")]
    pub handshake_rate: Option<u32>,
    /// Messages kept per channel for resume [default: 1000].
    #[arg(long, env = "HALLEY_HISTORY_SIZE")]
    pub history_size: Option<usize>,
    /// Seconds a message stays in history [default: 600].
    #[arg(long, env = "HALLEY_HISTORY_TTL")]
    pub history_ttl: Option<u64>,
    /// Messages buffered per subscriber before it is cut off as too slow [default: 1024].
    #[arg(long, env = "HALLEY_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most channels with history; publishing to a new one beyond gets 503 [default: 100000].
    #[arg(long, env = "HALLEY_MAX_CHANNELS")]
    pub max_channels: Option<usize>,
    /// Where messages, history and presence live: `memory` (this process only),
    /// `redis://host:port[/db]` to share them with every node on that Redis,
    /// `redis+sentinel://host:port[,host:port…]/<master>[/db]` for the master Sentinel names
    /// (query: `wait=<replicas>`, `wait-timeout=<ms>`, `epoch=master|offset`), or
    /// `nats://host:port[,host:port…]` for a NATS JetStream cluster [default: memory].
    #[arg(long, env = "HALLEY_BROKER")]
    pub broker: Option<String>,
    /// Seconds a chat member stays present after its last connection closed, so that
    /// long-poll gaps and reconnects don't announce leaving and joining [default: 10].
    #[arg(long, env = "HALLEY_PRESENCE_GRACE")]
    pub presence_grace: Option<u64>,
    /// Seconds an `Idempotency-Key` is remembered after its publish: a retry within it gets
    /// the first answer and is not published again [default: 300].
    #[arg(long, env = "HALLEY_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Option<u64>,
    /// Most idempotency keys this node keeps in their window with the memory broker (Redis
    /// keeps them itself); beyond it keyed publishes get 503 [default: 100000].
    #[arg(long, env = "HALLEY_IDEMPOTENCY_KEYS")]
    pub idempotency_keys: Option<usize>,
    /// Serve halley.js and the talk chat from this directory (clients/js) instead of the
    /// built-in copies, to edit them without rebuilding [default: built-in].
    #[arg(long, env = "HALLEY_ASSETS")]
    pub assets: Option<PathBuf>,
    /// Where to tell the application what happens (webhooks: joins, leaves, occupied and
    /// vacated channels, publishes where asked); beats [webhooks] url [default: none].
    #[arg(long, env = "HALLEY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The key webhooks are signed with (X-Halley-Signature: sha256=HMAC of the body); beats
    /// [webhooks] secret; required with a webhook url [default: none].
    #[arg(long, env = "HALLEY_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// `[webhooks]` of the config file (url, secret, events, queue-size, timeout, attempts).
    #[arg(skip)]
    pub webhooks: Option<WebhooksFile>,
    /// Where clients' calls go (POST /rpc/{method}, Bayeux /service/**) [default: none].
    #[arg(long, env = "HALLEY_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Seconds the application has to answer a call; then 504 [default: 5].
    #[arg(long, env = "HALLEY_RPC_TIMEOUT")]
    pub rpc_timeout: Option<u64>,
    /// Calls in flight at most; one more gets 503 at once [default: 64].
    #[arg(long, env = "HALLEY_RPC_CONCURRENCY")]
    pub rpc_concurrency: Option<usize>,
    /// Sign calls with this key, as webhooks are (X-Halley-Signature) [default: unsigned].
    #[arg(long, env = "HALLEY_RPC_SECRET")]
    pub rpc_secret: Option<String>,
}

/// Which broker the engine runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    Memory,
    /// A `redis://`, `rediss://` or `redis+sentinel://` URL.
    Redis(String),
    /// `nats://host:port[,host:port…]`: NATS servers with JetStream.
    Nats(String),
}

impl BrokerChoice {
    fn parse(text: &str) -> anyhow::Result<BrokerChoice> {
        match text.trim() {
            "" | "memory" => Ok(BrokerChoice::Memory),
            url if ["redis://", "rediss://", "redis+sentinel://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)) =>
            {
                Ok(BrokerChoice::Redis(url.to_owned()))
            }
            url if url.starts_with("nats://") => Ok(BrokerChoice::Nats(url.to_owned())),
            other => anyhow::bail!(
                "unknown broker {other:?}: use memory, redis://host:port[/db], \
                 redis+sentinel://host:port[,host:port…]/<master>[/db] or \
                 nats://host:port[,host:port…]"
            ),
        }
    }
}

pub struct Settings {
    pub presence_grace: Duration,
    pub idempotency: halley_engine::idempotency::Idempotency,
    pub http: HttpConfig,
    pub engine: EngineConfig,
    pub bayeux: BayeuxConfig,
    pub broker: BrokerChoice,
    pub policy: Policy,
}

macro_rules! merge {
    ($cli:ident, $file:ident, $($field:ident),*) => {
        $( if $cli.$field.is_none() { $cli.$field = $file.$field.take(); } )*
    };
}

impl ServeArgs {
    /// Fills what flags and environment left open from the config file.
    fn load_file(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let mut file: ServeArgs = toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?;
            // Paths in the file are relative to it, as [tokens]'s key files are.
            let base = path.parent().map(PathBuf::from).unwrap_or_default();
            for tls_file in [&mut file.tls_cert, &mut file.tls_key]
                .into_iter()
                .flatten()
            {
                *tls_file = base.join(&*tls_file);
            }
            merge!(
                self,
                file,
                listen,
                tls_cert,
                tls_key,
                tls_listen,
                hold_timeout,
                heartbeat,
                header_timeout,
                max_connections,
                body_limit,
                allowed_origins,
                trusted_proxies,
                publish_key,
                drain_timeout,
                write_stall_timeout,
                history_size,
                history_ttl,
                queue_capacity,
                max_channels,
                broker,
                cometd_path,
                session_timeout,
                max_sessions,
                handshake_rate,
                presence_grace,
                idempotency_window,
                idempotency_keys,
                assets,
                token_secret,
                auth_url,
                auth_cache_ttl,
                auth_timeout,
                auth_concurrency,
                tokens,
                namespaces,
                webhook_url,
                webhook_secret,
                webhooks,
                rpc_url,
                rpc_timeout,
                rpc_concurrency,
                rpc_secret
            );
        }
        Ok(())
    }

    /// The access policy: the publish key, token keys (key files read here, relative to the
    /// config file) and namespaces.
    fn policy(&self) -> anyhow::Result<Policy> {
        let base = self
            .config
            .as_deref()
            .and_then(|p| p.parent())
            .map(PathBuf::from)
            .unwrap_or_default();
        let file = self.tokens.as_ref();
        let read = |path: Option<&PathBuf>, key: &str| -> anyhow::Result<Option<Vec<u8>>> {
            path.map(|p| {
                let p = base.join(p);
                std::fs::read(&p).with_context(|| format!("reading {key} {}", p.display()))
            })
            .transpose()
        };
        let tokens = TokenConfig {
            hs256_secret: self
                .token_secret
                .clone()
                .or_else(|| file.and_then(|t| t.hs256_secret.clone())),
            rs256_public_key: read(
                file.and_then(|t| t.rs256_public_key.as_ref()),
                "rs256-public-key",
            )?,
            es256_public_key: read(
                file.and_then(|t| t.es256_public_key.as_ref()),
                "es256-public-key",
            )?,
            audience: file.and_then(|t| t.audience.clone()),
            issuer: file.and_then(|t| t.issuer.clone()),
        };
        let config = AccessConfig {
            app: self.auth_url.as_ref().map(|_| AppConfig {
                cache_ttl: Duration::from_secs(self.auth_cache_ttl.unwrap_or(30)),
            }),
            publish_key: self.publish_key.clone().filter(|k| !k.is_empty()),
            tokens,
            namespaces: self
                .namespaces
                .iter()
                .flatten()
                .map(NamespaceFile::to_config)
                .collect::<anyhow::Result<_>>()?,
        };
        Policy::new(config).context("access configuration")
    }

    /// `[webhooks]` with the flags over it; `None` when no url is given anywhere.
    fn webhooks(&mut self) -> anyhow::Result<Option<WebhookConfig>> {
        let file = self.webhooks.take().unwrap_or_default();
        let url = self.webhook_url.take().or(file.url);
        let secret = self.webhook_secret.take().or(file.secret);
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            anyhow::ensure!(
                secret.is_none(),
                "a webhook secret is set but no webhook url ([webhooks] url or --webhook-url)"
            );
            return Ok(None);
        };
        let url = Endpoint::parse(&url).context("webhook url")?;
        let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "webhooks need a secret to sign with ([webhooks] secret or --webhook-secret)"
            )
        })?;
        let mut config = WebhookConfig::new(url, secret);
        if let Some(events) = &file.events {
            config.events = Kinds::parse(events).context("[webhooks] events")?;
        }
        if let Some(n) = file.queue_size {
            anyhow::ensure!(
                (1..=MAX_WEBHOOK_QUEUE).contains(&n),
                "[webhooks] queue-size must be 1 to {MAX_WEBHOOK_QUEUE}"
            );
            config.queue_size = n;
        }
        if let Some(secs) = file.timeout {
            anyhow::ensure!(
                (1..=MAX_CALL_TIMEOUT_SECS).contains(&secs),
                "[webhooks] timeout must be 1 to {MAX_CALL_TIMEOUT_SECS} seconds"
            );
            config.timeout = Duration::from_secs(secs);
        }
        if let Some(n) = file.attempts {
            anyhow::ensure!(
                (1..=hooks::MAX_ATTEMPTS).contains(&n),
                "[webhooks] attempts must be 1 to {}",
                hooks::MAX_ATTEMPTS
            );
            config.attempts = n;
        }
        Ok(Some(config))
    }

    /// TLS: both files, or neither (and then no `tls-listen` either).
    fn tls(&self) -> anyhow::Result<Option<TlsConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsConfig {
                listen: self.tls_listen,
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => {
                anyhow::ensure!(
                    self.tls_listen.is_none(),
                    "tls-listen is set but tls-cert and tls-key are not"
                );
                Ok(None)
            }
            (Some(_), None) => anyhow::bail!("tls-cert is set but tls-key is not"),
            (None, Some(_)) => anyhow::bail!("tls-key is set but tls-cert is not"),
        }
    }

    /// `rpc-url` and its options; `None` without a url.
    fn rpc(&mut self) -> anyhow::Result<Option<RpcConfig>> {
        let Some(url) = self.rpc_url.take().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut config = RpcConfig::new(Endpoint::parse(&url).context("rpc-url")?);
        config.secret = self.rpc_secret.take().filter(|s| !s.is_empty());
        if let Some(secs) = self.rpc_timeout {
            anyhow::ensure!(
                (1..=MAX_CALL_TIMEOUT_SECS).contains(&secs),
                "rpc-timeout must be 1 to {MAX_CALL_TIMEOUT_SECS} seconds"
            );
            config.timeout = Duration::from_secs(secs);
        }
        if let Some(n) = self.rpc_concurrency {
            anyhow::ensure!(
                (1..=MAX_RPC_CONCURRENCY).contains(&n),
                "rpc-concurrency must be 1 to {MAX_RPC_CONCURRENCY}"
            );
            config.concurrency = n;
        }
        Ok(Some(config))
    }

    /// Fills what flags and environment left open from the config file, then the defaults.
    pub fn resolve(mut self) -> anyhow::Result<Settings> {
        self.load_file()?;
        let policy = self.policy()?;
        let auth = match &self.auth_url {
            None => None,
            Some(url) => Some(AuthConfig {
                url: Endpoint::parse(url).context("auth-url")?,
                timeout: self
                    .auth_timeout
                    .map_or(AuthConfig::DEFAULT_TIMEOUT, Duration::from_millis),
                concurrency: self
                    .auth_concurrency
                    .unwrap_or(AuthConfig::DEFAULT_CONCURRENCY),
            }),
        };
        if let Some(auth) = &auth {
            anyhow::ensure!(
                auth.timeout > Duration::ZERO,
                "auth-timeout must be at least 1 ms"
            );
            anyhow::ensure!(auth.concurrency > 0, "auth-concurrency must be at least 1");
        }
        let webhooks = self.webhooks()?;
        let rpc = self.rpc()?;
        let tls = self.tls()?;
        let secs = Duration::from_secs;
        let h = HttpConfig::default();
        let http = HttpConfig {
            listen: self.listen.unwrap_or(h.listen),
            hold_timeout: self.hold_timeout.map_or(h.hold_timeout, secs),
            heartbeat_interval: self.heartbeat.map_or(h.heartbeat_interval, secs),
            header_timeout: self.header_timeout.map_or(h.header_timeout, secs),
            max_connections: self.max_connections.unwrap_or(h.max_connections),
            body_limit: self.body_limit.unwrap_or(h.body_limit),
            allowed_origins: self.allowed_origins.unwrap_or(h.allowed_origins),
            trusted_proxies: trusted_proxies(self.trusted_proxies.as_deref().unwrap_or_default())?,
            drain_timeout: self.drain_timeout.map_or(h.drain_timeout, secs),
            write_stall_timeout: self.write_stall_timeout.map_or(h.write_stall_timeout, secs),
            retry: h.retry,
            cometd_path: self.cometd_path.unwrap_or(h.cometd_path),
            assets_dir: self.assets,
            webhooks,
            rpc,
            auth,
            tls,
        };
        anyhow::ensure!(
            http.cometd_path.starts_with('/'),
            "cometd-path must start with /"
        );
        anyhow::ensure!(
            http.write_stall_timeout > Duration::ZERO,
            "write-stall-timeout must be at least 1 second"
        );
        anyhow::ensure!(
            http.heartbeat_interval > Duration::ZERO,
            "heartbeat must be at least 1 second"
        );
        let e = EngineConfig::default();
        let engine = EngineConfig {
            history_size: self.history_size.unwrap_or(e.history_size),
            history_ttl: self.history_ttl.map_or(e.history_ttl, secs),
            queue_capacity: self.queue_capacity.unwrap_or(e.queue_capacity),
            replay_batch: e.replay_batch,
            max_channels: self.max_channels.unwrap_or(e.max_channels),
            history_rules: history_rules(&policy),
        };
        let bayeux = BayeuxConfig {
            timeout: http.hold_timeout,
            max_interval: self
                .session_timeout
                .map_or(BayeuxConfig::default().max_interval, secs),
            max_unacked: engine.queue_capacity,
            max_sessions: self
                .max_sessions
                .unwrap_or(BayeuxConfig::default().max_sessions),
            handshake_rate: self
                .handshake_rate
                .unwrap_or(BayeuxConfig::default().handshake_rate),
            ..BayeuxConfig::default()
        };
        anyhow::ensure!(bayeux.max_sessions > 0, "max-sessions must be at least 1");
        let broker = BrokerChoice::parse(self.broker.as_deref().unwrap_or("memory"))?;
        let idempotency = {
            let default = halley_engine::idempotency::Idempotency::default();
            halley_engine::idempotency::Idempotency {
                window: self.idempotency_window.map_or(default.window, secs),
                max_keys: self.idempotency_keys.unwrap_or(default.max_keys),
            }
        };
        anyhow::ensure!(
            idempotency.max_keys > 0 && !idempotency.window.is_zero(),
            "idempotency-window and idempotency-keys must be at least 1"
        );
        Ok(Settings {
            presence_grace: self
                .presence_grace
                .map_or(halley_engine::presence::DEFAULT_GRACE, secs),
            idempotency,
            http,
            engine,
            bayeux,
            broker,
            policy,
        })
    }
}

/// `--trusted-proxies`: each an address (one host) or a network in CIDR notation.
fn trusted_proxies(list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "trusted-proxies: {s:?} is neither an IP address nor a network (10.0.0.0/8)"
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("halley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9001\"\nhold-timeout = 7\nhistory-size = 5\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "halley",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--hold-timeout",
            "3",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve expected");
        };
        let settings = args.resolve().unwrap();
        assert_eq!(settings.http.listen.port(), 9001);
        assert_eq!(settings.http.hold_timeout, Duration::from_secs(3));
        assert_eq!(settings.engine.history_size, 5);
        assert_eq!(settings.http.body_limit, 64 * 1024);
        assert_eq!(settings.broker, BrokerChoice::Memory);
    }

    #[test]
    fn bayeux_session_budgets_are_read() {
        let defaults = ServeArgs::default().resolve().unwrap();
        assert_eq!(defaults.bayeux.max_sessions, 100_000);
        assert_eq!(defaults.bayeux.handshake_rate, 100);
        let settings =
            settings_from("bayeux.toml", "max-sessions = 500\nhandshake-rate = 0\n").unwrap();
        assert_eq!(settings.bayeux.max_sessions, 500);
        assert_eq!(settings.bayeux.handshake_rate, 0);
        assert!(settings_from("bayeux0.toml", "max-sessions = 0\n").is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        assert!(
            ServeArgs::default()
                .resolve()
                .unwrap()
                .http
                .trusted_proxies
                .is_empty()
        );
        let settings = settings_from(
            "proxies.toml",
            "trusted-proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n",
        )
        .unwrap();
        let nets: Vec<String> = settings
            .http
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let bad = settings_from("proxies-bad.toml", "trusted-proxies = [\"nginx\"]\n");
        let Err(error) = bad else {
            panic!("a name is not an address")
        };
        assert!(error.to_string().contains("\"nginx\""), "{error}");
    }

    fn settings_from(name: &str, text: &str) -> anyhow::Result<Settings> {
        let dir = std::env::temp_dir().join(format!("halley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
    }

    #[test]
    fn namespaces_set_their_channels_history() {
        let settings = settings_from(
            "history.toml",
            "history-size = 100\nhistory-ttl = 60\n\
             [[namespace]]\nchannels = \"/ticker/**\"\nhistory-size = 1\n\
             [[namespace]]\nchannels = \"/chat/**\"\nhistory-ttl = 3600\n",
        )
        .unwrap();
        let limits = |c: &str| {
            let l = settings
                .engine
                .history(&halley_proto::Channel::parse(c).unwrap());
            (l.size, l.ttl.as_secs())
        };
        assert_eq!(limits("/ticker/eur"), (1, 60));
        assert_eq!(limits("/chat/room"), (100, 3600));
        assert_eq!(limits("/other"), (100, 60));
    }

    #[test]
    fn app_rules_need_an_auth_url_that_halley_can_speak() {
        let ns = "[[namespace]]\nchannels = \"/team/**\"\nsubscribe = \"app\"\n";
        let error = settings_from("app-none.toml", ns).err().unwrap();
        assert!(format!("{error:#}").contains("needs auth-url"), "{error:#}");
        let https = format!("auth-url = \"https://app.example/auth\"\n{ns}");
        let error = settings_from("app-https.toml", &https).err().unwrap();
        assert!(format!("{error:#}").contains("only http://"), "{error:#}");
        let good = format!("auth-url = \"http://127.0.0.1:3000/auth\"\nauth-timeout = 500\n{ns}");
        let settings = settings_from("app-good.toml", &good).unwrap();
        assert_eq!(
            describe_calls(&settings.http),
            ["auth http://127.0.0.1:3000/auth timeout=500ms concurrency=64"]
        );
        let auth = settings.http.auth.unwrap();
        assert_eq!(auth.timeout, Duration::from_millis(500));
        assert_eq!(auth.concurrency, AuthConfig::DEFAULT_CONCURRENCY);
        assert!(settings.policy.asks_application());
    }

    #[test]
    fn broker_choices() {
        let check = |text: &str, expected: Option<BrokerChoice>| {
            assert_eq!(BrokerChoice::parse(text).ok(), expected, "{text:?}");
        };
        check("memory", Some(BrokerChoice::Memory));
        check("", Some(BrokerChoice::Memory));
        check(
            "redis://127.0.0.1:6379/2",
            Some(BrokerChoice::Redis("redis://127.0.0.1:6379/2".into())),
        );
        check(
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/halley?wait=1",
            Some(BrokerChoice::Redis(
                "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/halley?wait=1".into(),
            )),
        );
        check(
            "nats://127.0.0.1:4222,127.0.0.1:4223",
            Some(BrokerChoice::Nats(
                "nats://127.0.0.1:4222,127.0.0.1:4223".into(),
            )),
        );
        check("postgres://x", None);
        check("127.0.0.1:6379", None);
    }

    #[test]
    fn broker_from_file() {
        let dir = std::env::temp_dir().join(format!("halley-config-broker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(&path, "broker = \"redis://127.0.0.1:7000\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert_eq!(
            args.resolve().unwrap().broker,
            BrokerChoice::Redis("redis://127.0.0.1:7000".into())
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = std::env::temp_dir().join(format!("halley-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9001\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(args.resolve().is_err());
    }

    #[test]
    fn token_secret_flag_beats_the_file_and_namespaces_are_read() {
        let dir = std::env::temp_dir().join(format!("halley-config-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(
            &path,
            "[tokens]\nhs256-secret = \"file\"\n\n[[namespace]]\nchannels = \"/chat/**\"\n\
             subscribe = \"token\"\nhistory-ttl = 30\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            token_secret: Some("flag".into()),
            ..ServeArgs::default()
        };
        let policy = args.resolve().unwrap().policy;
        let ns: Vec<String> = policy.namespaces().map(describe).collect();
        assert_eq!(
            ns,
            [
                "/chat/** subscribe=token publish=backend client-publish=true presence=true history-ttl=30"
            ]
        );
        let token = policy.mint(&MintClaims::default()).unwrap();
        let flag_only = Policy::new(AccessConfig {
            tokens: TokenConfig {
                hs256_secret: Some("flag".into()),
                ..TokenConfig::default()
            },
            ..AccessConfig::default()
        })
        .unwrap();
        let credentials = halley_engine::access::Credentials {
            token: Some(&token),
            ..Default::default()
        };
        assert!(flag_only.authenticate(credentials).is_ok());
    }

    #[test]
    fn stamp_is_read_and_described() {
        let dir = std::env::temp_dir().join(format!("halley-config-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(
            &path,
            "[[namespace]]\nchannels = \"/talk/**\"\nstamp = true\n\n\
             [[namespace]]\nchannels = \"/news/**\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let policy = args.resolve().unwrap().policy;
        let ns: Vec<String> = policy.namespaces().map(describe).collect();
        assert_eq!(
            ns,
            [
                "/talk/** subscribe=anyone publish=backend client-publish=true presence=true stamp=true",
                "/news/** subscribe=anyone publish=backend client-publish=true presence=true",
            ]
        );
    }

    /// A config file with `text`, resolved (with `tweak` applied to the flags first).
    fn resolve_file(
        name: &str,
        text: &str,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> anyhow::Result<Settings> {
        let dir = std::env::temp_dir().join(format!("halley-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("halley.toml");
        std::fs::write(&path, text).unwrap();
        let mut args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        tweak(&mut args);
        args.resolve()
    }

    #[test]
    fn webhooks_and_rpc_are_read_and_checked() {
        let file = "rpc-url = \"http://127.0.0.1:9000/rpc\"\nrpc-timeout = 2\n\n\
                    [webhooks]\nurl = \"http://127.0.0.1:9000/events\"\nsecret = \"s\"\n\
                    events = [\"publish\"]\nqueue-size = 50\nattempts = 3\n\n\
                    [[namespace]]\nchannels = \"/chat/**\"\nwebhooks = [\"presence\", \"publish\"]\n";
        let settings = resolve_file("calls", file, |_| {}).unwrap();
        assert_eq!(
            describe_calls(&settings.http),
            [
                "webhooks http://127.0.0.1:9000/events events=publish queue-size=50 timeout=5 attempts=3",
                "rpc http://127.0.0.1:9000/rpc timeout=2 concurrency=64 signed=false",
            ]
        );
        let ns: Vec<String> = settings.policy.namespaces().map(describe).collect();
        assert!(ns[0].ends_with(" webhooks=presence,publish"), "{ns:?}");
        // The flags beat the table.
        let settings = resolve_file("calls-flags", file, |args| {
            args.webhook_url = Some("http://10.0.0.1/hooks".into());
        })
        .unwrap();
        assert_eq!(
            settings.http.webhooks.unwrap().url.to_string(),
            "http://10.0.0.1/hooks"
        );

        let refused = |name: &str, text: &str, why: &str| {
            let error = format!("{:#}", resolve_file(name, text, |_| {}).err().unwrap());
            assert!(error.contains(why), "{text:?}: {error}");
        };
        refused(
            "no-secret",
            "[webhooks]\nurl = \"http://127.0.0.1:9000/e\"\n",
            "webhooks need a secret",
        );
        refused(
            "https",
            "[webhooks]\nurl = \"https://app/e\"\nsecret = \"s\"\n",
            "only http:// is supported",
        );
        refused(
            "kind",
            "[webhooks]\nurl = \"http://a/e\"\nsecret = \"s\"\nevents = [\"joins\"]\n",
            "unknown event kind \"joins\"",
        );
        refused(
            "ns-kind",
            "[[namespace]]\nchannels = \"/a/**\"\nwebhooks = [\"everything\"]\n",
            "namespace \"/a/**\": webhooks",
        );
        refused(
            "attempts",
            "[webhooks]\nurl = \"http://a/e\"\nsecret = \"s\"\nattempts = 0\n",
            "attempts must be 1 to 10",
        );
        refused("rpc-url", "rpc-url = \"ftp://app\"\n", "rpc-url");
        refused(
            "secret-only",
            "[webhooks]\nsecret = \"s\"\n",
            "no webhook url",
        );
    }
}
