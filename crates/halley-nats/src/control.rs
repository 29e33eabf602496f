//! The control API across nodes ([`halley_engine::control`]) on core NATS: a command is
//! published on `<subject_prefix>-control` with a reply inbox; every other node applies it to
//! its own hub and answers on that inbox; revocations are also kept in a key-value bucket
//! (`<stream>_REVOKED`, user → `before`), which a node reads when it starts listening and after
//! every new session, so that one that starts or comes back later honours them.
//!
//! Why core NATS and not the stream: a command is about the connections open *now*; a node
//! that was away has none of them left. A revocation must also hold for later tokens, hence
//! the bucket, written before the command is sent.
//!
//! The asking node waits for as many answers as presence knows other nodes (`presence.rs`),
//! for at most [`CONTROL_TIMEOUT`]; a node that does not answer in time is reported as such.
//! Commands and answers are JSON: `{"rid","from","op","user",…}` and `{"rid","outcome"}`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use halley_engine::BrokerError;
use halley_engine::control::{Command, Remote, wire};
use tokio_util::sync::CancellationToken;

use crate::broker::Shared;
use crate::node::{RECONNECT_MAX, RECONNECT_MIN};

/// How long a control request waits for the other nodes' answers. A node applies a command in
/// microseconds; two seconds covers a busy node and bounds the application's call when a node
/// died without its presence having expired yet.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Most answers one request takes (the bound of its answer channel); answers beyond it are
/// dropped, and those nodes reported as not having answered.
pub const MAX_ANSWERS: usize = 256;

fn subject(shared: &Shared) -> String {
    format!("{}-control", shared.config.subject_prefix)
}

fn node_name(node: u64) -> String {
    format!("{node:x}")
}

/// A user as a key-value key: hex, as user names may hold characters keys may not.
fn user_key(user: &str) -> String {
    user.bytes().map(|b| format!("{b:02x}")).collect()
}

fn user_of(key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(key.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

pub(crate) async fn request(shared: &Shared, command: &Command) -> Result<Remote, BrokerError> {
    let link = shared.link()?;
    if let Command::Revoke { user, before } = command {
        // Kept before it is sent: a node that does not hear it reads it when it listens.
        let store = crate::presence::bucket(shared, "REVOKED", Duration::ZERO)
            .await
            .map_err(|e| shared.unavailable(e))?;
        store
            .put(user_key(user), before.to_string().into())
            .await
            .map_err(|e| shared.unavailable(e))?;
    }
    let nodes = {
        let others = shared.others.lock().unwrap_or_else(|e| e.into_inner());
        others.count(shared.config.presence_ttl)
    };
    let inbox = link.client.new_inbox();
    let mut answers_rx = link
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| shared.unavailable(e))?;
    let message = wire::encode_command(0, &node_name(shared.node), command);
    link.client
        .publish_with_reply(subject(shared), inbox, message.into())
        .await
        .map_err(|e| shared.unavailable(e))?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + CONTROL_TIMEOUT;
    while answers.len() < nodes.min(MAX_ANSWERS) {
        match tokio::time::timeout_at(deadline, answers_rx.next()).await {
            Ok(Some(answer)) => match wire::decode_answer(&answer.payload) {
                Some((_, outcome)) => answers.push(outcome),
                None => {
                    tracing::warn!("control: undecodable answer skipped");
                    shared.error();
                }
            },
            _ => break,
        }
    }
    if answers.len() < nodes {
        tracing::warn!(
            nodes,
            answered = answers.len(),
            "control: not every node answered in time"
        );
    }
    Ok(Remote { nodes, answers })
}

/// The node's listener: subscribes to the control subject (once the server's policy is set,
/// since revocations go to it), reads the kept revocations, applies other nodes' commands —
/// again after every failure, with backoff, until cancelled.
pub(crate) async fn listen(shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = shared.hub.settled_policy() => {}
    }
    let mut backoff = RECONNECT_MIN;
    let mut up = shared.healthy.subscribe();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = up.wait_for(|up| *up) => if r.is_err() { return },
        }
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            e = session(&shared, &mut backoff) => e,
        };
        shared.error();
        tracing::warn!(%error, retry_in = ?backoff, "nats broker: control listener stopped");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn session(shared: &Shared, backoff: &mut Duration) -> String {
    let Some(link) = shared.connected() else {
        return "not connected to NATS".into();
    };
    let mut commands = match link.client.subscribe(subject(shared)).await {
        Ok(s) => s,
        Err(e) => return format!("control subscribe: {e}"),
    };
    let mut generation = None;
    let mut check = tokio::time::interval(crate::CHECK_INTERVAL);
    *backoff = RECONNECT_MIN;
    loop {
        tokio::select! {
            message = commands.next() => {
                let Some(message) = message else {
                    return "control subscription ended".into();
                };
                let Some(reply) = message.reply else { continue };
                let Some(answer) = command(shared, &message.payload) else { continue };
                if let Err(e) = link.client.publish(reply, answer.into()).await {
                    shared.error();
                    tracing::debug!(error = %e, "control: answer not sent");
                }
            }
            _ = check.tick() => {
                // After every new session (a reconnect), revocations made meanwhile.
                let now = shared.generation.load(std::sync::atomic::Ordering::Relaxed);
                if generation != Some(now) {
                    if let Err(e) = load_revocations(shared).await {
                        return e;
                    }
                    generation = Some(now);
                    shared.control_up.send_replace(true);
                }
            }
        }
    }
}

async fn load_revocations(shared: &Shared) -> Result<(), String> {
    let store = crate::presence::bucket(shared, "REVOKED", Duration::ZERO).await?;
    let mut keys = store
        .keys()
        .await
        .map_err(|e| format!("revocations: {e}"))?;
    // Bounded by the bucket's users (one key each).
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| format!("revocations: {e}"))?;
        let (Some(user), Ok(Some(value))) = (user_of(&key), store.get(&key).await) else {
            continue;
        };
        if let Some(before) = std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            wire::apply(&shared.hub, &Command::Revoke { user, before });
        }
    }
    Ok(())
}

/// Another node's command, applied here; the answer to send, `None` for our own.
fn command(shared: &Shared, payload: &[u8]) -> Option<String> {
    let Some((rid, from, command)) = wire::decode_command(payload) else {
        tracing::warn!("control: undecodable command skipped");
        shared.error();
        return None;
    };
    let me = node_name(shared.node);
    if from == me {
        return None;
    }
    Some(wire::answer(&shared.hub, rid, &me, &command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_keys_and_back() {
        for user in ["alice", "a.b c/é", ""] {
            assert_eq!(user_of(&user_key(user)).as_deref(), Some(user));
        }
        assert_eq!(user_of("zz"), None);
    }
}
