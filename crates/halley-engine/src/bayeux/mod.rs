//! Bayeux 1.0 sessions over the engine: handshake, connect, subscribe, unsubscribe, publish,
//! disconnect, the ack and timesync extensions, and an [`Authorizer`] hook. Transports (long-
//! polling, callback-polling, WebSocket) live in the HTTP layer and call [`Bayeux::handle`].
//!
//! Meta channels are matched exactly: `/meta/subscribe/x` is not a subscribe, it is refused
//! (Faye CVE-2020-11020), and no subscription ever matches a meta channel. `/service/**` is
//! handed to the [`Services`] hook and never broadcast; a call it makes is answered to its
//! caller alone ([`Handled::Call`]).

mod holds;
mod link;
mod session;

use crate::access::{Action, Credentials, Denied, Identity, Policy, Principal, Verdict, Via};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halley_proto::bayeux::{BAYEUX_VERSION, BayeuxError, BayeuxMessage};
use halley_proto::{Channel, ChannelError, Pattern, Payload};
use serde_json::{Map, Value, json};

use crate::control::Closing;
use crate::sources::Sources;
pub use crate::sources::{BURST_SECONDS, MAX_HANDSHAKE_SOURCES};
use crate::{Engine, EngineError};
pub use link::{Link, Outbox, Wake};
pub use session::{ACK_DUE_FRACTION, Batch, Browser, ConnectGuard, Session};

/// Connection types this server offers, in its order of preference. `eventsource` is Faye's:
/// messages arrive on an EventSource at `{path}/{clientId}` ([`Link::stream`]) while the client
/// sends everything, its connects included, as long-polling requests (answered at once:
/// [`Bayeux::handle_in`]). `cross-origin-long-polling` is Faye's name for long-polling from
/// another origin (CORS, or `XDomainRequest`), whose body is a form `message=<batch>`: the same
/// transport here.
pub const CONNECTION_TYPES: [&str; 5] = [
    "websocket",
    "eventsource",
    "long-polling",
    "cross-origin-long-polling",
    "callback-polling",
];

/// The connection type whose messages arrive on a stream of their own.
pub const EVENTSOURCE: &str = "eventsource";

/// How often idle sessions are looked for. A session outlives `max_interval` by at most this.
pub const SESSION_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most channels and patterns one session may subscribe to. Each costs the session's
/// subscription a pattern and the hub an entry, so a client subscribing in a loop would grow
/// the server without end; a browser application uses a few dozen. One more is refused
/// (`403::too many subscriptions on this session`), and the session keeps what it had.
pub const MAX_SESSION_SUBSCRIPTIONS: usize = 256;

/// Most handshakes in one batch (one request, one WebSocket frame). A client handshakes once
/// per batch; a batch of handshakes is a way to open sessions faster than requests can be
/// counted. Each one past it is refused (`400::one handshake per batch`).
pub const MAX_BATCH_HANDSHAKES: usize = 1;

/// Most messages sent with one connect reply (long-polling) or in one WebSocket frame; the
/// rest follow with the next one. Bounds the size of one response.
pub const MAX_DELIVERY_BATCH: usize = 500;

#[derive(Clone, Debug)]
pub struct BayeuxConfig {
    /// How long a `/meta/connect` is held with nothing to deliver (`advice.timeout`). 25 s stays
    /// under the 30 s idle timeouts of common proxies.
    pub timeout: Duration,
    /// `advice.interval`: how long clients wait between a connect reply and the next connect.
    pub interval: Duration,
    /// A session with no connect for this long is dropped (`maxInterval`); its client must
    /// handshake again. Covers a reconnect after a network blip without keeping dead sessions.
    pub max_interval: Duration,
    /// Most sessions at once; a handshake beyond gets `503::too many sessions` with advice to
    /// try again in 5 s. Bounds the memory of sessions whose clients went away until they
    /// expire (`max_interval`).
    pub max_sessions: usize,
    /// Handshakes a second from one source (an IPv4 address or an IPv6 /64), in bursts of up
    /// to [`BURST_SECONDS`] worth; one more gets `429::too many handshakes from this address`
    /// with advice to try again when it may. 0: unlimited. Behind a reverse proxy every client
    /// has the proxy's address.
    pub handshake_rate: u32,
    /// Unacknowledged messages kept per session for the ack extension. A client further
    /// behind is cut off and must handshake again.
    pub max_unacked: usize,
    /// `advice.interval` for a browser's second session polling over HTTP (another tab): its
    /// connects are answered at once with `advice.multiple-clients` (see [`Bayeux::poll`]).
    pub multiple_clients_interval: Duration,
}

impl Default for BayeuxConfig {
    fn default() -> BayeuxConfig {
        BayeuxConfig {
            timeout: Duration::from_secs(25),
            interval: Duration::ZERO,
            max_interval: Duration::from_secs(30),
            max_sessions: 100_000,
            handshake_rate: 100,
            max_unacked: 1024,
            multiple_clients_interval: Duration::from_secs(2),
        }
    }
}

/// Bayeux's adapter onto the access policy ([`crate::access`]): every default asks the
/// engine's [`Policy`] for the session's principal, so a Bayeux client is decided exactly as the
/// same caller on any other transport. An embedder may override a method to add a rule of its
/// own; it should still ask the policy first (a refusal from it stands). A
/// [`Verdict::Ask`] is put to the application by the Bayeux server (through the engine) before
/// the subscribe or publish goes ahead.
pub trait Authorizer: Send + Sync + 'static {
    fn can_handshake(
        &self,
        policy: &Policy,
        who: &Identity,
        _message: &BayeuxMessage,
    ) -> Result<(), Denied> {
        policy.decide(who, Action::Handshake)
    }
    fn can_subscribe(
        &self,
        policy: &Policy,
        session: &Session,
        pattern: &Pattern,
    ) -> Result<Verdict, Denied> {
        policy.judge(session.principal(), Action::Subscribe(pattern))
    }
    fn can_publish(
        &self,
        policy: &Policy,
        session: &Session,
        channel: &Channel,
    ) -> Result<Verdict, Denied> {
        policy.judge(session.principal(), Action::Publish(channel, Via::Client))
    }
}

/// The [`Authorizer`] that adds nothing: the policy alone decides.
#[derive(Debug, Default)]
pub struct PolicyOnly;
impl Authorizer for PolicyOnly {}

/// The former name of [`PolicyOnly`] (it allows what the policy allows, which is everything
/// only while no access is configured).
pub use self::PolicyOnly as AllowAll;

/// A policy refusal as a Bayeux error: `401::` for a missing or bad credential, `403::` for one
/// that does not cover the channel.
fn refusal(message: &BayeuxMessage, args: &str, denied: Denied) -> BayeuxMessage {
    let mut reply = BayeuxMessage::reply_to(message, false);
    reply.subscription = message.subscription.clone();
    reply.error = Some(format!(
        "{}:{args}:{}",
        refusal_code(&denied),
        error_message(&denied.to_string())
    ));
    reply
}

/// The Bayeux error code of a policy refusal.
fn refusal_code(denied: &Denied) -> u16 {
    match denied {
        Denied::Unauthenticated(_) => 401,
        Denied::Forbidden(_) => 403,
        Denied::Unavailable(_) => 503,
    }
}

/// Server-side handling of `/service/**` messages (request/response, never broadcast).
///
/// A client's message to `/service/**`, once the policy allowed it (as a client publish to
/// that channel), is handed to [`Services::call`]. `None` (the default) acknowledges it at once
/// and discards it. A [`ServiceCall`] is answered to that client alone, when it completes, as
/// CometD's `remoteCall` expects: one reply on the same channel with the request's `id`,
/// `successful: true` and the answer as `data`, or `successful: false` and the error as
/// `code:channel:message`. Faye's `publish` sees that reply as its acknowledgement.
pub trait Services: Send + Sync + 'static {
    fn call(&self, _session: &Session, _channel: &Channel, _data: &Payload) -> Option<ServiceCall> {
        None
    }
}

/// What a service call ends with: the data for the caller, or why there is none.
pub type ServiceAnswer = Result<Box<serde_json::value::RawValue>, ServiceError>;

/// A service call under way. It must end by itself (its own deadline): the transport waits
/// for it.
pub type ServiceCall = std::pin::Pin<Box<dyn Future<Output = ServiceAnswer> + Send>>;

/// Why a service call has no answer, as the reply's `code:channel:message` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}::{message}")]
pub struct ServiceError {
    /// An HTTP-like status: 4xx the application refused, 502 it failed, 503 it is unreachable
    /// or busy, 504 it did not answer in time.
    pub code: u16,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct NoServices;
impl Services for NoServices {}

/// What a message asks of its transport.
// A reply is written out as soon as it is returned; only a `Connect` is held, and that is kept
// small (its message is boxed).
#[allow(clippy::large_enum_variant)]
pub enum Handled {
    Reply(BayeuxMessage),
    /// A `/meta/connect` for this session: the transport holds it (see [`Connect`]).
    Connect(Connect),
    /// A `/service/**` call whose answer is the reply ([`Call::reply`]). The transport need not
    /// wait for it before going on (a WebSocket keeps delivering meanwhile).
    Call(Call),
}

/// A `/service/**` message being answered by [`Services`].
pub struct Call {
    /// The reply, but for its outcome. Boxed: a call is kept while it runs.
    reply: Box<BayeuxMessage>,
    answer: ServiceCall,
}

impl Call {
    /// Waits for the answer and returns the reply to send (to the caller only).
    pub async fn reply(self) -> BayeuxMessage {
        let answer = self.answer.await;
        Call::finish(*self.reply, answer)
    }

    /// The reply to a call that will not be made (the transport's own bound on calls in
    /// flight).
    pub fn refuse(self, error: ServiceError) -> BayeuxMessage {
        Call::finish(*self.reply, Err(error))
    }

    fn finish(mut reply: BayeuxMessage, answer: ServiceAnswer) -> BayeuxMessage {
        match answer {
            Ok(data) => {
                reply.successful = Some(true);
                reply.data = Some(data);
            }
            Err(error) => {
                reply.successful = Some(false);
                reply.error = Some(format!(
                    "{}:{}:{}",
                    error.code,
                    reply.channel,
                    error_message(&error.message)
                ));
            }
        }
        reply
    }
}

/// `text` as the message part of a Bayeux error: the spec's grammar allows letters, digits,
/// spaces and `-_!~()$@/*.` only, and clients that parse it (Faye) give up on anything else, so
/// every other character (a `:` in an error chain, a comma) becomes a space.
fn error_message(text: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " -_!~()$@/*.".contains(c);
    let mapped: String = text
        .chars()
        .map(|c| if allowed(c) { c } else { ' ' })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where a batch came from, as far as its transport can tell: whose credentials it came with,
/// from which address, with which browser secret. Made per batch (it counts the batch's
/// handshakes).
#[derive(Debug)]
pub struct Caller<'a> {
    /// What the HTTP request or WebSocket upgrade presented; a handshake's `ext` wins over it.
    pub principal: &'a Principal,
    /// The peer's address, for the per-source handshake rate; `None` is not limited.
    pub peer: Option<IpAddr>,
    /// The browser secret the request came with (or will be answered with).
    pub browser: Browser<'a>,
    handshakes: AtomicUsize,
}

impl<'a> Caller<'a> {
    /// A caller with these credentials, no known address and no browser.
    pub fn new(principal: &'a Principal) -> Caller<'a> {
        Caller {
            principal,
            peer: None,
            browser: Browser::Unknown,
            handshakes: AtomicUsize::new(0),
        }
    }

    pub fn peer(self, peer: Option<IpAddr>) -> Caller<'a> {
        Caller { peer, ..self }
    }

    pub fn browser(self, browser: Browser<'a>) -> Caller<'a> {
        Caller { browser, ..self }
    }
}

/// A validated `/meta/connect`.
pub struct Connect {
    pub session: Arc<Session>,
    /// What its replies echo of the message, boxed: a held connect is kept in the futures
    /// that hold it. Not the message itself: a `BayeuxMessage` is 0.3 KiB, and its
    /// `connectionType`, `advice` and other `ext` strings besides (dhat: 320 B per held connect
    /// for the box alone).
    request: Box<Echo>,
    /// How long to hold: the server's timeout, or less if the client asked (CometD's first
    /// connect asks for 0).
    pub timeout: Duration,
    /// The client's acknowledged batch (ack extension).
    pub ack: Option<u64>,
    received_ms: u64,
    /// Another session of the same browser holds connects: this one is answered at once with
    /// `advice.multiple-clients` ([`Bayeux::poll`]).
    multiple_clients: bool,
}

/// What the replies to a held connect take from its message: its id and clientId, and the
/// client's clock for the timesync extension.
struct Echo {
    id: Option<Value>,
    client_id: Option<String>,
    /// `ext.timesync.tc`.
    timesync: Option<u64>,
}

impl Echo {
    fn of(message: BayeuxMessage) -> Echo {
        Echo {
            timesync: client_clock(&message),
            id: message.id,
            client_id: message.client_id,
        }
    }

    /// The connect message as the replies see it: channel, id and clientId.
    fn message(&self) -> BayeuxMessage {
        BayeuxMessage {
            channel: "/meta/connect".to_owned(),
            id: self.id.clone(),
            client_id: self.client_id.clone(),
            ..BayeuxMessage::default()
        }
    }
}

/// What the Bayeux server counted since it started (for `/metrics`).
#[derive(Debug, Default)]
pub struct BayeuxStats {
    /// Sessions opened.
    pub handshakes: AtomicU64,
    /// Handshakes refused: beyond the first of a batch ([`MAX_BATCH_HANDSHAKES`]), over their
    /// source's rate ([`BayeuxConfig::handshake_rate`]), at the session cap
    /// ([`BayeuxConfig::max_sessions`]).
    pub refused_batch: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_full: AtomicU64,
}

struct Shared {
    engine: Engine,
    stats: BayeuxStats,
    config: BayeuxConfig,
    authorizer: Arc<dyn Authorizer>,
    services: Arc<dyn Services>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Per browser secret: the session holding connects over HTTP, and how many it holds
    /// ([`Bayeux::poll`]). An entry lives only while a connect is held.
    browsers: Mutex<HashMap<String, (String, usize)>>,
    /// Recent handshakes per source. Locked alone, briefly, before the session table.
    sources: Mutex<Sources>,
    /// The held connects' deadlines and the shutdown ([`holds`]); the sweeper is their timer.
    holds: Arc<holds::Holds>,
}

/// The Bayeux server. Cheap to clone.
#[derive(Clone)]
pub struct Bayeux {
    shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_client_id() -> String {
    // 128 random bits: a clientId is a bearer credential for the session.
    format!("{:032x}", rand::random::<u128>())
}

impl Bayeux {
    /// A Bayeux server over `engine`; starts the session sweeper, which is also the held
    /// connects' timer, when inside a tokio runtime (a connect held without it is answered only
    /// when messages come, a newer connect takes over, or at [`Bayeux::shutdown`]).
    pub fn spawn(
        engine: Engine,
        config: BayeuxConfig,
        authorizer: Arc<dyn Authorizer>,
        services: Arc<dyn Services>,
    ) -> Bayeux {
        let bayeux = Bayeux {
            shared: Arc::new(Shared {
                engine,
                stats: BayeuxStats::default(),
                sources: Mutex::new(Sources::new(config.handshake_rate)),
                config,
                authorizer,
                services,
                sessions: Mutex::default(),
                browsers: Mutex::default(),
                holds: Arc::new(holds::Holds::new()),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(
                Arc::downgrade(&bayeux.shared),
                bayeux.shared.holds.clone(),
            ));
        }
        bayeux
    }

    pub fn config(&self) -> &BayeuxConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> &BayeuxStats {
        &self.shared.stats
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn browsers(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, usize)>> {
        self.shared
            .browsers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The message's session, if it exists and admits this caller (else, to the caller, it
    /// does not exist: see [`Session::admits`]).
    fn session(&self, message: &BayeuxMessage, caller: &Caller<'_>) -> Option<Arc<Session>> {
        let id = message.client_id.as_deref()?;
        self.sessions()
            .get(id)
            .filter(|s| s.admits(caller.browser))
            .cloned()
    }

    fn advice(&self) -> Map<String, Value> {
        let mut advice = Map::new();
        advice.insert("reconnect".into(), "retry".into());
        advice.insert(
            "interval".into(),
            (self.shared.config.interval.as_millis() as u64).into(),
        );
        advice.insert(
            "timeout".into(),
            (self.shared.config.timeout.as_millis() as u64).into(),
        );
        advice
    }

    fn unknown_client(&self, message: &BayeuxMessage) -> BayeuxMessage {
        let mut reply = BayeuxMessage::error(message, BayeuxError::UnknownClient);
        reply.advice = Some(
            json!({"reconnect": "handshake", "interval": 0})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        reply
    }

    /// Handles one message. `/meta/connect` comes back as [`Handled::Connect`] for the transport
    /// to hold; everything else is answered at once.
    pub async fn handle(&self, message: BayeuxMessage) -> Handled {
        let anonymous = self.shared.engine.policy().anonymous();
        self.handle_from(message, &anonymous).await
    }

    /// [`Bayeux::handle`] for a message that came with the transport's own credentials
    /// (`transport`: what the HTTP request or WebSocket upgrade presented). A handshake's `ext`
    /// (`ext.token`, `ext.key`) wins over them; the session keeps the principal it was opened
    /// with, and every later subscribe and publish of it is decided for that principal.
    pub async fn handle_from(&self, message: BayeuxMessage, transport: &Principal) -> Handled {
        self.handle_in(message, &Caller::new(transport)).await
    }

    /// [`Bayeux::handle_from`] for a message of a batch from `caller`: its handshakes are
    /// counted per batch ([`MAX_BATCH_HANDSHAKES`]) and per source
    /// ([`BayeuxConfig::handshake_rate`]), its session bound to the caller's browser.
    pub async fn handle_in(&self, message: BayeuxMessage, caller: &Caller<'_>) -> Handled {
        let received_ms = now_ms();
        let reply = match message.channel.as_str() {
            "/meta/handshake" => self.handshake(&message, caller, received_ms),
            "/meta/connect" => return self.connect(message, caller, received_ms),
            "/meta/disconnect" => self.disconnect(&message, caller),
            "/meta/subscribe" => self.subscribe(&message, caller, true).await,
            "/meta/unsubscribe" => self.subscribe(&message, caller, false).await,
            "" => BayeuxMessage::error(
                &message,
                BayeuxError::BadRequest(String::new(), "channel missing".into()),
            ),
            other if other.starts_with("/meta/") => BayeuxMessage::error(
                &message,
                BayeuxError::Forbidden(other.to_string(), "Unknown meta channel"),
            ),
            _ => return self.publish(&message, caller).await,
        };
        Handled::Reply(reply)
    }

    fn handshake(
        &self,
        message: &BayeuxMessage,
        caller: &Caller<'_>,
        received_ms: u64,
    ) -> BayeuxMessage {
        let transport = caller.principal;
        if let Some(types) = &message.supported_connection_types
            && !types.iter().any(|t| CONNECTION_TYPES.contains(&t.as_str()))
        {
            let mut reply = BayeuxMessage::error(
                message,
                BayeuxError::Unsupported(types.join(","), "no common connection type"),
            );
            reply.supported_connection_types =
                Some(CONNECTION_TYPES.iter().map(|s| s.to_string()).collect());
            reply.version = Some(BAYEUX_VERSION.into());
            return reply;
        }
        let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        if caller.handshakes.fetch_add(1, Ordering::Relaxed) >= MAX_BATCH_HANDSHAKES {
            count(&self.shared.stats.refused_batch);
            return BayeuxMessage::error(
                message,
                BayeuxError::BadRequest(String::new(), "one handshake per batch".into()),
            );
        }
        if let Some(peer) = caller.peer
            && let Err(wait) = self
                .shared
                .sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(peer, tokio::time::Instant::now())
        {
            count(&self.shared.stats.refused_rate);
            let mut reply = BayeuxMessage::error(
                message,
                BayeuxError::TooManyRequests("too many handshakes from this address".into()),
            );
            // Whole milliseconds, rounded up: a client that waits as advised gets in.
            let interval = wait.as_micros().div_ceil(1000) as u64;
            reply.advice = json!({"reconnect": "handshake", "interval": interval})
                .as_object()
                .cloned();
            return reply;
        }
        let policy = self.shared.engine.policy();
        let text = |name: &str| message.ext_field(name).and_then(Value::as_str);
        let presented = Credentials {
            key: text("key"),
            token: text("token"),
            ..Credentials::default()
        };
        let who = if presented.key.is_some() || presented.token.is_some() {
            // What the transport forwarded for the application (cookies…) stays with the
            // session whichever credential wins.
            policy
                .authenticate(presented)
                .map(|who| match &transport.forwarded {
                    Some(forwarded) if who.forwarded.is_none() => Arc::new(Identity {
                        forwarded: Some(forwarded.clone()),
                        ..Identity::clone(&who)
                    }),
                    _ => who,
                })
        } else {
            Ok(transport.clone())
        };
        let who = match who.and_then(|who| {
            self.shared
                .authorizer
                .can_handshake(policy, &who, message)
                .map(|()| who)
        }) {
            Ok(who) => who,
            Err(denied) => {
                let mut reply = refusal(message, "", denied);
                reply.advice = json!({"reconnect": "none"}).as_object().cloned();
                return reply;
            }
        };
        if self.sessions().len() >= self.shared.config.max_sessions {
            count(&self.shared.stats.refused_full);
            let mut reply = BayeuxMessage::error(
                message,
                BayeuxError::Unavailable("too many sessions".into()),
            );
            reply.advice = json!({"reconnect": "handshake", "interval": 5000})
                .as_object()
                .cloned();
            return reply;
        }
        let ack = message.ext_field("ack") == Some(&Value::Bool(true));
        let id = new_client_id();
        // A token holder's session is one of their connections for the control API.
        let mut sub = self.shared.engine.subscriber();
        sub.reachable_as(&who, "bayeux");
        let session = Arc::new(Session::new(
            id.clone(),
            sub,
            ack,
            self.shared.config.max_unacked,
            who,
            caller.browser,
        ));
        self.sessions().insert(id.clone(), session);
        count(&self.shared.stats.handshakes);
        let mut reply = BayeuxMessage::reply_to(message, true);
        reply.client_id = Some(id);
        reply.version = Some(BAYEUX_VERSION.into());
        reply.supported_connection_types =
            Some(CONNECTION_TYPES.iter().map(|s| s.to_string()).collect());
        reply.advice = Some(self.advice());
        if ack {
            reply.set_ext("ack", Value::Bool(true));
        }
        timesync(client_clock(message), &mut reply, received_ms);
        reply
    }

    fn connect(&self, message: BayeuxMessage, caller: &Caller<'_>, received_ms: u64) -> Handled {
        let Some(session) = self.session(&message, caller) else {
            return Handled::Reply(self.unknown_client(&message));
        };
        // A session whose token expired or was revoked ends at its next connect: the client
        // handshakes again with a fresh one.
        if let Err(denied) = self.shared.engine.policy().check_open(session.principal()) {
            self.forget(session.id());
            let mut reply = refusal(&message, "", denied);
            reply.advice = json!({"reconnect": "handshake", "interval": 0})
                .as_object()
                .cloned();
            return Handled::Reply(reply);
        }
        let asked = message
            .advice_field("timeout")
            .and_then(Value::as_u64)
            .map(Duration::from_millis);
        // A session's first connect is answered at once, as CometD's server does: it tells the
        // client its session works (some clients, aiocometd's `open()`, wait for it), and the
        // client's next connect is the one that waits.
        let timeout = match asked {
            _ if session.first_connect() => Duration::ZERO,
            Some(asked) => asked.min(self.shared.config.timeout),
            None => self.shared.config.timeout,
        };
        if message.connection_type.as_deref() == Some(EVENTSOURCE) {
            return Handled::Reply(self.eventsource_connect(&session, &message, received_ms));
        }
        let ack = message.ext_field("ack").and_then(Value::as_u64);
        Handled::Connect(Connect {
            session,
            request: Box::new(Echo::of(message)),
            timeout,
            ack,
            received_ms,
            multiple_clients: false,
        })
    }

    /// A connect of Faye's `eventsource` connection type: its messages go out on the session's
    /// stream ([`Link::stream`]), so the connect is not held and takes nothing over; it keeps
    /// the session alive and is answered at once, with advice to send the next one after the
    /// hold timeout (what Faye's own server advises for it).
    fn eventsource_connect(
        &self,
        session: &Session,
        message: &BayeuxMessage,
        received_ms: u64,
    ) -> BayeuxMessage {
        session.first_connect();
        session.touch();
        if session.is_closed() {
            self.forget(session.id());
            return self.unknown_client(message);
        }
        let mut reply = BayeuxMessage::reply_to(message, true);
        let mut advice = self.advice();
        advice.insert(
            "interval".into(),
            (self.shared.config.timeout.as_millis() as u64).into(),
        );
        advice.insert("timeout".into(), 0.into());
        reply.advice = Some(advice);
        timesync(client_clock(message), &mut reply, received_ms);
        reply
    }

    /// The session a stream of its messages is opened for (Faye's `eventsource`: `GET
    /// {path}/{clientId}`), if it exists and admits a request with `browser`.
    pub fn stream_session(&self, client_id: &str, browser: Browser<'_>) -> Option<Arc<Session>> {
        self.sessions()
            .get(client_id)
            .filter(|s| s.admits(browser) && !s.is_closed())
            .cloned()
    }

    fn disconnect(&self, message: &BayeuxMessage, caller: &Caller<'_>) -> BayeuxMessage {
        let Some(session) = self.session(message, caller) else {
            return self.unknown_client(message);
        };
        self.forget(session.id());
        BayeuxMessage::reply_to(message, true)
    }

    async fn subscribe(
        &self,
        message: &BayeuxMessage,
        caller: &Caller<'_>,
        subscribe: bool,
    ) -> BayeuxMessage {
        let Some(session) = self.session(message, caller) else {
            return self.unknown_client(message);
        };
        let names = message.subscriptions();
        if names.is_empty() {
            return BayeuxMessage::error(
                message,
                BayeuxError::BadRequest(String::new(), "subscription missing".into()),
            );
        }
        // `ext.recent`: each new channel's newest messages first (`Start::recent`).
        let recent = match message.ext.as_ref().and_then(|e| e.get("recent")) {
            None => 0,
            Some(n) => match n.as_u64().filter(|n| *n <= u64::from(crate::MAX_RECENT)) {
                Some(n) if subscribe => n as usize,
                _ => {
                    return BayeuxMessage::error(
                        message,
                        BayeuxError::BadRequest(
                            "recent".into(),
                            format!(
                                "ext.recent is a number of messages on a subscribe, 0 to {}",
                                crate::MAX_RECENT
                            ),
                        ),
                    );
                }
            },
        };
        let mut patterns = Vec::with_capacity(names.len());
        for name in names {
            if name.starts_with("/meta/") || name == "/meta" {
                return BayeuxMessage::error(
                    message,
                    BayeuxError::Forbidden(name.to_string(), "Forbidden"),
                );
            }
            let pattern = match Pattern::parse(name) {
                Ok(p) => p,
                Err(e) => {
                    return BayeuxMessage::error(
                        message,
                        BayeuxError::BadRequest(name.to_string(), e.to_string()),
                    );
                }
            };
            if name.starts_with(halley_proto::inbox::PREFIX) {
                return BayeuxMessage::error(
                    message,
                    BayeuxError::Forbidden(
                        name.to_string(),
                        "inboxes are received with their secret over /sub",
                    ),
                );
            }
            if name.starts_with("/service/") {
                return BayeuxMessage::error(
                    message,
                    BayeuxError::Forbidden(name.to_string(), "service channels are not broadcast"),
                );
            }
            if subscribe
                && let Err(denied) = self
                    .judged(
                        self.shared.authorizer.can_subscribe(
                            self.shared.engine.policy(),
                            &session,
                            &pattern,
                        ),
                        &session,
                    )
                    .await
            {
                return refusal(message, name, denied);
            }
            patterns.push(pattern);
        }
        if subscribe {
            if let Err(e) = self.shared.engine.check_capacity(&patterns).await {
                return BayeuxMessage::error(message, BayeuxError::Unavailable(e.to_string()));
            }
            let recent = (recent > 0).then_some((&self.shared.engine, recent));
            if session
                .subscribe(patterns, MAX_SESSION_SUBSCRIPTIONS, recent)
                .await
                .is_err()
            {
                return BayeuxMessage::error(
                    message,
                    BayeuxError::Forbidden(String::new(), "too many subscriptions on this session"),
                );
            }
        } else {
            session.unsubscribe(&patterns).await;
        }
        let mut reply = BayeuxMessage::reply_to(message, true);
        reply.subscription = message.subscription.clone();
        reply
    }

    async fn publish(&self, message: &BayeuxMessage, caller: &Caller<'_>) -> Handled {
        match self.publish_or_call(message, caller).await {
            Ok(handled) => handled,
            Err(refusal) => Handled::Reply(refusal),
        }
    }

    /// A publish, or a `/service/**` call; `Err` is the refusal to send back.
    async fn publish_or_call(
        &self,
        message: &BayeuxMessage,
        caller: &Caller<'_>,
    ) -> Result<Handled, BayeuxMessage> {
        let Some(session) = self.session(message, caller) else {
            return Err(self.unknown_client(message));
        };
        let channel = match Channel::parse(&message.channel) {
            Ok(c) => c,
            Err(ChannelError::Wildcard) => {
                return Err(BayeuxMessage::error(
                    message,
                    BayeuxError::NotAllowed(
                        message.channel.clone(),
                        "cannot publish to a wildcard",
                    ),
                ));
            }
            Err(e) => {
                return Err(BayeuxMessage::error(
                    message,
                    BayeuxError::BadRequest(message.channel.clone(), e.to_string()),
                ));
            }
        };
        let Some(data) = &message.data else {
            return Err(BayeuxMessage::error(
                message,
                BayeuxError::BadRequest(message.channel.clone(), "data missing".into()),
            ));
        };
        let verdict =
            self.shared
                .authorizer
                .can_publish(self.shared.engine.policy(), &session, &channel);
        if let Err(denied) = self.judged(verdict, &session).await {
            return Err(refusal(message, &message.channel, denied));
        }
        // RawValue holds valid JSON, so this only fails on... nothing; keep the error path
        // anyway rather than unwrap on client data.
        let payload = Payload::from_json(data.get().as_bytes()).map_err(|e| {
            BayeuxMessage::error(
                message,
                BayeuxError::BadRequest(message.channel.clone(), e.to_string()),
            )
        })?;
        let mut reply = BayeuxMessage::reply_to(message, true);
        reply.client_id = None;
        if channel.is_service() {
            return Ok(
                match self.shared.services.call(&session, &channel, &payload) {
                    Some(answer) => Handled::Call(Call {
                        reply: Box::new(reply),
                        answer,
                    }),
                    None => Handled::Reply(reply),
                },
            );
        }
        // The session's principal is who publishes: a stamped namespace writes it into "from".
        match self
            .shared
            .engine
            .publish_as(session.principal(), channel, payload)
            .await
        {
            Ok(_) => Ok(Handled::Reply(reply)),
            Err(EngineError::Reserved(c)) => Err(BayeuxMessage::error(
                message,
                BayeuxError::Forbidden(c.to_string(), "Forbidden"),
            )),
            Err(e @ (EngineError::Forged | EngineError::NotAnObject(_))) => {
                Err(BayeuxMessage::error(
                    message,
                    BayeuxError::BadRequest(message.channel.clone(), e.to_string()),
                ))
            }
            Err(
                e @ (EngineError::Broker(_)
                | EngineError::Full(..)
                | EngineError::KeysFull(_)
                | EngineError::Control(_)),
            ) => Err(BayeuxMessage::error(
                message,
                BayeuxError::Unavailable(e.to_string()),
            )),
        }
    }

    /// Follows a verdict through: what the application decides is asked (through the engine's
    /// cache) for the session's principal.
    async fn judged(
        &self,
        verdict: Result<Verdict, Denied>,
        session: &Session,
    ) -> Result<(), Denied> {
        match verdict? {
            Verdict::Allow => Ok(()),
            Verdict::Ask(kind, channel) => self
                .shared
                .engine
                .ask(session.principal(), kind, &channel)
                .await
                .map(drop),
        }
    }

    /// The reply to a connect whose session the application ended (the control API), and
    /// the session's end. Disconnected: `402::disconnected[ reason]`; revoked: `401::token
    /// revoked`. Either way with advice to handshake again, which CometD and Faye clients do
    /// at once: a disconnected client comes back as a new session (it is not a ban), a revoked
    /// one is refused at that handshake with advice `none`.
    pub fn closed_reply(&self, connect: &Connect, closing: &Closing) -> BayeuxMessage {
        self.forget(connect.session.id());
        let mut reply = BayeuxMessage::reply_to(&connect.request.message(), false);
        reply.error = Some(match closing {
            Closing::Disconnected(None) => "402::disconnected".to_owned(),
            Closing::Disconnected(Some(reason)) => {
                format!("402::disconnected {}", error_message(reason))
            }
            Closing::Revoked(denied) => format!(
                "{}::{}",
                refusal_code(denied),
                error_message(&denied.to_string())
            ),
        });
        reply.advice = json!({"reconnect": "handshake", "interval": 0})
            .as_object()
            .cloned();
        reply
    }

    /// The reply to a connect once the transport is done holding it. A closed (cut off or
    /// disconnected) session answers with advice to handshake again; one the application
    /// ended, with [`Bayeux::closed_reply`].
    pub fn connect_reply(&self, connect: &Connect, ended: bool) -> BayeuxMessage {
        if ended && let Some(closing) = connect.session.closing() {
            return self.closed_reply(connect, &closing);
        }
        if ended || connect.session.is_closed() {
            self.sessions().remove(connect.session.id());
            return self.unknown_client(&connect.request.message());
        }
        let mut reply = BayeuxMessage::reply_to(&connect.request.message(), true);
        let mut advice = self.advice();
        if connect.multiple_clients {
            advice.insert("multiple-clients".into(), Value::Bool(true));
            advice.insert(
                "interval".into(),
                (self.shared.config.multiple_clients_interval.as_millis() as u64).into(),
            );
        }
        reply.advice = Some(advice);
        if let Some(batch) = connect.session.close_batch() {
            reply.set_ext("ack", batch.into());
        }
        timesync(connect.request.timesync, &mut reply, connect.received_ms);
        reply
    }

    /// The reply to a connect held on a connection that a newer connect of its session (on
    /// another connection) took over: successful, and acknowledging nothing (no `ext.ack`),
    /// since the messages of the open batch go out on the newer connection.
    pub fn preempted_reply(&self, connect: &Connect) -> BayeuxMessage {
        let mut reply = BayeuxMessage::reply_to(&connect.request.message(), true);
        reply.advice = Some(self.advice());
        timesync(connect.request.timesync, &mut reply, connect.received_ms);
        reply
    }

    /// The server is shutting down: every held connect is answered now (the client
    /// reconnects, to this node or another), and one held from now on is answered at once.
    /// Transports call it when their shutdown begins; a held connect has no shutdown wait of
    /// its own (see [`holds`]).
    pub fn shutdown(&self) {
        self.shared.holds.drain();
        for session in self.sessions().values() {
            session.wake();
        }
    }

    /// Drops a session (used when its WebSocket closes with the client gone for good is not
    /// known; sessions otherwise expire after `max_interval`).
    pub fn forget(&self, id: &str) {
        if let Some(s) = self.sessions().remove(id) {
            s.close();
        }
    }
}

/// The client's clock as the timesync extension sends it (`ext.timesync.tc`).
fn client_clock(message: &BayeuxMessage) -> Option<u64> {
    message
        .ext_field("timesync")
        .and_then(|t| t.get("tc"))
        .and_then(Value::as_u64)
}

/// Adds the timesync extension's answer when the request carried `ext.timesync` (`tc`: its
/// clock, [`client_clock`]).
fn timesync(tc: Option<u64>, reply: &mut BayeuxMessage, received_ms: u64) {
    if let Some(tc) = tc {
        let now = now_ms();
        reply.set_ext(
            "timesync",
            json!({ "tc": tc, "ts": received_ms, "p": now.saturating_sub(received_ms), "a": 0 }),
        );
    }
}

/// Every [`SESSION_SWEEP_INTERVAL`], drops idle sessions and prunes the handshake sources; in
/// between, wakes the sessions whose held connect's deadline came ([`holds`]: this task is
/// their one timer). Ends with the Bayeux server.
async fn sweep(shared: std::sync::Weak<Shared>, holds: Arc<holds::Holds>) {
    let mut tick = tokio::time::interval(SESSION_SWEEP_INTERVAL);
    loop {
        let next = holds.fire();
        let deadline = async {
            match next {
                Some(next) => tokio::time::sleep_until(next).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = deadline => continue,
            _ = holds.earlier.notified() => continue,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        shared
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prune(now);
        let max_interval = shared.config.max_interval;
        let mut sessions = shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| {
            let keep = !s.expired(now, max_interval) && !s.is_closed();
            if !keep {
                s.close();
            }
            keep
        });
    }
}
