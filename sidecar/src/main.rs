//! `sidecar`: parse and validate the configuration, load the certificate, bind, serve.
//! Exit codes: 0 after a clean shutdown, 1 when serving could not start (e.g. the port is
//! taken), 2 when the configuration is invalid. Errors are one line on stderr.

use std::process::ExitCode;

use clap::Parser;
use sidecar::config::{system_hostname, Cli, Config};
use sidecar::error::Error;
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
            eprintln!("{}", rendered.lines().next().unwrap_or("error: invalid arguments"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match cli.into_config(|k| std::env::var(k).ok(), system_hostname()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &anyhow::Error::from(e)),
    };
    let cert = match sidecar::tls::load(&config.cert) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &anyhow::Error::from(e)),
    };
    shared::telemetry::init(config.log_format);
    if let sidecar::config::CertSource::SelfSigned { names } = &config.cert {
        tracing::info!(names = %names.join(","), sha256 = %cert.fingerprint, "generated self-signed certificate");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_RUNTIME, &anyhow::Error::from(e).context("failed to start the async runtime")),
    };
    match runtime.block_on(serve(config, cert)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_RUNTIME, &e),
    }
}

async fn serve(config: Config, cert: sidecar::tls::LoadedCert) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { flag: "--listen", addr: config.listen, source })?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr).await.map_err(|source| Error::Bind { flag: "--admin-listen", addr, source })?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone()).map_err(Error::Signals)?;
    sidecar::run(listener, admin, config, cert, shutdown).await?;
    Ok(())
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(code)
}
