//! dns-01 in the daemon's orders: the records of one order written through the DNS provider
//! ([`super::dns`]), seen, then removed ([`OrderRecords`], the client's [`Dns01`]), and the
//! journal of every record written and not yet removed ([`Journal`], `acme/dns-01.json` in the
//! store), so what an interrupted order (a crash, a kill, a deadline) left in DNS is removed by
//! the next order.
//!
//! A record enters the journal before the provider is asked to write it and leaves it once the
//! provider removed it. Each entry names the order that wrote it (`<run>-<n>`, unique across
//! restarts); at the start of every order the entries of orders no longer running are removed
//! from DNS first. An entry whose removal keeps failing (a revoked key) stays, at most
//! [`MAX_ENTRIES`] of them: the oldest is then forgotten with a warning.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::dns::DnsName;

use super::client::{AcmeError, Dns01};
use super::dns::{Dns, DnsError, Location, Step};
use super::store::Store;

/// Most records the journal keeps (a few per order are written at once).
const MAX_ENTRIES: usize = 256;
/// Left-over records removed at the start of one order, at most: the order's own deadline
/// must not go to cleaning up after others.
const CLEAN_PER_ORDER: usize = 16;
/// Longest the journal's file may take to read or write.
const FILE_TIMEOUT: Duration = Duration::from_secs(5);

/// A record written and not yet removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The order that wrote it.
    pub(crate) order: String,
    /// The name set it proves, for the log.
    pub(crate) names: String,
    pub(crate) fqdn: String,
    pub(crate) zone: String,
    pub(crate) value: String,
}

impl Entry {
    fn location(&self) -> Location {
        Location {
            fqdn: self.fqdn.clone(),
            zone: self.zone.clone(),
            via_cname: false,
            servers: Vec::new(),
        }
    }
}

/// The journal's file: a JSON array of entries.
pub(crate) fn to_json(entries: &[Entry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "order": e.order,
                "names": e.names,
                "fqdn": e.fqdn,
                "zone": e.zone,
                "value": e.value,
            })
        })
        .collect()
}

/// Reads [`to_json`]'s output; entries missing a field are left out.
pub(crate) fn from_json(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = value.as_array().ok_or("not a JSON array")?;
    Ok(list
        .iter()
        .filter_map(|v| {
            let field = |k: &str| v[k].as_str().map(String::from);
            Some(Entry {
                order: field("order")?,
                names: field("names").unwrap_or_default(),
                fqdn: field("fqdn")?,
                zone: field("zone")?,
                value: field("value")?,
            })
        })
        .take(MAX_ENTRIES)
        .collect())
}

/// The records written and not yet removed, kept in memory and in the store.
pub(crate) struct Journal {
    store: Store,
    entries: tokio::sync::Mutex<Vec<Entry>>,
    /// This process's orders: `<run>-<n>`.
    run: String,
    next: Mutex<u64>,
    /// The orders of this process still running.
    running: Mutex<BTreeSet<String>>,
}

impl Journal {
    /// Reads the journal from the store; an unreadable one is logged and started afresh (its
    /// records, if any, are then left in DNS: the warning says where to look).
    pub(crate) async fn open(store: Store) -> Journal {
        let read = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.read_dns_records())
        };
        let path = store.dns_records_path();
        let entries = match tokio::time::timeout(FILE_TIMEOUT, read).await {
            Ok(Ok(Ok(None))) => Vec::new(),
            Ok(Ok(Ok(Some(bytes)))) => from_json(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the dns-01 records left by earlier orders; they are not removed");
                Vec::new()
            }),
            Ok(Ok(Err(e))) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the dns-01 records left by earlier orders; they are not removed");
                Vec::new()
            }
            _ => {
                tracing::warn!(path = %path.display(), "reading the dns-01 records left by earlier orders timed out; they are not removed");
                Vec::new()
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Journal {
            store,
            entries: tokio::sync::Mutex::new(entries),
            run: format!("{}.{:09}", now.as_secs(), now.subsec_nanos()),
            next: Mutex::new(0),
            running: Mutex::new(BTreeSet::new()),
        }
    }

    /// A new order's name, marked running until [`Journal::finish`].
    fn start(&self) -> String {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        let order = format!("{}-{}", self.run, *next);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order.clone());
        order
    }

    fn finish(&self, order: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(order);
    }

    /// Records `entry` (before it is written to DNS).
    async fn add(&self, entry: Entry) {
        let mut entries = self.entries.lock().await;
        if !entries.contains(&entry) {
            entries.push(entry);
        }
        while entries.len() > MAX_ENTRIES {
            let e = entries.remove(0);
            tracing::warn!(fqdn = %e.fqdn, names = %e.names, "forgetting a dns-01 record that could not be removed; remove its TXT value by hand");
        }
        self.write(&entries).await;
    }

    /// Forgets `entry` (removed from DNS).
    async fn remove(&self, entry: &Entry) {
        let mut entries = self.entries.lock().await;
        let before = entries.len();
        entries.retain(|e| e != entry);
        if entries.len() != before {
            self.write(&entries).await;
        }
    }

    /// The entries of orders no longer running: an earlier process's, or one of this
    /// process's that ended without removing them.
    async fn left_over(&self) -> Vec<Entry> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.entries
            .lock()
            .await
            .iter()
            .filter(|e| !running.contains(&e.order))
            .cloned()
            .collect()
    }

    async fn write(&self, entries: &[Entry]) {
        let bytes = match serde_json::to_vec_pretty(&to_json(entries)) {
            Ok(b) => b,
            Err(_) => return,
        };
        let store = self.store.clone();
        let write = tokio::task::spawn_blocking(move || store.write_dns_records(&bytes));
        let path = self.store.dns_records_path();
        match tokio::time::timeout(FILE_TIMEOUT, write).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the dns-01 records file")
            }
            _ => {
                tracing::warn!(path = %path.display(), "writing the dns-01 records file timed out")
            }
        }
    }

    /// Removes from DNS what orders no longer running left there, at most
    /// [`CLEAN_PER_ORDER`] records and up to the first that cannot be removed (the provider is
    /// failing: every removal would wait its timeout); the rest stays for the next order.
    pub(crate) async fn clean_left_over(&self, dns: &Dns) {
        for entry in self.left_over().await.into_iter().take(CLEAN_PER_ORDER) {
            match dns.cleanup(&entry.location(), &entry.value).await {
                Ok(()) => {
                    tracing::info!(fqdn = %entry.fqdn, names = %entry.names, "removed a dns-01 record an interrupted order left");
                    self.remove(&entry).await;
                }
                Err(e) => {
                    tracing::debug!(fqdn = %entry.fqdn, error = %e, "cannot remove a dns-01 record an interrupted order left; trying again at the next order");
                    return;
                }
            }
        }
    }

    #[cfg(test)]
    async fn entries(&self) -> Vec<Entry> {
        self.entries.lock().await.clone()
    }
}

/// The words `spawner status` and the log use for a failed DNS step.
pub(crate) fn step_name(step: Step) -> &'static str {
    match step {
        Step::ZoneLookup => "dns zone lookup",
        Step::Update => "dns update",
        Step::Hook => "dns hook",
        Step::NotVisible => "dns not visible",
    }
}

/// A DNS step's failure as an order's: retried with backoff (DNS can be fixed without the
/// names changing), one WARN per cause.
pub(crate) fn failed(e: DnsError) -> AcmeError {
    let step = step_name(e.step);
    AcmeError {
        permanent: false,
        message: format!("dns-01 {}: {}", step.trim_start_matches("dns "), e.message),
        cause: Some(format!("{step}: {}", e.cause)),
        step: Some(step),
    }
}

/// The records of one order: written, checked and removed through the provider, each kept in
/// the journal until removed.
pub(crate) struct OrderRecords {
    dns: Arc<Dns>,
    journal: Arc<Journal>,
    order: String,
    names: String,
    written: tokio::sync::Mutex<Vec<Entry>>,
}

impl OrderRecords {
    /// The records of a new order for the name set `names` (its key, for the log).
    pub(crate) fn new(dns: Arc<Dns>, journal: Arc<Journal>, names: &str) -> OrderRecords {
        let order = journal.start();
        OrderRecords {
            dns,
            journal,
            order,
            names: names.to_string(),
            written: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    async fn present_all(&self, records: Vec<(DnsName, String)>) -> Result<(), AcmeError> {
        // One lookup per name: `example.com` and `*.example.com` share it.
        let mut located: HashMap<String, Location> = HashMap::new();
        let mut values: Vec<(String, String)> = Vec::new();
        for (name, value) in records {
            let key = name.as_str().to_ascii_lowercase();
            if !located.contains_key(&key) {
                let at = self.dns.locate(&name).await.map_err(failed)?;
                if at.via_cname {
                    tracing::debug!(name = %name, fqdn = %at.fqdn, zone = %at.zone, "dns-01 record delegated by CNAME");
                }
                located.insert(key.clone(), at);
            }
            let at = &located[&key];
            let entry = Entry {
                order: self.order.clone(),
                names: self.names.clone(),
                fqdn: at.fqdn.clone(),
                zone: at.zone.clone(),
                value: value.clone(),
            };
            self.journal.add(entry.clone()).await;
            self.written.lock().await.push(entry);
            self.dns.present(at, &value).await.map_err(failed)?;
            values.push((key, value));
        }
        // Every value of a record name at once: the check sees them side by side.
        let mut by_name: HashMap<&str, Vec<String>> = HashMap::new();
        for (key, value) in &values {
            by_name.entry(key.as_str()).or_default().push(value.clone());
        }
        for (key, values) in by_name {
            self.dns
                .wait_visible(&located[key], &values)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }

    async fn cleanup_all(&self) {
        let written = std::mem::take(&mut *self.written.lock().await);
        for entry in written {
            match self.dns.cleanup(&entry.location(), &entry.value).await {
                Ok(()) => self.journal.remove(&entry).await,
                Err(e) => {
                    tracing::debug!(fqdn = %entry.fqdn, names = %self.names, error = %e, "cannot remove a dns-01 record; trying again at the next order")
                }
            }
        }
        self.journal.finish(&self.order);
    }
}

impl Dns01 for OrderRecords {
    fn present(
        &self,
        records: Vec<(DnsName, String)>,
    ) -> Pin<Box<dyn Future<Output = Result<(), AcmeError>> + Send + '_>> {
        Box::pin(self.present_all(records))
    }

    fn cleanup(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.cleanup_all())
    }
}

impl Drop for OrderRecords {
    /// An order cut short (its deadline) never reached its cleanup: its records are left over
    /// for the next order.
    fn drop(&mut self) {
        self.journal.finish(&self.order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(order: &str, value: &str) -> Entry {
        Entry {
            order: order.into(),
            names: "example.test,*.example.test".into(),
            fqdn: "_acme-challenge.example.test".into(),
            zone: "example.test".into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_journal_file_round_trips_and_skips_what_it_cannot_use() {
        let entries = vec![entry("1-1", "a"), entry("1-2", "b")];
        let bytes = serde_json::to_vec(&to_json(&entries)).expect("json");
        assert_eq!(from_json(&bytes).expect("parse"), entries);
        let odd = br#"[{"order": "x"}, {"order": "1-1", "fqdn": "f", "zone": "z", "value": "v"}]"#;
        let read = from_json(odd).expect("parse");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].names, "");
        assert!(from_json(b"{}").is_err());
        assert!(from_json(b"[").is_err());
    }

    #[test]
    fn dns_failures_are_retried_and_named_by_step() {
        let e = failed(DnsError {
            step: Step::Update,
            message: "update refused: NOTAUTH".into(),
            cause: "refused: NOTAUTH".into(),
        });
        assert!(!e.permanent);
        assert_eq!(e.step, Some("dns update"));
        assert_eq!(e.message, "dns-01 update: update refused: NOTAUTH");
        assert_eq!(e.cause(), "dns update: refused: NOTAUTH");
        assert_eq!(step_name(Step::NotVisible), "dns not visible");
        assert_eq!(step_name(Step::ZoneLookup), "dns zone lookup");
        assert_eq!(step_name(Step::Hook), "dns hook");
    }

    #[tokio::test]
    async fn left_overs_are_the_records_of_orders_no_longer_running() {
        let dir = std::env::temp_dir().join(format!("dns01-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        store
            .write_dns_records(
                &serde_json::to_vec(&to_json(&[entry("earlier-1", "old")])).expect("json"),
            )
            .expect("write");
        let journal = Journal::open(store.clone()).await;
        let running = journal.start();
        journal.add(entry(&running, "new")).await;
        let left: Vec<String> = journal
            .left_over()
            .await
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert_eq!(
            left,
            ["old"],
            "the running order's record is not a left-over"
        );
        journal.finish(&running);
        assert_eq!(journal.left_over().await.len(), 2);
        journal.remove(&entry("earlier-1", "old")).await;
        let reopened = Journal::open(store).await;
        let values: Vec<String> = reopened
            .entries()
            .await
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert_eq!(values, ["new"], "the file follows every change");
        for i in 0..MAX_ENTRIES + 5 {
            reopened.add(entry("x", &i.to_string())).await;
        }
        let entries = reopened.entries().await;
        assert_eq!(entries.len(), MAX_ENTRIES, "bounded");
        assert_eq!(
            entries.last().expect("newest").value,
            (MAX_ENTRIES + 4).to_string()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
