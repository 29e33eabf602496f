//! The `halley` binary: configuration (flags > `HALLEY_*` environment > TOML file > defaults),
//! logging, signals, and the server's lifetime.

mod config;
#[cfg(test)]
mod sample_config;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use halley_engine::Engine;
use halley_http::Server;

use crate::config::{BrokerChoice, Cli, Command};

/// How long startup waits for Redis before serving anyway. A node that cannot reach Redis
/// still starts (degraded: `/healthz` says so, publishing gets 503) and connects as soon as
/// Redis is there, exactly as after an outage.
const REDIS_STARTUP_WAIT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
        Some(Command::Token(args)) => {
            println!("{}", args.mint()?);
            return Ok(());
        }
        Some(Command::CheckConfig { file }) => return check_config(file),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HALLEY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = serve.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(settings))
}

/// `halley check-config FILE`: resolve it as `serve` would; print its namespaces.
fn check_config(file: std::path::PathBuf) -> anyhow::Result<()> {
    let args = config::ServeArgs {
        config: Some(file.clone()),
        ..config::ServeArgs::default()
    };
    let settings = args
        .resolve()
        .with_context(|| format!("{} is not a valid config", file.display()))?;
    let mut any = false;
    for ns in settings.policy.namespaces() {
        println!("{}", config::describe(ns));
        any = true;
    }
    if !any {
        println!("no namespaces: every channel is open to subscribers");
    }
    for line in config::describe_calls(&settings.http) {
        println!("{line}");
    }
    // The certificate and key are read as `serve` reads them, so a bad file shows here.
    if let Some(tls) = &settings.http.tls {
        let (_, loaded) = halley_http::Tls::load(tls)?;
        println!(
            "tls {} cert={} chain={} sha256={}",
            match tls.listen {
                Some(addr) => format!("{} and {addr}", settings.http.listen),
                None => settings.http.listen.to_string(),
            },
            loaded.cert.display(),
            loaded.chain,
            loaded.fingerprint
        );
    }
    Ok(())
}

async fn run(settings: config::Settings) -> anyhow::Result<()> {
    // Kept until the server has drained, so the broker outlives every connection.
    let mut redis = None;
    let mut nats = None;
    let engine = match &settings.broker {
        BrokerChoice::Memory => Engine::in_memory(settings.engine),
        BrokerChoice::Redis(url) => {
            let (engine, broker) =
                halley_redis::engine(halley_redis::RedisConfig::new(url), settings.engine)
                    .context("configuring the Redis broker")?;
            let redis_at = without_password(url);
            if broker.connected(REDIS_STARTUP_WAIT).await {
                tracing::info!(redis = %redis_at, "broker: redis");
            } else {
                tracing::warn!(redis = %redis_at, "broker: redis unreachable; serving degraded until it is");
            }
            redis = Some(broker);
            engine
        }
        BrokerChoice::Nats(url) => {
            let config = nats_config(url, &settings);
            let (engine, broker) = halley_nats::engine(config, settings.engine)
                .context("configuring the NATS broker")?;
            if broker.connected(REDIS_STARTUP_WAIT).await {
                tracing::info!(nats = %url, "broker: nats");
            } else {
                tracing::warn!(nats = %url, "broker: nats unreachable; serving degraded until it is");
            }
            nats = Some(broker);
            engine
        }
    };
    engine.set_presence_grace(settings.presence_grace);
    engine.set_idempotency(settings.idempotency);
    if engine.set_policy(settings.policy.clone()).is_err() {
        anyhow::bail!("the access policy was set twice");
    }
    // The Bayeux server is built by the HTTP layer: the policy decides, and `/service/**` calls
    // go to rpc-url through the same bound as POST /rpc.
    let server = Server::bind_configured(settings.http.clone(), engine, settings.bayeux)
        .await
        .with_context(|| format!("binding {}", settings.http.listen))?;
    // One line with both addresses: scripts and tests read them from it. With a certificate
    // and no TLS-only listener, TLS is spoken on the one port.
    let tls_at = server
        .tls_addr()
        .or_else(|| server.tls().map(|_| server.local_addr()));
    match tls_at {
        Some(tls) => tracing::info!(listen = %server.local_addr(), tls = %tls, "halley serving"),
        None => tracing::info!(listen = %server.local_addr(), "halley serving"),
    }
    if let Some(tls) = server.tls() {
        tokio::spawn(reload_on_hangup(tls));
    }
    if let Some(webhooks) = &settings.http.webhooks {
        tracing::info!(url = %webhooks.url, events = ?webhooks.events.names(), "webhooks");
    }
    if let Some(rpc) = &settings.http.rpc {
        tracing::info!(url = %rpc.url, "rpc");
    }
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections");
        shutdown.cancel();
    });
    server.run().await;
    drop(redis);
    drop(nats);
    tracing::info!("stopped");
    Ok(())
}

/// The NATS broker's settings: the stream keeps as many messages per channel, and for as
/// long, as the most generous namespace (a namespace that keeps fewer is trimmed per publish,
/// one that keeps them shorter is filtered on reading).
fn nats_config(url: &str, settings: &config::Settings) -> halley_nats::NatsConfig {
    let mut config = halley_nats::NatsConfig::new(url);
    let namespaces = settings.policy.namespaces();
    let (size, ttl) = namespaces.fold(
        (settings.engine.history_size, settings.engine.history_ttl),
        |(size, ttl), ns| {
            (
                size.max(ns.history_size.unwrap_or(0)),
                ttl.max(ns.history_ttl.unwrap_or_default()),
            )
        },
    );
    config.max_history = Some(size);
    config.max_age = Some(ttl);
    config
}

/// The URL for logs: a password in it (`redis://:secret@host`) must not end up there.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}

/// SIGHUP reloads the TLS certificate and key (only when TLS is configured: without it,
/// SIGHUP keeps its default, ending the process). Connections already open keep their
/// session; a file that does not load leaves the certificate in use and is logged as an error.
async fn reload_on_hangup(tls: halley_http::Tls) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler: the certificate cannot be reloaded");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(loaded) => tracing::info!(
                    cert = %loaded.cert.display(),
                    sha256 = %loaded.fingerprint,
                    chain = loaded.chain,
                    "tls: certificate reloaded"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "tls: reload failed; the certificate in use stays"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
