//! A stand-in for the application behind Halley: a real HTTP/1.1 server (hyper) on
//! `127.0.0.1:0` that records every request it gets (webhooks, RPC calls) and answers each as
//! the test scripted.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::within;

/// How the application answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Json(u16, &'static str),
    /// Nothing until [`FakeApp::release`], then 200 `{}`.
    Stall,
}

/// A request the application got.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The events of a webhook batch.
    pub fn events(&self) -> Vec<Value> {
        self.json()["events"]
            .as_array()
            .expect("a webhook body has events")
            .clone()
    }
}

struct Shared {
    script: Mutex<VecDeque<Answer>>,
    /// What requests get once the script is used up.
    otherwise: Answer,
    got: mpsc::UnboundedSender<Received>,
    release: watch::Sender<bool>,
}

/// The application. Dropping it stops nothing (its tasks end with the test's runtime).
pub struct FakeApp {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    received: mpsc::UnboundedReceiver<Received>,
}

impl FakeApp {
    /// An application answering every request with `otherwise` once `script` is used up.
    pub async fn start(script: Vec<Answer>, otherwise: Answer) -> FakeApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (got, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            otherwise,
            got,
            release: watch::channel(false).0,
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = serving.clone();
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared, request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FakeApp {
            addr,
            shared,
            received,
        }
    }

    /// An application that answers 200 `{}` to everything.
    pub async fn ok() -> FakeApp {
        FakeApp::start(Vec::new(), Answer::Json(200, "{}")).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request it got (waiting for it).
    pub async fn next(&mut self) -> Received {
        within("a request to the application", self.received.recv())
            .await
            .expect("the application is running")
    }

    /// The events of the next webhook batches, until at least `n` have arrived.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < n {
            events.extend(self.next().await.events());
        }
        events
    }

    /// Whether a request is waiting to be taken with [`FakeApp::next`].
    pub fn has_more(&mut self) -> bool {
        !self.received.is_empty()
    }

    /// Answers every stalled request (and those to come that the script stalls).
    pub fn release(&self) {
        let _ = self.shared.release.send(true);
    }
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let (head, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| shared.otherwise.clone());
    let _ = shared.got.send(Received {
        path,
        headers: head.headers,
        body,
    });
    let (status, body) = match answer {
        Answer::Json(status, body) => (status, body),
        Answer::Stall => {
            let mut released = shared.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            (200, "{}")
        }
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}
