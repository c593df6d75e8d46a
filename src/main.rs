//! `deltarelay`: the command-line entry point.

use anyhow::Context;
use clap::{Parser, Subcommand};
use deltarelay::config::{self, Config, LogFormat, SourceKind};
use deltarelay::source::postgres::catalog;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "deltarelay",
    version,
    about = "Change-data-capture relay: Postgres logical replication into a durable change log, served over HTTP and SSE",
    after_help = "Examples:\n  deltarelay run --config /etc/deltarelay/deltarelay.toml\n  deltarelay check --config ./deltarelay.toml"
)]
struct Cli {
    /// Path of the TOML config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGTERM or Ctrl-C.
    Run,
    /// Validate the config and check each source's prerequisites.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run => runtime.block_on(deltarelay::relay::run(config, stop_signal())),
        Command::Check => runtime.block_on(check(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DELTARELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints one line per check; fails if any check fails.
async fn check(config: &Config) -> anyhow::Result<()> {
    println!("ok   config is valid");
    let mut failures = 0;
    for source in &config.sources {
        if source.kind != SourceKind::Postgres {
            println!(
                "skip {}: checks for this kind are not available yet",
                source.name
            );
            continue;
        }
        let url = source.resolve_url().map_err(anyhow::Error::msg)?;
        let pg: tokio_postgres::Config = url.parse().context("invalid Postgres URL")?;
        let client = match catalog::connect(&pg).await {
            Ok(client) => client,
            Err(e) => {
                println!("FAIL {}: cannot connect: {e}", source.name);
                failures += 1;
                continue;
            }
        };
        let tables = if source.all_tables() {
            vec![]
        } else {
            source.tables.clone()
        };
        for (what, result) in [
            (
                "wal_level is logical",
                catalog::check_wal_level(&client).await,
            ),
            (
                "every table exists and has a key",
                catalog::check_tables(&client, &tables).await,
            ),
        ] {
            match result {
                Ok(()) => println!("ok   {}: {what}", source.name),
                Err(e) => {
                    println!("FAIL {}: {e}", source.name);
                    failures += 1;
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} check(s) failed");
    }
    Ok(())
}
