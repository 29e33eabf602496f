//! Halley's HTTP layer: every transport and endpoint of DESIGN.md §3 on one port.
//!
//! - [`Server`] binds, accepts (under a connection cap), reads each request head under a
//!   timeout, and serves HTTP/1.1 (its own lean path for held requests, hyper for the rest);
//!   [`Server::run`] drains on shutdown. With [`HttpConfig::tls`] a second listener speaks TLS
//!   (`secure`: hyper's HTTP/2 or HTTP/1.1 by ALPN), its certificate a [`Tls`] that
//!   [`Tls::reload`] swaps; cleartext HTTP/2 with prior knowledge is served too.
//! - [`HttpConfig`] holds the budgets: hold timeout, heartbeat, header timeout, connection cap,
//!   body limit, origin allowlist. Who may do what is the engine's access policy
//!   (`halley_engine::access`), which every entry point asks through `state::App`.
//! - `routes` is the route table both dispatchers read; `state` is `App`'s home and the one
//!   way handlers ask the access policy; `app` routes requests; `publish` is `/pub`; `transport` picks and runs the subscriber
//!   transports (long-poll, JSONP, chunked stream, iframe, multipart, SSE, the forever GIF, WebSocket);
//!   `cometd` is Bayeux on `/cometd` (long-polling, callback-polling, WebSocket);
//!   `rupy` is `/push` and `/pull`; `ops` is `/healthz`, `/metrics`, `/api/channels`;
//!   `api` is what the browser client needs (inboxes, `/api/presence`, JSONP answers);
//!   `control` is the application's control API (`/api/control/*`: disconnect, unsubscribe,
//!   revoke, list a user); `dashboard` is the live dashboard's data (`/api/dashboard`, backend
//!   key); `latency` takes halley.js's delivery-latency reports (`POST /api/latency`, into
//!   `halley_client_latency_seconds`); `assets` serves halley.js, the talk chat and the dashboard page; `outbound` is the client
//!   for calls to the application (auth, webhooks, RPC); `auth` asks the application
//!   (`auth-url`); `hooks` tells the application what happens (webhooks: the engine's observer,
//!   a bounded queue, signed batches, retries); `rpc` forwards clients' calls to it
//!   (`POST /rpc/…`, Bayeux `/service/**`).
//! - `error::ApiError` is the one place where a refusal becomes a status and a JSON body.
//!
//! Invariant: this is the only crate that knows HTTP. It talks to the engine only through
//! [`halley_engine::Engine`].

mod api;
mod app;
mod assets;
pub mod auth;
mod body;
mod cometd;
mod config;
mod control;
mod cors;
pub mod dashboard;
mod direct;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hooks;
pub mod latency;
mod metrics;
mod ops;
pub mod outbound;
mod publish;
mod query;
pub mod routes;
pub mod rpc;
mod rupy;
mod secure;
mod server;
mod state;
pub mod tls;
mod transport;

pub use config::{HttpConfig, IFRAME_PADDING, MAX_BATCH, MAX_HEAD, MAX_HEADERS, MAX_NAME};
pub use control::MAX_CONTROL_BODY;
pub use secure::{H2_SEND_BUFFER, MAX_H2_STREAMS};
pub use server::Server;
pub use tls::{Tls, TlsConfig};
