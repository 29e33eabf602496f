//! [`Curl`]: curl as a running client (an SSE stream over HTTP/2, say), its output read as it
//! arrives; what users run, so what the TLS and HTTP/2 tests drive.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::{WAIT, within, within_for};

/// A running `curl` (killed on drop); `--max-time` bounds it too.
pub struct Curl {
    child: Child,
    stdout: watch::Receiver<Vec<u8>>,
    stderr: watch::Receiver<Vec<u8>>,
    /// How much of stdout [`Curl::until`] has consumed.
    seen: usize,
}

/// Whether curl is installed (scripts/test installs it).
pub fn curl_installed() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Curl {
    /// Starts `curl --max-time <secs> <args>`, reading its output as it comes.
    pub fn spawn(max_time: u64, args: &[&str]) -> Curl {
        let mut child = Command::new("curl")
            .args(["--max-time", &max_time.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn curl");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Curl {
            child,
            stdout,
            stderr,
            seen: 0,
        }
    }

    /// Runs curl to its end (at most `WAIT`): its exit status, stdout and stderr.
    pub async fn run(args: &[&str]) -> (ExitStatus, String, String) {
        let mut curl = Curl::spawn(WAIT.as_secs(), args);
        // curl's own --max-time ends it first.
        let status = within_for(WAIT * 2, "curl to finish", curl.child.wait())
            .await
            .unwrap();
        // Both pipes are closed once curl has exited; wait for the readers to have it all.
        let mut out = curl.stdout.clone();
        let mut err = curl.stderr.clone();
        within("curl's output", async {
            while out.changed().await.is_ok() {}
            while err.changed().await.is_ok() {}
        })
        .await;
        let text =
            |rx: &watch::Receiver<Vec<u8>>| String::from_utf8_lossy(&rx.borrow()).into_owned();
        (status, text(&curl.stdout), text(&curl.stderr))
    }

    /// Waits (at most `WAIT`) until stdout has `needle` past what was consumed; returns the
    /// text up to and including it.
    pub async fn until(&mut self, needle: &str) -> String {
        let what = format!("curl to print {needle:?}");
        let mut rx = self.stdout.clone();
        let seen = self.seen;
        let found = within(&what, async {
            loop {
                {
                    let out = rx.borrow_and_update();
                    if let Some(at) = out[seen..]
                        .windows(needle.len())
                        .position(|w| w == needle.as_bytes())
                    {
                        let end = seen + at + needle.len();
                        return Some((String::from_utf8_lossy(&out[seen..end]).into_owned(), end));
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Some((text, end)) => {
                self.seen = end;
                text
            }
            None => panic!(
                "curl ended before printing {needle:?}; stdout: {:?}; stderr: {:?}",
                String::from_utf8_lossy(&self.stdout.borrow()[seen..]),
                self.stderr_text()
            ),
        }
    }

    /// Waits for curl to exit (bound it with `within`).
    pub async fn wait(&mut self) -> ExitStatus {
        self.child.wait().await.expect("wait for curl")
    }

    /// What curl wrote to stderr so far (with `-v`: the handshake, the certificate).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.borrow()).into_owned()
    }
}

/// Reads a pipe into a watch channel until it closes (the sender then drops).
fn collect(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> watch::Receiver<Vec<u8>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            tx.send_modify(|out| out.extend_from_slice(&chunk[..n]));
        }
    });
    rx
}
