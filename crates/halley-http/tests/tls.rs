//! TLS and HTTP/2 with real clients: curl over HTTPS (HTTP/2 by ALPN, and HTTP/1.1), every
//! HTTP transport over HTTP/2, cleartext HTTP/2 with prior knowledge (h2c), the certificate
//! reloaded under open streams, and h2load against the TLS listener. Certificates are made at
//! test time by a CA of the test's own (`common::tls::TestCa`); curl trusts it by `--cacert`.
//!
//! Every test needs curl (h2load for its own); without it a test says so and passes, as the
//! other curl tests do (scripts/test installs both).

mod common;

use common::tls::TestCa;
use common::{Curl, TestServer, curl_installed};

/// A server with a TLS listener, presenting a certificate for `CN=first` (serial 1).
async fn tls_server(name: &str) -> (TestServer, TestCa) {
    let ca = TestCa::new(name);
    ca.install("first", 1);
    let s = TestServer::with_tls(&ca).await;
    (s, ca)
}

fn https(s: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", s.tls_addr.unwrap().port())
}

/// `curl --http2` over TLS: ALPN picks h2, and a publish and an SSE stream work on it — the
/// stream receives the publish.
#[tokio::test]
async fn curl_https_http2_publishes_and_streams() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("h2").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let url = https(&s, "/sub/tls/a?transport=sse");
    let mut sse = Curl::spawn(
        10,
        &["-sS", "-N", "-i", "--http2", "--cacert", ca_pem, &url],
    );
    let head = sse.until("\r\n\r\n").await;
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    s.wait_subscribers("/tls/a", 1).await;
    let publish = https(&s, "/pub/tls/a");
    let (status, out, err) = Curl::run(&[
        "-sS",
        "-i",
        "--http2",
        "--cacert",
        ca_pem,
        "-H",
        "content-type: text/plain",
        "-d",
        "over h2",
        &publish,
    ])
    .await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains(r#""channel":"/tls/a""#), "{out}");
    sse.until("data: over h2\n").await;
}

/// A client that offers only HTTP/1.1 gets it over TLS (ALPN http/1.1), on hyper's path.
#[tokio::test]
async fn curl_https_http1_1_still_works() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("h1").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let url = https(&s, "/sub/tls/b?transport=stream");
    let mut stream = Curl::spawn(
        10,
        &["-sS", "-N", "-i", "--http1.1", "--cacert", ca_pem, &url],
    );
    s.wait_subscribers("/tls/b", 1).await;
    s.publish("/tls/b", "over http/1.1").await;
    let said = stream.until("over http/1.1\n").await;
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(said.contains("transfer-encoding: chunked"), "{said}");
}

/// Every HTTP transport over HTTP/2 (TLS): each subscribes, receives one publish in its own
/// format. Streams are read until the message; held requests (long-poll, JSONP) end with it.
#[tokio::test]
async fn every_http_transport_works_over_http2() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("transports").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    // (channel, query, what the body shows of the message "m-<channel>")
    let cases = [
        ("/t/sse", "transport=sse", "data: m-sse\n"),
        ("/t/stream", "transport=stream", "m-stream\n"),
        (
            "/t/ndjson",
            "transport=stream&format=json",
            r#""data":"m-ndjson"}"#,
        ),
        (
            "/t/iframe",
            "transport=iframe&callback=cb",
            r#""data":"m-iframe"})</script>"#,
        ),
        ("/t/multipart", "transport=multipart", "m-multipart"),
        (
            "/t/longpoll",
            "transport=longpoll",
            r#""data":"m-longpoll""#,
        ),
        ("/t/jsonp", "transport=jsonp&callback=cb", r#"/**/cb([{"#),
    ];
    for (channel, query, expected) in cases {
        let url = https(&s, &format!("/sub{channel}?{query}"));
        let mut curl = Curl::spawn(
            10,
            &["-sS", "-N", "-i", "--http2", "--cacert", ca_pem, &url],
        );
        s.wait_subscribers(channel, 1).await;
        let name = channel.rsplit('/').next().unwrap();
        s.publish(channel, &format!("m-{name}")).await;
        // A raw line stream sends its head with its first line, on every path.
        let said = curl.until(expected).await;
        assert!(said.starts_with("HTTP/2 200"), "{query}: {said}");
    }
    // The API and a page, over HTTP/2 too.
    for path in ["/api/channels", "/healthz", "/halley.js"] {
        let (status, out, err) =
            Curl::run(&["-sS", "-i", "--http2", "--cacert", ca_pem, &https(&s, path)]).await;
        assert!(status.success(), "{path}: {err}");
        assert!(out.starts_with("HTTP/2 200"), "{path}: {out}");
    }
}

/// A Bayeux long-polling client over HTTP/2: handshake, then a publish reaches it.
#[tokio::test]
async fn bayeux_long_polling_works_over_http2() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("bayeux").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let url = https(&s, "/cometd");
    let post = |body: String| {
        let url = url.clone();
        let ca_pem = ca_pem.to_owned();
        async move {
            let (status, out, err) = Curl::run(&[
                "-sS",
                "--http2",
                "--cacert",
                &ca_pem,
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                &url,
            ])
            .await;
            assert!(status.success(), "{err}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
        }
    };
    let reply = post(
        r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#
            .into(),
    )
    .await;
    let client = reply[0]["clientId"].as_str().unwrap().to_owned();
    let subscribed = post(format!(
        r#"[{{"channel":"/meta/subscribe","clientId":"{client}","subscription":"/b/h2"}}]"#
    ))
    .await;
    assert_eq!(subscribed[0]["successful"], true, "{subscribed}");
    let connect = format!(
        r#"[{{"channel":"/meta/connect","clientId":"{client}","connectionType":"long-polling"}}]"#
    );
    // The first connect is answered at once; the second is held until the publish.
    post(connect.clone()).await;
    let held = tokio::spawn(post(connect));
    s.wait_subscribers("/b/h2", 1).await;
    s.publish("/b/h2", "to bayeux").await;
    let delivered = held.await.unwrap();
    assert!(
        delivered
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["data"] == "to bayeux"),
        "{delivered}"
    );
}

/// Cleartext HTTP/2 with prior knowledge (h2c) on the plain port is served: a page, a publish
/// and an SSE stream that receives it.
#[tokio::test]
async fn curl_http2_prior_knowledge_is_served() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let s = TestServer::start().await;
    let base = format!("http://{}", s.addr);
    let (status, out, err) = Curl::run(&[
        "-sS",
        "-i",
        "--http2-prior-knowledge",
        &format!("{base}/healthz"),
    ])
    .await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let url = format!("{base}/sub/h2c?transport=sse");
    let mut sse = Curl::spawn(10, &["-sS", "-N", "--http2-prior-knowledge", &url]);
    s.wait_subscribers("/h2c", 1).await;
    let (status, out, err) = Curl::run(&[
        "-sS",
        "--http2-prior-knowledge",
        "-d",
        "cleartext",
        &format!("{base}/pub/h2c"),
    ])
    .await;
    assert!(status.success(), "{err}");
    assert!(out.contains(r#""channel":"/h2c""#), "{out}");
    sse.until("data: cleartext\n").await;
    s.assert_still_serving().await;
}

/// The certificate is replaced under an open stream: the stream keeps receiving, a new
/// connection sees the new certificate; a bad file at the next reload keeps the one in use.
#[tokio::test]
async fn reloading_the_certificate_keeps_open_streams() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("reload").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let subject = |verbose: &str| {
        verbose
            .lines()
            .find_map(|l| l.trim_start_matches("* ").trim().strip_prefix("subject: "))
            .map(str::to_owned)
    };
    let url = https(&s, "/sub/reload?transport=sse");
    let mut open = Curl::spawn(20, &["-sSv", "-N", "--http2", "--cacert", ca_pem, &url]);
    s.wait_subscribers("/reload", 1).await;
    assert_eq!(subject(&open.stderr_text()).as_deref(), Some("CN=first"));
    s.publish("/reload", "before").await;
    open.until("data: before\n").await;

    ca.install("second", 2);
    let tls = s.tls.as_ref().unwrap();
    let loaded = tls.reload().expect("the new certificate loads");
    assert_eq!(loaded.chain, 1);
    s.publish("/reload", "after").await;
    open.until("data: after\n").await;
    let health = https(&s, "/healthz");
    let (status, _, err) = Curl::run(&["-sSv", "--http2", "--cacert", ca_pem, &health]).await;
    assert!(status.success(), "{err}");
    assert_eq!(subject(&err).as_deref(), Some("CN=second"), "{err}");

    // A truncated certificate, then a key that belongs to another one: both refused, the
    // second certificate stays.
    let (cert_path, key_path) = ca.paths();
    let good_cert = std::fs::read(&cert_path).unwrap();
    common::tls::replace(&cert_path, &good_cert[..good_cert.len() / 2]);
    assert!(tls.reload().is_err());
    common::tls::replace(&cert_path, &good_cert);
    let (_, other_key) = ca.issue("third", 3);
    common::tls::replace(&key_path, other_key.as_bytes());
    let error = tls.reload().unwrap_err().to_string();
    assert!(error.contains("does not fit"), "{error}");
    let (status, _, err) = Curl::run(&["-sSv", "--http2", "--cacert", ca_pem, &health]).await;
    assert!(status.success(), "{err}");
    assert_eq!(subject(&err).as_deref(), Some("CN=second"), "{err}");
    s.publish("/reload", "still").await;
    open.until("data: still\n").await;
}

/// A client that is not TLS on the TLS port (plain HTTP) is counted and closed; the server
/// serves on.
#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed_and_counted() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, _ca) = tls_server("plain").await;
    let url = format!("http://127.0.0.1:{}/healthz", s.tls_addr.unwrap().port());
    let (status, _, _) = Curl::run(&["-sS", &url]).await;
    assert!(!status.success());
    s.wait_metric("halley_tls_handshake_failures_total", 1)
        .await;
    s.assert_still_serving().await;
}

/// h2load (nghttp2-client) against the TLS listener: a short bounded run of publishes and
/// health checks over HTTP/2, ten streams at once on each of four connections; every request
/// succeeds.
#[tokio::test]
async fn h2load_over_tls_succeeds() {
    let installed = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("h2load is not installed (Debian: nghttp2-client); skipped");
        return;
    }
    let (s, _ca) = tls_server("h2load").await;
    let body = std::env::temp_dir().join(format!("halley-h2load-{}.txt", std::process::id()));
    std::fs::write(&body, "hello").unwrap();
    let run = |args: Vec<String>| async move {
        let out = common::within_for(
            common::WAIT * 4,
            "h2load",
            tokio::process::Command::new("h2load").args(args).output(),
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (path, extra) in [
        (
            "/pub/h2load",
            vec!["-d".to_string(), body.display().to_string()],
        ),
        ("/healthz", vec![]),
    ] {
        let mut args = vec!["-n", "2000", "-c", "4", "-m", "10", "--connect-to"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.push(format!("127.0.0.1:{}", s.tls_addr.unwrap().port()));
        args.extend(extra);
        args.push(https(&s, path));
        let out = run(args).await;
        assert!(out.contains("Application protocol: h2"), "{out}");
        assert!(
            out.contains("2000 succeeded, 0 failed, 0 errored"),
            "{path}: {out}"
        );
        assert!(out.contains("2000 2xx"), "{path}: {out}");
    }
    assert_eq!(s.metric("halley_messages_published_total").await, 2000);
}

/// Shutdown over HTTP/2: a held SSE stream gets its reconnect advice and ends cleanly (curl
/// exits 0), and the server's drain returns at once.
#[tokio::test]
async fn shutdown_ends_http2_streams_with_reconnect_advice() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (mut s, ca) = tls_server("drain").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let url = https(&s, "/sub/drain?transport=sse");
    let mut sse = Curl::spawn(10, &["-sS", "-N", "--http2", "--cacert", ca_pem, &url]);
    s.wait_subscribers("/drain", 1).await;
    s.shutdown.cancel();
    sse.until("reconnect").await;
    let status = common::within("curl to end", sse.wait()).await;
    assert!(status.success(), "{}", sse.stderr_text());
    let done = s.done.take().unwrap();
    common::within("the drain", done).await.unwrap();
}

/// With a certificate, the one port speaks TLS beside plain HTTP: on the plain listener's own
/// port, an SSE stream over HTTPS (HTTP/2 by ALPN) receives what a plain HTTP/1.1 publish on
/// the same port sent, and cleartext HTTP/2 (prior knowledge) is still served there.
#[tokio::test]
async fn the_one_port_speaks_tls_and_plain_http() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (s, ca) = tls_server("oneport").await;
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let port = s.addr.port();
    assert_ne!(Some(port), s.tls_addr.map(|a| a.port()));
    let url = format!("https://127.0.0.1:{port}/sub/one/port?transport=sse");
    let mut sse = Curl::spawn(
        10,
        &["-sS", "-N", "-i", "--http2", "--cacert", ca_pem, &url],
    );
    let head = sse.until("\r\n\r\n").await;
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    s.wait_subscribers("/one/port", 1).await;
    let plain = format!("http://127.0.0.1:{port}/pub/one/port");
    let (status, out, err) = Curl::run(&["-sS", "-i", "-d", "plain to tls", &plain]).await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#""subscribers":1"#), "{out}");
    sse.until("data: plain to tls\n").await;
    let health = format!("http://127.0.0.1:{port}/healthz");
    let (status, out, err) = Curl::run(&["-sS", "-i", "--http2-prior-knowledge", &health]).await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    s.assert_still_serving().await;
}
