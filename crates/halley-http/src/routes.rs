//! The route table: every endpoint Halley serves, read by everything that dispatches — the
//! lean path's `classify` (which requests it may serve without hyper) and the router in `app`.
//! A request is resolved once, to an [`Endpoint`]; an endpoint that is not in [`ROUTES`]
//! cannot be reached.
//!
//! Each route says whether it asks the access policy ([`Gate::Policy`]) or is public and why
//! ([`Gate::Public`]); the routes test walks this table and proves every policy-gated route
//! refuses a caller the policy refuses.

use hyper::Method;

use crate::error::ApiError;

/// What a route matches on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The configured Bayeux path (`--cometd-path`) and anything under it (`/cometd/connect`:
    /// the CometD client appends the message type).
    Cometd,
    /// `prefix/{rest}`: the prefix, a `/` and anything (a segment boundary is required:
    /// `/publish/a` is not `/pub` + `lish/a`). The handler gets `/{rest}`.
    Under(&'static str),
    /// The path starts with this (which ends in `/`); the handler gets what follows.
    Prefix(&'static str),
    Exact(&'static str),
    /// One of the built-in files (halley.js, the talk chat).
    Asset,
}

/// The methods a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Post,
    Put,
}

impl Verb {
    const ALL: [Verb; 4] = [Verb::Get, Verb::Head, Verb::Post, Verb::Put];

    fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Post => "POST",
            Verb::Put => "PUT",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn of(method: &Method) -> Option<Verb> {
        Some(match *method {
            Method::GET => Verb::Get,
            Method::HEAD => Verb::Head,
            Method::POST => Verb::Post,
            Method::PUT => Verb::Put,
            _ => return None,
        })
    }
}

/// Which handler serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Bayeux: long-polling POST, callback-polling GET, WebSocket upgrade.
    Bayeux,
    /// `POST`/`PUT /pub/{channel}`.
    Publish,
    /// `GET /pub/{channel}?data=&callback=`.
    PublishJsonp,
    /// `GET /sub/{channel}` and `GET /sub?channel=…`, every transport.
    Subscribe,
    /// A send to an inbox address.
    InboxSend,
    /// `/api/inbox`: a new inbox secret and address.
    InboxMint,
    /// `/api/presence`.
    Presence,
    /// `/api/history`.
    History,
    /// `/api/channels`.
    Channels,
    /// `POST /rpc/{method}`: a call to the application (`rpc_url`).
    Rpc,
    /// `POST /api/latency`: halley.js's delivery-latency report.
    Latency,
    /// rupy `/push`.
    Push,
    /// rupy `/pull` (its `Head: less` form is spotted before HTTP parsing, and asks the same
    /// policy).
    Pull,
    /// `POST /api/control/disconnect`: the control API (backend key).
    ControlDisconnect,
    /// `POST /api/control/unsubscribe`.
    ControlUnsubscribe,
    /// `POST /api/control/revoke`.
    ControlRevoke,
    /// `GET /api/control/user`.
    ControlUser,
    /// `GET /api/dashboard`: the live dashboard's snapshots (backend key).
    Dashboard,
    Healthz,
    Metrics,
    Asset,
}

impl Handler {
    /// Whether a `HEAD` is answered by this handler's `GET`. `HEAD` is safe (RFC 9110 §9.2.1):
    /// a `GET` that changes something (a JSONP publish, an inbox send, a rupy push, a Bayeux
    /// message by callback-polling) must not run for it, so those routes do not take `HEAD`
    /// (405 with `Allow`). A streaming `GET` (`/sub`, `/pull`) answers a `HEAD` with the head
    /// it would send, after the same checks and policy decision, without subscribing.
    fn answers_head(self) -> bool {
        !matches!(
            self,
            Handler::Bayeux | Handler::PublishJsonp | Handler::InboxSend | Handler::Push
        )
    }
}

/// The methods a route takes, for the `Allow` header of its 405s: those in its table, `HEAD`
/// where its `GET` answers it, and `OPTIONS` (every path answers CORS preflights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow(u8);

impl Allow {
    fn of(route: &Route) -> Allow {
        let mut bits = 0;
        for &(verb, handler) in route.methods {
            bits |= verb.bit();
            if verb == Verb::Get && handler.answers_head() {
                bits |= Verb::Head.bit();
            }
        }
        Allow(bits)
    }

    /// The header's value, e.g. `GET, HEAD, OPTIONS`.
    pub fn header(self) -> String {
        let mut out = String::new();
        for verb in Verb::ALL.into_iter().filter(|v| self.0 & v.bit() != 0) {
            out.push_str(verb.name());
            out.push_str(", ");
        }
        out.push_str("OPTIONS");
        out
    }
}

/// Whether a route asks the access policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Policy,
    /// Serves nothing the policy guards; the reason is part of the table.
    Public(&'static str),
}

#[derive(Debug)]
pub struct Route {
    pub path: Path,
    pub methods: &'static [(Verb, Handler)],
    pub gate: Gate,
    /// A request path that reaches this route, for the routes test and the docs.
    pub example: &'static str,
}

use Handler as H;
use Verb as V;

/// Every route, in the order they are tried.
pub const ROUTES: &[Route] = &[
    Route {
        path: Path::Cometd,
        methods: &[(V::Get, H::Bayeux), (V::Post, H::Bayeux)],
        gate: Gate::Policy,
        example: "/cometd",
    },
    Route {
        path: Path::Under("/pub"),
        methods: &[
            (V::Post, H::Publish),
            (V::Put, H::Publish),
            (V::Get, H::PublishJsonp),
        ],
        gate: Gate::Policy,
        example: "/pub/locked/a",
    },
    Route {
        path: Path::Under("/sub"),
        methods: &[(V::Get, H::Subscribe)],
        gate: Gate::Policy,
        example: "/sub/locked/a",
    },
    Route {
        path: Path::Exact("/sub"),
        methods: &[(V::Get, H::Subscribe)],
        gate: Gate::Policy,
        example: "/sub?channel=/locked/a",
    },
    Route {
        path: Path::Prefix(halley_proto::inbox::PREFIX),
        methods: &[(V::Get, H::InboxSend), (V::Post, H::InboxSend)],
        gate: Gate::Policy,
        example: "/inbox/0123456789abcdef0123456789abcdef",
    },
    Route {
        path: Path::Exact("/api/inbox"),
        methods: &[(V::Get, H::InboxMint), (V::Post, H::InboxMint)],
        gate: Gate::Public("mints a random secret; receiving on it is what the policy guards"),
        example: "/api/inbox",
    },
    Route {
        path: Path::Exact("/api/presence"),
        methods: &[(V::Get, H::Presence)],
        gate: Gate::Policy,
        example: "/api/presence?channel=/locked/a",
    },
    Route {
        path: Path::Exact("/api/history"),
        methods: &[(V::Get, H::History)],
        gate: Gate::Policy,
        example: "/api/history?channel=/locked/a",
    },
    Route {
        path: Path::Exact("/api/channels"),
        methods: &[(V::Get, H::Channels)],
        gate: Gate::Policy,
        example: "/api/channels",
    },
    Route {
        path: Path::Exact("/api/latency"),
        methods: &[(V::Post, H::Latency)],
        gate: Gate::Policy,
        example: "/api/latency?channel=/locked/a",
    },
    Route {
        path: Path::Under("/rpc"),
        methods: &[(V::Post, H::Rpc)],
        gate: Gate::Policy,
        example: "/rpc/locked",
    },
    Route {
        path: Path::Exact("/api/control/disconnect"),
        methods: &[(V::Post, H::ControlDisconnect)],
        gate: Gate::Policy,
        example: "/api/control/disconnect",
    },
    Route {
        path: Path::Exact("/api/control/unsubscribe"),
        methods: &[(V::Post, H::ControlUnsubscribe)],
        gate: Gate::Policy,
        example: "/api/control/unsubscribe",
    },
    Route {
        path: Path::Exact("/api/control/revoke"),
        methods: &[(V::Post, H::ControlRevoke)],
        gate: Gate::Policy,
        example: "/api/control/revoke",
    },
    Route {
        path: Path::Exact("/api/control/user"),
        methods: &[(V::Get, H::ControlUser)],
        gate: Gate::Policy,
        example: "/api/control/user?user=alice",
    },
    Route {
        path: Path::Exact("/api/dashboard"),
        methods: &[(V::Get, H::Dashboard)],
        gate: Gate::Policy,
        example: "/api/dashboard",
    },
    Route {
        path: Path::Exact("/push"),
        methods: &[(V::Get, H::Push), (V::Post, H::Push)],
        gate: Gate::Policy,
        example: "/push?name=one&message=hi&channel=/locked/a",
    },
    Route {
        path: Path::Exact("/pull"),
        methods: &[(V::Get, H::Pull)],
        gate: Gate::Policy,
        example: "/pull?name=one&channel=/locked/a",
    },
    Route {
        path: Path::Exact("/healthz"),
        methods: &[(V::Get, H::Healthz)],
        gate: Gate::Public("liveness for load balancers: says nothing about channels"),
        example: "/healthz",
    },
    Route {
        path: Path::Exact("/metrics"),
        methods: &[(V::Get, H::Metrics)],
        gate: Gate::Public("counters by transport, no channel names or members"),
        example: "/metrics",
    },
    Route {
        path: Path::Asset,
        methods: &[(V::Get, H::Asset), (V::Head, H::Asset)],
        gate: Gate::Public("the client library and the chat page, the same for everyone"),
        example: "/halley.js",
    },
];

/// A request resolved against [`ROUTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint<'p> {
    pub handler: Handler,
    /// What the path captures: the channel of `/pub/…` and `/sub/…`, an inbox's address.
    pub rest: Option<&'p str>,
}

/// The route whose path matches `path` (without its query), and what the path captures.
fn find<'p>(path: &'p str, cometd_path: &str) -> Option<(&'static Route, Option<&'p str>)> {
    ROUTES.iter().find_map(|route| {
        let rest = match route.path {
            Path::Cometd => (path == cometd_path
                || path
                    .strip_prefix(cometd_path)
                    .is_some_and(|r| r.starts_with('/')))
            .then_some(None),
            Path::Under(prefix) => path
                .strip_prefix(prefix)
                .filter(|r| r.starts_with('/'))
                .map(Some),
            Path::Prefix(prefix) => path.strip_prefix(prefix).map(Some),
            Path::Exact(p) => (path == p).then_some(None),
            Path::Asset => crate::assets::find(path).is_some().then_some(None),
        };
        rest.map(|rest| (route, rest))
    })
}

/// The methods the route of `path` takes (`None`: no route has that path).
pub fn allow(path: &str, cometd_path: &str) -> Option<Allow> {
    find(path, cometd_path).map(|(route, _)| Allow::of(route))
}

/// The route of `method path` (`path` without its query). A path no route matches is 404; a
/// path whose route does not take the method is 405. A `HEAD` goes to the route's `GET` handler
/// where that answers it ([`Handler::answers_head`]).
pub fn resolve<'p>(
    method: &Method,
    path: &'p str,
    cometd_path: &str,
) -> Result<Endpoint<'p>, ApiError> {
    resolve_allowing(method, path, cometd_path).0
}

/// [`resolve`], with the methods of the route that matched the path (for a 405's `Allow`).
pub fn resolve_allowing<'p>(
    method: &Method,
    path: &'p str,
    cometd_path: &str,
) -> (Result<Endpoint<'p>, ApiError>, Option<Allow>) {
    let Some((route, rest)) = find(path, cometd_path) else {
        return (Err(ApiError::NotFound), None);
    };
    let verb = Verb::of(method);
    let handler = route
        .methods
        .iter()
        .find(|(v, _)| Some(*v) == verb)
        .or_else(|| {
            (verb == Some(Verb::Head))
                .then(|| route.methods.iter().find(|(v, _)| *v == Verb::Get))
                .flatten()
                .filter(|(_, h)| h.answers_head())
        });
    let endpoint = match handler {
        Some(&(_, handler)) => Ok(Endpoint { handler, rest }),
        None => Err(ApiError::MethodNotAllowed),
    };
    (endpoint, Some(Allow::of(route)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, path: &str, expected: Result<(Handler, Option<&str>), u16>) {
        let got = resolve(&method, path, "/cometd")
            .map(|e| (e.handler, e.rest))
            .map_err(|e| e.status().as_u16());
        assert_eq!(got, expected, "{method} {path}");
    }

    #[test]
    fn resolves_every_kind_of_path() {
        check(Method::POST, "/cometd", Ok((H::Bayeux, None)));
        check(Method::POST, "/cometd/connect", Ok((H::Bayeux, None)));
        check(Method::POST, "/cometdx", Err(404));
        check(Method::POST, "/pub/a/b", Ok((H::Publish, Some("/a/b"))));
        check(Method::GET, "/pub/a", Ok((H::PublishJsonp, Some("/a"))));
        check(Method::DELETE, "/pub/a", Err(405));
        check(Method::POST, "/publish/a", Err(404));
        check(Method::GET, "/sub/a/**", Ok((H::Subscribe, Some("/a/**"))));
        check(Method::GET, "/sub", Ok((H::Subscribe, None)));
        check(Method::POST, "/sub", Err(405));
        check(Method::GET, "/pull", Ok((H::Pull, None)));
        check(
            Method::POST,
            "/rpc/users/find",
            Ok((H::Rpc, Some("/users/find"))),
        );
        check(Method::GET, "/rpc/users/find", Err(405));
        check(Method::POST, "/rpc", Err(404));
        check(Method::POST, "/push", Ok((H::Push, None)));
        check(
            Method::POST,
            "/api/control/disconnect",
            Ok((H::ControlDisconnect, None)),
        );
        check(Method::GET, "/api/control/disconnect", Err(405));
        check(Method::GET, "/api/control/user", Ok((H::ControlUser, None)));
        check(Method::POST, "/api/control/nothing", Err(404));
        check(Method::GET, "/api/dashboard", Ok((H::Dashboard, None)));
        check(Method::POST, "/api/dashboard", Err(405));
        check(Method::GET, "/dashboard", Ok((H::Asset, None)));
        check(Method::GET, "/healthz", Ok((H::Healthz, None)));
        check(Method::GET, "/halley.js", Ok((H::Asset, None)));
        check(Method::HEAD, "/halley.js", Ok((H::Asset, None)));
        check(Method::GET, "/nothing", Err(404));
        // HEAD wherever a safe GET is; never where a GET changes something.
        check(Method::HEAD, "/healthz", Ok((H::Healthz, None)));
        check(Method::HEAD, "/metrics", Ok((H::Metrics, None)));
        check(Method::HEAD, "/api/history", Ok((H::History, None)));
        check(Method::HEAD, "/sub/a", Ok((H::Subscribe, Some("/a"))));
        check(Method::HEAD, "/pull", Ok((H::Pull, None)));
        check(Method::HEAD, "/pub/a", Err(405));
        check(Method::HEAD, "/cometd", Err(405));
        check(Method::HEAD, "/push", Err(405));
        check(Method::HEAD, "/api/control/disconnect", Err(405));
    }

    #[test]
    fn allow_lists_the_methods_of_the_route() {
        let allow = |path| allow(path, "/cometd").map(Allow::header);
        assert_eq!(allow("/healthz").as_deref(), Some("GET, HEAD, OPTIONS"));
        assert_eq!(allow("/pub/a").as_deref(), Some("GET, POST, PUT, OPTIONS"));
        assert_eq!(allow("/cometd/x").as_deref(), Some("GET, POST, OPTIONS"));
        assert_eq!(allow("/sub").as_deref(), Some("GET, HEAD, OPTIONS"));
        assert_eq!(allow("/halley.js").as_deref(), Some("GET, HEAD, OPTIONS"));
        assert_eq!(
            allow("/api/control/revoke").as_deref(),
            Some("POST, OPTIONS")
        );
        assert_eq!(allow("/nothing"), None);
    }

    #[test]
    fn every_example_reaches_its_route() {
        for route in ROUTES {
            let path = route.example.split('?').next().unwrap_or_default();
            let (verb, handler) = route.methods[0];
            let method = match verb {
                V::Get => Method::GET,
                V::Head => Method::HEAD,
                V::Post => Method::POST,
                V::Put => Method::PUT,
            };
            let got = resolve(&method, path, "/cometd").map(|e| e.handler);
            assert_eq!(got.ok(), Some(handler), "{route:?}");
        }
    }
}
