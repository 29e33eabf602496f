//! The streaming transports of `GET /sub/{channel}` as the tests expect them on the wire
//! (DESIGN.md §3), so that one table drives the delivery, resume, gap and drain tests.

use halley_http::IFRAME_PADDING;
use serde_json::Value;

use super::{Open, message_object};

/// A streaming HTTP transport (long-poll, JSONP and WebSocket have their own tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `?transport=sse`
    Sse,
    /// `Accept: text/event-stream` and no `transport` parameter.
    SseAccept,
    /// `?transport=sse&format=json`
    SseJson,
    /// `?transport=stream`
    Stream,
    /// `?transport=stream&format=json`
    StreamJson,
    /// `?transport=iframe&callback=f`
    Iframe,
    /// `?transport=multipart`
    Multipart,
}

pub const STREAMING: [Transport; 7] = [
    Transport::Sse,
    Transport::SseAccept,
    Transport::SseJson,
    Transport::Stream,
    Transport::StreamJson,
    Transport::Iframe,
    Transport::Multipart,
];

/// The iframe transport's callback name in these tests.
pub const CALLBACK: &str = "f";

const PART_HEAD: &str = "--halley\r\nContent-Type: application/json\r\n\r\n";

impl Transport {
    /// The subscribe URL for `channel`, with extra query parameters (already encoded).
    pub fn url(self, channel: &str, extra: &[&str]) -> String {
        let own = match self {
            Transport::Sse => &["transport=sse"][..],
            Transport::SseAccept => &[],
            Transport::SseJson => &["transport=sse", "format=json"],
            Transport::Stream => &["transport=stream"],
            Transport::StreamJson => &["transport=stream", "format=json"],
            Transport::Iframe => &["transport=iframe", "callback=f"],
            Transport::Multipart => &["transport=multipart"],
        };
        let params: Vec<&str> = own.iter().chain(extra).copied().collect();
        match params.is_empty() {
            true => format!("/sub{channel}"),
            false => format!("/sub{channel}?{}", params.join("&")),
        }
    }

    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Transport::SseAccept => &[("accept", "text/event-stream")],
            _ => &[],
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Transport::Sse | Transport::SseAccept | Transport::SseJson => "text/event-stream",
            Transport::Stream => "text/plain; charset=utf-8",
            Transport::StreamJson => "application/x-ndjson",
            Transport::Iframe => "text/html; charset=utf-8",
            Transport::Multipart => "multipart/x-mixed-replace; boundary=halley",
        }
    }

    /// What the stream starts with, before any message.
    pub fn preamble(self) -> String {
        match self {
            Transport::Sse | Transport::SseAccept | Transport::SseJson => "retry: 2000\n\n".into(),
            Transport::Iframe => format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body><!--{}-->\n",
                " ".repeat(IFRAME_PADDING)
            ),
            Transport::StreamJson => "\n".into(),
            _ => String::new(),
        }
    }

    /// The exact bytes of one message with data `data_json` (compact JSON).
    pub fn frame(self, channel: &str, id: &str, data_json: &str) -> String {
        let object = message_object(channel, id, data_json);
        let text = text_of(data_json);
        match self {
            Transport::Sse | Transport::SseAccept => {
                let data: String = text.split('\n').map(|l| format!("data: {l}\n")).collect();
                format!("id: {id}\n{data}\n")
            }
            Transport::SseJson => format!("id: {id}\ndata: {object}\n\n"),
            Transport::Stream if text.contains(['\n', '\r']) => format!("{data_json}\n"),
            Transport::Stream => format!("{text}\n"),
            Transport::StreamJson => format!("{object}\n"),
            Transport::Iframe => format!(
                "<script>parent.{CALLBACK}({})</script>\n",
                object
                    .replace('<', "\\u003c")
                    .replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029")
            ),
            Transport::Multipart => format!("{PART_HEAD}{object}\r\n"),
        }
    }

    /// The heartbeat sent on an idle stream.
    pub fn heartbeat(self) -> String {
        match self {
            Transport::Sse | Transport::SseAccept | Transport::SseJson => ":\n\n".into(),
            Transport::Stream | Transport::StreamJson | Transport::Iframe => "\n".into(),
            Transport::Multipart => format!("{PART_HEAD}{{\"event\":\"heartbeat\"}}\r\n"),
        }
    }

    /// Whether control events (gap, reconnect, lagged) travel in-band; raw text lines carry
    /// only messages.
    pub fn has_control(self) -> bool {
        self != Transport::Stream
    }

    /// Reads one control object (`{"event": …}`) in this transport's framing and returns it.
    /// For SSE the `event:` field must agree with the object; a leading `retry:` line (the
    /// reconnect advice) is returned as the object's `"_retry_line"` member for the caller to
    /// check, an `id:` line as `"_id_line"`.
    pub async fn read_control(self, open: &mut Open) -> Value {
        match self {
            Transport::Sse | Transport::SseAccept | Transport::SseJson => {
                let block = open.until("\n\n").await;
                let (retry, rest) = match block.strip_prefix("retry: ") {
                    Some(r) => {
                        let (value, rest) = r.split_once('\n').unwrap();
                        (Some(value.to_owned()), rest.to_owned())
                    }
                    None => (None, block.clone()),
                };
                let (event, data) = rest
                    .strip_prefix("event: ")
                    .and_then(|r| r.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("not an SSE event block: {block:?}"));
                // An `id:` line (a gap's) comes between the event's name and its data.
                let (event, id) = match event.split_once("\nid: ") {
                    Some((event, id)) => (event, Some(id)),
                    None => (event, None),
                };
                let mut object: Value = serde_json::from_str(data.trim_end()).unwrap();
                assert_eq!(object["event"], event, "{block:?}");
                if let Some(id) = id {
                    object["_id_line"] = id.into();
                }
                if let Some(retry) = retry {
                    object["_retry_line"] = retry.into();
                }
                object
            }
            Transport::StreamJson => parse(&open.line().await),
            Transport::Iframe => {
                let script = open.until(")</script>\n").await;
                let inner = script
                    .strip_prefix(&format!("<script>parent.{CALLBACK}("))
                    .and_then(|s| s.strip_suffix(")</script>\n"))
                    .unwrap_or_else(|| panic!("not a callback script: {script:?}"));
                parse(inner)
            }
            Transport::Multipart => {
                open.expect(PART_HEAD).await;
                let mut body = open.until("\r\n").await;
                body.truncate(body.len() - 2);
                parse(&body)
            }
            Transport::Stream => panic!("raw line streams have no control events"),
        }
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The text form of data: a string as-is, anything else as its compact JSON.
pub fn text_of(data_json: &str) -> String {
    match serde_json::from_str::<Value>(data_json).unwrap() {
        Value::String(s) => s,
        _ => data_json.to_owned(),
    }
}
