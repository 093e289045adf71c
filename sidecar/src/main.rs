//! `sidecar`: parse and validate the configuration, load the certificate, bind, serve.
//! Exit codes: 0 after a clean shutdown, 1 when serving could not start (e.g. the port is
//! taken), 2 when the configuration is invalid. Errors are one line on stderr.

use std::process::ExitCode;

use clap::Parser;
use sidecar::config::{system_hostname, Cli, Config, Mode};
use sidecar::Error;
use tokio::net::TcpListener;
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
    // below is still the only line on stderr (nothing logs before it fails).
    // RUST_LOG, or when it is unset gosslterm's LOG_LEVEL (checked with the configuration).
    shared::telemetry::init_at(config.log_format, config.log_level);
    if config.mode == Mode::Http {
        sidecar::access_log::start(config.log_format);
    }
    let prepared = match sidecar::prepare(&config) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_CONFIG, &anyhow::Error::from(e)),
    };

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
    let served = runtime.block_on(serve(config, prepared));
    // Connections still open after the grace period end here, and log their requests; then the
    // access log's last lines are written before the process exits.
    drop(runtime);
    sidecar::access_log::flush(sidecar::access_log::FLUSH_TIMEOUT);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_RUNTIME, &e),
    }
}

async fn serve(config: Config, prepared: sidecar::Prepared) -> anyhow::Result<()> {
    let listener =
        sidecar::bind(config.listen, config.listen_backlog).map_err(|source| Error::Bind {
            flag: "--listen",
            addr: config.listen,
            source,
        })?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    flag: "--admin-listen",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let redirect = match config.redirect.as_ref().map(|r| r.listen) {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    flag: "--redirect-listen",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for addr in config.upstreams.iter().map(|u| u.local) {
        upstreams.push(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    flag: "--upstream",
                    addr,
                    source,
                })?,
        );
    }
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone()).map_err(Error::Signals)?;
    sidecar::run(
        listener, admin, redirect, upstreams, config, prepared, shutdown,
    )
    .await?;
    Ok(())
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(code)
}
