//! `deltarelay`: the command-line entry point.

use anyhow::Context;
use clap::{Parser, Subcommand};
use deltarelay::config::{self, Config, ConfigError, LogFormat};
use deltarelay::source::postgres::catalog;
use deltarelay::source::SourceSpec;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the log writer frees what the source task allocated, and
/// glibc serializes such cross-thread frees on its arena locks (11 % of the writer's time in
/// futex waits, see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its arenas, which makes every idle SSE connection
/// cost ~29 KiB of resident memory instead of ~17 KiB (fan-out benchmark). Turning THP off for
/// the process is what mimalloc itself does with `MIMALLOC_ALLOW_THP=0`.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this process.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done != 0 {
        eprintln!("note: cannot turn off transparent huge pages; memory use may be higher");
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

const EXAMPLES: &str = "\
Examples:
  deltarelay check --config /etc/deltarelay/deltarelay.toml
      Validate the config and each source's prerequisites; prints what to fix.
  deltarelay run --config /etc/deltarelay/deltarelay.toml
      Run the relay (under systemd: see deploy/deltarelay.service).
  DELTARELAY__HTTP__LISTEN=0.0.0.0:8080 deltarelay run
      Any config key can be overridden as DELTARELAY__SECTION__KEY.
  deltarelay slot drop --source app_pg
      After uninstalling: drop the replication slot and publication so Postgres keeps no WAL for us.";

#[derive(Parser)]
#[command(
    name = "deltarelay",
    version,
    about = "Change-data-capture relay: Postgres logical replication into a durable change log, served over HTTP and SSE",
    after_help = EXAMPLES
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
    /// Validate the config and check each source's prerequisites, and the NATS cluster with
    /// `log.backend = "nats"` (exit status 1 on any FAIL).
    Check,
    /// Manage a Postgres source's replication slot.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
}

#[derive(Subcommand)]
enum SlotAction {
    /// Drop the replication slot and the publication (stop the relay first). Postgres then
    /// keeps no WAL for deltarelay; the next `run` needs a fresh log directory.
    Drop {
        /// The source whose slot to drop; required when several Postgres sources are configured.
        #[arg(long)]
        source: Option<String>,
        /// Keep the publication; drop only the slot.
        #[arg(long)]
        keep_publication: bool,
    },
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    // The sources' own keys are their kinds' to check: a typo there fails here too.
    let loaded =
        Config::load(&cli.config).and_then(|config| match SourceSpec::parse_all(&config) {
            Ok(_) => Ok(config),
            Err(problem) => Err(ConfigError::Invalid {
                path: cli.config.clone(),
                problem,
            }),
        });
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            if matches!(cli.command, Command::Check) {
                println!("FAIL config file: {e}");
            }
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Commands that talk to the operator keep the log quiet unless asked.
    let default_level = match cli.command {
        Command::Run => "info",
        _ => "warn",
    };
    init_tracing(config.log.format, default_level);
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
        Command::Slot {
            action:
                SlotAction::Drop {
                    source,
                    keep_publication,
                },
        } => runtime.block_on(slot_drop(&config, source.as_deref(), keep_publication)),
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

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DELTARELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
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
    let mut results = deltarelay::source::check_all(config, |result| println!("{result}")).await;
    if let (deltarelay::config::LogBackendKind::Nats, Some(nats)) =
        (config.log.backend, &config.log.nats)
    {
        let settings = deltarelay::log::nats::cluster::NatsSettings::from_config(nats)?;
        for result in deltarelay::log::nats::check::check(&settings).await {
            println!("{result}");
            results.push(result);
        }
    }
    let failures = deltarelay::check::failures(&results);
    if failures > 0 {
        anyhow::bail!("{failures} check(s) failed: fix them and run deltarelay check again");
    }
    println!("all checks passed");
    Ok(())
}

/// `deltarelay slot drop`: removes what makes Postgres keep WAL for the relay.
async fn slot_drop(
    config: &Config,
    wanted: Option<&str>,
    keep_publication: bool,
) -> anyhow::Result<()> {
    let postgres: Vec<_> = SourceSpec::parse_all(config)?
        .into_iter()
        .filter_map(|spec| match spec {
            SourceSpec::Postgres(pg) => Some(pg),
            SourceSpec::Mongodb(_) => None,
        })
        .collect();
    let source = match (wanted, postgres.as_slice()) {
        (Some(name), _) => postgres
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no Postgres source named {name:?} in the config"))?,
        (None, [only]) => only,
        (None, []) => anyhow::bail!("the config has no Postgres source"),
        (None, _) => {
            anyhow::bail!("several Postgres sources are configured: name one with --source")
        }
    };
    let (pg, tls) = deltarelay::source::postgres::tls::parse(&source.url)
        .map_err(anyhow::Error::msg)
        .context("invalid Postgres URL")?;
    let client = catalog::connect_tls(&pg, &tls)
        .await
        .with_context(|| format!("connecting to source {}", source.name))?;
    let slot = &source.slot;
    if catalog::drop_slot(&client, slot).await? {
        println!("dropped replication slot {slot}");
    } else {
        println!("replication slot {slot} does not exist");
    }
    if !keep_publication {
        let publication = &source.publication;
        if catalog::drop_publication(&client, publication).await? {
            println!("dropped publication {publication}");
        } else {
            println!("publication {publication} does not exist");
        }
        // The append-only tables' publication, when there is one.
        let append = source.append_publication();
        if catalog::drop_publication(&client, &append).await? {
            println!("dropped publication {append}");
        }
    }
    println!(
        "the log in {} now refers to a slot that is gone: remove it before running the relay again",
        config.log.dir.display()
    );
    Ok(())
}
