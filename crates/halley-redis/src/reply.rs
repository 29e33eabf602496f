//! Reading Redis replies (RESP2 values) into Halley's types, without panicking on surprises: a
//! reply of the wrong shape is a [`Malformed`] error, handled like any other broker failure.

use redis::Value;

/// A reply that does not have the shape the scripts and commands promise.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub struct Malformed(pub &'static str);

pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One stream entry: its offset (from the id `0-<offset>`) and its field/value pairs.
#[derive(Debug)]
pub struct Entry {
    pub offset: u64,
    pub fields: Fields,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    pub fn number(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.field(name)?).ok()?.parse().ok()
    }
}

pub fn bytes(value: Value) -> Result<Vec<u8>, Malformed> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        _ => Err(Malformed("expected a string")),
    }
}

pub fn text(value: Value) -> Result<String, Malformed> {
    String::from_utf8(bytes(value)?).map_err(|_| Malformed("expected UTF-8"))
}

pub fn optional_text(value: Value) -> Result<Option<String>, Malformed> {
    match value {
        Value::Nil => Ok(None),
        v => text(v).map(Some),
    }
}

pub fn number(value: Value) -> Result<u64, Malformed> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| Malformed("negative number")),
        v => text(v)?.parse().map_err(|_| Malformed("expected a number")),
    }
}

pub fn array(value: Value) -> Result<Vec<Value>, Malformed> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(Malformed("expected an array")),
    }
}

/// `0-<offset>` → offset, the offset in ASCII digits. Halley writes every stream id in that
/// form (and Redis answers ids as it was given them: a sign is not something it sends).
pub fn offset_of(id: &[u8]) -> Result<u64, Malformed> {
    id.strip_prefix(b"0-")
        .filter(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .ok_or(Malformed("stream id not of the form 0-<offset>"))
}

/// An XRANGE/XREVRANGE reply: `[[id, [field, value, ...]], ...]`.
pub fn entries(value: Value) -> Result<Vec<Entry>, Malformed> {
    array(value)?.into_iter().map(entry).collect()
}

fn entry(value: Value) -> Result<Entry, Malformed> {
    let mut parts = array(value)?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(Malformed("stream entry without id and fields"));
    };
    let offset = offset_of(&bytes(id)?)?;
    let mut flat = array(fields)?.into_iter();
    let mut fields = Vec::with_capacity(flat.len() / 2);
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        fields.push((bytes(k)?, bytes(v)?));
    }
    Ok(Entry { offset, fields })
}

/// An XREAD reply for one stream: `[[key, [entries]]]`, or nil when the block timed out.
pub fn read_reply(value: Value) -> Result<Vec<Entry>, Malformed> {
    let Some(stream) = array(value)?.into_iter().next() else {
        return Ok(Vec::new());
    };
    let mut parts = array(stream)?.into_iter();
    match (parts.next(), parts.next()) {
        (Some(_key), Some(items)) => entries(items),
        _ => Err(Malformed("XREAD reply without key and entries")),
    }
}

/// A flat `[member, score, member, score, ...]` reply (WITHSCORES, ZSCAN, HGETALL).
pub fn pairs(value: Value) -> Result<Vec<(String, u64)>, Malformed> {
    pairs_of(value, number)
}

/// A flat `HGETALL` reply of text fields and text values.
pub fn text_pairs(value: Value) -> Result<Vec<(String, String)>, Malformed> {
    pairs_of(value, text)
}

fn pairs_of<T>(
    value: Value,
    convert: fn(Value) -> Result<T, Malformed>,
) -> Result<Vec<(String, T)>, Malformed> {
    let mut flat = array(value)?.into_iter();
    let mut out = Vec::with_capacity(flat.len() / 2);
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        out.push((text(k)?, convert(v)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("halley:log"),
            Value::Array(vec![Value::Array(vec![
                bulk("0-42"),
                Value::Array(vec![bulk("c"), bulk("/a"), bulk("d"), bulk("\"x\"")]),
            ])]),
        ])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].offset, 42);
        assert_eq!(entries[0].field("c"), Some(&b"/a"[..]));
        assert_eq!(entries[0].field("zz"), None);
        assert!(read_reply(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn offsets() {
        let check = |id: &str, expected: Option<u64>| {
            assert_eq!(offset_of(id.as_bytes()).ok(), expected, "{id:?}");
        };
        check("0-1", Some(1));
        check("0-18446744073709551615", Some(u64::MAX));
        check("1-1", None);
        check("0-", None);
        check("0-x", None);
        check("0-+7", None);
        check("0- 7", None);
        check("0-18446744073709551616", None);
    }

    #[test]
    fn scored_pairs() {
        let reply = Value::Array(vec![bulk("/a"), bulk("3"), bulk("/b"), Value::Int(7)]);
        assert_eq!(
            pairs(reply).unwrap(),
            [("/a".to_owned(), 3), ("/b".to_owned(), 7)]
        );
        assert!(pairs(Value::Array(vec![bulk("/a"), bulk("x")])).is_err());
    }
}
