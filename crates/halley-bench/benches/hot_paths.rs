//! Micro-benchmarks of Halley's hot paths (run by hand: `cargo bench -p halley-bench`):
//! channel matching, encoding a message for each transport, parsing a Bayeux batch, and one
//! publish fanned out to 10,000 in-process subscribers (queueing only: no sockets).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use halley_engine::{Engine, EngineConfig, Event};
use halley_proto::bayeux::parse_batch;
use halley_proto::{Channel, Message, MessageId, Pattern, Payload};

fn matching(c: &mut Criterion) {
    // Cannot fail: literal, valid names.
    let channel = Channel::parse("/chat/room/42").unwrap();
    for pattern in ["/chat/room/42", "/chat/room/*", "/chat/**", "/other/**"] {
        let pattern = Pattern::parse(pattern).unwrap();
        c.bench_function(&format!("match {pattern}"), |b| {
            b.iter(|| black_box(&pattern).matches(black_box(&channel)))
        });
    }
}

fn message(id: MessageId) -> Message {
    Message::new(
        Channel::parse("/chat/room/42").unwrap(),
        id,
        Payload::from_json(br#"{"ts":1795387802000000000,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#)
            .unwrap(),
    )
}

/// A real id, taken from a publish, since ids are opaque outside the engine.
fn latest_id() -> MessageId {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = Engine::in_memory(EngineConfig::default());
        engine
            .publish(Channel::parse("/x").unwrap(), Payload::string("x"))
            .await
            .unwrap()
            .message
            .id
    })
}

fn encoding(c: &mut Criterion) {
    // Each encoding is computed once per message and shared by every subscriber, so the cost
    // that matters is building a fresh message's encodings.
    let id = latest_id();
    let message = || message(id);
    c.bench_function("encode sse frame", |b| {
        b.iter_batched(message, |m| m.sse_frame().len(), BatchSize::SmallInput)
    });
    c.bench_function("encode json object (WebSocket, NDJSON, Bayeux)", |b| {
        b.iter_batched(message, |m| m.json_object().len(), BatchSize::SmallInput)
    });
    c.bench_function("encode text line (stream, pull)", |b| {
        b.iter_batched(message, |m| m.line().len(), BatchSize::SmallInput)
    });
    let batch = br#"[{"channel":"/meta/connect","clientId":"abc123","connectionType":"long-polling"},{"channel":"/chat/a","clientId":"abc123","data":{"ts":1,"pad":"xxxxxxxx"}}]"#;
    c.bench_function("parse bayeux batch (2 messages)", |b| {
        b.iter(|| parse_batch(black_box(batch)).map(|v| v.len()))
    });
}

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::in_memory(EngineConfig::default());
    let channel = Channel::parse("/bench/fanout").unwrap();
    let mut subs: Vec<_> = runtime.block_on(async {
        let mut subs = Vec::with_capacity(SUBSCRIBERS);
        for _ in 0..SUBSCRIBERS {
            subs.push(
                engine
                    .subscribe(Pattern::parse("/bench/fanout").unwrap(), None)
                    .await
                    .unwrap(),
            );
        }
        subs
    });
    c.bench_function("publish to 10k subscribers and drain every queue", |b| {
        b.iter(|| {
            runtime.block_on(async {
                engine
                    .publish(channel.clone(), Payload::string("hello"))
                    .await
                    .unwrap();
            });
            let mut got = 0;
            for sub in &mut subs {
                while let Some(Event::Message(_)) = sub.try_next() {
                    got += 1;
                }
            }
            assert_eq!(got, SUBSCRIBERS);
        })
    });
}

criterion_group!(benches, matching, encoding, fanout);
criterion_main!(benches);
