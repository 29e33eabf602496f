//! The `halley` binary: configuration (flags > `HALLEY_*` environment > TOML file > defaults),
//! logging, signals, and the server's lifetime.

mod config;

use anyhow::Context;
use clap::Parser;
use halley_engine::Engine;
use halley_http::Server;

use crate::config::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
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

async fn run(settings: config::Settings) -> anyhow::Result<()> {
    let engine = Engine::in_memory(settings.engine);
    let server = Server::bind(settings.http.clone(), engine)
        .await
        .with_context(|| format!("binding {}", settings.http.listen))?;
    tracing::info!(listen = %server.local_addr(), "halley serving");
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections");
        shutdown.cancel();
    });
    server.run().await;
    tracing::info!("stopped");
    Ok(())
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
