use std::net::SocketAddr;
use std::time::Duration;

/// The HTTP layer's settings and budgets. Each budget says why its default and what happens at
/// the limit; README.md lists them for operators.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// How long a long-poll or JSONP request is held with nothing to deliver before it is
    /// answered with an empty batch. 25 s stays under the 30 s idle timeouts common in proxies
    /// and load balancers.
    pub hold_timeout: Duration,
    /// How often open streams get a heartbeat (SSE comment, blank line, WebSocket ping), so that
    /// gateways with idle timeouts do not cut them.
    pub heartbeat_interval: Duration,
    /// Time allowed to send a request's headers (slowloris guard), separate from the hold
    /// timeout. The connection is closed when it runs out.
    pub header_timeout: Duration,
    /// Most connections open at once. The process has 20,000 file descriptors here; the rest
    /// are kept for the listener, logs and broker connections. Over the cap a connection gets
    /// a 503 and is closed.
    pub max_connections: usize,
    /// Largest request body (and WebSocket message) accepted; larger gets 413 (on a
    /// WebSocket, close 1009).
    pub body_limit: usize,
    /// How long one write to a client may make no progress before the connection is ended
    /// ([`WRITE_STALL_TIMEOUT`] by default), on every transport: HTTP streams, long-poll
    /// answers and WebSocket frames alike. Only a write that blocks arms this timer.
    pub write_stall_timeout: Duration,
    /// Origins allowed to use Halley from a browser (CORS, JSONP, iframe, WebSocket). Empty or
    /// containing `*` means any origin. An allowed origin is echoed with credentials allowed
    /// (`crate::cors`): with "any origin" every page may act with its visitor's cookies.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` is believed: a request
    /// from one of them is counted as from the nearest address in that header that is not a
    /// trusted proxy ([`crate::server::Peer::client`]), for Bayeux's per-address handshake
    /// rate. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// On shutdown, how long open connections get to end before they are dropped.
    pub drain_timeout: Duration,
    /// The reconnect delay SSE clients are told to use (`retry:`), and long-poll clients after a
    /// shutdown (`Retry-After`).
    pub retry: Duration,
    /// Where Bayeux is served (long-polling POST, callback-polling GET, WebSocket upgrade).
    pub cometd_path: String,
    /// Serve halley.js and the talk chat from this directory (`clients/js`) instead of the
    /// copies built into the binary: for editing them without rebuilding.
    pub assets_dir: Option<std::path::PathBuf>,
    /// Tell the application what happens (`[webhooks]`); nothing is told when unset.
    pub webhooks: Option<crate::hooks::WebhookConfig>,
    /// Forward clients' calls to the application (`rpc-url`); `/rpc` answers 501 and Bayeux
    /// `/service/**` is acknowledged and dropped when unset.
    pub rpc: Option<crate::rpc::RpcConfig>,
    /// Ask the application about namespaces whose rules are `app` (`auth-url`); the server
    /// sets it on the engine ([`halley_engine::Engine::set_application`]) with the client it
    /// shares with webhooks and RPC. Unset, such namespaces refuse (503).
    pub auth: Option<crate::auth::AuthConfig>,
    /// TLS (HTTP/2 or HTTP/1.1 by ALPN) with the certificate and key from these files
    /// (`--tls-cert`, `--tls-key`): on the one port beside plain HTTP, and on a TLS-only
    /// listener too with `--tls-listen`; `None`: plain only.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            hold_timeout: Duration::from_secs(25),
            heartbeat_interval: Duration::from_secs(15),
            header_timeout: Duration::from_secs(10),
            max_connections: 19_500,
            body_limit: 64 * 1024,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            drain_timeout: Duration::from_secs(5),
            retry: Duration::from_secs(2),
            cometd_path: "/cometd".into(),
            assets_dir: None,
            webhooks: None,
            rpc: None,
            auth: None,
            tls: None,
        }
    }
}

/// How long one write may wait for a client that accepts no bytes. A subscriber that stops
/// reading is cut off by its queue bound; this then frees its connection slot too, instead of
/// letting it hold the socket (and its kernel buffers, and on a WebSocket up to
/// `MAX_WRITE_BUFFER` of frames) for as long as it likes. The same rule for every transport;
/// the default of [`HttpConfig::write_stall_timeout`].
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest request head (request line plus headers) accepted, in bytes. Browsers send a few
/// hundred; cookies can push it to several KiB. Longer gets 431 and the connection is closed.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header fields in one request head. Browsers send 10 to 20; 64 leaves room for proxies'
/// additions. More gets 431 and the connection is closed. hyper, which reads the later heads of
/// a keep-alive connection it serves, keeps its own bound of 100 (giving it this one costs every
/// request it parses a zeroed header array).
pub const MAX_HEADERS: usize = 64;

/// Most messages in one long-poll or JSONP answer. A client far behind gets the rest on its
/// next poll; this bounds the size of one response.
pub const MAX_BATCH: usize = 1000;

/// Longest `name` accepted by the rupy endpoints.
pub const MAX_NAME: usize = 64;

/// Bytes of padding before the first forever-iframe message: older browsers (and some proxies)
/// render nothing until they have about 1 KiB, so the first script would otherwise wait.
pub const IFRAME_PADDING: usize = 1100;
