//! The message model: `{channel, id, data}` with `data` held as compact JSON text.

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::{Channel, MessageId};

/// Why a publish body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON")]
    InvalidJson,
    #[error("body is not valid UTF-8")]
    NotUtf8,
    /// Deeper than [`MAX_DEPTH`] arrays and objects.
    #[error("body is too deeply nested (more than {MAX_DEPTH} levels of arrays and objects)")]
    TooDeep,
    /// A `\ud800`-style escape that is not half of a surrogate pair: it names no character,
    /// so no UTF-8 reader can give it back (I-JSON, RFC 7493 §2.1, forbids it).
    #[error(
        "body has a lone surrogate escape (\\uD800-\\uDFFF not in a pair), which is no character"
    )]
    LoneSurrogate,
}

/// Most levels of arrays and objects a message's data may nest. Data is refused (400) beyond
/// it on every way in, so that everything stored can be read back by any JSON reader: the
/// stored text is wrapped in a few more levels on the way out (a message object, a history
/// answer, a Bayeux batch), and common parsers stop at 128 (serde_json, Python's default
/// recursion for deep data is near it too). Real data nests a handful of levels.
pub const MAX_DEPTH: usize = 64;

/// Message data before it is published: always valid, compact JSON (no whitespace outside
/// strings), so that every line-based transport can write it on one line.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Box<str>);

impl Payload {
    /// A body declared as JSON. The number spelling, the member order and every escape are
    /// kept exactly (no float round trip, no re-encoding). This is the one check of what may
    /// be stored, whichever way a message comes in: valid JSON, at most [`MAX_DEPTH`] deep,
    /// no lone surrogate escapes.
    pub fn from_json(body: &[u8]) -> Result<Payload, PayloadError> {
        let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(|_| PayloadError::InvalidJson)?;
        Ok(Payload(compact(raw.get())?.into()))
    }

    /// A body of any other type: UTF-8 text, which becomes a JSON string.
    pub fn from_text(body: &[u8]) -> Result<Payload, PayloadError> {
        let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
        Ok(Payload::string(text))
    }

    pub fn string(text: &str) -> Payload {
        // Serialising a &str cannot fail.
        Payload(serde_json::to_string(text).unwrap().into())
    }

    /// From a JSON value already parsed elsewhere (e.g. a Bayeux message's `data`).
    /// Also fails on data nested deeper than [`MAX_DEPTH`]. (A `Value` cannot hold a lone
    /// surrogate: its strings are Rust strings.)
    pub fn from_value(value: &serde_json::Value) -> Result<Payload, PayloadError> {
        // Serialising a Value cannot fail: its map keys are strings.
        Payload::from_json(serde_json::to_string(value).unwrap_or_default().as_bytes())
    }

    /// A binary body (an image, a sound…; [`is_binary_type`]), kept as JSON that every JSON
    /// transport, history and the broker carry as they are: `{"$binary":"<base64>","type":
    /// "<content type>"}`. Transports that can carry bytes send the bytes with their type
    /// ([`Message::binary`]).
    pub fn binary(content_type: &str, bytes: &[u8]) -> Payload {
        use base64::Engine as _;
        let mut out = String::with_capacity(bytes.len() * 4 / 3 + content_type.len() + 32);
        out.push_str("{\"");
        out.push_str(BINARY_KEY);
        out.push_str("\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
        out.push_str("\",\"type\":");
        push_json_string(&mut out, content_type);
        out.push('}');
        Payload(out.into())
    }

    /// The compact JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// This data, a JSON object, with its top-level `key` set to `value`: every `key` it had
    /// (however its name was escaped) is dropped and the new one is written last, so that a
    /// reader keeping the first or the last of duplicate keys sees the same value. The other
    /// members keep their order and their exact text. `None` if the data is not an object.
    pub fn with_key(&self, key: &str, value: &Payload) -> Option<Payload> {
        let Members(members) = serde_json::from_str(&self.0).ok()?;
        let mut out = String::with_capacity(self.0.len() + key.len() + value.0.len() + 4);
        out.push('{');
        for (name, raw) in members.iter().filter(|(name, _)| name != key) {
            push_json_string(&mut out, name);
            out.push(':');
            out.push_str(raw.get());
            out.push(',');
        }
        push_json_string(&mut out, key);
        out.push(':');
        out.push_str(&value.0);
        out.push('}');
        // Compact members of a compact object, keys re-escaped: compact JSON again.
        Some(Payload(out.into()))
    }

    /// Whether this data is a JSON object with a top-level member named `key`, however the
    /// name is written (`"presence"`, `"\u0070resence"`): the decoded name counts, as every
    /// reader of the message sees it. The text is searched first, so data that has neither
    /// the plain name nor an escape that could spell it costs no parse.
    pub fn has_key(&self, key: &str) -> bool {
        let json = self.json();
        if !json.starts_with('{') {
            return false;
        }
        // Letters and digits can only be escaped as `\uXXXX`: a key made of them is there only
        // if its plain text or such an escape is (the short escapes `\"`, `\n`, `\/`… stand
        // for quotes, slashes and controls).
        let plain = !key.contains(['"', '\\', '/']) && !key.chars().any(char::is_control);
        if plain && !json.contains(key) && !json.contains("\\u") {
            return false;
        }
        serde_json::from_str::<Members<'_>>(json)
            .is_ok_and(|Members(members)| members.iter().any(|(name, _)| name == key))
    }

    /// The text form used by text transports: a string as-is, anything else as compact JSON.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        if self.0.starts_with('"') {
            // A Payload is a valid string with no lone surrogate, so this does not fail; the
            // JSON text is the answer if it ever did.
            match serde_json::from_str::<String>(&self.0) {
                Ok(text) => std::borrow::Cow::Owned(text),
                Err(_) => std::borrow::Cow::Borrowed(&self.0),
            }
        } else {
            std::borrow::Cow::Borrowed(&self.0)
        }
    }
}

/// The key of a binary body's JSON form ([`Payload::binary`]).
pub const BINARY_KEY: &str = "$binary";

/// Most bytes of a binary body's content type.
pub const MAX_CONTENT_TYPE: usize = 100;

/// Whether a body of this content type (`type/subtype`, lower case, no parameters) travels as
/// bytes ([`Payload::binary`]): images, sound, video and `application/octet-stream`. Every
/// other type is text (JSON for `application/json` and `+json`).
pub fn is_binary_type(content_type: &str) -> bool {
    let Some((kind, subtype)) = content_type.split_once('/') else {
        return false;
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    content_type.len() <= MAX_CONTENT_TYPE
        && token(subtype)
        && match kind {
            "image" | "audio" | "video" => true,
            "application" => subtype == "octet-stream",
            _ => false,
        }
}

/// A binary body's bytes and content type ([`Message::binary`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub content_type: Box<str>,
    pub bytes: Bytes,
}

impl Binary {
    /// From a payload's JSON: an object whose `$binary` member is base64 and whose `type` is a
    /// binary content type; anything else (plain data, a bad type or encoding) is not binary.
    fn of(payload: &Payload) -> Option<Binary> {
        use base64::Engine as _;
        let json = payload.json();
        if !json.starts_with("{\"$binary\":") {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Form<'a> {
            #[serde(rename = "$binary", borrow)]
            data: std::borrow::Cow<'a, str>,
            #[serde(rename = "type", borrow)]
            content_type: std::borrow::Cow<'a, str>,
        }
        let form: Form<'_> = serde_json::from_str(json).ok()?;
        if !is_binary_type(&form.content_type) {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(form.data.as_bytes())
            .ok()?;
        Some(Binary {
            content_type: form.content_type.into(),
            bytes: Bytes::from(bytes),
        })
    }
}

/// A JSON object's members in order, each value's text as it was: what [`Payload::with_key`]
/// rewrites. Anything but an object does not deserialise into it.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(name) = map.next_key::<String>()? {
                    let raw: &'de RawValue = map.next_value()?;
                    members.push((name, raw));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({})", self.0)
    }
}

/// Appends `text` to `out` as a JSON string literal.
pub fn push_json_string(out: &mut String, text: &str) {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Serialising a &str cannot fail.
        out.push_str(&serde_json::to_string(text).unwrap());
    } else {
        // Nothing to escape (channel names, ids): no serializer needed.
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

/// Drops whitespace outside strings from valid JSON text, checking on the way what
/// [`Payload::from_json`] refuses beyond validity: nesting deeper than [`MAX_DEPTH`], and
/// `\u` escapes of a surrogate that is not half of a pair.
fn compact(json: &str) -> Result<String, PayloadError> {
    // Bytes, not chars: everything removed or tracked is ASCII, and UTF-8 never uses ASCII bytes
    // inside a multi-byte character, so the result stays UTF-8.
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut depth) = (false, 0usize);
    // A high surrogate was just read: its low half must be the very next escape.
    let mut high = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            // A run of plain string bytes is copied at once.
            let run = bytes[i..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\')
                .unwrap_or(bytes.len() - i);
            if run > 0 || b == b'"' {
                if high {
                    return Err(PayloadError::LoneSurrogate);
                }
                if run > 0 {
                    out.extend_from_slice(&bytes[i..i + run]);
                    i += run;
                } else {
                    out.push(b);
                    in_string = false;
                    i += 1;
                }
                continue;
            }
            // An escape; valid JSON, so it is complete (`\u` with four hex digits).
            let escape = bytes.get(i..(i + 6).min(bytes.len())).unwrap_or_default();
            if escape.get(1) != Some(&b'u') {
                if high {
                    return Err(PayloadError::LoneSurrogate);
                }
                out.extend_from_slice(&escape[..escape.len().min(2)]);
                i += 2;
                continue;
            }
            out.extend_from_slice(escape);
            i += 6;
            let unit = std::str::from_utf8(&escape[2..])
                .ok()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            high = match unit {
                0xD800..=0xDBFF if !high => true,
                0xDC00..=0xDFFF if high => false,
                0xD800..=0xDFFF => return Err(PayloadError::LoneSurrogate),
                _ if high => return Err(PayloadError::LoneSurrogate),
                _ => false,
            };
            continue;
        }
        i += 1;
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(PayloadError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(b);
    }
    String::from_utf8(out).map_err(|_| PayloadError::NotUtf8)
}

/// A published message. Shared (`Arc<Message>`) by every subscriber it is delivered to; the wire
/// encodings each transport needs are computed once, on first use, and then shared too.
/// What a publisher said about a message besides its data: its type (SSE's `event:` name, and
/// `"type"` in its object) and when it leaves history. Boxed in a message, and absent from most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// 1 to [`MAX_TYPE_LEN`] characters of `[A-Za-z0-9_.:-]` ([`valid_type`]).
    pub kind: Option<Box<str>>,
    /// Unix milliseconds after which history no longer gives it (a resume, `recent`,
    /// `/api/history`); live delivery is not affected.
    pub expires_ms: Option<u64>,
}

/// The longest message type.
pub const MAX_TYPE_LEN: usize = 64;

/// Whether `kind` may name a message's type: 1 to [`MAX_TYPE_LEN`] characters of
/// `[A-Za-z0-9_.:-]` — nothing that could end an SSE line or need escaping in JSON.
pub fn valid_type(kind: &str) -> bool {
    (1..=MAX_TYPE_LEN).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

pub struct Message {
    pub channel: Channel,
    pub id: MessageId,
    pub data: Payload,
    meta: Option<Box<Meta>>,
    object: OnceLock<Bytes>,
    text: OnceLock<Box<str>>,
    sse: OnceLock<Bytes>,
    binary: OnceLock<Option<Box<Binary>>>,
    /// A copy handed out as one of a channel's newest messages when a subscription opened
    /// (`recent=N`), not as it happened: its object says so.
    recent: bool,
    /// When it was published, Unix microseconds (0: unknown, as for what is read back from a
    /// Redis history): where a publish→write latency starts.
    published_us: u64,
}

impl Message {
    pub fn new(channel: Channel, id: MessageId, data: Payload) -> Message {
        Message {
            channel,
            id,
            data,
            object: OnceLock::new(),
            text: OnceLock::new(),
            sse: OnceLock::new(),
            binary: OnceLock::new(),
            recent: false,
            meta: None,
            published_us: 0,
        }
    }

    /// This message, published at `published_us` (Unix microseconds).
    pub fn published_at(self, published_us: u64) -> Message {
        Message {
            published_us,
            ..self
        }
    }

    /// When it was published (Unix microseconds), if known.
    pub fn published_us(&self) -> Option<u64> {
        (self.published_us > 0).then_some(self.published_us)
    }

    /// A message with what its publisher said besides the data (`None`: nothing).
    pub fn with_meta(
        channel: Channel,
        id: MessageId,
        data: Payload,
        meta: Option<Box<Meta>>,
    ) -> Message {
        Message {
            meta,
            ..Message::new(channel, id, data)
        }
    }

    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_deref()
    }

    /// The message's type, if its publisher gave one.
    pub fn kind(&self) -> Option<&str> {
        self.meta.as_deref()?.kind.as_deref()
    }

    /// Whether history should no longer give it at `now_ms` (Unix milliseconds).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.meta
            .as_deref()
            .and_then(|m| m.expires_ms)
            .is_some_and(|at| at <= now_ms)
    }

    /// This message as one of its channel's newest, delivered first to a subscription that
    /// asked for them: its object carries `"recent":true` (so that a client can show it as
    /// earlier); every other encoding is the same.
    pub fn as_recent(&self) -> Message {
        Message {
            recent: true,
            ..Message::with_meta(
                self.channel.clone(),
                self.id,
                self.data.clone(),
                self.meta.clone(),
            )
        }
    }

    /// Whether this is a copy made by [`Message::as_recent`].
    pub fn is_recent(&self) -> bool {
        self.recent
    }

    /// The bytes and content type of a binary body ([`Payload::binary`]), decoded once; `None`
    /// for any other data.
    pub fn binary(&self) -> Option<&Binary> {
        self.binary
            .get_or_init(|| Binary::of(&self.data).map(Box::new))
            .as_deref()
    }

    /// `{"channel":…,"id":…,"data":…}` as compact JSON (`"recent":true` before the data for
    /// a copy of [`Message::as_recent`]).
    pub fn json_object(&self) -> &Bytes {
        self.object.get_or_init(|| {
            let data = self.data.json();
            let mut out = String::with_capacity(data.len() + self.channel.as_str().len() + 64);
            out.push_str(r#"{"channel":"#);
            push_json_string(&mut out, self.channel.as_str());
            out.push_str(r#","id":""#);
            self.id.push_to(&mut out);
            if let Some(kind) = self.kind() {
                // Checked by `valid_type`: nothing to escape.
                out.push_str(r#"","type":""#);
                out.push_str(kind);
            }
            if self.recent {
                out.push_str(r#"","recent":true,"data":"#);
            } else {
                out.push_str(r#"","data":"#);
            }
            out.push_str(data);
            out.push('}');
            Bytes::from(out)
        })
    }

    /// The data as text: a string as-is, anything else as compact JSON (DESIGN.md §2).
    pub fn text(&self) -> &str {
        if !self.data.json().starts_with('"') {
            // Not a string: the text is the JSON itself, no copy needed.
            return self.data.json();
        }
        self.text.get_or_init(|| self.data.text().into())
    }

    /// The data as one line: [`Message::text`] unless the text holds a line break, in which case
    /// the compact JSON (where line breaks are escaped) keeps one message on one line.
    pub fn line(&self) -> &str {
        let text = self.text();
        if text.contains(['\n', '\r']) {
            self.data.json()
        } else {
            text
        }
    }

    /// The Server-Sent Events frame: `id:` then one `data:` line per line of text.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let text = self.text();
            let mut frame = String::with_capacity(text.len() + 48);
            frame.push_str("id: ");
            self.id.push_to(&mut frame);
            frame.push('\n');
            if let Some(kind) = self.kind() {
                frame.push_str("event: ");
                frame.push_str(kind);
                frame.push('\n');
            }
            if !text.as_bytes().iter().any(|&b| b == b'\n' || b == b'\r') {
                // The common case (every JSON payload): one line.
                frame.push_str("data: ");
                frame.push_str(text);
                frame.push('\n');
            } else {
                // SSE ends a line at CRLF, LF or a lone CR; each becomes its own data: line so
                // that EventSource rebuilds the text with '\n' between them.
                for line in text.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
                    frame.push_str("data: ");
                    frame.push_str(line);
                    frame.push('\n');
                }
            }
            frame.push('\n');
            Bytes::from(frame)
        })
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("id", &self.id)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_json(body: &str, expected: Result<&str, PayloadError>) {
        let got = Payload::from_json(body.as_bytes());
        assert_eq!(
            got.as_ref().map(|p| p.json()),
            expected.as_ref().map(|s| *s),
            "{body:?}"
        );
    }

    #[test]
    fn json_payloads() {
        check_json(r#" { "a" : [1, 2 ] } "#, Ok(r#"{"a":[1,2]}"#));
        check_json(r#""x y\"z""#, Ok(r#""x y\"z""#));
        check_json("12345678901234567890123", Ok("12345678901234567890123"));
        check_json("{\"a\":\"line\\nbreak\"}\n", Ok("{\"a\":\"line\\nbreak\"}"));
        check_json("{", Err(PayloadError::InvalidJson));
        check_json("", Err(PayloadError::InvalidJson));
        check_json("1 2", Err(PayloadError::InvalidJson));
        assert_eq!(Payload::from_json(b"\xff"), Err(PayloadError::NotUtf8));
    }

    /// Issue 12: what every reader must be able to give back is decided here, for every way
    /// in: nesting beyond `MAX_DEPTH` and lone surrogate escapes are refused.
    #[test]
    fn storable_payloads_only() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        check_json(&nested(MAX_DEPTH), Ok(&nested(MAX_DEPTH)));
        check_json(&nested(MAX_DEPTH + 1), Err(PayloadError::TooDeep));
        check_json(&nested(200), Err(PayloadError::TooDeep));
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        check_json(&objects, Err(PayloadError::TooDeep));
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"["{}"]"#, "[{".repeat(100));
        check_json(&text, Ok(&text));
        for lone in [
            r#""\ud800""#,
            r#""\uDFFF""#,
            r#"{"a":"x\ud83dy"}"#,
            r#""\ud83d\n""#,
            r#""\ud83d\ud83d""#,
            r#""\ude00\ud83d""#,
            r#"["\ud83d"]"#,
        ] {
            check_json(lone, Err(PayloadError::LoneSurrogate));
        }
        // A pair is one character; escaped backslashes are no escapes.
        check_json(r#""\ud83d\ude00""#, Ok(r#""\ud83d\ude00""#));
        check_json(r#""\\ud800""#, Ok(r#""\\ud800""#));
        check_json(r#"{"\u0070":"\u2028"}"#, Ok(r#"{"\u0070":"\u2028"}"#));
        let deep: serde_json::Value = serde_json::from_str(&nested(MAX_DEPTH + 1)).unwrap();
        assert_eq!(Payload::from_value(&deep), Err(PayloadError::TooDeep));
    }

    #[test]
    fn keys_are_judged_decoded() {
        let has = |json: &str, key: &str| Payload::from_json(json.as_bytes()).unwrap().has_key(key);
        assert!(has(r#"{"x":1,"presence":2}"#, "presence"));
        assert!(has(r#"{"\u0070resence":2}"#, "presence"));
        assert!(has(r#"{"caf\u00e9":1}"#, "café"));
        assert!(has(r#"{"a\/b":1}"#, "a/b"));
        assert!(!has(r#"{"a":"presence","b":{"presence":1}}"#, "presence"));
        assert!(!has(r#"{"text":"line\nbreak \"quoted\""}"#, "presence"));
        assert!(!has(r#"["presence"]"#, "presence"));
    }

    fn check_with_key(data: &str, expected: Option<&str>) {
        let data = Payload::from_json(data.as_bytes()).unwrap();
        let value = Payload::from_json(br#"{"user":"alice"}"#).unwrap();
        let got = data.with_key("from", &value);
        assert_eq!(got.as_ref().map(Payload::json), expected, "{data:?}");
        if let Some(got) = got {
            // Still valid, compact JSON.
            assert_eq!(Payload::from_json(got.json().as_bytes()).unwrap(), got);
        }
    }

    #[test]
    fn with_key_sets_one_member_last() {
        let from = r#""from":{"user":"alice"}"#;
        check_with_key("{}", Some(&format!("{{{from}}}")));
        check_with_key(
            r#"{"name":"bob","n":1.50,"x":[1,{"from":2}]}"#,
            Some(&format!(
                r#"{{"name":"bob","n":1.50,"x":[1,{{"from":2}}],{from}}}"#
            )),
        );
        // Every spelling of the key goes, duplicates included; other keys keep their text.
        check_with_key(
            r#"{"from":"bob","a\"b":1,"fr\u006fm":"bob","from":null}"#,
            Some(&format!(r#"{{"a\"b":1,{from}}}"#)),
        );
        check_with_key(r#"{"é":"ü"}"#, Some(&format!(r#"{{"é":"ü",{from}}}"#)));
        for not_an_object in [r#""text""#, "[1]", "1", "null", "true"] {
            check_with_key(not_an_object, None);
        }
    }

    #[test]
    fn text_payloads() {
        let p = Payload::from_text("héllo \"you\"".as_bytes()).unwrap();
        assert_eq!(p.json(), r#""héllo \"you\"""#);
        assert_eq!(p.text(), "héllo \"you\"");
        assert_eq!(Payload::from_text(b"\xc3"), Err(PayloadError::NotUtf8));
        assert_eq!(Payload::from_json(b"[1]").unwrap().text(), "[1]");
    }

    fn message(data: Payload) -> Message {
        Message::new(Channel::parse("/a/b").unwrap(), MessageId::new(10, 7), data)
    }

    #[test]
    fn encodings() {
        let m = message(Payload::string("one\ntwo"));
        assert_eq!(
            &m.json_object()[..],
            br#"{"channel":"/a/b","id":"a-7","data":"one\ntwo"}"#
        );
        assert_eq!(&m.sse_frame()[..], b"id: a-7\ndata: one\ndata: two\n\n");
        assert_eq!(m.line(), r#""one\ntwo""#);
        // A channel's newest, handed out first: its object says so, the rest is the same.
        let recent = m.as_recent();
        assert!(recent.is_recent() && !m.is_recent());
        assert_eq!(
            &recent.json_object()[..],
            br#"{"channel":"/a/b","id":"a-7","recent":true,"data":"one\ntwo"}"#
        );
        assert_eq!(recent.sse_frame(), m.sse_frame());
        let m = message(Payload::from_json(b"{\"k\": 1}").unwrap());
        assert_eq!(m.line(), r#"{"k":1}"#);
        assert_eq!(&m.sse_frame()[..], b"id: a-7\ndata: {\"k\":1}\n\n");
        let m = message(Payload::string("a\rb\r\nc"));
        assert_eq!(
            &m.sse_frame()[..],
            b"id: a-7\ndata: a\ndata: b\ndata: c\n\n"
        );
    }
}
