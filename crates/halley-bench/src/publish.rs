//! Publishers: one keep-alive connection each, one publish in flight, the payload stamped with
//! the send time. The payload is the same bytes for every server: `{"ts":<ns>,"pad":"xxx…"}`,
//! published as `application/json`.

use std::io;

use serde::{Deserialize, Serialize};

use crate::sub::{Target, bayeux_post, handshake_message, memfind};
use crate::wire::{Conn, now_ns};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PublishTo {
    /// Halley `POST /pub/{ch}`.
    Halley,
    /// Nchan `POST {nchan-pub}?id={ch}`.
    Nchan,
    /// A Bayeux publish (long-polling POST on `--cometd-path`) by a handshaken client.
    Bayeux,
    /// Centrifugo's server API, `POST /api` with `{"method":"publish","params":{…}}`.
    Centrifugo,
    /// Pushpin's HTTP publish endpoint, `POST /publish/` on `--publish-target`, as an
    /// `http-stream` item whose content is one SSE event.
    Pushpin,
    /// `POST /publish?room={ch}` on bench/peers/socketio-server.js (emits to the room).
    Socketio,
}

pub struct Publisher {
    to: PublishTo,
    target: Target,
    index: usize,
    conn: Option<Conn>,
    client_id: Option<String>,
    pad: String,
}

impl Publisher {
    /// `index` picks the source address; `size` is the payload's length in bytes.
    pub fn new(to: PublishTo, target: Target, index: usize, size: usize) -> Publisher {
        // {"ts":1234567890123456789,"pad":""} is 35 bytes.
        let pad = "x".repeat(size.saturating_sub(35));
        Publisher {
            to,
            target,
            index,
            conn: None,
            client_id: None,
            pad,
        }
    }

    /// Publishes one message to channel `channel`; one retry on a fresh connection if the
    /// kept-alive one was closed underneath us.
    pub async fn publish(&mut self, channel: usize) -> io::Result<()> {
        match self.try_publish(channel).await {
            Ok(()) => Ok(()),
            Err(_) => {
                self.conn = None;
                self.try_publish(channel).await
            }
        }
    }

    async fn try_publish(&mut self, channel: usize) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(self.target.connect_publisher(self.index).await?);
            self.client_id = None;
        }
        if self.to == PublishTo::Bayeux && self.client_id.is_none() {
            let conn = self.conn.as_mut().expect("connected above");
            let host = self.target.host();
            let reply = bayeux_post(
                conn,
                &self.target,
                &host,
                &handshake_message("long-polling"),
            )
            .await?;
            let replies: Vec<serde_json::Value> =
                serde_json::from_slice(&reply).unwrap_or_default();
            self.client_id = replies
                .iter()
                .find_map(|m| m["clientId"].as_str())
                .map(str::to_string);
            if self.client_id.is_none() {
                return Err(io::Error::other("publisher handshake failed"));
            }
        }
        let payload = format!(r#"{{"ts":{},"pad":"{}"}}"#, now_ns(), self.pad);
        let host = self.target.host();
        let conn = self.conn.as_mut().expect("connected above");
        if self.to == PublishTo::Bayeux {
            let body = format!(
                r#"[{{"channel":"{}","clientId":"{}","data":{payload}}}]"#,
                self.target.channel(channel),
                self.client_id.as_deref().unwrap_or("")
            );
            let reply = bayeux_post(conn, &self.target, &host, &body).await?;
            if !memfind(&reply, br#""successful":true"#) {
                self.client_id = None;
                return Err(io::Error::other(format!(
                    "Bayeux publish refused: {}",
                    String::from_utf8_lossy(&reply)
                )));
            }
            return Ok(());
        }
        let path = match self.to {
            PublishTo::Nchan => format!(
                "{}?id={}",
                self.target.nchan_pub,
                self.target.nchan_id(channel)
            ),
            PublishTo::Centrifugo => "/api".to_string(),
            PublishTo::Pushpin => "/publish/".to_string(),
            PublishTo::Socketio => format!("/publish?room={}", self.target.channel(channel)),
            PublishTo::Halley | PublishTo::Bayeux => {
                format!("/pub{}", self.target.channel(channel))
            }
        };
        let payload = envelope(self.to, &self.target.channel(channel), payload);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        conn.send(request.as_bytes()).await?;
        let head = conn.read_head().await?;
        conn.read_body(&head).await?;
        if head.close {
            self.conn = None;
        }
        if !(200..300).contains(&head.status) {
            return Err(io::Error::other(format!(
                "publish: HTTP status {}",
                head.status
            )));
        }
        Ok(())
    }
}

/// The request body that publishes `payload` to `channel`. The same payload bytes reach every
/// server; only the envelope around them differs.
fn envelope(to: PublishTo, channel: &str, payload: String) -> String {
    match to {
        PublishTo::Centrifugo => {
            format!(r#"{{"method":"publish","params":{{"channel":"{channel}","data":{payload}}}}}"#)
        }
        // Pushpin sends `content` to each held stream as it is: one SSE event.
        PublishTo::Pushpin => format!(
            r#"{{"items":[{{"channel":"{channel}","formats":{{"http-stream":{{"content":{}}}}}}}]}}"#,
            serde_json::Value::String(format!("data: {payload}\n\n"))
        ),
        PublishTo::Halley | PublishTo::Nchan | PublishTo::Bayeux | PublishTo::Socketio => payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Scan;

    const PAYLOAD: &str = r#"{"ts":1234567890123,"pad":"xx"}"#;

    /// What a subscriber would receive, found by the same scanner the subscribers use.
    fn timestamps(bytes: &[u8]) -> Vec<u64> {
        let mut seen = Vec::new();
        Scan::default().feed(bytes, &mut |ts| seen.push(ts));
        seen
    }

    #[test]
    fn pushpin_items_carry_the_payload_as_one_sse_event() {
        let body = envelope(PublishTo::Pushpin, "/bench/3", PAYLOAD.to_string());
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        let item = &parsed["items"][0];
        assert_eq!(item["channel"], "/bench/3");
        let content = item["formats"]["http-stream"]["content"]
            .as_str()
            .expect("content is a string");
        assert_eq!(content, format!("data: {PAYLOAD}\n\n"));
        // Escaped inside the envelope, the marker must not be found there: only Pushpin's
        // unescaped delivery carries it.
        assert!(timestamps(body.as_bytes()).is_empty());
        assert_eq!(timestamps(content.as_bytes()), vec![1234567890123]);
    }

    #[test]
    fn centrifugo_publish_carries_the_payload_as_data() {
        let body = envelope(PublishTo::Centrifugo, "/bench/0", PAYLOAD.to_string());
        let parsed: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(parsed["method"], "publish");
        assert_eq!(parsed["params"]["channel"], "/bench/0");
        assert_eq!(parsed["params"]["data"]["ts"], 1234567890123u64);
    }
}
