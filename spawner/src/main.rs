//! The `spawner` binary: parse, validate, set up logging and signals, run, map the outcome to an
//! exit code (0 clean, 1 runtime failure, 2 invalid configuration).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = spawner::Cli::parse();
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawner: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spawner: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: spawner::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        shared::shutdown::cancel_on_signal(shutdown.clone())?;
        let admin = match config.admin_listen {
            Some(addr) if config.command == spawner::Command::Run => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to listen on --admin-listen {addr}"))?,
            ),
            _ => None,
        };
        spawner::run(config, admin, shutdown).await?;
        Ok(())
    })
}
