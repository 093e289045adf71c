//! `--exit-when-orphaned`: the sidecar ends itself when the container whose network namespace it
//! shares is gone, so the data plane cleans up after itself even while no spawner runs.
//!
//! The signal is read from inside the namespace, with no Docker socket: when a container is
//! stopped or removed, the engine deletes its network interfaces (the `eth0` of each network),
//! and the namespace lives on with only `lo` because the sidecar still holds it. So the watcher
//! reads the namespace's interfaces (`/proc/self/net/dev`, which always describes the reading
//! process's own namespace) every second; once it has seen an interface of the target's and then
//! sees nothing but `lo` twice in a row, it cancels the shutdown token, the sidecar drains like
//! on SIGTERM and exits 0. A namespace that never had such an interface (`--network none`, or
//! the sidecar run on a host without one) never triggers it.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Where the interfaces of the process's own network namespace are listed.
pub(crate) const NET_DEV: &str = "/proc/self/net/dev";

/// How often the interfaces are read: the target's removal is noticed within about two periods.
/// One small procfs read a second costs nothing measurable.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Readings with nothing but `lo` in a row before the target counts as gone: a single reading
/// could fall between a network disconnect and a connect; interfaces torn down with the target
/// never come back.
const CONFIRMATIONS: u32 = 2;

/// Bound on one read of [`NET_DEV`]: procfs answers at once, but no await goes unbounded.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices the kernel creates in every new network namespace when a tunnel module is loaded
/// (`net.core.fb_tunnels_only_for_init_net=0`, the default). They belong to no container and
/// outlive it, so they say nothing about the target.
const KERNEL_FALLBACK_DEVICES: &[&str] = &[
    "tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0",
];

/// The interface names in the text of `/proc/net/dev` (two header lines, then `name: counters`).
pub(crate) fn interfaces(net_dev: &str) -> Vec<&str> {
    net_dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && !name.contains('|'))
        .collect()
}

/// Whether an interface can be the target's: anything but loopback and the kernel's fallback
/// tunnel devices.
fn is_targets(name: &str) -> bool {
    name != "lo" && !KERNEL_FALLBACK_DEVICES.contains(&name)
}

/// What one reading says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No interface of a target seen yet: nothing to lose, nothing to watch for.
    Unattached,
    /// The target's interfaces are there (or were, and their absence is not confirmed yet).
    Attached,
    /// They were there and are gone: the target is gone.
    Orphaned,
}

/// The decision, fed one reading at a time. Pure: the tests drive it with lists of names.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    attached: bool,
    lo_only: u32,
}

impl Watch {
    pub(crate) fn observe<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> Verdict {
        if names.into_iter().any(is_targets) {
            self.attached = true;
            self.lo_only = 0;
            return Verdict::Attached;
        }
        if !self.attached {
            return Verdict::Unattached;
        }
        self.lo_only += 1;
        if self.lo_only >= CONFIRMATIONS {
            Verdict::Orphaned
        } else {
            Verdict::Attached
        }
    }
}

/// Reads `path` (a `/proc/net/dev` listing) every `every` until `shutdown` is cancelled, and
/// cancels it when the target is gone. Read errors are logged and the reading skipped: the
/// watcher never ends the sidecar for a reason it cannot see.
pub(crate) async fn watch(path: PathBuf, every: Duration, shutdown: CancellationToken) {
    let mut watch = Watch::default();
    let mut last = None;
    let mut read_failed = false;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let text = match tokio::time::timeout(READ_TIMEOUT, tokio::fs::read_to_string(&path)).await
        {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                if !read_failed {
                    warn!(path = %path.display(), error = %e, "cannot read the network interfaces; orphan check skipped");
                }
                read_failed = true;
                continue;
            }
            Err(_) => {
                warn!(path = %path.display(), "reading the network interfaces timed out; orphan check skipped");
                continue;
            }
        };
        read_failed = false;
        let names = interfaces(&text);
        let verdict = watch.observe(names.iter().copied());
        if last != Some(verdict) {
            match verdict {
                Verdict::Unattached => info!(
                    interfaces = %names.join(","),
                    "orphan check: no interface but lo yet; waiting for one to watch"
                ),
                Verdict::Attached => info!(
                    interfaces = %names.join(","),
                    "orphan check: watching the network namespace's interfaces"
                ),
                Verdict::Orphaned => {
                    warn!(
                        interfaces = %names.join(","),
                        "network namespace lost every interface but lo: the container it belongs to is gone; shutting down"
                    );
                    shutdown.cancel();
                    return;
                }
            }
        }
        last = Some(verdict);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NET_DEV_SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 9876543   12345    0    0    0     0          0         0   654321    4321    0    0    0     0       0          0
 tunl0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
";

    fn lo_only() -> &'static str {
        "Inter-|   Receive |  Transmit\n face |bytes |bytes\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    }

    #[test]
    fn parses_proc_net_dev() {
        assert_eq!(interfaces(NET_DEV_SAMPLE), ["lo", "eth0", "tunl0"]);
        assert_eq!(interfaces(lo_only()), ["lo"]);
        assert!(interfaces("").is_empty());
    }

    #[test]
    fn orphaned_after_the_targets_interfaces_go_and_stay_gone() {
        let mut w = Watch::default();
        assert_eq!(w.observe(["lo", "eth0"]), Verdict::Attached);
        assert_eq!(
            w.observe(["lo"]),
            Verdict::Attached,
            "one reading is not enough"
        );
        assert_eq!(w.observe(["lo"]), Verdict::Orphaned);
    }

    #[test]
    fn a_blip_resets_the_confirmation() {
        let mut w = Watch::default();
        w.observe(["lo", "eth0"]);
        assert_eq!(w.observe(["lo"]), Verdict::Attached);
        assert_eq!(w.observe(["lo", "eth1"]), Verdict::Attached);
        assert_eq!(w.observe(["lo"]), Verdict::Attached);
        assert_eq!(w.observe(["lo"]), Verdict::Orphaned);
    }

    #[test]
    fn a_namespace_that_never_had_an_interface_never_orphans() {
        let mut w = Watch::default();
        for _ in 0..10 {
            assert_eq!(w.observe(["lo"]), Verdict::Unattached);
            assert_eq!(w.observe([]), Verdict::Unattached);
        }
        // An interface that appears later (`docker network connect`) arms it.
        assert_eq!(w.observe(["lo", "eth0"]), Verdict::Attached);
        w.observe(["lo"]);
        assert_eq!(w.observe(["lo"]), Verdict::Orphaned);
    }

    #[test]
    fn kernel_fallback_tunnels_are_not_the_targets() {
        let mut w = Watch::default();
        let fallback = ["lo", "tunl0", "sit0", "ip6tnl0", "gre0", "ip6gre0"];
        assert_eq!(w.observe(fallback), Verdict::Unattached);
        assert_eq!(w.observe(["lo", "tunl0", "eth0"]), Verdict::Attached);
        w.observe(fallback);
        assert_eq!(w.observe(fallback), Verdict::Orphaned);
    }

    #[tokio::test]
    async fn watch_cancels_the_token_when_the_interfaces_go() {
        let dir = std::env::temp_dir().join(format!("orphan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net_dev");
        std::fs::write(&path, NET_DEV_SAMPLE).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            path.clone(),
            Duration::from_millis(10),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!shutdown.is_cancelled(), "attached: keeps serving");
        std::fs::write(&path, lo_only()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the watcher cancels the shutdown token");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher ends")
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn watch_ends_with_the_shutdown_and_never_fires_unattached() {
        let dir = std::env::temp_dir().join(format!("orphan-lo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net_dev");
        std::fs::write(&path, lo_only()).unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            path.clone(),
            Duration::from_millis(10),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !shutdown.is_cancelled(),
            "lo only from the start: never fires"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher ends with the shutdown")
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
