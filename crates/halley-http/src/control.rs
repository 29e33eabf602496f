//! The control API, for the application's backend (the backend key is required: the policy's
//! `Action::Control`):
//!
//! | request | does |
//! |---|---|
//! | `POST /api/control/disconnect {"user":U[,"reason":R]}` | ends every connection of U, on every node, now |
//! | `POST /api/control/unsubscribe {"user":U,"channel":C}` | takes C (a channel or pattern, as subscribed) off U's connections |
//! | `POST /api/control/revoke {"user":U[,"before":T]}` | refuses U's tokens issued before T (Unix seconds; default: every token issued until now), cluster-wide, and ends what they opened |
//! | `GET /api/control/user?user=U` | U's connections and their channels on every node |
//!
//! Answers are JSON with counts over every node that answered, and `"nodes": {"others": N,
//! "answered": K}` (other nodes the command reached, and those that answered in time). When
//! the other nodes cannot be reached (Redis is away) the answer is 503, after this node has
//! done its part. Bad input is 400 with `{"error": …}`; bodies are at most
//! [`MAX_CONTROL_BODY`] bytes. The work itself is the engine's (`halley_engine::control`).

use std::sync::Arc;

use halley_engine::access::Action;
use halley_engine::control::{Command, MAX_REASON, Report};
use halley_proto::Pattern;
use hyper::{Request, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::reply;
use crate::body::{Body, RequestBody};
use crate::error::ApiError;
use crate::publish::read_body_within;
use crate::query::Query;
use crate::state::App;

/// Largest body of a control request. A user name, a reason of [`MAX_REASON`] bytes and a
/// channel of 255 fit many times over; anything larger is not a control request (413).
pub const MAX_CONTROL_BODY: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsubscribe {
    user: String,
    channel: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    user: String,
    #[serde(default)]
    before: Option<u64>,
}

/// Asks the policy first (401/403 before anything about the body), then reads and parses it.
async fn admitted<T: DeserializeOwned, B: RequestBody>(
    app: &App,
    request: Request<B>,
) -> Result<T, ApiError> {
    let query = Query::parse(request.uri().query());
    app.allow(request.headers(), &query, Action::Control)
        .await?;
    let body = read_body_within(request, MAX_CONTROL_BODY).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

fn user(user: String) -> Result<String, ApiError> {
    if user.is_empty() {
        return Err(ApiError::BadRequest("user must not be empty".into()));
    }
    Ok(user)
}

/// The answer, or 503 when the other nodes could not be reached (this node did its part).
fn answer(mut value: Value, report: &Report) -> Result<Response<Body>, ApiError> {
    if let Some(e) = &report.unreachable {
        return Err(ApiError::Unavailable(format!(
            "applied on this node only (count here: {}); other nodes not reached: {e}",
            report.here.count
        )));
    }
    value["nodes"] = json!({
        "others": report.remote.nodes,
        "answered": report.remote.answers.len(),
    });
    let errors: Vec<&str> = report
        .remote
        .answers
        .iter()
        .filter_map(|o| o.error.as_deref())
        .collect();
    if !errors.is_empty() {
        value["nodes"]["errors"] = json!(errors);
    }
    Ok(reply(&value, None))
}

/// `POST /api/control/disconnect`.
pub async fn disconnect<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let body: Disconnect = admitted(app, request).await?;
    let user = user(body.user)?;
    if let Some(reason) = &body.reason
        && (reason.len() > MAX_REASON || reason.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(format!(
            "reason must be at most {MAX_REASON} bytes, without control characters"
        )));
    }
    let report = app
        .engine
        .control(Command::Disconnect {
            user: user.clone(),
            reason: body.reason.filter(|r| !r.is_empty()),
        })
        .await?;
    answer(
        json!({ "user": user, "disconnected": report.count() }),
        &report,
    )
}

/// `POST /api/control/unsubscribe`.
pub async fn unsubscribe<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let body: Unsubscribe = admitted(app, request).await?;
    let user = user(body.user)?;
    let pattern = Pattern::parse(&body.channel)?;
    let channel = pattern.to_string();
    let report = app
        .engine
        .control(Command::Unsubscribe {
            user: user.clone(),
            pattern,
        })
        .await?;
    answer(
        json!({ "user": user, "channel": channel, "unsubscribed": report.count() }),
        &report,
    )
}

/// `POST /api/control/revoke`.
pub async fn revoke<B: RequestBody>(
    app: &Arc<App>,
    request: Request<B>,
) -> Result<Response<Body>, ApiError> {
    let body: Revoke = admitted(app, request).await?;
    let user = user(body.user)?;
    // By default every token issued so far, this second's included (`iat` is in seconds, and
    // a revocation refuses those issued *before* it).
    let before = body
        .before
        .unwrap_or_else(|| app.policy().now().saturating_add(1));
    let report = app
        .engine
        .control(Command::Revoke {
            user: user.clone(),
            before,
        })
        .await?;
    answer(
        json!({ "user": user, "before": before, "disconnected": report.count() }),
        &report,
    )
}

/// `GET /api/control/user?user=U`.
pub async fn user_info<B: RequestBody>(
    app: &Arc<App>,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(request.uri().query());
    app.allow(request.headers(), &query, Action::Control)
        .await?;
    let name = query
        .get("user")
        .ok_or_else(|| ApiError::BadRequest("user is required".into()))?;
    let name = user(name.to_owned())?;
    let report = app
        .engine
        .control(Command::List { user: name.clone() })
        .await?;
    let connections: Vec<&halley_engine::control::ConnectionInfo> = report.connections().collect();
    answer(
        json!({ "user": name, "count": report.count(), "connections": connections }),
        &report,
    )
}
