//! Bayeux batches through the engine's Bayeux server (halley-engine bayeux), as `/cometd`'s
//! transports hand them over, on a fresh in-memory engine per input (no server, no sockets).
//!
//! A clientId that is one digit `n` stands for the `n`th session this input handshook (real
//! ids are 128 random bits the fuzzer cannot guess), so handshake → subscribe → publish →
//! connect sequences are reachable. A connect is answered at once, as a long-poll whose hold
//! ended. Invariants: every reply is on its request's channel, echoes its id, says whether it
//! succeeded and, when not, why in `code:args:message` form; a handshake gives a 128-bit
//! clientId; the session table stays within its bound.
#![no_main]

use std::sync::{Arc, OnceLock};

use halley_engine::bayeux::{Bayeux, BayeuxConfig, Handled, NoServices, PolicyOnly};
use halley_engine::{Engine, EngineConfig};
use halley_proto::bayeux::{BayeuxMessage, parse_batch};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = parse_batch(data) else {
        return;
    };
    // Built outside the runtime: no sweeper tasks outlive the input.
    let engine = Engine::in_memory(EngineConfig::default());
    let config = BayeuxConfig {
        max_sessions: 4,
        ..BayeuxConfig::default()
    };
    let bayeux = Bayeux::spawn(engine, config, Arc::new(PolicyOnly), Arc::new(NoServices));
    runtime().block_on(async {
        let mut sessions: Vec<String> = Vec::new();
        for mut message in batch {
            if let Some(n) = message.client_id.as_deref().and_then(digit)
                && !sessions.is_empty()
            {
                message.client_id = Some(sessions[n % sessions.len()].clone());
            }
            let request = message.clone();
            let reply = match bayeux.handle(message).await {
                Handled::Reply(reply) => reply,
                Handled::Connect(connect) => bayeux.hold(connect, false).await.1,
                Handled::Call(call) => call.reply().await,
            };
            check(&request, &reply);
            if request.channel == "/meta/handshake" && reply.successful == Some(true) {
                let id = reply
                    .client_id
                    .clone()
                    .expect("a handshake gives a clientId");
                assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
                sessions.push(id);
            }
            assert!(bayeux.session_count() <= bayeux.config().max_sessions);
        }
    });
});

fn digit(id: &str) -> Option<usize> {
    match id.as_bytes() {
        [d @ b'0'..=b'9'] => Some(usize::from(d - b'0')),
        _ => None,
    }
}

fn check(request: &BayeuxMessage, reply: &BayeuxMessage) {
    assert_eq!(reply.channel, request.channel);
    assert_eq!(reply.id, request.id);
    match reply.successful {
        Some(true) => assert!(reply.error.is_none()),
        Some(false) => {
            let error = reply.error.as_deref().expect("a failure says why");
            let mut parts = error.splitn(3, ':');
            let code = parts.next().unwrap();
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()),
                "{error}"
            );
            assert!(parts.next().is_some() && parts.next().is_some(), "{error}");
        }
        None => panic!("a reply without successful: {}", reply.to_json()),
    }
    let json: serde_json::Value = serde_json::from_str(&reply.to_json()).expect("reply is JSON");
    assert!(json.is_object());
}
