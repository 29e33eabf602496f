//! Reverse proxies from the system, in front of a Halley under test: nginx (as `scripts/test`
//! installs it) and haproxy, each on a free port with a configuration of its own in a
//! temporary directory, killed and cleaned up when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

/// A system binary that Debian puts in /usr/sbin, which is not on every user's PATH.
fn sbin(name: &str) -> String {
    let path = format!("/usr/sbin/{name}");
    if Path::new(&path).exists() {
        path
    } else {
        name.to_owned()
    }
}

/// Whether haproxy is installed (`scripts/test` installs it).
pub fn haproxy_installed() -> bool {
    Command::new(sbin("haproxy"))
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(what: &str, upstream: SocketAddr) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "halley-{what}-test-{}-{}",
        std::process::id(),
        upstream.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn listening(addr: SocketAddr, what: &str) {
    crate::eventually(Duration::from_secs(10), what, || async move {
        TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
}

/// A proxy process and its directory.
pub struct Proxy {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Proxy {
    /// nginx in front of `upstream`: `/` proxied as nginx does by default (HTTP/1.0 to the
    /// upstream), `/http11/` with `proxy_http_version 1.1` (the README's recipe); neither
    /// buffers.
    pub async fn nginx(upstream: SocketAddr) -> Proxy {
        let dir = scratch("nginx", upstream);
        let port = free_port();
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port};\n\
             location /http11/ {{ proxy_pass http://{upstream}/; proxy_http_version 1.1; proxy_buffering off; }}\n\
             location / {{ proxy_pass http://{upstream}; proxy_buffering off; }}\n }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new(sbin("nginx"))
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is needed for this test (apt-get install nginx)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        listening(addr, "nginx listening").await;
        Proxy { child, dir, addr }
    }

    /// haproxy in front of `upstream` with the README's recipe (`mode http`,
    /// `option http-no-delay`, its timeouts).
    pub async fn haproxy(upstream: SocketAddr) -> Proxy {
        let dir = scratch("haproxy", upstream);
        let port = free_port();
        let config = format!(
            "global\n    log stderr format raw local0 info\n\
             defaults\n    mode http\n    log global\n    option http-no-delay\n    option forwardfor\n\
             \x20   timeout connect 5s\n    timeout client  60s\n    timeout server  60s\n\
             \x20   timeout tunnel  1h\n    timeout http-request 10s\n\
             frontend halley_in\n    bind 127.0.0.1:{port}\n    default_backend halley\n\
             backend halley\n    server halley1 {upstream}\n"
        );
        std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
        let log = std::fs::File::create(dir.join("error.log")).unwrap();
        let child = Command::new(sbin("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy is needed for this test (apt-get install haproxy)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        listening(addr, "haproxy listening").await;
        Proxy { child, dir, addr }
    }

    /// What the proxy logged.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
