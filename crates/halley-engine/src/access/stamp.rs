//! Stamping: who published a message, written into it by the server.
//!
//! In a namespace with `stamp = true`, every publish that is not the backend's gets its
//! publisher's identity in the top-level key `"from"` of its data, overwriting whatever the
//! client put there: `{"user": <the token's sub or null>, "info": <the token's info or null>}`
//! for a token holder, `null` for an anonymous publisher (where the namespace lets anyone
//! publish). A chat shows the name from there, and no client can speak as someone else. Data
//! that is not a JSON object cannot carry it and is refused. The backend's publishes are left
//! as they are: the application may set `"from"` itself.
//!
//! The stamp is computed from the identity when a publisher is admitted (once per request, or
//! once per WebSocket connection), never from anything in the message.

use halley_proto::{Channel, Payload};

use super::{Identity, Policy};

/// The key a stamped message's sender is written under.
pub const FROM: &str = "from";

/// What a stamped namespace writes into a publisher's messages: the value of `"from"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    from: Payload,
}

/// Data that cannot be stamped: only a JSON object has a place for `"from"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("messages on {0} carry their sender (\"from\"), so the data must be a JSON object")]
pub struct NotAnObject(pub Channel);

impl Stamp {
    /// The stamp of `who`: its token's (or the application's answer's) subject and info, or
    /// `null` for a caller nobody vouched for.
    pub fn of(who: &Identity) -> Stamp {
        let from = if who.token || who.user.is_some() || who.info.is_some() {
            let mut text = String::from("{\"user\":");
            match &who.user {
                Some(user) => halley_proto::push_json_string(&mut text, user),
                None => text.push_str("null"),
            }
            text.push_str(",\"info\":");
            // `info` is compact JSON, as the policy stored it from the verified token.
            text.push_str(who.info.as_deref().unwrap_or("null"));
            text.push('}');
            text
        } else {
            "null".to_owned()
        };
        // Built above from JSON pieces, so it parses; but `info` may nest deeper than stored
        // data may (`halley_proto::MAX_DEPTH`) once under `"from"` (one level down): then the
        // stamp says who without it, rather than make every publish of its holder fail.
        let storable = Payload::from_json(format!("[{from}]").as_bytes()).is_ok();
        let from = match (storable, &who.user) {
            (true, _) => from,
            (false, Some(user)) => {
                let mut text = String::from("{\"user\":");
                halley_proto::push_json_string(&mut text, user);
                text.push_str(",\"info\":null}");
                text
            }
            (false, None) => r#"{"user":null,"info":null}"#.to_owned(),
        };
        Stamp {
            from: Payload::from_json(from.as_bytes()).unwrap_or_else(|_| Payload::string("")),
        }
    }

    /// The value written under `"from"`.
    pub fn from(&self) -> &Payload {
        &self.from
    }

    /// `data` with this stamp under `"from"` (replacing any the publisher wrote there).
    pub fn apply(&self, channel: &Channel, data: &Payload) -> Result<Payload, NotAnObject> {
        data.with_key(FROM, &self.from)
            .ok_or_else(|| NotAnObject(channel.clone()))
    }
}

impl Identity {
    /// The name the application gave this token holder: its `info`'s `name` when that is a
    /// string, else its `sub`. `None` for a caller nobody vouched for (no token, no answer of
    /// the application).
    pub fn name(&self) -> Option<String> {
        if !self.token && self.user.is_none() && self.info.is_none() {
            return None;
        }
        let from_info =
            self.info
                .as_deref()
                .and_then(|info| {
                    match serde_json::from_str::<serde_json::Value>(info)
                        .ok()?
                        .get("name")?
                    {
                        serde_json::Value::String(name) if !name.is_empty() => Some(name.clone()),
                        _ => None,
                    }
                });
        from_info.or_else(|| self.user.as_deref().map(str::to_owned))
    }
}

impl Policy {
    /// What publishing to `channel` as `who` must carry, when the channel's namespace stamps
    /// (`stamp = true`) and `who` is not the backend; `None` otherwise.
    pub fn stamp(&self, who: &Identity, channel: &Channel) -> Option<Stamp> {
        if who.backend || self.shared.namespaces.is_empty() {
            return None;
        }
        self.namespace(channel)
            .filter(|ns| ns.stamp)
            .map(|_| Stamp::of(who))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessConfig, NamespaceConfig, PublishRule};

    fn identity(user: Option<&str>, info: Option<&str>) -> Identity {
        Identity {
            token: true,
            user: user.map(Into::into),
            info: info.map(Into::into),
            ..Identity::default()
        }
    }

    fn check(who: &Identity, data: &str, expected: Result<&str, ()>) {
        let channel = Channel::parse("/talk").unwrap();
        let data = Payload::from_json(data.as_bytes()).unwrap();
        let got = Stamp::of(who).apply(&channel, &data);
        assert_eq!(
            got.as_ref().map(Payload::json).map_err(|_| ()),
            expected,
            "{who:?} {data:?}"
        );
    }

    /// Issue 12: stored data nests at most `MAX_DEPTH` levels; a token's `info` deeper than a
    /// stamp can carry is left out of it instead of failing (it panicked once the limit came).
    #[test]
    fn an_info_too_deep_to_store_is_left_out_of_the_stamp() {
        let depth = halley_proto::MAX_DEPTH;
        let info = format!("{}{}", "[".repeat(depth - 2), "]".repeat(depth - 2));
        check(
            &identity(Some("deep"), Some(&info)),
            "{}",
            Ok(&format!(r#"{{"from":{{"user":"deep","info":{info}}}}}"#)),
        );
        let info = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        check(
            &identity(Some("deep"), Some(&info)),
            r#"{"a":1}"#,
            Ok(r#"{"a":1,"from":{"user":"deep","info":null}}"#),
        );
    }

    #[test]
    fn stamps_overwrite_what_the_client_wrote() {
        let alice = identity(
            Some("alice"),
            Some(r##"{"name":"Alice","color":"#112233"}"##),
        );
        check(
            &alice,
            r#"{"name":"bob","message":"hi","from":{"user":"bob"}}"#,
            Ok(
                r##"{"name":"bob","message":"hi","from":{"user":"alice","info":{"name":"Alice","color":"#112233"}}}"##,
            ),
        );
        check(
            &identity(None, None),
            r#"{"m":1}"#,
            Ok(r#"{"m":1,"from":{"user":null,"info":null}}"#),
        );
        check(
            &identity(Some("a\"b"), None),
            "{}",
            Ok(r#"{"from":{"user":"a\"b","info":null}}"#),
        );
        check(
            &Identity::default(),
            r#"{"from":{"user":"alice"}}"#,
            Ok(r#"{"from":null}"#),
        );
        check(&alice, r#""hi""#, Err(()));
        check(&alice, "[]", Err(()));
    }

    #[test]
    fn names_come_from_info_then_sub() {
        assert_eq!(
            identity(Some("u1"), Some(r#"{"name":"Alice"}"#)).name(),
            Some("Alice".into())
        );
        assert_eq!(
            identity(Some("u1"), Some(r#"{"name":7}"#)).name(),
            Some("u1".into())
        );
        assert_eq!(identity(Some("u1"), None).name(), Some("u1".into()));
        assert_eq!(identity(None, Some(r#"{"name":""}"#)).name(), None);
        assert_eq!(Identity::default().name(), None);
    }

    #[test]
    fn only_stamped_namespaces_and_never_the_backend() {
        let policy = Policy::new(AccessConfig {
            namespaces: vec![
                NamespaceConfig {
                    publish: PublishRule::Anyone,
                    stamp: true,
                    ..NamespaceConfig::new("/talk/**")
                },
                NamespaceConfig::new("/news/**"),
            ],
            ..AccessConfig::default()
        })
        .unwrap();
        let room = Channel::parse("/talk/room").unwrap();
        let news = Channel::parse("/news/a").unwrap();
        let anonymous = Identity::default();
        let backend = Identity {
            backend: true,
            ..Identity::default()
        };
        assert_eq!(
            policy
                .stamp(&anonymous, &room)
                .map(|s| s.from().json().to_owned()),
            Some("null".to_owned())
        );
        assert_eq!(policy.stamp(&backend, &room), None);
        assert_eq!(policy.stamp(&anonymous, &news), None);
        assert_eq!(Policy::open().stamp(&anonymous, &room), None);
    }
}
