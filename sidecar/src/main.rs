//! `sidecar`: parse and validate the configuration, take the listeners over from the running
//! sidecar (`--take-over`), load the certificates, bind, serve.
//! Exit codes: 0 after a clean shutdown, 1 when serving could not start (e.g. the port is
//! taken), 2 when the configuration is invalid. Errors are one line on stderr.

use std::process::ExitCode;

use clap::Parser;
use sidecar::config::{system_hostname, Cli, Config, Mode};
use sidecar::Error;
use tokio_util::sync::CancellationToken;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first line names the flag and the problem; the usage hint that follows
            // is noise in a container log.
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match cli.into_config(|k| std::env::var(k).ok(), system_hostname()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &anyhow::Error::from(e)),
    };
    // Logging starts here so the self-signed certificate's fingerprint is logged; a file error
    // below is still the only line on stderr (without --take-over, nothing logs before it
    // fails).
    // RUST_LOG, or when it is unset gosslterm's LOG_LEVEL (checked with the configuration).
    shared::telemetry::init_at(config.log_format, config.log_level);
    if config.mode == Mode::Http {
        sidecar::access_log::start(config.log_format);
    }

    // The control plane (signals, certificate reloads, the admin and redirect listeners) runs
    // here; connections are served by `--workers` threads of their own (`server::serve`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                EXIT_RUNTIME,
                &anyhow::Error::from(e).context("failed to start the async runtime"),
            )
        }
    };
    let served = runtime.block_on(serve(config));
    // Connections still open after the grace period end here, and log their requests; then the
    // access log's last lines are written before the process exits.
    drop(runtime);
    sidecar::access_log::flush(sidecar::access_log::FLUSH_TIMEOUT);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => fail(code, &e),
    }
}

/// Takes the listeners over (with `--take-over`), loads every file, opens the listeners and
/// serves until the drain is over; an error comes with its exit code.
async fn serve(config: Config) -> Result<(), (u8, anyhow::Error)> {
    let runtime = |e: Error| (EXIT_RUNTIME, anyhow::Error::from(e));
    // First, so the running sidecar serves on while this one loads.
    let mut take_over = sidecar::take_over(&config).await.map_err(runtime)?;
    // Before anything is bound: a bad file is a configuration error with nothing started.
    let prepared = sidecar::prepare(&config).map_err(|e| (EXIT_CONFIG, anyhow::Error::from(e)))?;
    let listeners = sidecar::listen(&config, take_over.as_mut())
        .await
        .map_err(runtime)?;
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone()).map_err(|e| runtime(Error::Signals(e)))?;
    sidecar::run(listeners, config, prepared, take_over, shutdown)
        .await
        .map_err(runtime)
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(code)
}
