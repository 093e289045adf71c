//! Client-trust reloading: `--client-ca` and `--client-crl` are read again on SIGHUP, on
//! change notifications for their directories (Kubernetes, certbot and archive extraction swap
//! files by rename, so directories are watched) and every `--reload-interval`, as the
//! certificates are ([`super::reload`]). Contents with the hash of those in force cost nothing;
//! contents that cannot be read or parsed leave the verifier in force untouched, with one error
//! naming the flag and the file (again only when the error changes, or on SIGHUP) and a failed
//! reload counted; good new contents are swapped into [`ClientTrust`] for the next handshakes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::client_auth::{build_verifier, ClientTrust, TrustFiles};
use super::reload_triggers::{parent_dir, Trigger, Triggers};
use super::sha256_hex;
use crate::config::ClientAuth;
use crate::error::{chain, ConfigError};
use crate::metrics::Metrics;

/// How long one reload may take to read and parse the files. It runs on a blocking thread (a
/// stalled network file system blocks in `read`, a large CRL takes a moment to parse); past
/// this the reload counts as failed, and no other starts until that thread is back.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with the files just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// The contents in force: nothing to build.
    Keep,
    /// The contents that failed last time: they would fail again.
    KnownBroken,
    /// New contents: build a verifier from them.
    Build,
}

/// Decides from the hashes of the contents in force (`applied`), of the contents that failed
/// last (`failed`) and of those just read (`read`). SIGHUP (`forced`) retries broken contents.
fn plan(applied: [u8; 32], failed: Option<[u8; 32]>, read: [u8; 32], forced: bool) -> Plan {
    if read == applied {
        Plan::Keep
    } else if failed == Some(read) && !forced {
        Plan::KnownBroken
    } else {
        Plan::Build
    }
}

/// The outcome of one reload, computed on a blocking thread.
enum Attempt {
    Unchanged,
    KnownBroken,
    Failed {
        error: ConfigError,
        /// The hash of the contents that failed to parse (`None`: they could not be read).
        hash: Option<[u8; 32]>,
    },
    Built {
        verifier: Arc<dyn ClientCertVerifier>,
        files: TrustFiles,
    },
}

/// Reads the files and builds a verifier if they changed; swaps nothing.
fn attempt(trust: &ClientTrust, failed: Option<[u8; 32]>, forced: bool) -> Attempt {
    let files = match TrustFiles::read(trust.auth()) {
        Ok(files) => files,
        Err(error) => return Attempt::Failed { error, hash: None },
    };
    match plan(trust.hash(), failed, files.hash(), forced) {
        Plan::Keep => Attempt::Unchanged,
        Plan::KnownBroken => Attempt::KnownBroken,
        Plan::Build => match build_verifier(trust.auth(), &files) {
            Ok(verifier) => Attempt::Built { verifier, files },
            Err(error) => Attempt::Failed {
                hash: Some(files.hash()),
                error,
            },
        },
    }
}

/// Reloads `trust` on SIGHUP, directory changes and every `every`, until `shutdown`.
pub(crate) async fn watch(
    trust: Arc<ClientTrust>,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut triggers = Triggers::new(watched_dirs(trust.auth()), every).await;
    // The last failure logged (so a broken file is reported once, not at every tick) and the
    // hash of the broken contents, if they could be read.
    let mut reported: Option<String> = None;
    let mut failed: Option<[u8; 32]> = None;
    // A reload that timed out and whose thread is still blocked.
    let mut stalled: Option<JoinHandle<Attempt>> = None;
    while let Some(trigger) = triggers.next(&shutdown).await {
        let forced = trigger == Trigger::Hangup;
        if forced {
            info!("SIGHUP: reloading client CAs");
        }
        if stalled.as_ref().is_some_and(|h| !h.is_finished()) {
            continue;
        }
        stalled = None;
        let mut task = {
            let trust = trust.clone();
            tokio::task::spawn_blocking(move || attempt(&trust, failed, forced))
        };
        let outcome = match tokio::time::timeout(RELOAD_TIMEOUT, &mut task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Attempt::Failed {
                error: ConfigError::BadPem {
                    flag: "--client-ca",
                    path: trust.auth().ca.clone(),
                    reason: format!("reload failed: {e}"),
                },
                hash: None,
            },
            Err(_) => {
                stalled = Some(task);
                Attempt::Failed {
                    error: ConfigError::BadPem {
                        flag: "--client-ca",
                        path: trust.auth().ca.clone(),
                        reason: format!(
                            "not read and parsed within {}s (with --client-crl, if given)",
                            RELOAD_TIMEOUT.as_secs()
                        ),
                    },
                    hash: None,
                }
            }
        };
        match outcome {
            Attempt::Unchanged => {
                if reported.take().is_some() {
                    info!(ca = %trust.auth().ca.display(), "client CA files readable again, unchanged: still verifying clients with them");
                }
                failed = None;
                if forced {
                    metrics.reload_succeeded();
                }
            }
            Attempt::KnownBroken => {}
            Attempt::Failed { error, hash } => {
                let message = chain(&error);
                if forced || reported.as_deref() != Some(message.as_str()) {
                    error!(error = %message, "client CA reload failed; still verifying clients with the previous CAs and CRLs");
                    metrics.reload_failed();
                }
                reported = Some(message);
                failed = hash;
            }
            Attempt::Built { verifier, files } => {
                let cas = verifier.root_hint_subjects().len();
                trust.replace(verifier, &files);
                let ca = trust.auth().ca.display();
                let sha256 = sha256_hex(&files.hash());
                match &trust.auth().crl {
                    Some(crl) => {
                        info!(%ca, cas, crl = %crl.display(), %sha256, "client CAs and CRLs loaded; new handshakes are verified with them")
                    }
                    None => {
                        info!(%ca, cas, %sha256, "client CAs loaded; new handshakes are verified with them")
                    }
                }
                metrics.reload_succeeded();
                reported = None;
                failed = None;
            }
        }
        triggers.rewatch(&watched_dirs(trust.auth()));
    }
}

/// The directories whose entries can change the client CAs or CRLs: each file's own, and that
/// of the file a symlink points to (a Kubernetes `..data` link, certbot's `live/` links).
fn watched_dirs(auth: &ClientAuth) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for path in std::iter::once(&auth.ca).chain(auth.crl.as_ref()) {
        dirs.extend(parent_dir(path));
        if let Ok(target) = std::fs::canonicalize(path) {
            dirs.extend(parent_dir(&target));
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_contents_are_built() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        assert_eq!(plan(a, None, a, false), Plan::Keep, "unchanged");
        assert_eq!(plan(a, None, a, true), Plan::Keep, "unchanged, SIGHUP");
        assert_eq!(plan(a, None, b, false), Plan::Build, "changed");
        assert_eq!(
            plan(a, Some(b), b, false),
            Plan::KnownBroken,
            "still broken"
        );
        assert_eq!(plan(a, Some(b), b, true), Plan::Build, "SIGHUP retries");
        assert_eq!(plan(a, Some(b), c, false), Plan::Build, "changed again");
        assert_eq!(plan(a, Some(b), a, false), Plan::Keep, "restored");
    }

    #[test]
    fn watches_the_directory_of_each_file() {
        let auth = |ca: &str, crl: Option<&str>| ClientAuth {
            ca: PathBuf::from(ca),
            crl: crl.map(PathBuf::from),
            mode: Default::default(),
            allow: Default::default(),
        };
        assert_eq!(
            watched_dirs(&auth("/nonexistent/ca/clients.pem", None)),
            vec![PathBuf::from("/nonexistent/ca")]
        );
        assert_eq!(
            watched_dirs(&auth("/nonexistent/a.pem", Some("/nonexistent/crl/a.crl"))),
            vec![
                PathBuf::from("/nonexistent"),
                PathBuf::from("/nonexistent/crl")
            ]
        );
        assert_eq!(
            watched_dirs(&auth("ca.pem", None)),
            vec![PathBuf::from(".")]
        );
    }
}
