//! How a control command and its answers travel between nodes, whatever the broker carries them
//! (Redis pub/sub, NATS request/reply): one JSON object each way.
//!
//! A command is `{"rid","from","user","op",…}` (`op` one of `disconnect` with an optional
//! `reason`, `unsubscribe` with `channel`, `revoke` with `before`, `list`, `stats`); an answer
//! is `{"rid","outcome"}`. What arrives from another node is not trusted to be well-formed:
//! anything malformed decodes to `None`, never a panic.

use halley_proto::Pattern;
use serde_json::{Value, json};

use super::{Command, Outcome};
use crate::hub::Hub;

/// A command for the other nodes: `rid` pairs it with its answers, `from` names the asking node.
pub fn encode_command(rid: u64, from: &str, command: &Command) -> String {
    let mut value = json!({ "rid": rid, "from": from, "user": command.user() });
    match command {
        Command::Disconnect { reason, .. } => {
            value["op"] = "disconnect".into();
            if let Some(reason) = reason {
                value["reason"] = reason.as_str().into();
            }
        }
        Command::Unsubscribe { pattern, .. } => {
            value["op"] = "unsubscribe".into();
            value["channel"] = pattern.to_string().into();
        }
        Command::Revoke { before, .. } => {
            value["op"] = "revoke".into();
            value["before"] = (*before).into();
        }
        Command::List { .. } => value["op"] = "list".into(),
        Command::Stats => value["op"] = "stats".into(),
    }
    value.to_string()
}

/// A command as another node sent it: (rid, from, command); `None` for anything malformed.
pub fn decode_command(payload: &[u8]) -> Option<(u64, String, Command)> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let rid = value["rid"].as_u64()?;
    let from = value["from"].as_str()?.to_owned();
    let user = value["user"].as_str()?.to_owned();
    let command = match value["op"].as_str()? {
        "disconnect" => Command::Disconnect {
            user,
            reason: value["reason"].as_str().map(str::to_owned),
        },
        "unsubscribe" => Command::Unsubscribe {
            user,
            pattern: Pattern::parse(value["channel"].as_str()?).ok()?,
        },
        "revoke" => Command::Revoke {
            user,
            before: value["before"].as_u64()?,
        },
        "list" => Command::List { user },
        "stats" => Command::Stats,
        _ => return None,
    };
    Some((rid, from, command))
}

/// A command from another node (or kept by the broker, a revocation) applied on this one; one
/// this node cannot apply is logged and its error becomes the outcome.
pub fn apply(hub: &Hub, command: &Command) -> Outcome {
    match hub.apply(command) {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(error = %e, user = command.user(), "control: not applied");
            Outcome {
                error: Some(e.to_string()),
                ..Outcome::default()
            }
        }
    }
}

/// Another node's command applied on this one, named `node`: the answer to send back, also
/// when it could not be applied (then with its error).
pub fn answer(hub: &Hub, rid: u64, node: &str, command: &Command) -> String {
    let mut outcome = apply(hub, command);
    outcome.node = Some(node.to_owned());
    for c in &mut outcome.connections {
        c.node = Some(node.to_owned());
    }
    json!({ "rid": rid, "outcome": outcome }).to_string()
}

/// An answer from another node: (rid, outcome); `None` for anything malformed.
pub fn decode_answer(payload: &[u8]) -> Option<(u64, Outcome)> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let rid = value["rid"].as_u64()?;
    let outcome = serde_json::from_value(value["outcome"].clone()).ok()?;
    Some((rid, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_intact() {
        let check = |command: Command| {
            let text = encode_command(7, "ab12", &command);
            assert_eq!(
                decode_command(text.as_bytes()),
                Some((7, "ab12".to_owned(), command)),
                "{text}"
            );
        };
        check(Command::Disconnect {
            user: "alice".into(),
            reason: Some("spam — \"again\"".into()),
        });
        check(Command::Disconnect {
            user: "alice".into(),
            reason: None,
        });
        check(Command::Unsubscribe {
            user: "a\nb".into(),
            pattern: Pattern::parse("/chat/**").unwrap(),
        });
        check(Command::Revoke {
            user: "alice".into(),
            before: u64::MAX,
        });
        check(Command::List {
            user: "alice".into(),
        });
        check(Command::Stats);
    }

    #[test]
    fn malformed_messages_are_skipped() {
        for bad in [
            "",
            "null",
            "[]",
            r#"{"rid":1,"from":"a","user":"u"}"#,
            r#"{"rid":1,"from":"a","user":"u","op":"shutdown"}"#,
            r#"{"rid":1,"from":"a","user":"u","op":"unsubscribe","channel":"nope"}"#,
            r#"{"rid":-1,"from":"a","user":"u","op":"list"}"#,
            r#"{"rid":1,"from":"a","user":"u","op":"revoke","before":"soon"}"#,
        ] {
            assert_eq!(decode_command(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(decode_answer(br#"{"rid":1,"outcome":{"count":"x"}}"#), None);
        assert_eq!(
            decode_answer(br#"{"rid":1,"outcome":{"count":2}}"#),
            Some((
                1,
                Outcome {
                    count: 2,
                    ..Outcome::default()
                }
            ))
        );
    }
}
