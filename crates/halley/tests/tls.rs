//! The binary with TLS: `--tls-cert`, `--tls-key`, `--tls-listen`, and SIGHUP reloading the
//! certificate under open connections, driven with curl (what an operator runs).

use halley_testkit::tls::{TestCa, replace};
use halley_testkit::{Curl, Process, curl_installed};

/// The `subject:` curl -v printed for the server's certificate.
fn subject(verbose: &str) -> Option<String> {
    verbose
        .lines()
        .find_map(|l| l.trim_start_matches("* ").trim().strip_prefix("subject: "))
        .map(str::to_owned)
}

/// SIGHUP with new files: an SSE stream opened before it keeps receiving, a new connection
/// gets the new certificate. SIGHUP with a bad file: an error is logged, the certificate in use
/// stays, the process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_under_open_streams() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let ca = TestCa::new("sighup");
    let (cert, key) = ca.install("first", 1);
    let node = Process::start(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let tls = node.tls.expect("the TLS listener's address is logged");
    let base = format!("https://127.0.0.1:{}", tls.port());
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let url = format!("{base}/sub/hup?transport=sse");
    let mut open = Curl::spawn(30, &["-sSv", "-N", "--http2", "--cacert", ca_pem, &url]);
    node.wait_subscribers("/hup", 1).await;
    assert_eq!(subject(&open.stderr_text()).as_deref(), Some("CN=first"));

    ca.install("second", 2);
    node.signal("HUP");
    node.wait_log("tls: certificate reloaded").await;
    let health = format!("{base}/healthz");
    let (status, _, err) = Curl::run(&["-sSv", "--http2", "--cacert", ca_pem, &health]).await;
    assert!(status.success(), "{err}");
    assert_eq!(subject(&err).as_deref(), Some("CN=second"), "{err}");
    let (status, out, err) = Curl::run(&[
        "-sS",
        "--http2",
        "--cacert",
        ca_pem,
        "-d",
        "after reload",
        &format!("{base}/pub/hup"),
    ])
    .await;
    assert!(status.success(), "{err}");
    assert!(out.contains(r#""subscribers":1"#), "{out}");
    open.until("data: after reload\n").await;

    replace(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n");
    node.signal("HUP");
    let logged = node.wait_log("tls: reload failed").await;
    assert!(logged.contains("ERROR"), "{logged}");
    let (status, _, err) = Curl::run(&["-sSv", "--http2", "--cacert", ca_pem, &health]).await;
    assert!(status.success(), "{err}");
    assert_eq!(subject(&err).as_deref(), Some("CN=second"), "{err}");
    let reply = node.post("/pub/hup", "text/plain", "still here").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    open.until("data: still here\n").await;
}

/// TLS options that cannot work stop startup with words.
#[test]
fn half_a_tls_configuration_is_refused() {
    let ca = TestCa::new("half");
    let (cert, key) = ca.install("x", 1);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for (args, says) in [
        (
            vec!["--tls-cert", cert],
            "tls-cert is set but tls-key is not",
        ),
        (vec!["--tls-key", key], "tls-key is set but tls-cert is not"),
        (
            vec!["--tls-listen", "127.0.0.1:0"],
            "tls-listen is set but tls-cert and tls-key are not",
        ),
        (
            vec![
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                key,
                "--tls-key",
                key,
            ],
            "no certificate in it",
        ),
        (
            vec![
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                cert,
            ],
            "reading the private key",
        ),
    ] {
        let out = std::process::Command::new(halley_testkit::halley_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `halley check-config` reads the certificate and key as `serve` would, with paths relative
/// to the file, and prints what it found; a missing key file is an error naming it.
#[test]
fn check_config_reads_the_certificate_relative_to_the_file() {
    let ca = TestCa::new("check");
    ca.install("checked", 7);
    let config = ca.dir().join("halley.toml");
    std::fs::write(
        &config,
        "tls-cert = \"cert.pem\"\ntls-key = \"key.pem\"\ntls-listen = \"127.0.0.1:9443\"\n",
    )
    .unwrap();
    let check = || {
        std::process::Command::new(halley_testkit::halley_binary())
            .args(["check-config", config.to_str().unwrap()])
            .env_remove("HALLEY_TLS_CERT")
            .env_remove("HALLEY_TLS_KEY")
            .env_remove("HALLEY_TLS_LISTEN")
            .output()
            .unwrap()
    };
    let out = check();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = said
        .lines()
        .find(|l| l.starts_with("tls "))
        .expect("a tls line");
    assert!(
        line.starts_with("tls 127.0.0.1:8000 and 127.0.0.1:9443 cert="),
        "{line}"
    );
    assert!(line.contains("chain=1 sha256="), "{line}");
    std::fs::remove_file(ca.dir().join("key.pem")).unwrap();
    let out = check();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key.pem"), "{err}");
}

/// `--tls-cert` and `--tls-key` alone: the one port speaks HTTPS (HTTP/2 by ALPN) and plain
/// HTTP, and the serving line names it as the TLS address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_alone_makes_the_one_port_speak_https() {
    if !curl_installed() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let ca = TestCa::new("oneport-bin");
    let (cert, key) = ca.install("oneport", 3);
    let node = Process::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(node.tls, Some(node.addr));
    let ca_pem = ca.ca_pem.to_str().unwrap();
    let health = format!("https://127.0.0.1:{}/healthz", node.addr.port());
    let (status, out, err) =
        Curl::run(&["-sS", "-i", "--http2", "--cacert", ca_pem, &health]).await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    let reply = node.get("/healthz").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
