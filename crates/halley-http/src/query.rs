//! Query strings and form bodies.

/// Decoded `name=value` pairs, in order. A repeated name keeps its first value.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The names, in order (a repeated name as often as it comes).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Every value of a repeated name, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `callback` parameter of a JSONP request: absent, or a valid name (else 400).
    pub fn callback(&self) -> Result<Option<&str>, crate::error::ApiError> {
        match self.get("callback") {
            None => Ok(None),
            Some(cb) if valid_callback(cb) => Ok(Some(cb)),
            Some(_) => Err(crate::error::ApiError::BadRequest(
                "callback must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$".into(),
            )),
        }
    }

    /// Adds the pairs of a form body after the query's own.
    pub fn extend_form(&mut self, body: &[u8]) {
        self.0
            .extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }
}

/// JSONP and iframe callback names: a dotted JavaScript identifier, nothing that could smuggle
/// script (DESIGN.md §3: `^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$`).
pub fn valid_callback(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b'$')
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks() {
        for ok in ["f", "_x", "$", "jQuery123_456", "a.b.c", &"a".repeat(64)] {
            assert!(valid_callback(ok), "{ok}");
        }
        for bad in [
            "",
            "1f",
            "a(b)",
            "a;alert(1)",
            "a b",
            "<script>",
            &"a".repeat(65),
            "é",
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }

    #[test]
    fn query_and_form() {
        let mut q = Query::parse(Some("name=a%20b&x=1&x=2"));
        q.extend_form(b"message=hi+there");
        assert_eq!(q.get("name"), Some("a b"));
        assert_eq!(q.get("x"), Some("1"));
        assert_eq!(q.get("message"), Some("hi there"));
        assert_eq!(q.get("nope"), None);
    }
}
