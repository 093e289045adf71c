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

use shared::dns::SanName;
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
    let mut loading = Loading {
        previous,
        failures: Vec::new(),
        changed: previous.is_none(),
    };
    let pair = sources
        .pair
        .as_ref()
        .and_then(|p| loading.pair(p, sources.pair_flags));
    let identity = sources
        .identity_pair()
        .and_then(|p| loading.pair(&p, IDENTITY_FLAGS));
    // Entries from the files named on the command line, as opposed to the directory's.
    let named_origins: Vec<String> = [sources.pair.clone(), sources.identity_pair()]
        .into_iter()
        .flatten()
        .map(|p| p.cert.display().to_string())
        .collect();
    let mut dir_entries = match &sources.dir {
        Some(dir) => loading.dir(dir, &named_origins),
        None => Vec::new(),
    };
    if previous.is_none() && !loading.failures.is_empty() {
        // At start every configured file must load: report the first problem, generate nothing.
        return Err(loading.failures.remove(0));
    }
    if let Some(dir) = &sources.dir {
        loading.keep_keyless(dir, &named_origins, &mut dir_entries);
    }
    let default = match pair.or_else(|| dir_entries.first().cloned()) {
        Some(d) => d,
        None => loading.self_signed(&sources.self_signed_names, self_signed_cache)?,
    };
    let set = CertSet::new(default, dir_entries);
    let set = match identity {
        Some(identity) => set.with_identity(identity),
        None => set,
    };
    if let Some(prev) = previous {
        // A pair that disappeared from the directory is a change too.
        if file_entries(&set) != file_entries(prev) {
            loading.changed = true;
        }
    }
    Ok(Built {
        set,
        failures: loading.failures,
        changed: loading.changed,
    })
}

/// One [`build`] under way: the set it replaces, the pairs that failed so far, and whether any
/// entry differs from the previous set's yet.
struct Loading<'a> {
    previous: Option<&'a CertSet>,
    failures: Vec<ConfigError>,
    changed: bool,
}

impl Loading<'_> {
    /// The entry of one pair: the previous one while its files are unchanged (compared by
    /// content), newly parsed when they changed, and the previous one again (the failure
    /// recorded) when they do not load.
    fn pair(&mut self, paths: &PairPaths, flags: Flags) -> Option<Arc<Entry>> {
        let old = self.previous.and_then(|p| {
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
                    self.changed = true;
                }
                Some(entry)
            }
            Err(e) => {
                self.failures.push(e);
                old.cloned()
            }
        }
    }

    /// The entries of the pairs in `--certs-dir`. A directory that cannot be read keeps every
    /// previous directory entry (those not from `named_origins`): it may be mid-swap.
    fn dir(&mut self, dir: &Path, named_origins: &[String]) -> Vec<Arc<Entry>> {
        let mut entries = Vec::new();
        match scan_dir(dir) {
            Ok(pairs) => {
                for p in &pairs {
                    if let Some(e) = self.pair(p, DIR_FLAGS) {
                        entries.push(e);
                    }
                }
            }
            Err(source) => {
                self.failures.push(ConfigError::ReadFile {
                    flag: "--certs-dir",
                    path: dir.to_path_buf(),
                    source: source.into(),
                });
                if let Some(prev) = self.previous {
                    entries.extend(
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
        entries
    }

    /// A flat certificate whose key file vanished is no longer listed by the scan (a lone
    /// `.crt` may be a CA bundle); while its certificate file is still there, treat it as a
    /// broken renewal: keep serving it (into `dir_entries`) and report the missing key.
    fn keep_keyless(
        &mut self,
        dir: &Path,
        named_origins: &[String],
        dir_entries: &mut Vec<Arc<Entry>>,
    ) {
        let Some(prev) = self.previous else {
            return;
        };
        for old in prev.entries() {
            let origin = Path::new(&old.origin);
            let listed = dir_entries.iter().any(|e| e.origin == old.origin)
                || named_origins.contains(&old.origin);
            if !listed && origin.parent() == Some(dir) && origin.is_file() {
                self.failures.push(ConfigError::BadPem {
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

    /// The default entry when no file gives one: the self-signed certificate for `names`,
    /// generated once and then kept in `cache`. If it cannot be generated, a reload keeps the
    /// previous default; at start there is nothing to serve.
    fn self_signed(
        &mut self,
        names: &[SanName],
        cache: &mut Option<Arc<Entry>>,
    ) -> Result<Arc<Entry>, ConfigError> {
        if let Some(s) = cache {
            return Ok(s.clone());
        }
        match self_signed(names) {
            Ok(s) => {
                info!(names = %shared::identity::List(names.to_vec()), sha256 = %s.fingerprint, "generated self-signed certificate");
                let s = Arc::new(s);
                *cache = Some(s.clone());
                self.changed = true;
                Ok(s)
            }
            Err(e) => match self.previous {
                Some(prev) => {
                    self.failures.push(e);
                    Ok(prev.default_entry().clone())
                }
                None => Err(e),
            },
        }
    }
}

/// How many of a set's entries come from files (all but the generated self-signed one).
fn file_entries(set: &CertSet) -> usize {
    set.entries()
        .iter()
        .filter(|e| e.name != "self-signed")
        .count()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory holding `a.crt` and `a.key`, a self-signed pair for `a.example`.
    fn pair_dir(tag: &str) -> (PathBuf, PairPaths) {
        let dir = std::env::temp_dir().join(format!("sidecar-reload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let paths = PairPaths {
            name: "a".into(),
            cert: dir.join("a.crt"),
            key: dir.join("a.key"),
        };
        write_pair(&paths);
        (dir, paths)
    }

    fn write_pair(paths: &PairPaths) {
        let made = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).expect("make");
        std::fs::write(&paths.cert, made.cert.pem()).expect("write cert");
        std::fs::write(&paths.key, made.signing_key.serialize_pem()).expect("write key");
    }

    fn loading(previous: Option<&CertSet>) -> Loading<'_> {
        Loading {
            previous,
            failures: Vec::new(),
            changed: false,
        }
    }

    #[test]
    fn an_unchanged_pair_is_reused_a_broken_one_keeps_the_previous_entry() {
        let (dir, paths) = pair_dir("pair");
        let first = loading(None).pair(&paths, DIR_FLAGS).expect("loads");
        let previous = CertSet::new(first.clone(), vec![first.clone()]);

        let mut again = loading(Some(&previous));
        let same = again.pair(&paths, DIR_FLAGS).expect("loads");
        assert!(
            Arc::ptr_eq(&same, &first),
            "files unchanged: the same entry"
        );
        assert!(!again.changed && again.failures.is_empty());

        std::fs::write(&paths.key, "not a key").expect("break the key");
        let mut broken = loading(Some(&previous));
        let kept = broken.pair(&paths, DIR_FLAGS).expect("the previous entry");
        assert!(Arc::ptr_eq(&kept, &first), "a broken renewal is not served");
        assert_eq!(broken.failures.len(), 1);
        assert!(!broken.changed);

        write_pair(&paths);
        let mut renewed = loading(Some(&previous));
        let new = renewed.pair(&paths, DIR_FLAGS).expect("loads");
        assert!(!Arc::ptr_eq(&new, &first));
        assert!(renewed.changed && renewed.failures.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_certificate_whose_key_vanished_is_kept_and_reported() {
        let (dir, paths) = pair_dir("keyless");
        let entries = loading(None).dir(&dir, &[]);
        assert_eq!(entries.len(), 1, "the flat pair a.crt/a.key");
        let previous = CertSet::new(entries[0].clone(), entries.clone());
        std::fs::remove_file(&paths.key).expect("remove the key");

        let mut reload = loading(Some(&previous));
        let mut now = reload.dir(&dir, &[]);
        assert!(now.is_empty(), "a lone .crt is not a pair");
        reload.keep_keyless(&dir, &[], &mut now);
        assert_eq!(now.len(), 1);
        assert!(Arc::ptr_eq(&now[0], &entries[0]));
        assert!(
            matches!(&reload.failures[..], [ConfigError::BadPem { path, .. }] if *path == paths.cert),
            "{:?}",
            reload.failures
        );

        let mut named = loading(Some(&previous));
        let mut none = Vec::new();
        let origin = paths.cert.display().to_string();
        named.keep_keyless(&dir, &[origin], &mut none);
        assert!(
            none.is_empty(),
            "a file named on the command line is not the directory's"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unreadable_directory_keeps_its_previous_entries() {
        let (dir, paths) = pair_dir("unreadable");
        let entries = loading(None).dir(&dir, &[]);
        let fallback = Arc::new(self_signed(&crate::tls::sans(&["b.example"])).expect("generate"));
        let previous = CertSet::new(fallback, entries.clone());
        let _ = std::fs::remove_dir_all(&dir);

        let mut reload = loading(Some(&previous));
        let kept = reload.dir(&dir, &[]);
        assert_eq!(
            kept.len(),
            1,
            "the directory's entries, not the self-signed one"
        );
        assert!(Arc::ptr_eq(&kept[0], &entries[0]));
        assert!(matches!(
            &reload.failures[..],
            [ConfigError::ReadFile { .. }]
        ));
        let origin = paths.cert.display().to_string();
        assert!(loading(Some(&previous)).dir(&dir, &[origin]).is_empty());
        assert_eq!(file_entries(&previous), 1);
    }

    #[test]
    fn the_self_signed_default_is_generated_once() {
        let names = crate::tls::sans(&["c.example"]);
        let mut cache = None;
        let mut first = loading(None);
        let made = first.self_signed(&names, &mut cache).expect("generate");
        assert!(first.changed);
        assert!(cache.as_ref().is_some_and(|c| Arc::ptr_eq(c, &made)));
        let mut again = loading(None);
        let reused = again.self_signed(&names, &mut cache).expect("cached");
        assert!(Arc::ptr_eq(&reused, &made) && !again.changed);
    }
}
