//! The Bayeux 1.0 state machine, driven through `Bayeux::handle` and `Bayeux::hold` with no
//! transport: handshake and transport negotiation, connect (held, timed out, preempted),
//! subscribe/unsubscribe and wildcard delivery, publish and its refusals (including Faye
//! CVE-2020-11020), `/service/**`, disconnect, session expiry, the ack and timesync extensions,
//! and the authorizer hook.
//!
//! Every test runs with the clock paused: a held connect's timeout and a session's
//! `maxInterval` pass in virtual time, and the runtime only moves the clock when every task is
//! idle, so "answered at once" is checked as "answered with no virtual time elapsed".

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halley_engine::access::{Denied, Identity, Policy, Verdict};
use halley_engine::bayeux::{
    Authorizer, Bayeux, BayeuxConfig, Browser, Caller, Connect, Handled, NoServices, Outbox,
    PolicyOnly, SESSION_SWEEP_INTERVAL, ServiceCall, ServiceError, Services, Session,
};
use halley_engine::{Engine, EngineConfig};
use halley_proto::bayeux::{BayeuxMessage, parse_batch};
use halley_proto::{Channel, Message, Pattern, Payload};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest any single step may take, in virtual time. Longer than every timeout configured
/// below, so it only fires when a step is stuck; with the clock paused it fires at once then.
const WAIT: Duration = Duration::from_secs(600);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("stuck for {WAIT:?} of virtual time: {what}"),
    }
}

/// What a held connect ended with: the delivered messages and the connect reply, as JSON.
#[derive(Debug)]
struct Delivery {
    messages: Vec<Value>,
    reply: Value,
}

impl Delivery {
    fn new(messages: Vec<Arc<Message>>, reply: BayeuxMessage) -> Delivery {
        Delivery {
            messages: messages
                .iter()
                .map(|m| serde_json::from_slice(m.json_object()).unwrap())
                .collect(),
            reply: json_of(&reply),
        }
    }

    /// The delivered messages' data.
    fn data(&self) -> Vec<Value> {
        self.messages.iter().map(|m| m["data"].clone()).collect()
    }
}

fn json_of(message: &BayeuxMessage) -> Value {
    serde_json::from_str(&message.to_json()).unwrap()
}

/// A request as a transport would have parsed it from the wire.
fn request(json: &Value) -> BayeuxMessage {
    let mut batch = parse_batch(json.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("test request {json} does not parse: {e}"));
    assert_eq!(batch.len(), 1, "{json}");
    batch.remove(0)
}

/// Asserts that `reply` has every field of `expected` with that value (`null`: absent).
fn assert_fields(reply: &Value, expected: &Value, context: &str) {
    for (field, want) in expected.as_object().expect("expected is an object") {
        let got = reply.get(field).unwrap_or(&Value::Null);
        assert_eq!(got, want, "field {field:?} of {reply}\n  for {context}");
    }
    if let Some(error) = reply["error"].as_str() {
        assert_error_form(error);
    }
}

/// The spec's error form: `code:args:message`, a three-digit code and args separated by commas.
fn assert_error_form(error: &str) {
    let parts: Vec<&str> = error.splitn(3, ':').collect();
    assert_eq!(parts.len(), 3, "error {error:?} is not code:args:message");
    assert!(
        parts[0].len() == 3 && parts[0].bytes().all(|b| b.is_ascii_digit()),
        "error {error:?} does not start with a three-digit code"
    );
    assert!(!parts[2].is_empty(), "error {error:?} has no message");
}

/// The unknown-client refusal every message for a missing session gets.
fn unknown_client() -> Value {
    json!({
        "successful": false,
        "error": "402::Unknown client",
        "advice": {"reconnect": "handshake", "interval": 0},
    })
}

/// Records every `/service/**` call.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(String, String, String)>>,
}

impl Services for Recorder {
    /// Records the call; answers `/service/echo` with its data, fails `/service/fail`, and
    /// leaves the rest unanswered (acknowledged at once).
    fn call(&self, session: &Session, channel: &Channel, data: &Payload) -> Option<ServiceCall> {
        self.calls.lock().unwrap().push((
            session.id().to_string(),
            channel.to_string(),
            data.json().to_string(),
        ));
        let answer = match channel.as_str() {
            "/service/echo" => Ok(RawValue::from_string(data.json().to_string()).unwrap()),
            "/service/fail" => Err(ServiceError {
                code: 504,
                message: "too slow: try later, please".into(),
            }),
            _ => return None,
        };
        Some(Box::pin(std::future::ready(answer)))
    }
}

/// Refuses handshakes whose `ext.password` is "bad", and anything under `/secret`.
struct Rules;

impl Authorizer for Rules {
    fn can_handshake(
        &self,
        _policy: &Policy,
        _who: &Identity,
        message: &BayeuxMessage,
    ) -> Result<(), Denied> {
        if message.ext_field("password") == Some(&json!("bad")) {
            return Err(Denied::Forbidden("Handshake denied".into()));
        }
        Ok(())
    }
    fn can_subscribe(
        &self,
        _policy: &Policy,
        _session: &Session,
        pattern: &Pattern,
    ) -> Result<Verdict, Denied> {
        match pattern.prefix().starts_with("/secret") {
            true => Err(Denied::Forbidden("Forbidden".into())),
            false => Ok(Verdict::Allow),
        }
    }
    fn can_publish(
        &self,
        _policy: &Policy,
        _session: &Session,
        channel: &Channel,
    ) -> Result<Verdict, Denied> {
        match channel.as_str().starts_with("/secret") {
            true => Err(Denied::Forbidden("Forbidden".into())),
            false => Ok(Verdict::Allow),
        }
    }
}

struct Server {
    bayeux: Bayeux,
    engine: Engine,
}

impl Server {
    fn new() -> Server {
        Server::with(BayeuxConfig::default(), EngineConfig::default())
    }

    fn with(config: BayeuxConfig, engine: EngineConfig) -> Server {
        Server::hooked(config, engine, Arc::new(PolicyOnly), Arc::new(NoServices))
    }

    fn hooked(
        config: BayeuxConfig,
        engine: EngineConfig,
        authorizer: Arc<dyn Authorizer>,
        services: Arc<dyn Services>,
    ) -> Server {
        let engine = Engine::in_memory(engine);
        let bayeux = Bayeux::spawn(engine.clone(), config, authorizer, services);
        Server { bayeux, engine }
    }

    async fn handle(&self, json: &Value) -> Handled {
        within(&json.to_string(), self.bayeux.handle(request(json))).await
    }

    /// Sends a message answered at once as part of a batch from `caller`.
    async fn send_as(&self, caller: &Caller<'_>, json: Value) -> Value {
        let handled = within(
            &json.to_string(),
            self.bayeux.handle_in(request(&json), caller),
        )
        .await;
        match handled {
            Handled::Reply(reply) => json_of(&reply),
            Handled::Call(call) => json_of(&within(&json.to_string(), call.reply()).await),
            Handled::Connect(connect) => self.hold(connect).await.reply,
        }
    }

    /// Sends a message that is answered at once (anything but a valid connect).
    async fn send(&self, json: Value) -> Value {
        match self.handle(&json).await {
            Handled::Reply(reply) => json_of(&reply),
            Handled::Call(call) => json_of(&within(&json.to_string(), call.reply()).await),
            Handled::Connect(_) => panic!("{json} was taken as a connect to hold"),
        }
    }

    /// Sends `json` and asserts the reply's fields (the data-driven check of every table below).
    async fn check(&self, json: Value, expected: Value) {
        let reply = self.send(json.clone()).await;
        assert_fields(&reply, &expected, &json.to_string());
        assert_eq!(reply["channel"], json["channel"], "{reply} for {json}");
        assert_eq!(
            reply["id"], json["id"],
            "the id is echoed: {reply} for {json}"
        );
    }

    async fn handshake_with(&self, ext: Value) -> Value {
        self.send(json!({
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": "h",
            "ext": ext,
        }))
        .await
    }

    /// A new session's clientId, after its first connect (answered at once, as every client
    /// sends it), so that the session's next connect is held.
    async fn handshake(&self) -> String {
        let reply = self.handshake_with(json!({})).await;
        assert_eq!(reply["successful"], true, "{reply}");
        let client = reply["clientId"].as_str().unwrap().to_string();
        let first = self.poll(&client, None).await;
        assert_eq!(first.reply["successful"], true, "{first:?}");
        client
    }

    /// A session with the ack extension on.
    async fn handshake_ack(&self) -> String {
        let reply = self.handshake_with(json!({"ack": true})).await;
        assert_eq!(reply["ext"]["ack"], true, "{reply}");
        reply["clientId"].as_str().unwrap().to_string()
    }

    async fn subscribe(&self, client: &str, subscription: Value) {
        let reply = self
            .send(json!({
                "channel": "/meta/subscribe",
                "clientId": client,
                "subscription": subscription,
            }))
            .await;
        assert_eq!(reply["successful"], true, "{reply}");
    }

    /// Publishes through the engine (as `POST /pub` does); returns the message id.
    async fn publish(&self, channel: &str, data: Value) -> String {
        let published = within(
            "engine publish",
            self.engine.publish(
                Channel::parse(channel).unwrap(),
                Payload::from_value(&data).unwrap(),
            ),
        )
        .await
        .unwrap();
        published.message.id.to_string()
    }

    /// A `/meta/connect`; `Err` holds the reply when it was answered at once.
    async fn connect(&self, json: Value) -> Result<Connect, Value> {
        match self.handle(&json).await {
            Handled::Connect(connect) => Ok(connect),
            Handled::Reply(reply) => Err(json_of(&reply)),
            Handled::Call(_) => panic!("connect {json} was taken as a service call"),
        }
    }

    /// A connect that must be taken for holding.
    async fn connect_ok(&self, json: Value) -> Connect {
        self.connect(json.clone())
            .await
            .unwrap_or_else(|reply| panic!("connect {json} was refused: {reply}"))
    }

    /// Holds `connect` to its end.
    async fn hold(&self, connect: Connect) -> Delivery {
        let (messages, reply) = within("held connect", self.bayeux.hold(connect, true)).await;
        Delivery::new(messages, reply)
    }

    /// [`Server::poll`] through a transport's own [`Outbox`]: each message's data with whether
    /// it was said live (what a transport counts the publish→write latency of).
    async fn poll_said(&self, client: &str, ack: Option<i64>) -> Vec<(Value, bool)> {
        let connect = self
            .connect_ok(connect_json(client, "p", Some(0), ack))
            .await;
        let mut said = Said::default();
        within("held connect", self.bayeux.poll(connect, None, &mut said)).await;
        assert!(said.replied, "the connect was answered");
        said.messages
    }

    /// A connect with `advice.timeout: 0` (CometD's first connect): whatever is queued now.
    async fn poll(&self, client: &str, ack: Option<i64>) -> Delivery {
        let connect = self
            .connect_ok(connect_json(client, "p", Some(0), ack))
            .await;
        self.hold(connect).await
    }

    /// Like [`Server::poll`] for a session that should be gone: the connect's reply.
    async fn poll_reply(&self, client: &str, ack: Option<i64>) -> Value {
        match self.connect(connect_json(client, "p", Some(0), ack)).await {
            Err(reply) => reply,
            Ok(connect) => self.hold(connect).await.reply,
        }
    }

    /// Starts holding `connect` in its own task and returns once the connect is waiting (or
    /// already answered): the hold has run until its first wait before this returns.
    async fn start_hold(&self, connect: Connect) -> JoinHandle<Delivery> {
        let bayeux = self.bayeux.clone();
        let mut hold = Box::pin(async move {
            let (messages, reply) = bayeux.hold(connect, true).await;
            Delivery::new(messages, reply)
        });
        let mut done = None;
        poll_fn(|cx| {
            if let Poll::Ready(delivery) = hold.as_mut().poll(cx) {
                done = Some(delivery);
            }
            Poll::Ready(())
        })
        .await;
        match done {
            Some(delivery) => tokio::spawn(async move { delivery }),
            None => tokio::spawn(hold),
        }
    }
}

/// What a link wrote to a transport: each message's data and whether it was said live.
#[derive(Default)]
struct Said {
    messages: Vec<(Value, bool)>,
    replied: bool,
}

impl Outbox for Said {
    fn data(&mut self, message: &Arc<Message>, live: bool) {
        let object: Value = serde_json::from_slice(message.json_object()).unwrap();
        self.messages.push((object["data"].clone(), live));
    }

    fn reply(&mut self, reply: &BayeuxMessage) {
        self.replied |= reply.channel == "/meta/connect";
    }
}

fn connect_json(client: &str, id: &str, timeout: Option<u64>, ack: Option<i64>) -> Value {
    let mut connect = json!({
        "channel": "/meta/connect",
        "clientId": client,
        "connectionType": "long-polling",
        "id": id,
    });
    if let Some(t) = timeout {
        connect["advice"] = json!({ "timeout": t });
    }
    if let Some(a) = ack {
        connect["ext"] = json!({ "ack": a });
    }
    connect
}

async fn finished(what: &str, held: JoinHandle<Delivery>) -> Delivery {
    within(what, held).await.expect("the hold task panicked")
}

// ---- handshake ----

#[tokio::test(start_paused = true)]
async fn handshake_creates_a_session_and_gives_advice() {
    let s = Server::new();
    let reply = s
        .send(json!({
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["websocket", "long-polling", "callback-polling"],
            "id": 1,
        }))
        .await;
    assert_fields(
        &reply,
        &json!({
            "channel": "/meta/handshake",
            "id": 1,
            "successful": true,
            "version": "1.0",
            "supportedConnectionTypes": ["websocket", "eventsource", "long-polling", "cross-origin-long-polling", "callback-polling"],
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 25000},
            "ext": null,
            "error": null,
        }),
        "handshake",
    );
    let client = reply["clientId"].as_str().expect("clientId");
    assert!(
        client.len() >= 16 && client.bytes().all(|b| b.is_ascii_alphanumeric()),
        "clientId {client:?} should be long and opaque"
    );
    assert_eq!(s.bayeux.session_count(), 1);
    assert_ne!(
        s.handshake().await,
        client,
        "each handshake is a new session"
    );
}

#[tokio::test(start_paused = true)]
async fn handshake_advice_follows_the_configuration() {
    let s = Server::with(
        BayeuxConfig {
            timeout: Duration::from_secs(7),
            interval: Duration::from_millis(250),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let reply = s.handshake_with(json!({})).await;
    assert_eq!(
        reply["advice"],
        json!({"reconnect": "retry", "interval": 250, "timeout": 7000})
    );
}

#[tokio::test(start_paused = true)]
async fn ack_extension_is_on_only_when_the_client_asks() {
    let s = Server::new();
    for (ext, expected) in [
        (json!({"ack": true}), json!(true)),
        (json!({}), Value::Null),
        (json!({"ack": false}), Value::Null),
        (json!({"ack": "true"}), Value::Null),
    ] {
        let reply = s.handshake_with(ext.clone()).await;
        assert_eq!(reply["successful"], true, "{reply}");
        let ack = reply.get("ext").and_then(|e| e.get("ack")).cloned();
        assert_eq!(ack.unwrap_or(Value::Null), expected, "ext {ext}: {reply}");
    }
}

#[tokio::test(start_paused = true)]
async fn timesync_is_answered_when_sent() {
    let s = Server::new();
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now();
    let reply = s
        .handshake_with(json!({"timesync": {"tc": 1234, "l": 0, "o": 0}}))
        .await;
    let after = now();
    let sync = &reply["ext"]["timesync"];
    assert_eq!(sync["tc"], 1234, "{reply}");
    let ts = sync["ts"].as_u64().expect("ts");
    assert!(
        before <= ts && ts <= after,
        "ts {ts} outside [{before}, {after}]"
    );
    assert!(sync["p"].is_u64(), "{reply}");
    assert!(sync["a"].is_i64(), "{reply}");

    // On connect too, and only when asked.
    let client = reply["clientId"].as_str().unwrap();
    let mut connect = connect_json(client, "c", Some(0), None);
    connect["ext"] = json!({"timesync": {"tc": 99, "l": 5, "o": 1}});
    let delivery = s.hold(s.connect_ok(connect).await).await;
    assert_eq!(
        delivery.reply["ext"]["timesync"]["tc"], 99,
        "{:?}",
        delivery
    );
    assert!(delivery.reply["ext"]["timesync"]["ts"].is_u64());
    let plain = s.poll(client, None).await;
    assert_eq!(plain.reply.get("ext"), None, "{:?}", plain);
    assert_eq!(s.handshake_with(json!({})).await.get("ext"), None);
}

#[tokio::test(start_paused = true)]
async fn handshake_without_a_common_connection_type_is_refused_406() {
    let s = Server::new();
    for types in [json!(["flash"]), json!(["iframe", "flash"]), json!([])] {
        let reply = s
            .send(json!({
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": types,
                "id": "n",
            }))
            .await;
        let args = types
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<Vec<_>>()
            .join(",");
        assert_fields(
            &reply,
            &json!({
                "id": "n",
                "successful": false,
                "error": format!("406:{args}:no common connection type"),
                "supportedConnectionTypes": ["websocket", "eventsource", "long-polling", "cross-origin-long-polling", "callback-polling"],
                "version": "1.0",
                "clientId": null,
            }),
            &types.to_string(),
        );
    }
    assert_eq!(s.bayeux.session_count(), 0);
    // One common type is enough.
    let reply = s
        .send(json!({
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["flash", "callback-polling"],
        }))
        .await;
    assert_eq!(reply["successful"], true, "{reply}");
}

#[tokio::test(start_paused = true)]
async fn handshake_beyond_max_sessions_is_refused_503() {
    let s = Server::with(
        BayeuxConfig {
            max_sessions: 2,
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    s.handshake().await;
    s.handshake().await;
    let reply = s.handshake_with(json!({})).await;
    assert_fields(
        &reply,
        &json!({"successful": false, "error": "503::too many sessions", "clientId": null}),
        "third handshake",
    );
    assert_eq!(reply["advice"]["reconnect"], "handshake", "{reply}");
    assert_eq!(s.bayeux.session_count(), 2);
}

/// A session cannot subscribe without end: one pattern past `MAX_SESSION_SUBSCRIPTIONS` is
/// refused, a batch that would pass it adds nothing, and what the session had stays.
#[tokio::test(start_paused = true)]
async fn a_session_subscribes_to_at_most_max_session_subscriptions() {
    use halley_engine::bayeux::MAX_SESSION_SUBSCRIPTIONS;
    let s = Server::new();
    let client = s.handshake().await;
    let subscribe = |names: Vec<String>| json!({"channel": "/meta/subscribe", "clientId": client, "subscription": names, "id": "s"});
    let first: Vec<String> = (0..MAX_SESSION_SUBSCRIPTIONS)
        .map(|i| format!("/many/{i}"))
        .collect();
    let reply = s.send(subscribe(first.clone())).await;
    assert_eq!(reply["successful"], true, "{reply}");
    // Subscribing again to what it has adds nothing, so it is not refused.
    let reply = s.send(subscribe(first[..3].to_vec())).await;
    assert_eq!(reply["successful"], true, "{reply}");
    let reply = s
        .send(subscribe(vec!["/many/x".into(), "/many/y".into()]))
        .await;
    assert_eq!(reply["successful"], false, "{reply}");
    assert_eq!(
        reply["error"], "403::too many subscriptions on this session",
        "{reply}"
    );
    assert_error_form(reply["error"].as_str().unwrap());
    let listed = s.engine.channels("/many/").await.unwrap();
    assert_eq!(
        listed.len(),
        MAX_SESSION_SUBSCRIPTIONS,
        "nothing added, nothing lost"
    );
}

// ---- authorizer ----

#[tokio::test(start_paused = true)]
async fn authorizer_refusals_are_403_in_code_args_message_form() {
    let s = Server::hooked(
        BayeuxConfig::default(),
        EngineConfig::default(),
        Arc::new(Rules),
        Arc::new(NoServices),
    );
    s.check(
        json!({"channel": "/meta/handshake", "version": "1.0", "id": "1", "ext": {"password": "bad"}}),
        json!({
            "successful": false,
            "error": "403::Handshake denied",
            "advice": {"reconnect": "none"},
            "clientId": null,
        }),
    )
    .await;
    assert_eq!(s.bayeux.session_count(), 0);

    let client = s.handshake().await;
    let watcher = s.handshake().await;
    s.subscribe(&watcher, json!("/**")).await;
    for (request, expected) in [
        (
            json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/secret/a", "id": "2"}),
            json!({"successful": false, "error": "403:/secret/a:Forbidden", "subscription": "/secret/a"}),
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/secret/**", "id": "3"}),
            json!({"successful": false, "error": "403:/secret/**:Forbidden"}),
        ),
        // One refused name refuses the whole message: nothing of it is subscribed.
        (
            json!({"channel": "/meta/subscribe", "clientId": client, "subscription": ["/open/a", "/secret/b"], "id": "4"}),
            json!({"successful": false, "error": "403:/secret/b:Forbidden"}),
        ),
        (
            json!({"channel": "/secret/a", "clientId": client, "data": {"x": 1}, "id": "5"}),
            json!({"successful": false, "error": "403:/secret/a:Forbidden"}),
        ),
        (
            json!({"channel": "/open/a", "clientId": client, "data": "fine", "id": "6"}),
            json!({"successful": true, "error": null}),
        ),
    ] {
        s.check(request, expected).await;
    }
    // The refused publish reached nobody; the allowed one did. `/open/a` was not subscribed.
    assert_eq!(s.poll(&watcher, None).await.data(), [json!("fine")]);
    assert!(s.poll(&client, None).await.messages.is_empty());
}

// ---- connect ----

#[tokio::test(start_paused = true)]
async fn connect_for_an_unknown_client_must_handshake_again() {
    let s = Server::new();
    for connect in [
        connect_json("nope", "1", None, None),
        json!({"channel": "/meta/connect", "connectionType": "long-polling", "id": "1"}),
    ] {
        let Err(reply) = s.connect(connect.clone()).await else {
            panic!("an unknown client's connect must not be held: {connect}");
        };
        assert_fields(&reply, &unknown_client(), &connect.to_string());
        assert_eq!(reply["id"], "1");
    }
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_is_the_server_timeout_or_less_if_the_client_asks() {
    let s = Server::new();
    let client = s.handshake().await;
    for (asked, held) in [
        (None, 25_000),
        (Some(0), 0),
        (Some(5_000), 5_000),
        (Some(60_000), 25_000),
    ] {
        let connect = s.connect_ok(connect_json(&client, "t", asked, None)).await;
        assert_eq!(
            connect.timeout,
            Duration::from_millis(held),
            "asked {asked:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connect_with_timeout_zero_is_answered_at_once() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/z")).await;
    let start = Instant::now();
    let delivery = s.poll(&client, None).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(delivery.messages.is_empty(), "{delivery:?}");
    assert_fields(
        &delivery.reply,
        &json!({
            "channel": "/meta/connect",
            "id": "p",
            "clientId": client,
            "successful": true,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 25000},
        }),
        "connect",
    );
}

#[tokio::test(start_paused = true)]
async fn held_connect_times_out_empty_after_the_configured_timeout() {
    let s = Server::with(
        BayeuxConfig {
            timeout: Duration::from_secs(20),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!("/quiet")).await;
    let start = Instant::now();
    let delivery = s
        .hold(s.connect_ok(connect_json(&client, "1", None, None)).await)
        .await;
    let held = start.elapsed();
    assert!(
        held >= Duration::from_secs(20) && held < Duration::from_millis(20_010),
        "held for {held:?}"
    );
    assert!(delivery.messages.is_empty(), "{delivery:?}");
    assert_fields(
        &delivery.reply,
        &json!({"successful": true, "id": "1", "advice": {"reconnect": "retry", "interval": 0, "timeout": 20000}}),
        "timed-out connect",
    );
    // A client asking for less is held for less.
    let start = Instant::now();
    s.hold(
        s.connect_ok(connect_json(&client, "2", Some(3000), None))
            .await,
    )
    .await;
    let held = start.elapsed();
    assert!(
        held >= Duration::from_secs(3) && held < Duration::from_millis(3010),
        "held for {held:?}"
    );
}

/// Held connects share one timer (the sweeper), which keeps one entry per session: the entry
/// of a connect answered early fires during the next connect's hold, and must wake it without
/// answering it before its own deadline.
#[tokio::test(start_paused = true)]
async fn a_connect_is_held_to_its_own_deadline_after_an_earlier_one_answered_early() {
    let s = Server::with(
        BayeuxConfig {
            timeout: Duration::from_secs(20),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!("/early")).await;
    let first = s
        .start_hold(s.connect_ok(connect_json(&client, "1", None, None)).await)
        .await;
    tokio::time::advance(Duration::from_secs(1)).await;
    s.publish("/early", json!("now")).await;
    assert_eq!(
        finished("first connect", first).await.data(),
        [json!("now")]
    );
    let start = Instant::now();
    s.hold(s.connect_ok(connect_json(&client, "2", None, None)).await)
        .await;
    let held = start.elapsed();
    assert!(
        held >= Duration::from_secs(20) && held < Duration::from_millis(20_010),
        "held for {held:?}"
    );
}

/// `Bayeux::shutdown` answers every held connect at once (the client reconnects elsewhere),
/// and a connect that comes after it is not held.
#[tokio::test(start_paused = true)]
async fn shutdown_answers_held_connects_and_holds_no_more() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/down")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&client, "1", None, None)).await)
        .await;
    assert!(!held.is_finished());
    let start = Instant::now();
    s.bayeux.shutdown();
    let answered = finished("connect held across the shutdown", held).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert!(answered.messages.is_empty(), "{answered:?}");
    assert_fields(
        &answered.reply,
        &json!({"successful": true, "id": "1", "advice": {"reconnect": "retry", "interval": 0, "timeout": 25000}}),
        "connect answered at shutdown",
    );
    s.hold(s.connect_ok(connect_json(&client, "2", None, None)).await)
        .await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "not held after the shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn held_connect_returns_with_messages_published_through_the_engine() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/chat/a")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&client, "c1", None, None)).await)
        .await;
    assert!(
        !held.is_finished(),
        "nothing to deliver yet: the connect is held"
    );
    let start = Instant::now();
    let id = s.publish("/chat/a", json!({"text": "hi"})).await;
    let delivery = finished("held connect", held).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "delivered at once");
    assert_eq!(
        delivery.messages,
        [json!({"channel": "/chat/a", "id": id, "data": {"text": "hi"}})]
    );
    assert_fields(
        &delivery.reply,
        &json!({"channel": "/meta/connect", "id": "c1", "successful": true}),
        "connect",
    );
}

#[tokio::test(start_paused = true)]
async fn held_connect_returns_with_messages_published_over_bayeux() {
    let s = Server::new();
    let reader = s.handshake().await;
    let writer = s.handshake().await;
    s.subscribe(&reader, json!("/chat/b")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&reader, "c1", None, None)).await)
        .await;
    assert!(!held.is_finished());
    s.check(
        json!({"channel": "/chat/b", "clientId": writer, "id": "w1", "data": ["x", 2, null]}),
        json!({"successful": true, "error": null}),
    )
    .await;
    let delivery = finished("held connect", held).await;
    assert_eq!(delivery.data(), [json!(["x", 2, null])]);
    assert_eq!(delivery.messages[0]["channel"], "/chat/b");
    assert!(delivery.messages[0]["id"].is_string(), "{delivery:?}");
}

#[tokio::test(start_paused = true)]
async fn messages_queued_before_the_connect_are_returned_at_once() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/q")).await;
    for i in 0..3 {
        s.publish("/q", json!(i)).await;
    }
    let start = Instant::now();
    let delivery = s
        .hold(s.connect_ok(connect_json(&client, "1", None, None)).await)
        .await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(delivery.data(), [json!(0), json!(1), json!(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_second_connect_answers_the_held_one_at_once() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/pre")).await;
    let first = s
        .start_hold(
            s.connect_ok(connect_json(&client, "first", None, None))
                .await,
        )
        .await;
    assert!(!first.is_finished());
    let start = Instant::now();
    let second = s
        .start_hold(
            s.connect_ok(connect_json(&client, "second", None, None))
                .await,
        )
        .await;
    let answered = finished("preempted connect", first).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "preemption is immediate");
    assert!(answered.messages.is_empty(), "{answered:?}");
    assert_fields(
        &answered.reply,
        &json!({"id": "first", "successful": true}),
        "preempted",
    );

    // The second connect is the one held now: it, and only it, gets the next message.
    assert!(!second.is_finished(), "the newer connect stays held");
    s.publish("/pre", json!("after")).await;
    let delivery = finished("second connect", second).await;
    assert_eq!(delivery.data(), [json!("after")]);
    assert_eq!(delivery.reply["id"], "second");
    // Nothing is left over for a third connect (the message was delivered exactly once).
    assert!(s.poll(&client, None).await.messages.is_empty());
}

#[tokio::test(start_paused = true)]
async fn disconnect_ends_the_held_connect_and_forgets_the_client() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/bye")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&client, "c", None, None)).await)
        .await;
    assert!(!held.is_finished());
    let start = Instant::now();
    s.check(
        json!({"channel": "/meta/disconnect", "clientId": client, "id": "d"}),
        json!({"successful": true, "error": null}),
    )
    .await;
    let ended = finished("connect held across a disconnect", held).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert!(ended.messages.is_empty(), "{ended:?}");
    // Whatever the held connect says, it must not invite the client to go on with this id.
    let retry_same = ended.reply["successful"] == true
        && !matches!(
            ended.reply["advice"]["reconnect"].as_str(),
            Some("none" | "handshake")
        );
    assert!(
        !retry_same,
        "held connect after disconnect: {}",
        ended.reply
    );

    assert_eq!(s.bayeux.session_count(), 0);
    s.publish("/bye", json!("late")).await;
    assert_fields(
        &s.poll_reply(&client, None).await,
        &unknown_client(),
        "connect",
    );
    for request in [
        json!({"channel": "/meta/disconnect", "clientId": client}),
        json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/x"}),
        json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/bye"}),
        json!({"channel": "/bye", "clientId": client, "data": 1}),
    ] {
        let reply = s.send(request.clone()).await;
        assert_fields(&reply, &unknown_client(), &request.to_string());
    }
}

// ---- session expiry ----

#[tokio::test(start_paused = true)]
async fn idle_session_expires_after_max_interval() {
    let s = Server::with(
        BayeuxConfig {
            max_interval: Duration::from_secs(10),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!("/idle")).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(s.bayeux.session_count(), 1, "not idle long enough yet");
    tokio::time::sleep(Duration::from_secs(1) + 2 * SESSION_SWEEP_INTERVAL).await;
    assert_eq!(s.bayeux.session_count(), 0, "expired");
    assert_fields(
        &s.poll_reply(&client, None).await,
        &unknown_client(),
        "connect",
    );
    // Its subscription went with it.
    let published = s
        .engine
        .publish(Channel::parse("/idle").unwrap(), Payload::string("x"))
        .await
        .unwrap();
    assert_eq!(published.subscribers, 0);
}

#[tokio::test(start_paused = true)]
async fn session_with_a_held_connect_does_not_expire() {
    let s = Server::with(
        BayeuxConfig {
            timeout: Duration::from_secs(120),
            max_interval: Duration::from_secs(10),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!("/long")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&client, "c", None, None)).await)
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!held.is_finished());
    assert_eq!(
        s.bayeux.session_count(),
        1,
        "a held connect keeps its session"
    );
    s.publish("/long", json!("still here")).await;
    assert_eq!(
        finished("held connect", held).await.data(),
        [json!("still here")]
    );
    // The end of the connect counts as activity: the session is idle from then on.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(s.bayeux.session_count(), 1);
    tokio::time::sleep(Duration::from_secs(1) + 2 * SESSION_SWEEP_INTERVAL).await;
    assert_eq!(s.bayeux.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn regular_connects_keep_a_session_alive() {
    let s = Server::with(
        BayeuxConfig {
            timeout: Duration::from_secs(8),
            max_interval: Duration::from_secs(10),
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake().await;
    for i in 0..6 {
        // Each connect times out after 8 s and the next comes 5 s later: 13 s between the
        // start of two connects, but never 10 s without one held.
        let delivery = s
            .hold(
                s.connect_ok(connect_json(&client, &i.to_string(), None, None))
                    .await,
            )
            .await;
        assert_eq!(delivery.reply["successful"], true, "{delivery:?}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_eq!(s.bayeux.session_count(), 1);
}

// ---- subscribe / unsubscribe ----

#[tokio::test(start_paused = true)]
async fn subscribe_refusals() {
    let s = Server::new();
    let client = s.handshake().await;
    let sub = |subscription: Value| json!({"channel": "/meta/subscribe", "clientId": client, "subscription": subscription, "id": "s"});
    let refused = |error: &str| json!({"successful": false, "error": error});
    for (request, expected) in [
        (sub(json!("/meta/*")), refused("403:/meta/*:Forbidden")),
        (sub(json!("/meta/**")), refused("403:/meta/**:Forbidden")),
        (
            sub(json!("/meta/subscribe")),
            refused("403:/meta/subscribe:Forbidden"),
        ),
        (
            sub(json!("/meta/connect")),
            refused("403:/meta/connect:Forbidden"),
        ),
        (
            sub(json!("/service/x")),
            refused("403:/service/x:service channels are not broadcast"),
        ),
        (
            sub(json!("/service/**")),
            refused("403:/service/**:service channels are not broadcast"),
        ),
        (
            sub(json!("/inbox/0123456789abcdef0123456789abcdef")),
            refused(
                "403:/inbox/0123456789abcdef0123456789abcdef:inboxes are received with their secret over /sub",
            ),
        ),
        (
            sub(json!("no-slash")),
            refused("400:no-slash:channel name must start with '/'"),
        ),
        (
            sub(json!("/a//b")),
            refused("400:/a//b:channel name has an empty segment"),
        ),
        (
            sub(json!("/a/*/b")),
            refused(
                "400:/a/*/b:wildcards (* and **) are only allowed as the last segment of a subscription",
            ),
        ),
        (
            sub(json!(["/fine", "/bad name"])),
            refused("400:/bad name:channel name has a character outside A-Z a-z 0-9 - _ . ~ : @ !"),
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": client, "id": "s"}),
            refused("400::subscription missing"),
        ),
        (sub(json!([])), refused("400::subscription missing")),
        (
            json!({"channel": "/meta/unsubscribe", "clientId": client, "id": "s"}),
            refused("400::subscription missing"),
        ),
        (
            json!({"channel": "/meta/subscribe", "clientId": "nope", "subscription": "/a", "id": "s"}),
            unknown_client(),
        ),
        (
            json!({"channel": "/meta/subscribe", "subscription": "/a", "id": "s"}),
            unknown_client(),
        ),
    ] {
        s.check(request, expected).await;
    }
    // No refused message subscribed anything, not even the valid half of a batch.
    s.publish("/fine", json!(1)).await;
    assert!(s.poll(&client, None).await.messages.is_empty());
}

#[tokio::test(start_paused = true)]
async fn subscribe_one_name_or_an_array() {
    let s = Server::new();
    let client = s.handshake().await;
    s.check(
        json!({"channel": "/meta/subscribe", "clientId": client, "subscription": "/one", "id": "1"}),
        json!({"successful": true, "subscription": "/one", "clientId": client, "error": null}),
    )
    .await;
    s.check(
        json!({"channel": "/meta/subscribe", "clientId": client, "subscription": ["/two", "/three/*"], "id": "2"}),
        json!({"successful": true, "subscription": ["/two", "/three/*"], "error": null}),
    )
    .await;
    for channel in ["/one", "/two", "/three/x", "/four"] {
        s.publish(channel, json!(channel)).await;
    }
    assert_eq!(
        s.poll(&client, None).await.data(),
        [json!("/one"), json!("/two"), json!("/three/x")]
    );
}

#[tokio::test(start_paused = true)]
async fn wildcard_subscriptions_select_what_the_spec_says() {
    let s = Server::new();
    let published = ["/w", "/w/a", "/w/b", "/w/a/b", "/w/a/b/c", "/x/a"];
    for (pattern, expected) in [
        ("/w/a", vec!["/w/a"]),
        ("/w/*", vec!["/w/a", "/w/b"]),
        ("/w/**", vec!["/w/a", "/w/b", "/w/a/b", "/w/a/b/c"]),
        ("/w/a/*", vec!["/w/a/b"]),
        ("/*", vec!["/w"]),
        ("/**", published.to_vec()),
    ] {
        let client = s.handshake().await;
        s.subscribe(&client, json!(pattern)).await;
        for channel in published {
            s.publish(channel, json!(channel)).await;
        }
        let got = s.poll(&client, None).await;
        let channels: Vec<&str> = got
            .messages
            .iter()
            .map(|m| m["channel"].as_str().unwrap())
            .collect();
        assert_eq!(channels, expected, "subscribed to {pattern}");
        s.send(json!({"channel": "/meta/disconnect", "clientId": client}))
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn overlapping_subscriptions_deliver_once() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!(["/o/a", "/o/*", "/o/**", "/**"]))
        .await;
    // Subscribing to the same name again changes nothing either.
    s.subscribe(&client, json!("/o/a")).await;
    s.publish("/o/a", json!(1)).await;
    s.publish("/o/a/b", json!(2)).await;
    s.publish("/o/a", json!(3)).await;
    assert_eq!(
        s.poll(&client, None).await.data(),
        [json!(1), json!(2), json!(3)]
    );
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_delivery() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!(["/u/a", "/u/b", "/u/*"])).await;
    s.check(
        json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": ["/u/a", "/u/*"], "id": "u"}),
        json!({"successful": true, "subscription": ["/u/a", "/u/*"], "error": null}),
    )
    .await;
    s.publish("/u/a", json!("a")).await;
    s.publish("/u/b", json!("b")).await;
    s.publish("/u/c", json!("c")).await;
    assert_eq!(s.poll(&client, None).await.data(), [json!("b")]);
    s.check(
        json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/u/b", "id": "u2"}),
        json!({"successful": true, "subscription": "/u/b"}),
    )
    .await;
    s.publish("/u/b", json!("b2")).await;
    assert!(s.poll(&client, None).await.messages.is_empty());
}

// ---- publish ----

#[tokio::test(start_paused = true)]
async fn publish_replies_and_refusals() {
    let s = Server::new();
    let client = s.handshake().await;
    let watcher = s.handshake().await;
    s.subscribe(&watcher, json!("/**")).await;
    let refused = |error: &str| json!({"successful": false, "error": error});
    for (request, expected) in [
        (
            json!({"channel": "/chat/a", "clientId": client, "data": {"t": "ok"}, "id": "1"}),
            json!({"successful": true, "error": null}),
        ),
        (
            json!({"channel": "/chat/*", "clientId": client, "data": 1, "id": "2"}),
            refused("405:/chat/*:cannot publish to a wildcard"),
        ),
        (
            json!({"channel": "/chat/**", "clientId": client, "data": 1, "id": "3"}),
            refused("405:/chat/**:cannot publish to a wildcard"),
        ),
        (
            json!({"channel": "/chat//a", "clientId": client, "data": 1, "id": "4"}),
            refused("400:/chat//a:channel name has an empty segment"),
        ),
        (
            json!({"channel": "/chat/a b", "clientId": client, "data": 1, "id": "5"}),
            refused("400:/chat/a b:channel name has a character outside A-Z a-z 0-9 - _ . ~ : @ !"),
        ),
        (
            json!({"channel": "chat", "clientId": client, "data": 1, "id": "6"}),
            refused("400:chat:channel name must start with '/'"),
        ),
        (
            json!({"channel": "/chat/a", "clientId": client, "id": "7"}),
            refused("400:/chat/a:data missing"),
        ),
        (
            json!({"channel": "", "clientId": client, "data": 1, "id": "8"}),
            refused("400::channel missing"),
        ),
        (
            json!({"channel": "/chat/a", "clientId": "nope", "data": 1, "id": "9"}),
            unknown_client(),
        ),
        (
            json!({"channel": "/chat/a", "data": 1, "id": "10"}),
            unknown_client(),
        ),
    ] {
        s.check(request, expected).await;
    }
    // Only the one accepted publish was broadcast.
    assert_eq!(s.poll(&watcher, None).await.data(), [json!({"t": "ok"})]);
}

/// Faye CVE-2020-11020: a message on `/meta/subscribe/x` (or any meta channel the server does
/// not know) was routed like `/meta/subscribe`, bypassing the subscribe authorization. Meta
/// channels are matched exactly: these are refused and never act as the meta message.
#[tokio::test(start_paused = true)]
async fn faye_cve_2020_11020_unknown_meta_channels_are_refused_and_never_act() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/visible")).await;
    for channel in [
        "/meta/subscribe/x",
        "/meta/subscribe/",
        "/meta/unsubscribe/x",
        "/meta/handshake/x",
        "/meta/connect/x",
        "/meta/disconnect/x",
        "/meta/foo",
        "/meta/",
    ] {
        let request = json!({
            "channel": channel,
            "clientId": client,
            "subscription": "/target",
            "connectionType": "long-polling",
            "data": {"x": 1},
            "id": "m",
        });
        match s.handle(&request).await {
            Handled::Connect(_) => panic!("{channel} was taken as a connect"),
            Handled::Call(_) => panic!("{channel} was taken as a service call"),
            Handled::Reply(reply) => assert_fields(
                &json_of(&reply),
                &json!({
                    "channel": channel,
                    "successful": false,
                    "error": format!("403:{channel}:Unknown meta channel"),
                }),
                channel,
            ),
        }
    }
    // Not subscribed to /target, still subscribed to /visible, not disconnected, and nothing
    // was broadcast to a meta channel.
    s.publish("/target", json!("secret")).await;
    s.publish("/visible", json!("public")).await;
    assert_eq!(s.bayeux.session_count(), 1);
    let delivery = s.poll(&client, None).await;
    assert_eq!(delivery.data(), [json!("public")]);
}

#[tokio::test(start_paused = true)]
async fn service_channels_go_to_the_services_hook_and_are_never_broadcast() {
    let recorder = Arc::new(Recorder::default());
    let s = Server::hooked(
        BayeuxConfig::default(),
        EngineConfig::default(),
        Arc::new(PolicyOnly),
        recorder.clone(),
    );
    let client = s.handshake().await;
    let everything = s.handshake().await;
    s.subscribe(&everything, json!("/**")).await;
    s.subscribe(&client, json!("/**")).await;
    let held = s
        .start_hold(
            s.connect_ok(connect_json(&everything, "h", None, None))
                .await,
        )
        .await;
    // An answered call: its reply, to the caller alone, carries the request's id and the
    // answer (what CometD's remoteCall waits for).
    s.check(
        json!({"channel": "/service/echo", "clientId": client, "data": {"q": [1, "two"]}, "id": "s1"}),
        json!({"channel": "/service/echo", "id": "s1", "successful": true, "error": null, "data": {"q": [1, "two"]}}),
    )
    .await;
    // An unanswered one is acknowledged at once.
    s.check(
        json!({"channel": "/service/a/b", "clientId": client, "data": "x", "id": "s2"}),
        json!({"successful": true, "data": null}),
    )
    .await;
    // A failed one says why, in the code:args:message form (its message in the characters
    // the grammar allows).
    s.check(
        json!({"channel": "/service/fail", "clientId": client, "data": 0, "id": "s3"}),
        json!({"id": "s3", "successful": false, "error": "504:/service/fail:too slow try later please", "data": null}),
    )
    .await;
    assert_eq!(
        *recorder.calls.lock().unwrap(),
        [
            (
                client.clone(),
                "/service/echo".to_string(),
                r#"{"q":[1,"two"]}"#.to_string()
            ),
            (
                client.clone(),
                "/service/a/b".to_string(),
                r#""x""#.to_string()
            ),
            (client.clone(), "/service/fail".to_string(), "0".to_string()),
        ]
    );
    // A `/**` subscriber got nothing: its held connect is still waiting, then times out empty.
    assert!(!held.is_finished());
    let delivery = finished("held connect", held).await;
    assert!(delivery.messages.is_empty(), "{delivery:?}");
    assert!(s.poll(&client, None).await.messages.is_empty());
    // Refused service publishes (wildcard, missing data) never reach the hook.
    s.send(json!({"channel": "/service/*", "clientId": client, "data": 1}))
        .await;
    s.send(json!({"channel": "/service/x", "clientId": client}))
        .await;
    assert_eq!(recorder.calls.lock().unwrap().len(), 3);
}

// ---- ack extension ----

#[tokio::test(start_paused = true)]
async fn connect_replies_carry_increasing_ack_batches() {
    let s = Server::new();
    let client = s.handshake_ack().await;
    s.subscribe(&client, json!("/ack")).await;
    let mut batches = Vec::new();
    let mut last = -1;
    for i in 0..4 {
        if i % 2 == 0 {
            s.publish("/ack", json!(i)).await;
        }
        let delivery = s.poll(&client, Some(last)).await;
        let batch = delivery.reply["ext"]["ack"]
            .as_i64()
            .unwrap_or_else(|| panic!("no ext.ack in {}", delivery.reply));
        batches.push(batch);
        last = batch;
    }
    assert!(
        batches.windows(2).all(|w| w[0] < w[1]),
        "batches {batches:?} must increase"
    );
    // Without the extension there is no ext.ack.
    let plain = s.handshake().await;
    assert_eq!(s.poll(&plain, None).await.reply.get("ext"), None);
}

/// A transport counts a message's publish→write latency when the link says it is live: once,
/// when it is first taken from the queue; never for `ext.recent`'s history nor for the ack
/// extension's resend.
#[tokio::test(start_paused = true)]
async fn only_first_deliveries_of_published_messages_are_said_live() {
    let s = Server::new();
    s.publish("/said", json!("old")).await;
    let client = s.handshake_ack().await;
    let reply = s
        .send(json!({
            "channel": "/meta/subscribe", "clientId": client, "subscription": "/said",
            "ext": {"recent": 1},
        }))
        .await;
    assert_eq!(reply["successful"], true, "{reply}");
    s.publish("/said", json!("new")).await;
    assert_eq!(
        s.poll_said(&client, Some(-1)).await,
        [(json!("old"), false), (json!("new"), true)]
    );
    // The reply was lost: both come again, not live; what was published since is.
    s.publish("/said", json!("newer")).await;
    assert_eq!(
        s.poll_said(&client, Some(-1)).await,
        [
            (json!("old"), false),
            (json!("new"), false),
            (json!("newer"), true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_messages_are_resent_on_the_next_connect() {
    let s = Server::new();
    let client = s.handshake_ack().await;
    s.subscribe(&client, json!("/r")).await;
    s.publish("/r", json!("m1")).await;
    s.publish("/r", json!("m2")).await;
    let first = s.poll(&client, Some(-1)).await;
    assert_eq!(first.data(), [json!("m1"), json!("m2")]);
    let batch1 = first.reply["ext"]["ack"].as_i64().unwrap();

    // The reply was lost: the client still acknowledges the batch before it.
    s.publish("/r", json!("m3")).await;
    let again = s.poll(&client, Some(batch1 - 1)).await;
    assert_eq!(
        again.data(),
        [json!("m1"), json!("m2"), json!("m3")],
        "unacknowledged messages first, in order, then new ones"
    );
    assert_eq!(
        again.messages[..2],
        first.messages[..],
        "resent with the same ids"
    );
    let batch2 = again.reply["ext"]["ack"].as_i64().unwrap();
    assert!(batch2 > batch1);

    // Acknowledged: nothing comes back.
    let acked = s.poll(&client, Some(batch2)).await;
    assert!(acked.messages.is_empty(), "{acked:?}");
    s.publish("/r", json!("m4")).await;
    assert_eq!(
        s.poll(&client, acked.reply["ext"]["ack"].as_i64())
            .await
            .data(),
        [json!("m4")]
    );
}

#[tokio::test(start_paused = true)]
async fn acknowledging_one_batch_keeps_the_later_ones() {
    let s = Server::new();
    let client = s.handshake_ack().await;
    s.subscribe(&client, json!("/k")).await;
    s.publish("/k", json!(1)).await;
    let b1 = s.poll(&client, None).await.reply["ext"]["ack"]
        .as_i64()
        .unwrap();
    s.publish("/k", json!(2)).await;
    // Batch 1 acknowledged; batch 2 (message 2) is sent now.
    let d2 = s.poll(&client, Some(b1)).await;
    assert_eq!(d2.data(), [json!(2)]);
    // The reply of batch 2 was lost: acknowledging b1 again resends only message 2.
    let d3 = s.poll(&client, Some(b1)).await;
    assert_eq!(d3.data(), [json!(2)]);
}

/// A polling connect that a newer one took over is answered acknowledging nothing: the batch
/// the newer connect delivers in stays open until that connect's own reply, so a client whose
/// newer reply is lost gets those messages again instead of having them acknowledged by a
/// reply that carried none of them.
#[tokio::test(start_paused = true)]
async fn a_preempted_polling_connect_closes_no_ack_batch() {
    let s = Server::new();
    let client = s.handshake_ack().await;
    s.subscribe(&client, json!("/p")).await;
    let b0 = s.poll(&client, Some(-1)).await.reply["ext"]["ack"]
        .as_i64()
        .unwrap();
    let held = s
        .start_hold(
            s.connect_ok(connect_json(&client, "held", None, Some(b0)))
                .await,
        )
        .await;
    assert!(!held.is_finished());
    let newer = s
        .start_hold(
            s.connect_ok(connect_json(&client, "newer", None, Some(b0)))
                .await,
        )
        .await;
    let preempted = finished("preempted connect", held).await;
    assert_fields(
        &preempted.reply,
        &json!({"id": "held", "successful": true, "ext": null}),
        "preempted",
    );
    s.publish("/p", json!("m")).await;
    let delivery = finished("newer connect", newer).await;
    assert_eq!(delivery.data(), [json!("m")]);
    assert_eq!(
        delivery.reply["ext"]["ack"].as_i64(),
        Some(b0 + 1),
        "the preempted reply closed no batch"
    );
    // The newer reply was lost: the client acknowledges what it last saw, and gets m again.
    assert_eq!(s.poll(&client, Some(b0)).await.data(), [json!("m")]);
}

#[tokio::test(start_paused = true)]
async fn too_many_unacknowledged_messages_cut_the_session_off() {
    let s = Server::with(
        BayeuxConfig {
            max_unacked: 3,
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let client = s.handshake_ack().await;
    s.subscribe(&client, json!("/u")).await;
    s.publish("/u", json!(1)).await;
    s.publish("/u", json!(2)).await;
    let first = s.poll(&client, None).await;
    assert_eq!(
        first.reply["successful"], true,
        "2 unacknowledged is within 3"
    );
    // The client never acknowledges: 2 resent plus 2 new is over the budget.
    s.publish("/u", json!(3)).await;
    s.publish("/u", json!(4)).await;
    let over = s.poll_reply(&client, Some(0)).await;
    assert_fields(
        &over,
        &unknown_client(),
        "connect over the unacknowledged budget",
    );
    assert_eq!(s.bayeux.session_count(), 0);
    assert_fields(
        &s.poll_reply(&client, Some(0)).await,
        &unknown_client(),
        "next connect",
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_queue_overflows_is_cut_off() {
    let s = Server::with(
        BayeuxConfig::default(),
        EngineConfig {
            queue_capacity: 2,
            ..EngineConfig::default()
        },
    );
    let client = s.handshake().await;
    let other = s.handshake().await;
    s.subscribe(&client, json!("/lag")).await;
    s.subscribe(&other, json!("/lag")).await;
    s.publish("/lag", json!(1)).await;
    s.publish("/lag", json!(2)).await;
    // `other` keeps up; `client` does not.
    assert_eq!(s.poll(&other, None).await.data(), [json!(1), json!(2)]);
    s.publish("/lag", json!(3)).await;
    let reply = s.poll_reply(&client, None).await;
    assert_fields(&reply, &unknown_client(), "connect of a lagging session");
    assert_fields(
        &s.poll_reply(&client, None).await,
        &unknown_client(),
        "next connect",
    );
    // The one that kept up is unaffected.
    assert_eq!(s.poll(&other, None).await.data(), [json!(3)]);
    assert_eq!(s.bayeux.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_held_connect_ends_when_its_queue_overflows() {
    let s = Server::with(
        BayeuxConfig::default(),
        EngineConfig {
            queue_capacity: 2,
            ..EngineConfig::default()
        },
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!("/lag")).await;
    // The connect is held; three messages arrive before its task runs again.
    let mut held = pin!(s.bayeux.hold(
        s.connect_ok(connect_json(&client, "c", None, None)).await,
        true,
    ));
    let first_poll = poll_fn(|cx| Poll::Ready(held.as_mut().poll(cx).is_pending())).await;
    assert!(first_poll, "nothing queued yet: held");
    for i in 0..3 {
        s.publish("/lag", json!(i)).await;
    }
    let (_, reply) = within("held connect", held).await;
    assert_fields(
        &json_of(&reply),
        &unknown_client(),
        "held connect of a lagging session",
    );
    assert_eq!(s.bayeux.session_count(), 0);
}

// ---- a held connect must not hold up the session's other requests ----

/// CometD keeps a `/meta/connect` held on one connection and sends `/meta/subscribe` on
/// another; the subscribe must be answered at once, and the held connect must then receive
/// messages of the new subscription.
#[tokio::test(start_paused = true)]
async fn subscribe_while_a_connect_is_held_is_answered_at_once() {
    let s = Server::new();
    let client = s.handshake().await;
    s.subscribe(&client, json!("/first")).await;
    let held = s
        .start_hold(s.connect_ok(connect_json(&client, "c", None, None)).await)
        .await;
    assert!(!held.is_finished());
    let start = Instant::now();
    s.subscribe(&client, json!("/second")).await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the subscribe waited for the held connect to end"
    );
    assert!(!held.is_finished(), "the subscribe does not end the hold");
    s.send(json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/first"}))
        .await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the unsubscribe waited too"
    );
    s.publish("/second", json!("new")).await;
    let delivery = finished("held connect", held).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(delivery.data(), [json!("new")]);
}

/// The queue budget is in messages: a message matched by several of a session's
/// subscriptions is one message, and must not use up the budget several times over.
#[tokio::test(start_paused = true)]
async fn overlapping_subscriptions_count_once_against_the_queue_budget() {
    let s = Server::with(
        BayeuxConfig::default(),
        EngineConfig {
            queue_capacity: 4,
            ..EngineConfig::default()
        },
    );
    let client = s.handshake().await;
    s.subscribe(&client, json!(["/o/a", "/o/*", "/o/**"])).await;
    for i in 0..3 {
        s.publish("/o/a", json!(i)).await;
    }
    let delivery = s.poll(&client, None).await;
    assert_eq!(
        delivery.reply["successful"], true,
        "3 messages within a budget of 4 cut the session off: {}",
        delivery.reply
    );
    assert_eq!(delivery.data(), [json!(0), json!(1), json!(2)]);
}

// ---- handshake budgets (issue 12) ----

fn handshake_json(id: &str) -> Value {
    json!({"channel": "/meta/handshake", "version": "1.0",
           "supportedConnectionTypes": ["long-polling"], "id": id})
}

/// A batch opens at most one session: the second handshake in it is refused, and the first
/// still stands.
#[tokio::test(start_paused = true)]
async fn a_batch_of_handshakes_opens_one_session() {
    let s = Server::new();
    let principal = s.engine.policy().anonymous();
    let batch = Caller::new(&principal);
    let first = s.send_as(&batch, handshake_json("1")).await;
    assert_eq!(first["successful"], true, "{first}");
    for id in ["2", "3"] {
        let reply = s.send_as(&batch, handshake_json(id)).await;
        assert_fields(
            &reply,
            &json!({"successful": false, "clientId": null,
                    "error": "400::one handshake per batch"}),
            id,
        );
    }
    assert_eq!(s.bayeux.session_count(), 1);
    // The next batch may handshake again.
    let next = Caller::new(&principal);
    assert_eq!(
        s.send_as(&next, handshake_json("4")).await["successful"],
        true
    );
}

/// Regression (issue 12): one client opened 100,000 sessions in under a second and locked
/// every new client out. Its address now gets `handshake_rate` a second in bursts of ten
/// seconds' worth, is told when to try again, and another address is not held up by it.
#[tokio::test(start_paused = true)]
async fn handshake_flood_from_one_source_is_refused_429_and_another_source_still_handshakes() {
    use halley_engine::bayeux::BURST_SECONDS;
    let s = Server::with(
        BayeuxConfig {
            handshake_rate: 5,
            ..BayeuxConfig::default()
        },
        EngineConfig::default(),
    );
    let principal = s.engine.policy().anonymous();
    let flooder = "127.0.0.1".parse().ok();
    let burst = 5 * BURST_SECONDS as usize;
    let mut refused = None;
    for n in 0..burst + 10 {
        let batch = Caller::new(&principal).peer(flooder);
        let reply = s.send_as(&batch, handshake_json("f")).await;
        if reply["successful"] == false {
            refused = Some((n, reply));
            break;
        }
    }
    let (n, reply) = refused.expect("the flood was never refused");
    assert_eq!(n, burst, "the burst is rate × {BURST_SECONDS} s");
    assert_fields(
        &reply,
        &json!({"successful": false, "clientId": null,
                "error": "429::too many handshakes from this address",
                "advice": {"reconnect": "handshake", "interval": 200}}),
        "flood",
    );
    assert_eq!(s.bayeux.session_count(), burst);
    let other = Caller::new(&principal).peer("127.0.0.2".parse().ok());
    assert_eq!(
        s.send_as(&other, handshake_json("o")).await["successful"],
        true
    );
    // Waiting as advised is enough.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch = Caller::new(&principal).peer(flooder);
    assert_eq!(
        s.send_as(&batch, handshake_json("f")).await["successful"],
        true
    );
}

// ---- session binding (issue 12) ----

fn connect_now_json(client: &str) -> Value {
    connect_json(client, "c", Some(0), None)
}

/// A session handshaken without a browser secret, answered with one (`Browser::Offered`), is
/// bound once a request comes back with it: from then on a request without it (or with
/// another) cannot receive, subscribe, publish or disconnect for the session.
#[tokio::test(start_paused = true)]
async fn a_session_bound_to_its_browser_refuses_requests_without_it() {
    let s = Server::new();
    let principal = s.engine.policy().anonymous();
    let reply = s
        .send_as(
            &Caller::new(&principal).browser(Browser::Offered("b1")),
            handshake_json("h"),
        )
        .await;
    let client = reply["clientId"].as_str().unwrap().to_string();
    // Not yet bound: the client has not shown it keeps the cookie.
    let reply = s
        .send_as(&Caller::new(&principal), connect_now_json(&client))
        .await;
    assert_eq!(reply["successful"], true, "{reply}");
    // The cookie comes back: bound.
    let own = Caller::new(&principal).browser(Browser::Presented("b1"));
    s.send_as(&own, subscribe_json(&client, "/bound")).await;
    for stranger in [Browser::Unknown, Browser::Presented("b2")] {
        let other = Caller::new(&principal).browser(stranger);
        for request in [
            connect_now_json(&client),
            subscribe_json(&client, "/other"),
            json!({"channel": "/meta/unsubscribe", "clientId": client, "subscription": "/bound"}),
            json!({"channel": "/bound", "clientId": client, "data": "forged"}),
            json!({"channel": "/meta/disconnect", "clientId": client}),
        ] {
            let reply = s.send_as(&other, request.clone()).await;
            assert_fields(
                &reply,
                &unknown_client(),
                &format!("{stranger:?}: {request}"),
            );
        }
    }
    // The session is intact for its own browser, and for the connection its secret was
    // offered on (a WebSocket whose 101 set the cookie).
    assert_eq!(s.bayeux.session_count(), 1);
    let offered_on = Caller::new(&principal).browser(Browser::Offered("b1"));
    let reply = s
        .send_as(&offered_on, subscribe_json(&client, "/offered"))
        .await;
    assert_eq!(reply["successful"], true, "{reply}");
    s.publish("/bound", json!("hi")).await;
    let connect = match s
        .bayeux
        .handle_in(request(&connect_now_json(&client)), &own)
        .await
    {
        Handled::Connect(connect) => connect,
        _ => panic!("the session's own browser was refused"),
    };
    assert_eq!(s.hold(connect).await.data(), [json!("hi")]);
}

/// A handshake that came with a browser secret is bound at once; one that came with none and
/// was answered with none (a client that keeps no cookies) is not bound, as before.
#[tokio::test(start_paused = true)]
async fn a_presented_browser_binds_at_once_and_no_browser_binds_nothing() {
    let s = Server::new();
    let principal = s.engine.policy().anonymous();
    let own = Caller::new(&principal).browser(Browser::Presented("b1"));
    let bound = s.send_as(&own, handshake_json("h")).await["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_fields(
        &s.send_as(&Caller::new(&principal), connect_now_json(&bound))
            .await,
        &unknown_client(),
        "a stranger to a presented-bound session",
    );
    let free = s
        .send_as(&Caller::new(&principal), handshake_json("h"))
        .await["clientId"]
        .as_str()
        .unwrap()
        .to_string();
    for browser in [Browser::Unknown, Browser::Presented("b9")] {
        let reply = s
            .send_as(
                &Caller::new(&principal).browser(browser),
                subscribe_json(&free, "/free"),
            )
            .await;
        assert_eq!(reply["successful"], true, "{browser:?}: {reply}");
    }
}

// ---- first connect (issue 12) ----

/// Regression (issue 12): aiocometd's `open()` took 25 s: a session's first connect without
/// advice was held for the whole timeout. It is answered at once; the next one is held.
#[tokio::test(start_paused = true)]
async fn the_first_connect_of_a_session_is_answered_at_once() {
    let s = Server::new();
    let reply = s.handshake_with(json!({})).await;
    let client = reply["clientId"].as_str().unwrap().to_string();
    s.subscribe(&client, json!("/first")).await;
    let start = Instant::now();
    let first = s
        .hold(s.connect_ok(connect_json(&client, "1", None, None)).await)
        .await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the first connect was held"
    );
    assert_fields(
        &first.reply,
        &json!({"successful": true, "id": "1",
                "advice": {"reconnect": "retry", "interval": 0, "timeout": 25000}}),
        "first connect",
    );
    let second = s.connect_ok(connect_json(&client, "2", None, None)).await;
    assert_eq!(second.timeout, Duration::from_secs(25));
    let held = s.start_hold(second).await;
    assert!(!held.is_finished(), "the second connect is held");
    s.publish("/first", json!("x")).await;
    assert_eq!(finished("second connect", held).await.data(), [json!("x")]);
}

fn subscribe_json(client: &str, subscription: &str) -> Value {
    json!({"channel": "/meta/subscribe", "clientId": client, "subscription": subscription})
}
