//! The Bayeux 1.0 message model and batch codec (the protocol CometD and Faye speak).
//!
//! A request is a JSON array of messages (a single object is accepted too). Each message names
//! its `channel`; meta channels (`/meta/handshake`, `/meta/connect`, …) drive the protocol and
//! everything else is a publish. Fields the server does not use are ignored; unknown `ext`
//! entries are kept so that extensions can read them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The protocol version this server speaks.
pub const BAYEUX_VERSION: &str = "1.0";

/// Most messages accepted in one request. Real clients batch a handful (handshake, a few
/// subscribes, a connect); this bounds the work one request can ask for.
pub const MAX_BATCH_MESSAGES: usize = 100;

/// One Bayeux message, in either direction. Absent fields are omitted when encoding.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BayeuxMessage {
    #[serde(default)]
    pub channel: String,
    /// Echoed verbatim in the reply: clients send strings, some numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// A channel name, or (CometD) an array of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_connection_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BayeuxMessage {
    /// A reply on the same channel, echoing the request's id (and clientId when given).
    pub fn reply_to(request: &BayeuxMessage, successful: bool) -> BayeuxMessage {
        BayeuxMessage {
            channel: request.channel.clone(),
            id: request.id.clone(),
            client_id: request.client_id.clone(),
            successful: Some(successful),
            ..BayeuxMessage::default()
        }
    }

    /// A failed reply with an error in the spec's `code:args:message` form.
    pub fn error(request: &BayeuxMessage, error: BayeuxError) -> BayeuxMessage {
        let mut reply = BayeuxMessage::reply_to(request, false);
        if let Some(s) = &request.subscription {
            reply.subscription = Some(s.clone());
        }
        reply.error = Some(error.to_string());
        reply
    }

    pub fn is_meta(&self) -> bool {
        self.channel.starts_with("/meta/")
    }

    /// The names in `subscription`, whether it was one string or an array.
    pub fn subscriptions(&self) -> Vec<&str> {
        match &self.subscription {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub fn ext_field(&self, name: &str) -> Option<&Value> {
        self.ext.as_ref()?.get(name)
    }

    pub fn advice_field(&self, name: &str) -> Option<&Value> {
        self.advice.as_ref()?.get(name)
    }

    pub fn set_ext(&mut self, name: &str, value: Value) {
        self.ext
            .get_or_insert_with(Map::new)
            .insert(name.to_string(), value);
    }

    pub fn to_json(&self) -> String {
        // Serialising this struct cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap()
    }
}

/// Why a request body is not a Bayeux batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("body is not a JSON Bayeux message or array of messages: {0}")]
    Malformed(String),
    #[error("more than {MAX_BATCH_MESSAGES} messages in one request")]
    TooMany,
    #[error("empty batch")]
    Empty,
}

/// Parses a request body: a JSON array of messages, or one message.
pub fn parse_batch(body: &[u8]) -> Result<Vec<BayeuxMessage>, BatchError> {
    let text = std::str::from_utf8(body).map_err(|_| BatchError::Malformed("not UTF-8".into()))?;
    let trimmed = text.trim_start();
    let messages: Vec<BayeuxMessage> = if trimmed.starts_with('[') {
        // Count before building anything: a huge array is refused cheaply.
        let raw: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| BatchError::Malformed(e.to_string()))?;
        if raw.len() > MAX_BATCH_MESSAGES {
            return Err(BatchError::TooMany);
        }
        raw.into_iter()
            .map(|r| serde_json::from_str(r.get()))
            .collect::<Result<_, _>>()
            .map_err(|e| BatchError::Malformed(e.to_string()))?
    } else {
        vec![serde_json::from_str(text).map_err(|e| BatchError::Malformed(e.to_string()))?]
    };
    Ok(messages)
}

/// Protocol errors in the spec's `code:args:message` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BayeuxError {
    /// 402: the clientId is unknown (expired, or never handshaken); the client must handshake.
    UnknownClient,
    /// 403: refused (authorizer, reserved or meta channel).
    Forbidden(String, &'static str),
    /// 400: the message is malformed.
    BadRequest(String, String),
    /// 405: publishing or subscribing to something not allowed, e.g. a wildcard publish.
    NotAllowed(String, &'static str),
    /// 406: no common version or connection type.
    Unsupported(String, &'static str),
    /// 503: the server cannot take the message now (broker down, too many sessions).
    Unavailable(String),
    /// 429: this client (or its address) asks too often; the advice says when to try again.
    TooManyRequests(String),
}

impl std::fmt::Display for BayeuxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BayeuxError::UnknownClient => write!(f, "402::Unknown client"),
            BayeuxError::Forbidden(args, msg) => write!(f, "403:{args}:{msg}"),
            BayeuxError::BadRequest(args, msg) => write!(f, "400:{args}:{msg}"),
            BayeuxError::NotAllowed(args, msg) => write!(f, "405:{args}:{msg}"),
            BayeuxError::Unsupported(args, msg) => write!(f, "406:{args}:{msg}"),
            BayeuxError::Unavailable(msg) => write!(f, "503::{msg}"),
            BayeuxError::TooManyRequests(msg) => write!(f, "429::{msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<usize, BatchError>) {
        assert_eq!(
            parse_batch(body.as_bytes()).map(|v| v.len()),
            expected,
            "{body}"
        );
    }

    #[test]
    fn batches() {
        check(r#"[{"channel":"/meta/handshake","version":"1.0"}]"#, Ok(1));
        check(r#"{"channel":"/meta/connect","clientId":"x"}"#, Ok(1));
        check("[]", Ok(0));
        check(
            r#"[{"channel":"/a","data":{"x":[1,2]}},{"channel":"/b","data":"s"}]"#,
            Ok(2),
        );
        assert!(matches!(parse_batch(b"{"), Err(BatchError::Malformed(_))));
        assert!(matches!(parse_batch(b"[1]"), Err(BatchError::Malformed(_))));
        assert!(matches!(
            parse_batch(b"\xff"),
            Err(BatchError::Malformed(_))
        ));
        let many = format!("[{}]", vec![r#"{"channel":"/a"}"#; 101].join(","));
        check(&many, Err(BatchError::TooMany));
    }

    #[test]
    fn fields_and_replies() {
        let m = &parse_batch(
            br#"[{"channel":"/meta/subscribe","id":"7","clientId":"c","subscription":["/a","/b/*"],"ext":{"ack":3}}]"#,
        )
        .unwrap()[0];
        assert_eq!(m.subscriptions(), ["/a", "/b/*"]);
        assert_eq!(m.ext_field("ack"), Some(&Value::from(3)));
        let reply = BayeuxMessage::error(m, BayeuxError::UnknownClient);
        assert_eq!(
            reply.to_json(),
            r#"{"channel":"/meta/subscribe","id":"7","clientId":"c","subscription":["/a","/b/*"],"successful":false,"error":"402::Unknown client"}"#
        );
        assert_eq!(
            BayeuxError::Forbidden("/meta/x".into(), "Forbidden").to_string(),
            "403:/meta/x:Forbidden"
        );
    }
}
