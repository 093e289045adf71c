//! When to read files again, for the certificates ([`super::reload`]) and the client CAs
//! ([`super::client_trust_reload`]) alike: SIGHUP, change notifications for the directories the
//! files live in (inotify, debounced), and a periodic tick that backs both up. Directories are
//! watched, not files, because certbot, Kubernetes and archive extraction replace files by
//! rename or by re-pointing a symlink. Each watcher has triggers of its own, so the certificate
//! and client-CA reloads never wait for each other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// After a change notification, wait this long for more (a renewal writes several files) before
/// reloading once.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// SIGHUP: reload and report, even if nothing changed.
    Hangup,
    /// A change notification in a watched directory (debounced).
    Changed,
    /// The periodic content check.
    Tick,
}

/// The three reasons to look at files again: SIGHUP, change notifications for `dirs`
/// (debounced) and a periodic tick, each watcher with its own, so the certificate and the
/// client-CA reloads never wait for each other.
pub(super) struct Triggers {
    hangup: Option<tokio::signal::unix::Signal>,
    notify: Notifier,
    tick: tokio::time::Interval,
}

impl Triggers {
    /// Starts listening; the first tick is one `every` from now (the initial load just happened).
    pub(super) async fn new(dirs: Vec<PathBuf>, every: Duration) -> Self {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await; // the first tick is immediate
        Self {
            hangup,
            notify: Notifier::new(&dirs),
            tick,
        }
    }

    /// The next reason to reload, or `None` once `shutdown` is cancelled.
    pub(super) async fn next(&mut self, shutdown: &CancellationToken) -> Option<Trigger> {
        tokio::select! {
            _ = shutdown.cancelled() => None,
            Some(()) = recv_hangup(&mut self.hangup) => Some(Trigger::Hangup),
            () = self.notify.changed() => {
                // Let the writer finish: a renewal touches several files.
                loop {
                    tokio::select! {
                        () = self.notify.changed() => continue,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                Some(Trigger::Changed)
            }
            _ = self.tick.tick() => Some(Trigger::Tick),
        }
    }

    /// (Re-)adds watches on `dirs` (see [`Notifier::rewatch`]).
    pub(super) fn rewatch(&mut self, dirs: &[PathBuf]) {
        self.notify.rewatch(dirs);
    }
}

async fn recv_hangup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Directory-change notifications (inotify). Falls back to nothing (the periodic check still
/// runs) when inotify is unavailable.
struct Notifier {
    stream: Option<inotify::EventStream<Vec<u8>>>,
}

impl Notifier {
    fn new(dirs: &[PathBuf]) -> Self {
        if dirs.is_empty() {
            return Self { stream: None };
        }
        let stream = inotify::Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; 4096]));
        let mut me = match stream {
            Ok(s) => Self { stream: Some(s) },
            Err(e) => {
                warn!(error = %e, "file-change notifications unavailable; relying on the periodic check");
                Self { stream: None }
            }
        };
        me.rewatch(dirs);
        me
    }

    /// (Re-)adds watches on `dirs`. Adding an existing watch is a no-op, so this picks up new
    /// directories (certbot's `live/<name>`) and directories replaced since the last call.
    fn rewatch(&mut self, dirs: &[PathBuf]) {
        let Some(stream) = &self.stream else { return };
        let mask = inotify::WatchMask::CREATE
            | inotify::WatchMask::CLOSE_WRITE
            | inotify::WatchMask::MOVED_TO
            | inotify::WatchMask::MOVED_FROM
            | inotify::WatchMask::DELETE
            | inotify::WatchMask::MODIFY
            | inotify::WatchMask::ATTRIB;
        let mut watches = stream.watches();
        for dir in dirs {
            if let Err(e) = watches.add(dir, mask) {
                warn!(dir = %dir.display(), error = %e, "cannot watch directory for changes");
            }
        }
    }

    async fn changed(&mut self) {
        use futures_util::StreamExt;
        match &mut self.stream {
            Some(stream) => match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "file-change notifications failed; relying on the periodic check");
                    self.stream = None;
                    std::future::pending::<()>().await;
                }
                None => {
                    self.stream = None;
                    std::future::pending::<()>().await;
                }
            },
            None => std::future::pending().await,
        }
    }
}

/// The directory a file's entry lives in (`.` for a bare file name): watched rather than the
/// file, because tools replace files by rename or by re-pointing a symlink.
pub(super) fn parent_dir(p: &Path) -> Option<PathBuf> {
    p.parent().map(|d| {
        if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d.to_path_buf()
        }
    })
}
