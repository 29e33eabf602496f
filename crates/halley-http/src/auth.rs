//! `auth-url`: the application decides who may subscribe or publish on namespaces whose rule is
//! `app`. [`AuthUrl`] is the engine's [`Application`] over HTTP.
//!
//! The question is a JSON POST to the configured URL carrying the caller's own `Cookie`,
//! `Authorization` and `Origin` headers (so the application's usual session handling applies)
//! and a body `{"action":"subscribe"|"publish","channel":…,"user":…,"token":…}` (`user`: the
//! subject of a token Halley verified; `token`: a `?token=` Halley does not verify itself).
//!
//! The answer: any `2xx` is yes, optionally with a JSON object `{"user":…,"info":{…},
//! "cache":seconds}` (who the caller is, their presence info, how long to keep this answer);
//! `401` is "who are you?" (the subscriber gets 401), any other `4xx` is no (403), with the
//! body's `error` as the reason when it has one. Anything else — `5xx`, no answer within the
//! timeout, a refused connection, an answer not understood — is a refusal with 503: Halley
//! fails closed.
//!
//! Bounds: at most `concurrency` questions in flight; a question that cannot start within the
//! timeout is refused (503) rather than queued without end. The engine keeps answers
//! ([`halley_engine::access::AskCache`]).

use std::borrow::Cow;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use halley_engine::access::{Application, Denied, MAX_VOUCHED, Question, Vouched};
use hyper::header::{AUTHORIZATION, COOKIE, HeaderName, HeaderValue, ORIGIN};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::outbound::{Endpoint, Outbound};

/// Longest reason taken from the application's refusal, in bytes; it is shown to the client.
pub const MAX_REASON: usize = 200;

/// How to reach the application.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub url: Endpoint,
    /// For one question, from asking for a slot to the last byte of the answer.
    pub timeout: Duration,
    /// Questions in flight at once.
    pub concurrency: usize,
}

impl AuthConfig {
    /// 2 s: a subscriber waits this long at most before being refused; an application slower
    /// than that is treated as down.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// 64 in flight: at a few milliseconds per answer, thousands of questions a second, while
    /// a reconnect storm cannot open thousands of connections to the application.
    pub const DEFAULT_CONCURRENCY: usize = 64;
}

/// The application behind `auth-url`.
pub struct AuthUrl {
    config: AuthConfig,
    outbound: Outbound,
    slots: Semaphore,
}

impl AuthUrl {
    pub fn new(config: AuthConfig, outbound: Outbound) -> AuthUrl {
        let slots = Semaphore::new(config.concurrency.max(1));
        AuthUrl {
            config,
            outbound,
            slots,
        }
    }
}

fn unavailable(why: impl Into<Cow<'static, str>>) -> Denied {
    Denied::Unavailable(why.into())
}

#[async_trait]
impl Application for AuthUrl {
    async fn authorize(&self, question: &Question<'_>) -> Result<Vouched, Denied> {
        let started = Instant::now();
        let timeout = self.config.timeout;
        let _slot = tokio::time::timeout(timeout, self.slots.acquire())
            .await
            .map_err(|_| unavailable("the application is busy; try again"))?
            .map_err(|_| unavailable("the application is not being asked"))?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(3);
        let f = question.forwarded;
        for (name, value) in [
            (COOKIE, &f.cookie),
            (AUTHORIZATION, &f.authorization),
            (ORIGIN, &f.origin),
        ] {
            // They were header values when they came in; one that is not valid any more is
            // left out rather than sent altered.
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.push((name, value));
            }
        }
        let body = json!({
            "action": question.kind.as_str(),
            "channel": question.channel,
            "user": question.user,
            "token": f.token.as_deref(),
        });
        let left = timeout.saturating_sub(started.elapsed());
        let answer = self
            .outbound
            .post_json(
                &self.config.url,
                &headers,
                Bytes::from(body.to_string()),
                left,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, url = %self.config.url, "auth-url: not answered");
                unavailable(format!("the application could not be asked: {e}"))
            })?;
        judge(answer.status.as_u16(), &answer.body)
    }
}

/// The application's answer, as a decision.
fn judge(status: u16, body: &[u8]) -> Result<Vouched, Denied> {
    match status {
        200..=299 => vouched(body),
        401 => Err(Denied::Unauthenticated(reason(body, status).into())),
        400..=499 => Err(Denied::Forbidden(reason(body, status).into())),
        _ => {
            tracing::warn!(status, "auth-url: the application failed");
            Err(unavailable(format!(
                "the application could not decide (status {status})"
            )))
        }
    }
}

fn vouched(body: &[u8]) -> Result<Vouched, Denied> {
    let not_understood = |why: &str| {
        tracing::warn!(why, "auth-url: answer not understood");
        unavailable("the application's answer was not understood")
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vouched::default());
    }
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) else {
        return Err(not_understood("a 2xx body must be empty or a JSON object"));
    };
    let user = match answer.remove("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(user)) if !user.is_empty() => Some(user.into_boxed_str()),
        Some(_) => return Err(not_understood("user must be a non-empty string")),
    };
    let info = match answer.remove("info") {
        None | Some(Value::Null) => None,
        Some(info @ Value::Object(_)) => Some(info.to_string().into_boxed_str()),
        Some(_) => return Err(not_understood("info must be an object")),
    };
    let size = user.as_deref().map_or(0, str::len) + info.as_deref().map_or(0, str::len);
    if size > MAX_VOUCHED {
        return Err(not_understood("user and info are larger than MAX_VOUCHED"));
    }
    let cache = match answer.remove("cache") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(seconds) => Some(Duration::from_secs(seconds)),
            None => return Err(not_understood("cache must be whole seconds")),
        },
        Some(_) => return Err(not_understood("cache must be whole seconds")),
    };
    Ok(Vouched { user, info, cache })
}

/// The reason a refusal gives: the body's `error` (or the whole body if it is short text),
/// bounded; else the status.
fn reason(body: &[u8], status: u16) -> String {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| {
            std::str::from_utf8(body)
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty() && !t.starts_with(['{', '[', '<']))
                .map(str::to_owned)
        });
    match text {
        Some(mut text) => {
            if text.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            format!("the application refused: {text}")
        }
        None => format!("the application refused (status {status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, expected: Result<Vouched, &str>) {
        let got = judge(status, body.as_bytes());
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{status} {body}"),
            (Err(got), Err(expected)) => {
                let code = match got {
                    Denied::Unauthenticated(_) => 401,
                    Denied::Forbidden(_) => 403,
                    Denied::Unavailable(_) => 503,
                };
                assert_eq!(format!("{code} {got}"), expected, "{status} {body}");
            }
            (got, expected) => panic!("{status} {body}: {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn answers_become_decisions() {
        check(200, "", Ok(Vouched::default()));
        check(204, "  \n", Ok(Vouched::default()));
        check(200, "{}", Ok(Vouched::default()));
        check(
            200,
            r#"{"user":"alice","info":{"name":"Alice"},"cache":5,"other":1}"#,
            Ok(Vouched {
                user: Some("alice".into()),
                info: Some(r#"{"name":"Alice"}"#.into()),
                cache: Some(Duration::from_secs(5)),
            }),
        );
        check(
            401,
            r#"{"error":"sign in first"}"#,
            Err("401 the application refused: sign in first"),
        );
        check(403, "", Err("403 the application refused (status 403)"));
        check(
            404,
            "no such room",
            Err("403 the application refused: no such room"),
        );
        check(
            403,
            "<html>nope</html>",
            Err("403 the application refused (status 403)"),
        );
        check(
            500,
            "",
            Err("503 the application could not decide (status 500)"),
        );
        check(
            302,
            "",
            Err("503 the application could not decide (status 302)"),
        );
        let not_understood = || Err("503 the application's answer was not understood");
        check(200, "yes", not_understood());
        check(200, "[true]", not_understood());
        check(200, r#"{"user":7}"#, not_understood());
        check(200, r#"{"user":""}"#, not_understood());
        check(200, r#"{"info":"Alice"}"#, not_understood());
        check(200, r#"{"cache":-1}"#, not_understood());
        check(200, r#"{"cache":1.5}"#, not_understood());
        let big = format!(r#"{{"info":{{"name":"{}"}}}}"#, "x".repeat(MAX_VOUCHED));
        check(200, &big, not_understood());
    }

    #[test]
    fn reasons_are_bounded() {
        let long = format!(r#"{{"error":"{}"}}"#, "é".repeat(MAX_REASON));
        let text = reason(long.as_bytes(), 403);
        assert!(text.len() <= MAX_REASON + "the application refused: ".len());
    }
}
