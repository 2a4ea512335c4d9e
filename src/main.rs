//! The `pika` binary: `pika [--config PATH]` runs a node; `pika get|put|rm|
//! ls|history|status|watch|diff|search|export|import|backup` talk to one,
//! and `pika restore|recover` work offline on a data directory (see
//! `pika::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pika::config::{self, Sources};

/// mimalloc instead of glibc's malloc: a write copies its value through
/// several buffers (HTTP body, op, log entry, frame, store), and under load
/// glibc's allocator took about a sixth of the node's CPU in a profile
/// (`perf record` at c=64, issue 12's closing note).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pika",
    version,
    about = "A clustered configuration store",
    after_help = "Without a command, runs a node. Client exit codes: 0 done, 1 other error, 2 bad usage or input, 3 not found, 4 version conflict, 5 node unreachable or unavailable, 6 watch history gone, 7 not authorized, 8 not a whole, undamaged backup."
)]
struct Cli {
    /// Config file (YAML), for running a node. Default: $CONFIG_FILE, ./pika.yaml, ./pika.yml, /etc/pika.yaml.
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    client: pika::cli::Client,
    #[command(subcommand)]
    command: Option<pika::cli::Command>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return match pika::cli::run(&cli.client, cli.config, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => {
                eprintln!("pika: {}", failure.message);
                ExitCode::from(failure.code)
            }
        };
    }
    let loaded = match config::load(&Sources::from_process(cli.config)) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("pika: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    let config = loaded.config;
    pika::telemetry::init_logging(&config.log_level);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let source = loaded.file.as_ref().map_or_else(
        || "embedded defaults".to_string(),
        |p| p.display().to_string(),
    );
    tracing::info!(source, config = %config.masked(), "configuration loaded");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pika::node::serve(config, None, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
