//! `auth-url`: namespaces whose rules are `app` ask the application, over real HTTP, with the
//! caller's own cookies, `Authorization` and `Origin`; its answers are kept per (credentials,
//! action, channel); an application that is down, slow or busy is a 503 — never a yes.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, within};
use halley_engine::access::{
    AccessConfig, AppConfig, NamespaceConfig, Policy, PublishRule, SubscribeRule,
};
use halley_engine::{Engine, EngineConfig};
use halley_http::auth::{AuthConfig, AuthUrl};
use halley_http::outbound::{Endpoint, Outbound};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the application saw of one question.
#[derive(Debug, Clone)]
struct Asked {
    cookie: Option<String>,
    origin: Option<String>,
    authorization: Option<String>,
    body: Value,
}

/// A small application: `session=alice` may do anything and is vouched for as Alice,
/// `session=bob` is refused (403), no cookie is asked to sign in (401). It records every
/// question, and how many were in flight at once; `delay` makes it slow.
#[derive(Default)]
struct App {
    asked: Mutex<Vec<Asked>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    delay: Mutex<Duration>,
    /// Told of every question that arrives.
    arrived: tokio::sync::Notify,
    /// When set, every answer waits until it says `true`.
    gate: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

impl App {
    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let cookie = header("cookie");
        let origin = header("origin");
        let authorization = header("authorization");
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        self.asked.lock().unwrap().push(Asked {
            cookie: cookie.clone(),
            origin,
            authorization: authorization.clone(),
            body: body.clone(),
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.arrived.notify_one();
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let gate = self.gate.lock().unwrap().clone();
        if let Some(mut gate) = gate {
            let _ = gate.wait_for(|open| *open).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let (status, answer) = match cookie.as_deref() {
            Some("session=alice") => (
                200,
                json!({"user": "alice", "info": {"name": "Alice", "color": "#1e90ff"}}),
            ),
            Some("session=bob") => (403, json!({"error": "bob may not"})),
            _ if authorization.as_deref() == Some("Session carol") => (200, json!({})),
            _ => (401, json!({"error": "sign in first"})),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }
}

/// Serves `app` on 127.0.0.1:0 until the test ends; returns its URL.
async fn serve(app: Arc<App>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/halley/auth")
}

fn namespace(channels: &str, subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
    NamespaceConfig {
        subscribe,
        publish,
        ..NamespaceConfig::new(channels)
    }
}

/// Halley with `/app/**` decided by the application at `url` and `/open/**` open to all.
async fn halley(url: &str, timeout: Duration, concurrency: usize) -> TestServer {
    let policy = Policy::new(AccessConfig {
        publish_key: Some("backend".into()),
        namespaces: vec![
            namespace("/app/**", SubscribeRule::App, PublishRule::App),
            namespace("/open/**", SubscribeRule::Anyone, PublishRule::Anyone),
            NamespaceConfig {
                stamp: true,
                ..namespace("/stamped/**", SubscribeRule::App, PublishRule::App)
            },
        ],
        app: Some(AppConfig {
            cache_ttl: Duration::from_secs(30),
        }),
        ..AccessConfig::default()
    })
    .unwrap();
    let engine = Engine::in_memory(EngineConfig::default());
    assert!(engine.set_policy(policy).is_ok());
    let auth = AuthUrl::new(
        AuthConfig {
            url: Endpoint::parse(url).unwrap(),
            timeout,
            concurrency,
        },
        Outbound::new(),
    );
    assert!(engine.set_application(Arc::new(auth)).is_ok());
    TestServer::with_engine(engine, Some("backend".into()), |_| {}).await
}

async fn get_as(s: &TestServer, path: &str, cookie: Option<&str>) -> common::Reply {
    let mut request = s
        .request("GET", path)
        .header("origin", "http://app.example");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    s.send(request.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn the_application_decides_with_the_callers_own_credentials() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;

    // Alice subscribes over SSE: the application was asked with her cookie and Origin.
    let sse = s
        .stream_with(
            "/sub/app/room",
            &[
                ("accept", "text/event-stream"),
                ("cookie", "session=alice"),
                ("origin", "http://app.example"),
            ],
        )
        .await;
    assert_eq!(sse.status, 200);
    let asked = app.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].cookie.as_deref(), Some("session=alice"));
    assert_eq!(asked[0].origin.as_deref(), Some("http://app.example"));
    assert_eq!(
        asked[0].body,
        json!({"action": "subscribe", "channel": "/app/room", "user": null, "token": null})
    );

    // Bob is refused with the application's reason; nobody (no cookie) is asked to sign in.
    let bob = get_as(&s, "/sub/app/room?transport=longpoll", Some("session=bob")).await;
    bob.expect_error(403);
    assert!(bob.body.contains("bob may not"), "{}", bob.body);
    let nobody = get_as(&s, "/sub/app/room?transport=longpoll", None).await;
    nobody.expect_error(401);
    assert!(nobody.body.contains("sign in first"), "{}", nobody.body);

    // The open namespace never asks.
    let before = app.asked().len();
    let open = get_as(&s, "/api/history?channel=/open/a", None).await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(app.asked().len(), before);

    // Another scheme in Authorization reaches the application whole.
    let carol = s
        .send(
            s.request("GET", "/api/history?channel=/app/room")
                .header("authorization", "Session carol")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(carol.status, 200, "{}", carol.body);
    assert_eq!(
        app.asked().last().unwrap().authorization.as_deref(),
        Some("Session carol")
    );
}

#[tokio::test]
async fn answers_are_kept_per_credentials_action_and_channel() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;
    for _ in 0..3 {
        let reply = get_as(&s, "/api/history?channel=/app/a", Some("session=alice")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(app.asked().len(), 1, "one question for three requests");
    // A no is kept too: the application is not asked again by a client that retries.
    for _ in 0..3 {
        get_as(&s, "/api/history?channel=/app/a", Some("session=bob"))
            .await
            .expect_error(403);
    }
    assert_eq!(app.asked().len(), 2);
    // Another channel, another action: asked again.
    get_as(&s, "/api/history?channel=/app/b", Some("session=alice")).await;
    let published = s
        .send(
            s.request("POST", "/pub/app/a")
                .header("cookie", "session=alice")
                .body(Full::new(Bytes::from_static(b"hi")))
                .unwrap(),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let asked = app.asked();
    assert_eq!(asked.len(), 4);
    assert_eq!(asked[3].body["action"], "publish");
    assert_eq!(s.metric("halley_auth_questions_total").await, 4);
    assert_eq!(s.metric("halley_auth_cached_total").await, 4);
}

#[tokio::test]
async fn what_the_application_vouches_for_is_the_members_presence() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;
    let claim = urlencode(
        &json!({"channel": "/app/room", "member": "m-alice-0001", "info": {"name": "Mallory"}})
            .to_string(),
    );
    let _sse = s
        .stream_with(
            &format!("/sub/app/room?transport=sse&presence={claim}"),
            &[("cookie", "session=alice")],
        )
        .await;
    let members = get_as(&s, "/api/presence?channel=/app/room", Some("session=alice")).await;
    assert_eq!(
        members.json()["members"],
        json!([{"name": "Alice", "color": "#1e90ff"}]),
        "the client claimed Mallory"
    );
}

/// In a namespace that stamps its messages, the sender is who the application said.
#[tokio::test]
async fn a_stamped_message_carries_whom_the_application_vouched_for() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;
    let mut sub = s
        .stream_with(
            "/sub/stamped/room?transport=stream&format=json",
            &[("cookie", "session=alice")],
        )
        .await;
    let published = s
        .send(
            s.request("POST", "/pub/stamped/room")
                .header("cookie", "session=alice")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"text":"hi","from":{"user":"bob"}}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    let message = within("the stamped message", sub.json_line()).await;
    assert_eq!(
        message["data"],
        json!({"text": "hi", "from": {"user": "alice", "info": {"name": "Alice", "color": "#1e90ff"}}})
    );
}

#[tokio::test]
async fn every_transport_and_bayeux_ask_the_application() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;
    let alice = [("cookie", "session=alice")];
    let bob = [("cookie", "session=bob")];
    for transport in ["stream", "iframe&callback=cb", "multipart", "sse"] {
        let path = format!("/sub/app/t?transport={transport}");
        assert_eq!(s.stream_with(&path, &alice).await.status, 200, "{path}");
        assert_eq!(s.stream_with(&path, &bob).await.status, 403, "{path}");
    }
    for transport in ["longpoll", "jsonp&callback=cb"] {
        let path = format!("/sub/app/t?transport={transport}");
        get_as(&s, &path, Some("session=bob"))
            .await
            .expect_error(403);
    }
    // rupy's pull and push.
    assert_eq!(
        s.stream_with("/pull?name=a&channel=/app/t", &alice)
            .await
            .status,
        200
    );
    assert_eq!(
        s.stream_with("/pull?name=b&channel=/app/t", &bob)
            .await
            .status,
        403
    );
    get_as(
        &s,
        "/push?name=b&message=hi&channel=/app/t",
        Some("session=bob"),
    )
    .await
    .expect_error(403);

    // A WebSocket upgrade: refused before 101 for Bob, accepted for Alice.
    let refused = s
        .ws_with("/sub/app/t", &[("cookie", "session=bob")])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("403"), "{refused}");
    s.ws_with("/sub/app/t", &[("cookie", "session=alice")])
        .await
        .unwrap();

    // Bayeux long-polling: the session keeps what its handshake request presented.
    for (cookie, expected) in [("session=alice", true), ("session=bob", false)] {
        let handshake = bayeux(
            &s,
            cookie,
            json!([{"channel": "/meta/handshake", "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"]}]),
        )
        .await;
        let client = handshake[0]["clientId"].as_str().unwrap().to_owned();
        let replies = bayeux(
            &s,
            cookie,
            json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/app/b"},
                   {"channel": "/app/b", "clientId": client, "data": "hi"}]),
        )
        .await;
        assert_eq!(replies[0]["successful"], expected, "{cookie}: {replies:?}");
        assert_eq!(replies[1]["successful"], expected, "{cookie}: {replies:?}");
        if !expected {
            assert_eq!(
                replies[0]["error"],
                "403:/app/b:the application refused bob may not"
            );
        }
    }
}

async fn bayeux(s: &TestServer, cookie: &str, batch: Value) -> Vec<Value> {
    let reply = s
        .send(
            s.request("POST", "/cometd")
                .header("content-type", "application/json")
                .header("cookie", cookie)
                .body(Full::new(Bytes::from(batch.to_string())))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

#[tokio::test]
async fn an_application_that_is_down_is_a_refusal_and_is_asked_again() {
    // A port nothing listens on.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", free.local_addr().unwrap());
    drop(free);
    let s = halley(&url, Duration::from_secs(2), 8).await;
    for _ in 0..2 {
        let reply = get_as(&s, "/sub/app/a?transport=longpoll", Some("session=alice")).await;
        reply.expect_error(503);
        assert!(reply.body.contains("could not be asked"), "{}", reply.body);
    }
    // Not kept: both were questions.
    assert_eq!(s.metric("halley_auth_questions_total").await, 2);
    assert_eq!(s.metric("halley_auth_unavailable_total").await, 2);
    // Nothing configured to ask is no different for the open namespace.
    let open = get_as(&s, "/sub/open/a?transport=longpoll", None).await;
    assert_eq!(open.status, 200);
}

#[tokio::test]
async fn a_slow_application_is_refused_when_its_time_is_up() {
    let app = Arc::new(App::default());
    *app.delay.lock().unwrap() = Duration::from_secs(30);
    let s = halley(&serve(app.clone()).await, Duration::from_millis(300), 8).await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let path = format!("/api/history?channel=/app/{i}");
        let s = &s;
        tasks.push(async move { get_as(s, &path, Some("session=alice")).await });
    }
    for reply in within("three refusals", futures_util::future::join_all(tasks)).await {
        reply.expect_error(503);
        assert!(reply.body.contains("did not answer"), "{}", reply.body);
    }
    s.assert_still_serving().await;
}

#[tokio::test]
async fn questions_in_flight_are_bounded() {
    let app = Arc::new(App::default());
    let (open, gate) = tokio::sync::watch::channel(false);
    *app.gate.lock().unwrap() = Some(gate);
    let s = halley(&serve(app.clone()).await, Duration::from_secs(5), 2).await;
    // Five subscribers at once, as a reconnect storm would bring: two questions reach the
    // application, the others wait for a slot.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let path = format!("/api/history?channel=/app/{i}");
        let s = &s;
        tasks.push(async move { get_as(s, &path, Some("session=alice")).await });
    }
    let all = futures_util::future::join_all(tasks);
    let release = async {
        within("two questions in flight", async {
            while app.in_flight.load(Ordering::SeqCst) < 2 {
                app.arrived.notified().await;
            }
        })
        .await;
        open.send_replace(true);
    };
    let (replies, ()) = within("five answers", async { tokio::join!(all, release) }).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(app.asked().len(), 5);
    assert_eq!(app.most_in_flight.load(Ordering::SeqCst), 2);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Whom the application named in its answer is a user the control API reaches, as a token's
/// subject is.
#[tokio::test]
async fn the_control_api_reaches_users_the_application_vouched_for() {
    let app = Arc::new(App::default());
    let s = halley(&serve(app.clone()).await, Duration::from_secs(2), 8).await;
    let mut sse = s
        .stream_with(
            "/sub/app/room",
            &[("accept", "text/event-stream"), ("cookie", "session=alice")],
        )
        .await;
    assert_eq!(sse.status, 200);
    let listed = s.get("/api/control/user?user=alice&key=backend").await;
    assert_eq!(listed.json()["count"], 1, "{}", listed.body);
    let done = s
        .post(
            "/api/control/disconnect?key=backend",
            "application/json",
            r#"{"user":"alice","reason":"bye"}"#,
        )
        .await;
    assert_eq!(done.json()["disconnected"], 1, "{}", done.body);
    within("the disconnected notice", sse.until("event: disconnected")).await;
}
