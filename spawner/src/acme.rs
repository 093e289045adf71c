//! ACME in the daemon: every running target with a `hostname` label gets a certificate for its
//! names, obtained and renewed here, stored in the certificate store in certbot's layout
//! ([`store`]), and delivered to its sidecar like a certbot-made one.
//!
//! Each reconcile turn hands [`Manager::sync`] what is wanted: the name sets of the running
//! ACME-managed targets and the sidecars serving each. Per name set, the pure
//! [`plan::decide`] says keep, wait, stop or order, from the store's certificate, the
//! history and the time; an order ([`client`], the protocol) runs in a task of its own (at most
//! [`MAX_ORDERS`] at once, one per name set, the whole of it under [`ORDER_DEADLINE`]) so a slow
//! CA never holds up a turn. Its challenge answers are uploaded into the serving sidecars' own
//! volumes before the CA is told to look, and emptied after. The history (orders of the last
//! hour, failures in a row, the last error) is written to `acme/state.json` in the store at every
//! change: a restarted spawner keeps its backoffs and hourly caps, and `spawner status` reads the
//! last error there.
//!
//! A name set is keyed by its first name (the certificate's directory, `live/<first>/`) and
//! the others sorted: targets listing the same names first-name-alike share one certificate and
//! one order (replicas).

pub(crate) mod client;
pub mod dns;
mod dns01;
mod plan;
pub(crate) mod store;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shared::dns::{CertName, DnsName};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::certs::delivery::{AnswerFile, Bundle};
use crate::config::{AcmeConfig, AcmePolicy};
use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::plan::labels::ChallengeKind;
use client::{AcmeError, Answers, Client};
use plan::{Decision, Failure, Held, History, NameSet};
use store::Store;

/// Orders in flight at once, over all name sets: the CA's limits are per account too, and each
/// order holds a few connections and a task.
const MAX_ORDERS: usize = 4;
/// Longest one order may take end to end (account, order, challenges, finalize, download);
/// each HTTP exchange has its own shorter timeout in [`crate::acme::client`].
const ORDER_DEADLINE: Duration = Duration::from_secs(300);
/// Longest the store's files may take to read in one turn (a hung network mount).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// An order's history is kept for the hourly cap; older orders are forgotten.
const HOUR: Duration = Duration::from_secs(3600);

/// What one target needs: a certificate for `names` (the first names its directory), proved
/// by `challenge`, and the running sidecars that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) names: Vec<CertName>,
    pub(crate) challenge: ChallengeKind,
    pub(crate) sidecars: Vec<String>,
}

/// The key of a name set: the first name, then the others sorted, comma separated, lowercase.
pub(crate) fn key(names: &[CertName]) -> String {
    let lower = |n: &CertName| n.to_string().to_ascii_lowercase();
    let mut rest: Vec<String> = names.iter().skip(1).map(lower).collect();
    rest.sort();
    rest.dedup();
    let first = names.first().map(lower).unwrap_or_default();
    rest.retain(|n| *n != first);
    std::iter::once(first)
        .chain(rest)
        .collect::<Vec<_>>()
        .join(",")
}

/// What is kept per name set, in memory and in `acme/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Unix seconds of the orders of the last hour.
    pub(crate) orders: Vec<u64>,
    /// Failed orders in a row since the last success.
    pub(crate) failures: u32,
    /// When the last failure happened, and whether it was permanent.
    pub(crate) last_failure: Option<(u64, bool)>,
    /// The last error, as logged.
    pub(crate) last_error: Option<String>,
    /// The step of the last error (`ca`, `dns update`...; see [`client::AcmeError::step`]).
    pub(crate) last_step: Option<String>,
    /// The ACME directory the store's certificate was obtained from. A certificate from another
    /// directory (staging, before a switch to production) is replaced; one ACME did not make
    /// (certbot's) has none and is kept while valid.
    pub(crate) directory: Option<String>,
}

/// How long a permanent refusal is remembered for a name set no target wants any more: one
/// that comes back within it is not ordered again in a loop; the file stays bounded by the
/// names of the last week, not of all time.
const FORGET_REFUSED: Duration = Duration::from_secs(7 * 86_400);

impl Entry {
    /// Whether the entry of a name set no target wants can still change a decision: an order
    /// within the hour (the cap) or a recent permanent refusal. Otherwise it is dropped.
    pub(crate) fn still_matters(&self, now: SystemTime) -> bool {
        let now = unix(now);
        let recent_order = self
            .orders
            .iter()
            .any(|t| now.saturating_sub(*t) < HOUR.as_secs());
        let refused = self.last_failure.is_some_and(|(t, permanent)| {
            permanent && now.saturating_sub(t) < FORGET_REFUSED.as_secs()
        });
        recent_order || refused
    }

    fn history(&self, in_flight: bool) -> History {
        History {
            orders: self.orders.iter().map(|s| at(*s)).collect(),
            failures: self.failures,
            last_failure: self.last_failure.map(|(t, permanent)| {
                let kind = if permanent {
                    Failure::Permanent
                } else {
                    Failure::Transient
                };
                (at(t), kind)
            }),
            in_flight,
        }
    }
}

/// The state file: `{"<key>": {"orders": [..], "failures": n, "last_failure": t|null,
/// "permanent": bool, "last_error": "..."|null}}`.
pub(crate) fn state_to_json(state: &HashMap<String, Entry>) -> serde_json::Value {
    use serde_json::json;
    let mut keys: Vec<&String> = state.keys().collect();
    keys.sort();
    let map = keys
        .into_iter()
        .map(|k| {
            let e = &state[k];
            let v = json!({
                "orders": e.orders,
                "failures": e.failures,
                "last_failure": e.last_failure.map(|(t, _)| t),
                "permanent": e.last_failure.is_some_and(|(_, p)| p),
                "last_error": e.last_error,
                "last_step": e.last_step,
                "directory": e.directory,
            });
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// Reads [`state_to_json`]'s output back; entries that do not parse are left out.
pub(crate) fn state_from_json(bytes: &[u8]) -> Result<HashMap<String, Entry>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let map = value.as_object().ok_or("not a JSON object")?;
    let mut out = HashMap::new();
    for (k, v) in map {
        let orders = v["orders"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let failures = v["failures"].as_u64().unwrap_or(0).min(u64::from(u32::MAX)) as u32;
        let last_failure = v["last_failure"]
            .as_u64()
            .map(|t| (t, v["permanent"].as_bool().unwrap_or(false)));
        let last_error = v["last_error"].as_str().map(String::from);
        let last_step = v["last_step"].as_str().map(String::from);
        let directory = v["directory"].as_str().map(String::from);
        out.insert(
            k.clone(),
            Entry {
                orders,
                failures,
                last_failure,
                last_error,
                last_step,
                directory,
            },
        );
    }
    Ok(out)
}

/// Reads the state file of `store` (for `spawner status`); empty when there is none.
pub(crate) fn read_state(store: &Store) -> Result<HashMap<String, Entry>, String> {
    match store.read_state() {
        Ok(None) => Ok(HashMap::new()),
        Ok(Some(bytes)) => {
            state_from_json(&bytes).map_err(|e| format!("{}: {e}", store.state_path().display()))
        }
        Err(e) => Err(format!("{}: {e}", store.state_path().display())),
    }
}

/// How a name set stands, for `spawner status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// The store has a certificate for exactly these names that has not expired.
    Valid,
    /// Nothing yet, and no failure: an order is coming or under way.
    Pending,
    /// The last order failed; retried with backoff.
    Failing,
    /// The CA refused for good: no order until the names change or the entry is cleared.
    Stopped,
}

impl Standing {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Standing::Valid => "valid",
            Standing::Pending => "pending",
            Standing::Failing => "failing",
            Standing::Stopped => "stopped",
        }
    }
}

/// The standing of a name set from what the store holds and its entry, ACME being at
/// `directory`.
pub(crate) fn standing(
    now: SystemTime,
    wanted: &NameSet,
    held: Option<&Held>,
    entry: Option<&Entry>,
    directory: &str,
) -> Standing {
    let elsewhere = entry
        .and_then(|e| e.directory.as_deref())
        .is_some_and(|d| d != directory);
    if !elsewhere && held.is_some_and(|h| &h.names == wanted && now < h.not_after) {
        return Standing::Valid;
    }
    match entry.and_then(|e| e.last_failure) {
        Some((_, true)) => Standing::Stopped,
        Some((_, false)) => Standing::Failing,
        None => Standing::Pending,
    }
}

/// What the CA said about a held certificate's renewal (ARI, RFC 9773).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ari {
    /// The certificate it is about (its validity): a new certificate is asked about afresh.
    pub(crate) cert: (SystemTime, SystemTime),
    /// The start of the suggested renewal window; `None` until the CA said.
    pub(crate) start: Option<SystemTime>,
    /// When to ask again.
    pub(crate) ask_at: SystemTime,
}

/// Asking again: the CA's hint, kept between these, so a hint of zero is no loop and one of a
/// month does not miss a revocation-driven window for long.
const ARI_MIN: Duration = Duration::from_secs(600);
const ARI_MAX: Duration = Duration::from_secs(24 * 3600);
/// Asking again after a failed request.
const ARI_RETRY: Duration = Duration::from_secs(3600);

/// Whether to ask the CA about `held` now: when nothing is known of this certificate yet or
/// the time to ask again has come.
pub(crate) fn ari_due(now: SystemTime, held: &Held, known: Option<&Ari>) -> bool {
    match known {
        None => true,
        Some(a) => a.cert != (held.not_before, held.not_after) || now >= a.ask_at,
    }
}

/// `held` with the renewal window the CA suggested for it, if it is about this certificate.
pub(crate) fn with_ari(mut held: Held, known: Option<&Ari>) -> Held {
    if let Some(a) = known.filter(|a| a.cert == (held.not_before, held.not_after)) {
        held.suggested_renewal = a.start;
    }
    held
}

/// The names as a set, as a certificate lists them.
pub(crate) fn name_set(names: &[CertName]) -> NameSet {
    names
        .iter()
        .map(|n| n.to_string().to_ascii_lowercase())
        .collect()
}

struct Inner {
    entries: HashMap<String, Entry>,
    /// Name sets with an order in flight.
    in_flight: BTreeSet<String>,
    /// Per name set, the sidecars serving it (from the last turn).
    sidecars: HashMap<String, Vec<String>>,
    /// A certificate landed since the daemon last asked: deliver.
    issued: bool,
    /// The earliest time a decision asked to be looked at again.
    next: Option<Instant>,
    /// The store's certificate per name set as last read: read again at a resync (certbot may
    /// renew in place) and after an order for it, not on every turn.
    held: HashMap<String, Option<Held>>,
    /// Per name set, the last error logged, so a failing order logs its cause once.
    logged: HashMap<String, String>,
    /// Per name set, the CA's renewal information on its certificate, and the name sets with a
    /// request for it under way.
    ari: HashMap<String, Ari>,
    ari_in_flight: BTreeSet<String>,
    /// The CA offers no renewal information: not asked again.
    ari_unsupported: bool,
    /// Bumped at every change of `entries`; the state file is written only with a newer one.
    version: u64,
}

/// What a turn starts once the lock is let go.
#[derive(Debug, Default)]
struct Turn {
    /// Name sets to ask the CA about (ARI), with their certificate's validity.
    ask: Vec<(String, Want, (SystemTime, SystemTime))>,
    /// Name sets to order, with the reason.
    due: Vec<(String, Want, &'static str)>,
}

impl Inner {
    fn new(entries: HashMap<String, Entry>) -> Inner {
        Inner {
            entries,
            in_flight: BTreeSet::new(),
            sidecars: HashMap::new(),
            issued: false,
            next: None,
            held: HashMap::new(),
            logged: HashMap::new(),
            ari: HashMap::new(),
            ari_in_flight: BTreeSet::new(),
            ari_unsupported: false,
            version: 0,
        }
    }

    /// Drops what is kept for name sets no longer in `sets` (an entry only once it no longer
    /// matters, see [`Entry::still_matters`]) and records the sidecars serving each.
    fn forget_unwanted(&mut self, sets: &HashMap<String, Want>, now: SystemTime) {
        self.ari.retain(|k, _| sets.contains_key(k));
        self.logged.retain(|k, _| sets.contains_key(k));
        let before = self.entries.len();
        let in_flight = &self.in_flight;
        self.entries
            .retain(|k, e| sets.contains_key(k) || in_flight.contains(k) || e.still_matters(now));
        if self.entries.len() != before {
            self.version += 1;
        }
        self.sidecars = sets
            .iter()
            .map(|(k, w)| (k.clone(), w.sidecars.clone()))
            .collect();
    }

    /// Decides for every name set of `sets` ([`plan::decide`]): records the orders it starts
    /// (in flight, in the hourly history) and the earliest time to look again, and returns what
    /// to start. ACME is at `directory`: a certificate from another one is not kept.
    fn decide(
        &mut self,
        sets: &HashMap<String, Want>,
        now: SystemTime,
        directory: &str,
        policy: &AcmePolicy,
    ) -> Turn {
        let mut turn = Turn::default();
        self.next = None;
        for (k, want) in sets {
            let entry = self.entries.get(k).cloned().unwrap_or_default();
            let history = entry.history(self.in_flight.contains(k));
            let wanted = name_set(&want.names);
            let from_elsewhere = entry.directory.as_ref().is_some_and(|d| d != directory);
            let held = self
                .held
                .get(k)
                .cloned()
                .flatten()
                .filter(|h| h.names == wanted && now < h.not_after && !from_elsewhere);
            if let Some(h) = &held {
                if !self.ari_unsupported
                    && !self.ari_in_flight.contains(k)
                    && ari_due(now, h, self.ari.get(k))
                {
                    self.ari_in_flight.insert(k.clone());
                    turn.ask
                        .push((k.clone(), want.clone(), (h.not_before, h.not_after)));
                }
            }
            let held = held.map(|h| with_ari(h, self.ari.get(k)));
            let next = match plan::decide(now, &wanted, held.as_ref(), &history, policy) {
                Decision::Keep { renew_at } => Some(renew_at),
                Decision::Wait { until, .. } => until,
                Decision::Stop => None,
                Decision::Order { reason } => {
                    self.start_order(k, now);
                    turn.due.push((k.clone(), want.clone(), reason));
                    None
                }
            };
            if let Some(t) = next {
                let at = Instant::now() + t.duration_since(now).unwrap_or_default();
                self.next = Some(self.next.map_or(at, |n| n.min(at)));
            }
        }
        turn
    }

    /// Records an order for `k` started at `now`: in flight, and in the last hour's orders.
    fn start_order(&mut self, k: &str, now: SystemTime) {
        self.in_flight.insert(k.to_string());
        let e = self.entries.entry(k.to_string()).or_default();
        e.orders.push(unix(now));
        e.orders
            .retain(|t| unix(now).saturating_sub(*t) < HOUR.as_secs());
        self.version += 1;
    }
}

/// The wants of one turn by name set ([`key`]): targets sharing a name set (replicas) share
/// its order, and its challenge answers go to all of their sidecars.
fn by_name_set(wants: Vec<Want>) -> HashMap<String, Want> {
    let mut sets: HashMap<String, Want> = HashMap::new();
    for w in wants {
        let k = key(&w.names);
        match sets.get_mut(&k) {
            Some(set) => set.sidecars.extend(w.sidecars),
            None => {
                sets.insert(k, w);
            }
        }
    }
    sets
}

/// What to tell an operator running ACME on a swarm of more than one node, where spawners do not
/// coordinate their orders yet: each node orders for its own replicas. `None` outside a swarm
/// and on a single-node one. A worker cannot count the nodes: a worker is in a swarm of several.
pub(crate) fn swarm_warning(view: Option<crate::engine::SwarmView>) -> Option<String> {
    let view = view?;
    if view.manager && view.nodes <= 1 {
        return None;
    }
    let size = if view.manager {
        format!("a swarm of {} nodes", view.nodes)
    } else {
        "a swarm worker node".to_string()
    };
    Some(format!(
        "ACME on {size} is not coordinated across nodes: every node's spawner orders the same names \
         for its own replicas (one order per node), and an http-01 or tls-alpn-01 check sent to \
         another node fails; give the certificate to every node as a Swarm secret instead"
    ))
}

/// ACME for the daemon. Cheap to share: the orders' tasks hold it.
pub(crate) struct Manager {
    cfg: AcmeConfig,
    store: Store,
    engine: Arc<Engine>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    roots: rustls::RootCertStore,
    /// External Account Binding: the key ID and the HMAC key, read at start.
    eab: Option<(String, Vec<u8>)>,
    /// dns-01's provider and the journal of its records, when a provider is configured.
    dns: Option<(Arc<dns::Dns>, Arc<dns01::Journal>)>,
    /// Longest one order may take: [`ORDER_DEADLINE`], plus dns-01's waits.
    order_deadline: Duration,
    /// The account, opened by the first order (a tokio lock: two first orders open one).
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Whether the engine's swarm membership was read (once, at the first turn it answers).
    swarm_checked: std::sync::atomic::AtomicBool,
    orders: Arc<Semaphore>,
    inner: Mutex<Inner>,
    /// The newest state version written, so an older snapshot never overwrites a newer one.
    written: tokio::sync::Mutex<u64>,
}

impl Manager {
    /// Reads `--acme-ca-cert` (and the system roots) and the state file. An unreadable CA file
    /// is an error; an unreadable state file is logged and started afresh (the hourly cap then
    /// starts over, the CA's own limits still hold).
    pub(crate) async fn new(
        cfg: AcmeConfig,
        engine: Arc<Engine>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Manager>, Error> {
        let roots = roots(cfg.ca_cert.as_deref())?;
        let eab = cfg
            .eab
            .as_ref()
            .map(|(kid, file)| eab_key(file).map(|key| (kid.clone(), key)))
            .transpose()?;
        let store = Store::new(cfg.store.clone());
        let dns = match &cfg.dns {
            Some(d) => {
                let settings = Arc::new(dns_settings(d).await?);
                let journal = Arc::new(dns01::Journal::open(store.clone()).await);
                Some((settings, journal))
            }
            None => None,
        };
        let order_deadline = match &cfg.dns {
            Some(d) => {
                let hook = match &d.provider {
                    crate::config::DnsProvider::Hook { timeout, .. } => *timeout * 4,
                    crate::config::DnsProvider::Rfc2136 { .. } => Duration::ZERO,
                };
                ORDER_DEADLINE + d.propagation_timeout + hook
            }
            None => ORDER_DEADLINE,
        };
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || read_state(&store))
        };
        let entries = match tokio::time::timeout(STORE_TIMEOUT, read).await {
            Ok(Ok(Ok(entries))) => entries,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot read the ACME state; starting afresh");
                HashMap::new()
            }
            _ => {
                tracing::warn!(path = %store.state_path().display(), "reading the ACME state timed out; starting afresh");
                HashMap::new()
            }
        };
        tracing::info!(directory = %cfg.directory, store = %cfg.store.display(), "acme on");
        Ok(Arc::new(Manager {
            cfg,
            store,
            engine,
            wake,
            metrics,
            roots,
            eab,
            dns,
            order_deadline,
            client: tokio::sync::Mutex::new(None),
            swarm_checked: std::sync::atomic::AtomicBool::new(false),
            orders: Arc::new(Semaphore::new(MAX_ORDERS)),
            inner: Mutex::new(Inner::new(entries)),
            written: tokio::sync::Mutex::new(0),
        }))
    }

    /// Whether a certificate landed since the last call (then the daemon delivers).
    pub(crate) fn take_issued(&self) -> bool {
        std::mem::take(&mut lock(&self.inner).issued)
    }

    /// When a name set must be looked at again (a renewal due, a backoff over).
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        lock(&self.inner).next
    }

    /// One turn: decides for every wanted name set and starts the orders that are due.
    /// `reread`: read every name set's certificate from the store again.
    pub(crate) async fn sync(self: &Arc<Self>, wants: Vec<Want>, reread: bool) {
        if !self
            .swarm_checked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let me = self.clone();
            tokio::spawn(async move {
                match me.engine.swarm().await {
                    Ok(view) => {
                        if let Some(warning) = swarm_warning(view) {
                            tracing::warn!(
                                docs = "docs/operations.md#more-than-one-node",
                                "{warning}"
                            );
                        }
                    }
                    // Asked again at the next turn.
                    Err(_) => me
                        .swarm_checked
                        .store(false, std::sync::atomic::Ordering::Relaxed),
                }
            });
        }
        let sets = by_name_set(wants);
        if !self.read_held(&sets, reread).await {
            return;
        }
        let now = SystemTime::now();
        let turn = {
            let mut inner = lock(&self.inner);
            inner.forget_unwanted(&sets, now);
            inner.decide(&sets, now, &self.cfg.directory, &self.cfg.policy)
        };
        for (k, want, cert) in turn.ask {
            let me = self.clone();
            tokio::spawn(async move { me.ask_renewal(k, want, cert).await });
        }
        self.persist().await;
        for (k, want, reason) in turn.due {
            let names = key(&want.names);
            tracing::info!(names = %names, challenge = %want.challenge, reason, "ordering certificate");
            let me = self.clone();
            tokio::spawn(async move { me.order(k, want).await });
        }
    }

    /// Reads the store's certificate of every name set of `sets` not read yet (of all of them
    /// with `reread`); forgets those of the others. `false` when the store did not answer in
    /// time: nothing can be decided this turn.
    async fn read_held(&self, sets: &HashMap<String, Want>, reread: bool) -> bool {
        let unread: HashMap<String, Want> = {
            let mut inner = lock(&self.inner);
            if reread {
                inner.held.clear();
            }
            inner.held.retain(|k, _| sets.contains_key(k));
            sets.iter()
                .filter(|(k, _)| !inner.held.contains_key(*k))
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect()
        };
        if !unread.is_empty() {
            let Some(read) = self.held(&unread).await else {
                return false;
            };
            lock(&self.inner).held.extend(read);
        }
        true
    }

    /// The store's certificate of each name set, read off the async threads under a timeout;
    /// `None` when the store did not answer in time.
    async fn held(&self, sets: &HashMap<String, Want>) -> Option<HashMap<String, Option<Held>>> {
        let store = self.store.clone();
        let firsts: Vec<(String, DnsName)> = sets
            .iter()
            .filter_map(|(k, w)| Some((k.clone(), w.names.first()?.base().clone())))
            .collect();
        let read = tokio::task::spawn_blocking(move || {
            firsts
                .into_iter()
                .map(|(k, first)| (k, store.held(&first)))
                .collect::<HashMap<_, _>>()
        });
        match tokio::time::timeout(STORE_TIMEOUT, read).await {
            Ok(Ok(held)) => Some(held),
            // Unknown is not "none": ordering on a hung mount would order every certificate
            // again. Nothing is decided this turn.
            _ => {
                tracing::warn!(store = %self.store.root().display(), "reading the certificate store timed out");
                None
            }
        }
    }

    /// Runs one order to its end and records the outcome.
    async fn order(self: Arc<Self>, k: String, want: Want) {
        let outcome = match self.orders.clone().acquire_owned().await {
            Ok(_permit) => {
                let run = self.obtain(&k, &want);
                let deadline = self.order_deadline;
                match tokio::time::timeout(deadline, run).await {
                    Ok(r) => r,
                    Err(_) => Err(AcmeError {
                        cause: None,
                        step: None,
                        permanent: false,
                        message: format!("the order for {k} took longer than {deadline:?}"),
                    }),
                }
            }
            Err(_) => return,
        };
        let now = unix(SystemTime::now());
        {
            let mut inner = lock(&self.inner);
            inner.in_flight.remove(&k);
            inner.held.remove(&k);
            inner.version += 1;
            let e = inner.entries.entry(k.clone()).or_default();
            match &outcome {
                Ok(()) => {
                    e.failures = 0;
                    e.last_failure = None;
                    e.last_error = None;
                    e.last_step = None;
                    e.directory = Some(self.cfg.directory.clone());
                    inner.issued = true;
                    inner.logged.remove(&k);
                }
                Err(err) => {
                    e.failures = e.failures.saturating_add(1);
                    e.last_failure = Some((now, err.permanent));
                    e.last_error = Some(err.message.clone());
                    e.last_step = err.step.map(String::from);
                    let failures = e.failures;
                    let delay = if err.permanent {
                        None
                    } else {
                        Some(self.cfg.policy.retry.delay(failures))
                    };
                    let new = inner.logged.get(&k).map(String::as_str) != Some(err.cause());
                    if new {
                        tracing::warn!(names = %k, error = %err.message, permanent = err.permanent, retry_in = ?delay, "certificate order failed");
                        inner.logged.insert(k.clone(), err.cause().to_string());
                    } else {
                        tracing::debug!(names = %k, failures, retry_in = ?delay, "certificate order failed again, same cause");
                    }
                }
            }
        }
        self.metrics
            .acme_order(outcome.as_ref().map(|_| ()).map_err(|e| e.permanent));
        if outcome.is_ok() {
            tracing::info!(names = %k, "certificate issued");
        }
        self.persist().await;
        self.wake.notify_one();
    }

    /// Asks the CA when to renew the certificate of a name set (ARI) and records the answer;
    /// wakes the daemon when the window moved.
    async fn ask_renewal(self: Arc<Self>, k: String, want: Want, cert: (SystemTime, SystemTime)) {
        let asked = tokio::time::timeout(ORDER_DEADLINE, async {
            let client = self.client().await?;
            let first = want.names.first().map(|n| n.base().clone());
            let store = self.store.clone();
            let chain = tokio::task::spawn_blocking(move || {
                let first = first?;
                store.read_chain(&first).ok()
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| AcmeError {
                cause: None,
                step: None,
                permanent: false,
                message: format!("renewal information for {k}: cannot read the certificate"),
            })?;
            client.renewal_window(&chain).await
        })
        .await;
        let now = SystemTime::now();
        let mut inner = lock(&self.inner);
        inner.ari_in_flight.remove(&k);
        let before = inner.ari.get(&k).and_then(|a| a.start);
        let (start, ask_at) = match asked {
            Ok(Ok(Some((start, hint)))) => (Some(start), now + hint.clamp(ARI_MIN, ARI_MAX)),
            Ok(Ok(None)) => {
                inner.ari_unsupported = true;
                tracing::debug!(
                    "the CA offers no renewal information; renewing at two thirds of the lifetime"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(names = %k, error = %e, "cannot get renewal information");
                (before, now + ARI_RETRY)
            }
            Err(_) => (before, now + ARI_RETRY),
        };
        inner.ari.insert(
            k.clone(),
            Ari {
                cert,
                start,
                ask_at,
            },
        );
        drop(inner);
        if start != before {
            let at = humantime::format_rfc3339_seconds(start.unwrap_or(UNIX_EPOCH));
            tracing::info!(names = %k, window_start = %at, "the CA suggested a renewal window");
            self.wake.notify_one();
        }
    }

    /// The account (opened once), the order, and the pair written to the store.
    async fn obtain(&self, k: &str, want: &Want) -> Result<(), AcmeError> {
        let client = self.client().await?;
        let answers = ToSidecars {
            manager: self,
            key: k.to_string(),
        };
        let records = match (&self.dns, want.challenge) {
            (Some((dns, journal)), ChallengeKind::Dns01) => {
                journal.clean_left_over(dns).await;
                Some(dns01::OrderRecords::new(dns.clone(), journal.clone(), k))
            }
            _ => None,
        };
        let got = client
            .obtain_with(
                &want.names,
                want.challenge,
                &answers,
                records.as_ref().map(|r| r as &dyn client::Dns01),
            )
            .await?;
        let store = self.store.clone();
        let first = want
            .names
            .first()
            .map(|n| n.base().clone())
            .ok_or_else(|| AcmeError {
                cause: None,
                step: None,
                permanent: true,
                message: "no names".to_string(),
            })?;
        let write = tokio::task::spawn_blocking(move || {
            store.write_pair(&first, got.chain_pem.as_bytes(), got.key_pem.as_bytes())
        });
        match tokio::time::timeout(STORE_TIMEOUT, write).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(AcmeError {
                cause: None,
                step: None,
                permanent: false,
                message: format!("storing the certificate for {k}: {e}"),
            }),
            _ => Err(AcmeError {
                cause: None,
                step: None,
                permanent: false,
                message: format!("storing the certificate for {k} timed out"),
            }),
        }
    }

    async fn client(&self) -> Result<Arc<Client>, AcmeError> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let eab = self
            .eab
            .as_ref()
            .map(|(kid, key)| (kid.as_str(), key.as_slice()));
        let opened = Client::open_bound(
            &self.cfg.directory,
            self.roots.clone(),
            &self.cfg.email,
            self.store.clone(),
            eab,
        )
        .await?;
        tracing::info!(account = %opened.account_id(), "acme account ready");
        let opened = Arc::new(opened);
        *client = Some(opened.clone());
        Ok(opened)
    }

    /// Writes the state file when it changed since it was last written.
    async fn persist(&self) {
        let (version, json) = {
            let inner = lock(&self.inner);
            (inner.version, state_to_json(&inner.entries))
        };
        let mut written = self.written.lock().await;
        if *written >= version {
            return;
        }
        let store = self.store.clone();
        let bytes = match serde_json::to_vec_pretty(&json) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise the ACME state");
                return;
            }
        };
        let write = tokio::task::spawn_blocking(move || store.write_state(&bytes));
        match tokio::time::timeout(STORE_TIMEOUT, write).await {
            Ok(Ok(Ok(()))) => *written = version,
            Ok(Ok(Err(e))) => {
                tracing::warn!(path = %self.store.state_path().display(), error = %e, "cannot write the ACME state")
            }
            _ => {
                tracing::warn!(path = %self.store.state_path().display(), "writing the ACME state timed out")
            }
        }
    }
}

/// Challenge answers uploaded into the sidecars serving a name set.
struct ToSidecars<'a> {
    manager: &'a Manager,
    key: String,
}

impl Answers for ToSidecars<'_> {
    fn publish(&self, files: Vec<AnswerFile>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let sidecars = lock(&self.manager.inner)
                .sidecars
                .get(&self.key)
                .cloned()
                .unwrap_or_default();
            let archive = match Bundle::answers(&files).tar() {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(names = %self.key, error = %e, "cannot build the challenge archive");
                    return;
                }
            };
            for id in sidecars {
                let upload =
                    self.manager
                        .engine
                        .upload(&id, shared::schema::CERTS_MOUNT, archive.clone());
                if let Err(e) = upload.await {
                    // The CA's check then fails, and that failure is reported.
                    tracing::debug!(names = %self.key, sidecar = %&id[..id.len().min(12)], error = %format!("{e:#}"), "cannot deliver a challenge answer");
                }
            }
        })
    }
}

/// Largest `--acme-ca-cert` read: a bundle of every public root is a few hundred KiB; anything
/// larger is not a CA file.
const MAX_CA_CERT_BYTES: u64 = 1 << 20;

/// The roots trusted for the directory's HTTPS: the system's, or the Mozilla roots built in
/// where the system has none (a `FROM scratch` image), plus `--acme-ca-cert`.
fn roots(ca_cert: Option<&std::path::Path>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_cert {
        let fail = |reason: String| Error::AcmeCaCert {
            path: path.to_path_buf(),
            reason,
        };
        let pem = shared::fs::read(path, MAX_CA_CERT_BYTES).map_err(|e| fail(e.to_string()))?;
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".to_string()));
        }
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(fail(format!(
                "none of its {ignored} certificates is usable"
            )));
        }
    }
    Ok(roots)
}

/// How long resolving a `--acme-dns-*` server's name may take at start.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The dns-01 settings as the DNS code takes them: the TSIG key read, the servers' names
/// resolved, the hook checked to be an executable file.
async fn dns_settings(cfg: &crate::config::DnsConfig) -> Result<dns::Dns, Error> {
    use crate::config::DnsProvider;
    let provider = match &cfg.provider {
        DnsProvider::Rfc2136 { server, tsig_key } => {
            let key = dns::TsigKey::read(tsig_key).map_err(|reason| Error::AcmeDnsTsigKey {
                path: tsig_key.clone(),
                reason,
            })?;
            let server = resolve("acme-dns-rfc2136-server", server).await?;
            dns::Provider::Rfc2136 { server, key }
        }
        DnsProvider::Hook { path, timeout } => {
            executable(path)?;
            dns::Provider::Hook {
                path: path.clone(),
                timeout: *timeout,
            }
        }
    };
    let resolver = match &cfg.resolver {
        Some(r) => Some(resolve("acme-dns-resolver", r).await?),
        None => None,
    };
    Ok(dns::Dns {
        provider,
        resolver,
        propagation_timeout: cfg.propagation_timeout,
    })
}

/// The address of `addr`: its IP, or the first address its name resolves to.
async fn resolve(
    flag: &'static str,
    addr: &shared::addr::BackendAddr,
) -> Result<std::net::SocketAddr, Error> {
    let fail = |reason: String| Error::AcmeDns {
        flag,
        value: addr.to_string(),
        reason,
    };
    let port = addr.port.get();
    match &addr.host {
        shared::addr::Host::Ip(ip) => Ok(std::net::SocketAddr::new(*ip, port)),
        shared::addr::Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(mut addrs)) => addrs
                    .next()
                    .ok_or_else(|| fail("the name has no address".to_string())),
                Ok(Err(e)) => Err(fail(format!("cannot resolve the name: {e}"))),
                Err(_) => Err(fail(format!(
                    "resolving the name took longer than {RESOLVE_TIMEOUT:?}"
                ))),
            }
        }
    }
}

/// `path` is a regular file someone may execute.
fn executable(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |reason: String| Error::AcmeDns {
        flag: "acme-dns-hook",
        value: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".to_string()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(fail("not executable (chmod +x)".to_string()));
    }
    Ok(())
}

/// An External Account Binding key file is a line of base64; anything this large is not one.
const MAX_EAB_KEY_BYTES: u64 = 4096;

/// The HMAC key in `--acme-eab-hmac-key-file`: base64url as CAs print it (padded or not; the
/// standard alphabet is taken too), surrounding whitespace ignored.
fn eab_key(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    let fail = |reason: String| Error::AcmeEabKey {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = shared::fs::read(path, MAX_EAB_KEY_BYTES).map_err(|e| fail(e.to_string()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| fail("not text: expected the base64url key the CA gave".into()))?;
    decode_eab_key(text).map_err(fail)
}

/// [`eab_key`]'s decoding, pure.
fn decode_eab_key(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let text = text.trim().trim_end_matches('=');
    if text.is_empty() {
        return Err("empty: expected the base64url key the CA gave".into());
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let normal = text.replace('+', "-").replace('/', "_");
    engine
        .decode(normal)
        .map_err(|e| format!("not base64url: {e}"))
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// Whole unix seconds, rounded up: a failure or an order recorded a little late makes a
/// backoff or the hourly cap end a little late, never early.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn acme_on_a_swarm_of_several_nodes_is_warned_about() {
        use crate::engine::SwarmView;
        assert_eq!(super::swarm_warning(None), None, "no swarm");
        let one = SwarmView {
            manager: true,
            nodes: 1,
        };
        assert_eq!(super::swarm_warning(Some(one)), None, "a single-node swarm");
        let three = super::swarm_warning(Some(SwarmView {
            manager: true,
            nodes: 3,
        }))
        .expect("a warning on a manager of three nodes");
        assert!(three.contains("a swarm of 3 nodes"), "{three}");
        let worker = super::swarm_warning(Some(SwarmView {
            manager: false,
            nodes: 0,
        }))
        .expect("a warning on a worker");
        assert!(worker.contains("worker"), "{worker}");
    }

    use super::*;

    fn names(list: &[&str]) -> Vec<CertName> {
        list.iter().map(|n| n.parse().expect("name")).collect()
    }

    #[test]
    fn eab_keys_are_base64url_as_cas_print_them() {
        assert_eq!(
            decode_eab_key("AAEC-_8").expect("url-safe"),
            [0, 1, 2, 251, 255]
        );
        assert_eq!(
            decode_eab_key(" AAEC+/8=\n").expect("standard, padded"),
            [0, 1, 2, 251, 255]
        );
        assert!(decode_eab_key("").expect_err("empty").contains("empty"));
        assert!(decode_eab_key("not base64!")
            .expect_err("bad")
            .contains("not base64url"));
    }

    #[test]
    fn a_name_set_is_keyed_by_its_first_name_then_the_rest_sorted() {
        assert_eq!(key(&names(&["a.example"])), "a.example");
        assert_eq!(
            key(&names(&["b.example", "c.example", "a.example"])),
            "b.example,a.example,c.example"
        );
        assert_eq!(
            key(&names(&["b.example", "a.example", "c.example"])),
            key(&names(&[
                "b.example",
                "c.example",
                "a.example",
                "b.example"
            ]))
        );
        assert_ne!(
            key(&names(&["a.example", "b.example"])),
            key(&names(&["b.example", "a.example"])),
            "the first name is the directory"
        );
    }

    #[test]
    fn the_state_file_round_trips_and_tolerates_what_it_does_not_know() {
        let mut state = HashMap::new();
        state.insert(
            "a.example".to_string(),
            Entry {
                orders: vec![10, 20],
                failures: 2,
                last_failure: Some((20, false)),
                last_error: Some("validating a.example by http-01: connection refused".into()),
                last_step: Some("ca".into()),
                directory: Some("https://ca.example/dir".into()),
            },
        );
        state.insert(
            "bad_name.example".to_string(),
            Entry {
                orders: vec![5],
                failures: 1,
                last_failure: Some((5, true)),
                last_error: Some("refused".into()),
                last_step: None,
                directory: None,
            },
        );
        state.insert("b.example,c.example".to_string(), Entry::default());
        let bytes = serde_json::to_vec(&state_to_json(&state)).expect("json");
        assert_eq!(state_from_json(&bytes).expect("parse"), state);
        let odd = br#"{"x.example": {"orders": ["no"], "extra": 1}}"#;
        assert_eq!(
            state_from_json(odd).expect("parse")["x.example"],
            Entry::default()
        );
        assert!(state_from_json(b"[]").is_err());
        assert!(state_from_json(b"{").is_err());
    }

    #[test]
    fn standing_reads_the_store_first_then_the_last_failure() {
        let now = at(1_000_000);
        let want = name_set(&names(&["a.example"]));
        let held = Held {
            names: want.clone(),
            not_before: at(0),
            not_after: at(2_000_000),
            suggested_renewal: None,
        };
        let failing = Entry {
            last_failure: Some((10, false)),
            ..Entry::default()
        };
        let stopped = Entry {
            last_failure: Some((10, true)),
            ..Entry::default()
        };
        let dir = "https://ca.example/dir";
        let of =
            |held: Option<&Held>, entry: Option<&Entry>| standing(now, &want, held, entry, dir);
        assert_eq!(of(Some(&held), Some(&failing)), Standing::Valid);
        assert_eq!(of(None, None), Standing::Pending);
        assert_eq!(of(None, Some(&failing)), Standing::Failing);
        assert_eq!(of(None, Some(&stopped)), Standing::Stopped);
        let staging = Entry {
            directory: Some("https://staging.example/dir".into()),
            ..Entry::default()
        };
        assert_eq!(
            of(Some(&held), Some(&staging)),
            Standing::Pending,
            "a certificate from another directory is replaced"
        );
        let expired = Held {
            not_after: at(10),
            ..held.clone()
        };
        assert_eq!(of(Some(&expired), None), Standing::Pending);
        let other = Held {
            names: name_set(&names(&["b.example"])),
            ..held.clone()
        };
        assert_eq!(of(Some(&other), None), Standing::Pending);
    }

    #[test]
    fn renewal_information_is_asked_per_certificate_and_moves_the_renewal_earlier() {
        let held = Held {
            names: name_set(&names(&["a.example"])),
            not_before: at(0),
            not_after: at(90 * 86_400),
            suggested_renewal: None,
        };
        let known = Ari {
            cert: (at(0), at(90 * 86_400)),
            start: Some(at(30 * 86_400)),
            ask_at: at(3_600),
        };
        assert!(ari_due(at(10), &held, None), "nothing known yet");
        assert!(!ari_due(at(10), &held, Some(&known)), "asked, not time yet");
        assert!(ari_due(at(3_600), &held, Some(&known)), "time to ask again");
        let renewed = Held {
            not_before: at(100),
            not_after: at(100 + 90 * 86_400),
            ..held.clone()
        };
        assert!(ari_due(at(10), &renewed, Some(&known)), "a new certificate");
        let policy = crate::config::AcmePolicy::default();
        let suggested = with_ari(held.clone(), Some(&known));
        assert_eq!(plan::renew_at(&suggested, &policy), at(30 * 86_400));
        assert_eq!(
            plan::renew_at(&with_ari(renewed.clone(), Some(&known)), &policy),
            at(100 + 60 * 86_400),
            "a window about another certificate is not used"
        );
    }

    #[test]
    fn entries_of_names_nobody_wants_are_kept_only_while_they_matter() {
        let now = at(10 * 86_400);
        let e = |orders: Vec<u64>, last_failure| Entry {
            orders,
            last_failure,
            ..Entry::default()
        };
        let t = unix(now);
        assert!(e(vec![t - 60], None).still_matters(now), "the hourly cap");
        assert!(!e(vec![t - 3_600], None).still_matters(now));
        assert!(
            e(vec![], Some((t - 86_400, true))).still_matters(now),
            "refused"
        );
        assert!(!e(vec![], Some((t - 8 * 86_400, true))).still_matters(now));
        assert!(
            !e(vec![], Some((t - 60, false))).still_matters(now),
            "transient"
        );
    }

    fn want(list: &[&str], sidecars: &[&str]) -> Want {
        Want {
            names: names(list),
            challenge: ChallengeKind::Http01,
            sidecars: sidecars.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn replicas_wanting_one_name_set_share_it_and_its_sidecars() {
        let sets = by_name_set(vec![
            want(&["a.example", "b.example"], &["s1"]),
            want(&["A.example", "b.example", "b.example"], &["s2"]),
            want(&["b.example", "a.example"], &["s3"]),
        ]);
        assert_eq!(sets.len(), 2, "the first name is the directory");
        assert_eq!(sets["a.example,b.example"].sidecars, ["s1", "s2"]);
        assert_eq!(
            sets["a.example,b.example"].names,
            names(&["a.example", "b.example"]),
            "the first want names the set"
        );
        assert_eq!(sets["b.example,a.example"].sidecars, ["s3"]);
    }

    #[test]
    fn a_turn_forgets_unwanted_name_sets_unless_they_still_matter() {
        let now = at(10 * 86_400);
        let t = unix(now);
        let mut inner = Inner::new(HashMap::from([
            ("gone.example".to_string(), Entry::default()),
            (
                "capped.example".to_string(),
                Entry {
                    orders: vec![t - 60],
                    ..Entry::default()
                },
            ),
            ("flying.example".to_string(), Entry::default()),
            ("a.example".to_string(), Entry::default()),
        ]));
        inner.in_flight.insert("flying.example".to_string());
        inner.logged.insert("gone.example".to_string(), "e".into());
        let sets = by_name_set(vec![want(&["a.example"], &["s1"])]);
        inner.forget_unwanted(&sets, now);
        let mut kept: Vec<&str> = inner.entries.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a.example", "capped.example", "flying.example"]);
        assert_eq!(inner.version, 1, "the state file is written again");
        assert!(inner.logged.is_empty());
        assert_eq!(
            inner.sidecars,
            HashMap::from([("a.example".to_string(), vec!["s1".to_string()])])
        );
        inner.forget_unwanted(&sets, now);
        assert_eq!(inner.version, 1, "nothing changed");
    }

    #[test]
    fn a_turn_orders_what_is_missing_and_keeps_and_asks_about_what_is_held() {
        let now = at(10 * 86_400);
        let policy = crate::config::AcmePolicy::default();
        let dir = "https://ca.example/dir";
        let held = Held {
            names: name_set(&names(&["held.example"])),
            not_before: at(9 * 86_400),
            not_after: at(99 * 86_400),
            suggested_renewal: None,
        };
        let mut inner = Inner::new(HashMap::new());
        inner
            .held
            .insert("held.example".to_string(), Some(held.clone()));
        let sets = by_name_set(vec![
            want(&["held.example"], &[]),
            want(&["new.example"], &[]),
        ]);
        let turn = inner.decide(&sets, now, dir, &policy);
        let due: Vec<(&str, &str)> = turn.due.iter().map(|(k, _, r)| (k.as_str(), *r)).collect();
        assert_eq!(due, [("new.example", "no certificate for these names")]);
        assert!(inner.in_flight.contains("new.example"));
        assert_eq!(inner.entries["new.example"].orders, [unix(now)]);
        assert_eq!(inner.version, 1);
        let ask: Vec<&str> = turn.ask.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(
            ask,
            ["held.example"],
            "renewal information for what is held"
        );
        assert!(
            inner.next.is_some(),
            "looked at again when the renewal is due"
        );

        let again = inner.decide(&sets, now, dir, &policy);
        assert!(
            again.due.is_empty(),
            "an order in flight is not placed twice"
        );
        assert!(again.ask.is_empty(), "nor is the CA asked twice at once");

        let mut other = Inner::new(HashMap::from([(
            "held.example".to_string(),
            Entry {
                directory: Some("https://staging.example/dir".into()),
                ..Entry::default()
            },
        )]));
        other.held.insert("held.example".to_string(), Some(held));
        let sets = by_name_set(vec![want(&["held.example"], &[])]);
        let turn = other.decide(&sets, now, dir, &policy);
        assert_eq!(
            turn.due.len(),
            1,
            "a certificate from another directory is replaced"
        );
        assert!(turn.ask.is_empty());
    }

    #[test]
    fn recorded_times_round_up_so_waits_never_end_early() {
        assert_eq!(unix(at(5)), 5);
        assert_eq!(unix(at(5) + Duration::from_millis(1)), 6);
        assert_eq!(unix(at(5) + Duration::from_millis(999)), 6);
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let missing = std::path::Path::new("/nonexistent/acme-ca.pem");
        let e = roots(Some(missing)).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/acme-ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("acme-roots-{}", std::process::id()));
        std::fs::write(&dir, b"not a certificate").expect("write");
        let e = roots(Some(&dir)).expect_err("not pem");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        std::fs::remove_file(&dir).expect("remove");
        assert!(!roots(None).expect("system or built-in roots").is_empty());
    }

    #[test]
    fn a_fifo_as_the_ca_file_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let fifo = std::env::temp_dir().join(format!("acme-roots-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        mkfifo(&fifo);
        let path = fifo.clone();
        let e = within("--acme-ca-cert", move || roots(Some(&path)).map(|_| ()))
            .expect_err("a FIFO is refused");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read --acme-ca-cert {}: is a FIFO, not a regular file",
                fifo.display()
            )
        );
        std::fs::remove_file(&fifo).expect("remove");
    }
}
