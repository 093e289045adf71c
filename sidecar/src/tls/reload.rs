//! Certificate (re)loading. [`build`] turns the configured sources into a [`CertSet`], reusing
//! the previous set's entries where the files did not change and keeping the previous entry of
//! any pair that fails to load, so a broken renewal never replaces a working certificate and a
//! half-updated pair is never served. [`watch`] runs it on SIGHUP, on file-change
//! notifications for the certificate directories and on a periodic content check
//! ([`super::reload_triggers`]). The service identity's pair is one of the sets' entries
//! (`--identity-cert`), reloaded with the same rules; its trust bundle (`--identity-ca`) is
//! re-read on the same occasions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::certs::{scan_dir, CertSet, Entry};
use super::identity_trust::IdentityTrust;
use super::reload_triggers::{parent_dir, Trigger, Triggers};
use super::{pair_hash, parse_pair, read_pair, self_signed, CertStore};
use crate::config::{CertSources, Flags, PairPaths, DIR_FLAGS, IDENTITY_FLAGS};
use crate::error::{chain, ConfigError};
use crate::metrics::Metrics;

/// Outcome of one [`build`].
pub(crate) struct Built {
    pub set: CertSet,
    /// Pairs that could not be loaded (their previous entry, if any, is kept).
    pub failures: Vec<ConfigError>,
    /// Whether any entry differs from the previous set.
    pub changed: bool,
}

/// Builds the certificate set from `sources`. `previous` supplies entries to reuse (unchanged
/// files) or keep (broken files); `self_signed_cache` holds the generated fallback certificate.
/// Fails only when there is nothing at all to serve (no previous set and no certificate could be
/// loaded or generated).
pub(crate) fn build(
    sources: &CertSources,
    previous: Option<&CertSet>,
    self_signed_cache: &mut Option<Arc<Entry>>,
) -> Result<Built, ConfigError> {
    let mut failures = Vec::new();
    let mut changed = previous.is_none();
    let mut load =
        |paths: &PairPaths, flags: Flags, failures: &mut Vec<ConfigError>| -> Option<Arc<Entry>> {
            let old = previous.and_then(|p| {
                p.entries()
                    .iter()
                    .find(|e| e.origin == paths.cert.display().to_string())
            });
            let bytes = read_pair(paths, flags);
            let result = bytes.and_then(|(cert, key)| match old {
                Some(old) if old.content_hash == pair_hash(&cert, &key) => Ok(old.clone()),
                _ => parse_pair(paths, flags, &cert, &key).map(Arc::new),
            });
            match result {
                Ok(entry) => {
                    if !old.is_some_and(|o| Arc::ptr_eq(o, &entry)) {
                        changed = true;
                    }
                    Some(entry)
                }
                Err(e) => {
                    failures.push(e);
                    old.cloned()
                }
            }
        };

    let pair = sources
        .pair
        .as_ref()
        .and_then(|p| load(p, sources.pair_flags, &mut failures));
    let identity = sources
        .identity_pair()
        .and_then(|p| load(&p, IDENTITY_FLAGS, &mut failures));
    // Entries from the files named on the command line, as opposed to the directory's.
    let named_origins: Vec<String> = [sources.pair.clone(), sources.identity_pair()]
        .into_iter()
        .flatten()
        .map(|p| p.cert.display().to_string())
        .collect();
    let mut dir_entries = Vec::new();
    if let Some(dir) = &sources.dir {
        match scan_dir(dir) {
            Ok(pairs) => {
                for p in &pairs {
                    if let Some(e) = load(p, DIR_FLAGS, &mut failures) {
                        dir_entries.push(e);
                    }
                }
            }
            Err(source) => {
                failures.push(ConfigError::ReadFile {
                    flag: "--certs-dir",
                    path: dir.clone(),
                    source: source.into(),
                });
                // Keep every previous directory entry: the directory may be mid-swap.
                if let Some(prev) = previous {
                    dir_entries.extend(
                        prev.entries()
                            .iter()
                            .filter(|e| {
                                e.name != "self-signed" && !named_origins.contains(&e.origin)
                            })
                            .cloned(),
                    );
                }
            }
        }
    }
    if previous.is_none() && !failures.is_empty() {
        // At start every configured file must load: report the first problem, generate nothing.
        return Err(failures.remove(0));
    }
    if let (Some(prev), Some(dir)) = (previous, &sources.dir) {
        // A flat certificate whose key file vanished is no longer listed by the scan (a lone
        // `.crt` may be a CA bundle); while its certificate file is still there, treat it as a
        // broken renewal: keep serving it and report the missing key.
        for old in prev.entries() {
            let origin = Path::new(&old.origin);
            let listed = dir_entries.iter().any(|e| e.origin == old.origin)
                || named_origins.contains(&old.origin);
            if !listed && origin.parent() == Some(dir.as_path()) && origin.is_file() {
                failures.push(ConfigError::BadPem {
                    flag: "--certs-dir",
                    path: origin.to_path_buf(),
                    reason: format!(
                        "no key file beside it (expected {})",
                        origin.with_extension("key").display()
                    ),
                });
                dir_entries.push(old.clone());
            }
        }
    }
    let default = match pair.or_else(|| dir_entries.first().cloned()) {
        Some(d) => d,
        None => match self_signed_cache {
            Some(s) => s.clone(),
            None => match self_signed(&sources.self_signed_names) {
                Ok(s) => {
                    info!(names = %shared::identity::List(sources.self_signed_names.clone()), sha256 = %s.fingerprint, "generated self-signed certificate");
                    let s = Arc::new(s);
                    *self_signed_cache = Some(s.clone());
                    changed = true;
                    s
                }
                Err(e) => match previous {
                    Some(prev) => {
                        failures.push(e);
                        prev.default_entry().clone()
                    }
                    None => return Err(e),
                },
            },
        },
    };
    let set = CertSet::new(default, dir_entries);
    let set = match identity {
        Some(identity) => set.with_identity(identity),
        None => set,
    };
    if let Some(prev) = previous {
        // A pair that disappeared from the directory is a change too.
        let files = |set: &CertSet| {
            set.entries()
                .iter()
                .filter(|e| e.name != "self-signed")
                .count()
        };
        if files(&set) != files(prev) {
            changed = true;
        }
    }
    Ok(Built {
        set,
        failures,
        changed,
    })
}

/// The first load, at start: every configured file must load, or the sidecar refuses to start.
pub(crate) fn load_initial(
    sources: &CertSources,
) -> Result<(CertSet, Option<Arc<Entry>>), ConfigError> {
    let mut cache = None;
    let built = build(sources, None, &mut cache)?;
    if let Some(first) = built.failures.into_iter().next() {
        return Err(first);
    }
    Ok((built.set, cache))
}

/// Reloads on SIGHUP, directory changes and every `--reload-interval`, until `shutdown`: the
/// served certificates into `store`, and the identity trust bundle into `trust`.
pub(crate) async fn watch(
    sources: CertSources,
    store: Arc<CertStore>,
    trust: Option<Arc<IdentityTrust>>,
    metrics: Arc<Metrics>,
    mut self_signed_cache: Option<Arc<Entry>>,
    shutdown: CancellationToken,
) {
    let mut triggers = Triggers::new(watched_dirs(&sources), sources.reload_interval).await;
    while let Some(trigger) = triggers.next(&shutdown).await {
        let forced = trigger == Trigger::Hangup;
        if forced {
            info!("SIGHUP: reloading certificates");
        }
        if !sources.has_files() {
            if forced {
                info!("no certificate files configured (self-signed): nothing to reload");
            }
            continue;
        }
        let (trust_changed, trust_failed) = match trust.as_deref().map(IdentityTrust::reload) {
            None | Some(Ok(false)) => (false, false),
            Some(Ok(true)) => {
                let trust = trust.as_deref().map_or(0, IdentityTrust::roots);
                info!(roots = trust, "identity trust bundle loaded");
                (true, false)
            }
            Some(Err(e)) => {
                error!(error = %chain(&e), "identity trust bundle reload failed; still verifying upstream servers with the previous one");
                (false, true)
            }
        };
        let current = store.current();
        let built = match build(&sources, Some(&current), &mut self_signed_cache) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %chain(&e), "certificate reload failed; still serving the previous certificates");
                metrics.reload_failed();
                continue;
            }
        };
        for failure in &built.failures {
            error!(error = %chain(failure), "certificate reload failed; still serving the previous certificate");
        }
        if built.changed {
            metrics.set_certificates(built.set.expiries());
            for e in built
                .set
                .entries()
                .iter()
                .filter(|e| !current.entries().iter().any(|c| Arc::ptr_eq(c, e)))
            {
                info!(name = %e.name, origin = %e.origin, sha256 = %e.fingerprint, "certificate loaded");
            }
            store.replace(built.set);
        }
        if !built.failures.is_empty() || trust_failed {
            metrics.reload_failed();
        } else if built.changed || trust_changed || forced {
            metrics.reload_succeeded();
        }
        triggers.rewatch(&watched_dirs(&sources));
    }
}

/// The directories whose entries can change a served certificate.
fn watched_dirs(sources: &CertSources) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let parent = parent_dir;
    if let Some(pair) = &sources.pair {
        dirs.extend(parent(&pair.cert));
        dirs.extend(parent(&pair.key));
    }
    if let Some(id) = &sources.identity {
        dirs.extend(
            [&id.cert, &id.key, &id.ca]
                .into_iter()
                .filter_map(|p| parent(p)),
        );
    }
    if let Some(dir) = &sources.dir {
        dirs.push(dir.clone());
        let live = dir.join("live");
        if live.is_dir() {
            dirs.push(live.clone());
            if let Ok(rd) = std::fs::read_dir(&live) {
                dirs.extend(
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_dir()),
                );
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}
