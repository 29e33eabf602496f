//! The real `halley` binary with `--broker redis+sentinel://…`: two processes find the master
//! through three sentinels and follow a failover by themselves (the broker's own behaviour is
//! tested in `crates/halley-redis/tests/sentinel.rs`; this pins the flag and its URL).

use std::time::Duration;

use halley_testkit::{FAILOVER_WAIT, POLL, Process, Sentinels, within_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_sentinels_follow_a_failover() {
    let mut set = Sentinels::start(2).await;
    let url = format!("{}?wait=1&wait-timeout=500&epoch=master", set.url());
    let a = Process::start(&["--broker", &url]).await;
    let b = Process::start(&["--broker", &url]).await;
    a.wait_log("broker: redis").await;
    b.wait_log("broker: redis").await;
    let mut sse = b.sse("/s/a", None).await;
    // Nothing is delivered while the sentinels fail over (seconds).
    sse.open.wait = Duration::from_secs(40);
    let first = a
        .post("/pub/s/a", "text/plain", "before")
        .await
        .expect_published("/s/a");
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*first), "before")
    );

    let old = set.kill_master().await;
    let second = within_for(
        FAILOVER_WAIT,
        "a publish accepted on the new master",
        async {
            loop {
                let reply = a.post("/pub/s/a", "text/plain", "after").await;
                match reply.status.as_u16() {
                    200 => return reply.json()["id"].as_str().unwrap().to_owned(),
                    503 => tokio::time::sleep(POLL * 5).await,
                    other => panic!("publish during a failover: {other} {}", reply.body),
                }
            }
        },
    )
    .await;
    set.failed_over(old).await;
    let event = sse.next().await;
    assert_eq!(
        (event.id.as_deref(), event.data.as_str()),
        (Some(&*second), "after")
    );
    assert!(
        a.errors().is_empty() && b.errors().is_empty(),
        "{:?} {:?}",
        a.errors(),
        b.errors()
    );
}
