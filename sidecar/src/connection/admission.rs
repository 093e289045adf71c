//! Who gets a connection slot: `--max-connections`, `--max-connections-per-ip`, the budget of
//! connections still in the TLS handshake (`--max-handshakes`), and which connection makes room
//! when every slot is taken.
//!
//! Rules, so that no single client and no cheap trick can hold every slot:
//! - A client address (an IPv4 address, or an IPv6 /64, since one host gets a whole /64) holds at
//!   most `max_per_ip` connections; one more is closed at accept.
//! - At most `max_handshakes` connections are in the TLS handshake at once; a new connection
//!   beyond that closes the one that has been in its handshake longest. A real client sends its
//!   ClientHello in its first round trip, so the oldest handshake is the likeliest to be a stall,
//!   and holding the budget costs an attacker a stream of fresh connections, not one each.
//! - When every slot is taken, the connection quiet for longest (an HTTP keep-alive connection
//!   with no request in flight, or a handshake) is closed to admit the new one. Connections
//!   with a request in flight, tcp-mode relays and upgraded connections are never chosen: only
//!   when none can be closed does the new connection wait (the rest queue in the listen backlog).
//!
//! The decisions are made on [`Slots`], a plain table with no I/O and no clock of its own
//! (unit-tested with chosen instants); [`Admission`] wraps it in a mutex for the accept loop and
//! the connection tasks, and [`Ticket`] gives a slot back when its connection ends.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::warn;

use super::activity::Activity;
use crate::metrics::{Metrics, Refusal};
use crate::throttle::{escape, Throttle, LOG_INTERVAL};

/// The limits, validated by the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_connections: usize,
    /// 0 turns the per-address cap off.
    pub max_per_ip: usize,
    pub max_handshakes: usize,
}

/// The unit a per-client cap counts: an IPv4 address (IPv4-mapped IPv6 included) or the /64 an
/// IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(u128);

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => ClientKey((u128::from(v6) >> 64 << 64) | 1),
        }
    }
}

/// What a slot's connection is doing, which decides whether it may be closed to make room.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Accepted, TLS handshake not finished: quiet since it was accepted.
    Handshake,
    /// Serving HTTP: quiet while no request is in flight.
    Http(Arc<Activity>),
    /// A tcp-mode relay: never closed to make room (its protocol may not survive it).
    Pinned,
}

#[derive(Debug)]
struct Slot {
    key: ClientKey,
    accepted: Instant,
    phase: Phase,
    evict: CancellationToken,
    /// Asked to close; its slot frees soon.
    evicting: bool,
}

impl Slot {
    /// Since when the connection has done nothing useful, if it may be closed to make room.
    fn quiet_since(&self) -> Option<Instant> {
        if self.evicting {
            return None;
        }
        match &self.phase {
            Phase::Handshake => Some(self.accepted),
            Phase::Http(activity) => activity.quiet_since(),
            Phase::Pinned => None,
        }
    }
}

/// The outcome of one admission attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Admitted under this slot id.
    Admit(u64),
    /// Its address is at the per-address cap.
    Refuse,
    /// Every slot is taken; wait until one frees.
    Wait,
}

/// A connection asked to close to make room, and why.
#[derive(Debug)]
pub(crate) struct Eviction {
    pub token: CancellationToken,
    pub cause: Refusal,
}

/// The slot table. Admitting a connection is O(1) but for the handshake budget (O(log n)); only
/// a full table is scanned, for the connection quiet for longest.
#[derive(Debug)]
pub(crate) struct Slots {
    limits: Limits,
    slots: HashMap<u64, Slot>,
    per_key: HashMap<ClientKey, usize>,
    /// Slots in their handshake and not asked to close; ids grow with accept time, so the
    /// first is the oldest handshake.
    handshaking: BTreeSet<u64>,
    /// Slots asked to close that are still open.
    evicting: usize,
    next_id: u64,
}

impl Slots {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: HashMap::new(),
            per_key: HashMap::new(),
            handshaking: BTreeSet::new(),
            evicting: 0,
            next_id: 0,
        }
    }

    /// Decides about a connection from `key` accepted at `now`; closes (through `evictions`)
    /// what must make room.
    pub(crate) fn admit(
        &mut self,
        key: ClientKey,
        now: Instant,
        evictions: &mut Vec<Eviction>,
    ) -> Decision {
        let held = self.per_key.get(&key).copied().unwrap_or(0);
        if self.limits.max_per_ip > 0 && held >= self.limits.max_per_ip {
            return Decision::Refuse;
        }
        if self.slots.len() >= self.limits.max_connections {
            // One slot is enough: ask for one only if none is already on its way.
            if self.evicting == 0 {
                if let Some(id) = self.quietest() {
                    let cause = match self.slots[&id].phase {
                        Phase::Handshake => Refusal::HandshakeEvicted,
                        _ => Refusal::IdleEvicted,
                    };
                    evictions.push(self.evict(id, cause));
                }
            }
            return Decision::Wait;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.slots.insert(
            id,
            Slot {
                key,
                accepted: now,
                phase: Phase::Handshake,
                evict: CancellationToken::new(),
                evicting: false,
            },
        );
        *self.per_key.entry(key).or_insert(0) += 1;
        self.handshaking.insert(id);
        if self.handshaking.len() > self.limits.max_handshakes {
            if let Some(oldest) = self.handshaking.first().copied() {
                evictions.push(self.evict(oldest, Refusal::HandshakeEvicted));
            }
        }
        Decision::Admit(id)
    }

    /// Connections in their handshake now (not asked to close).
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking.len()
    }

    /// Whether a connection from `key` would wait or be refused ([`Slots::admit`]), without
    /// admitting it or closing anything: a QUIC connection has no backlog to wait in.
    pub(crate) fn refusal(&self, key: ClientKey) -> Option<Refusal> {
        let held = self.per_key.get(&key).copied().unwrap_or(0);
        if self.limits.max_per_ip > 0 && held >= self.limits.max_per_ip {
            return Some(Refusal::PerIp);
        }
        (self.slots.len() >= self.limits.max_connections).then_some(Refusal::QuicBusy)
    }

    /// The slot quiet for longest (a full scan: only when the table is full).
    fn quietest(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|(id, s)| s.quiet_since().map(|q| (q, *id)))
            .min()
            .map(|(_, id)| id)
    }

    fn evict(&mut self, id: u64, cause: Refusal) -> Eviction {
        let slot = self
            .slots
            .get_mut(&id)
            .expect("evict is only called with a present slot id");
        slot.evicting = true;
        self.evicting += 1;
        self.handshaking.remove(&id);
        Eviction {
            token: slot.evict.clone(),
            cause,
        }
    }

    /// The token that asks slot `id` to close.
    pub(crate) fn token(&self, id: u64) -> Option<CancellationToken> {
        self.slots.get(&id).map(|s| s.evict.clone())
    }

    /// Records what slot `id`'s connection does now (past its handshake).
    pub(crate) fn set_phase(&mut self, id: u64, phase: Phase) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.phase = phase;
            self.handshaking.remove(&id);
        }
    }

    /// Gives slot `id` back.
    pub(crate) fn release(&mut self, id: u64) {
        self.handshaking.remove(&id);
        if let Some(slot) = self.slots.remove(&id) {
            if slot.evicting {
                self.evicting -= 1;
            }
            if let Some(n) = self.per_key.get_mut(&slot.key) {
                *n -= 1;
                if *n == 0 {
                    self.per_key.remove(&slot.key);
                }
            }
        }
    }
}

/// While every slot is busy, how often the waiting accept loop looks again for a connection
/// that has turned idle: a scan of the table is microseconds, a tenth of a second is nothing to
/// a client waiting for a full sidecar.
const WAIT_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

static REFUSED_LOG: Throttle = Throttle::new(LOG_INTERVAL);
static EVICTED_LOG: Throttle = Throttle::new(LOG_INTERVAL);

/// The slot table shared by the accept loop and the connection tasks.
#[derive(Debug)]
pub(crate) struct Admission {
    slots: Mutex<Slots>,
    /// Signalled whenever a slot is given back.
    freed: Notify,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub(crate) fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(Slots::new(limits)),
            freed: Notify::new(),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Admits a connection from `peer` now, or says why not: its address is at its cap, or every
    /// slot is taken (nothing is closed to make room: for QUIC, whose clients cannot wait in a
    /// backlog and fall back to TCP). Past the handshake budget, the oldest handshake is closed
    /// as for TCP.
    pub(crate) fn admit_now(self: &Arc<Self>, peer: SocketAddr) -> Result<Ticket, Refusal> {
        let key = ClientKey::of(peer.ip());
        let mut evictions = Vec::new();
        let id = {
            let mut slots = self.lock();
            if let Some(refusal) = slots.refusal(key) {
                drop(slots);
                self.metrics.refused(refusal);
                return Err(refusal);
            }
            match slots.admit(key, Instant::now(), &mut evictions) {
                Decision::Admit(id) => id,
                // Cannot happen: `refusal` said there is room.
                Decision::Refuse | Decision::Wait => return Err(Refusal::QuicBusy),
            }
        };
        for e in evictions {
            self.metrics.refused(e.cause);
            e.token.cancel();
        }
        let evict = self.lock().token(id).unwrap_or_default();
        Ok(Ticket {
            admission: self.clone(),
            id,
            evict,
        })
    }

    /// Connections in their handshake now, TCP and QUIC.
    pub(crate) fn handshaking(&self) -> usize {
        self.lock().handshaking()
    }

    /// Admits a connection from `peer`, waiting while every slot is taken (and none can be
    /// freed). `None` when it is refused or `stop` is cancelled while it waits.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        stop: &CancellationToken,
    ) -> Option<Ticket> {
        let key = ClientKey::of(peer.ip());
        loop {
            let mut evictions = Vec::new();
            let decision = self.lock().admit(key, Instant::now(), &mut evictions);
            for e in evictions {
                self.metrics.refused(e.cause);
                if let Some(suppressed) = EVICTED_LOG.ready() {
                    warn!(
                        cause = e.cause.as_str(),
                        suppressed, "closed a connection to make room for a new one"
                    );
                }
                e.token.cancel();
            }
            match decision {
                Decision::Admit(id) => {
                    let evict = self.lock().token(id).unwrap_or_default();
                    return Some(Ticket {
                        admission: self.clone(),
                        id,
                        evict,
                    });
                }
                Decision::Refuse => {
                    self.metrics.refused(Refusal::PerIp);
                    if let Some(suppressed) = REFUSED_LOG.ready() {
                        let client = escape(peer.ip().to_string().as_bytes(), 64);
                        warn!(
                            %client,
                            suppressed,
                            "connection refused: its address is at --max-connections-per-ip"
                        );
                    }
                    return None;
                }
                Decision::Wait => {
                    // `notify_one` stores a permit when nobody waits, so a slot freed between
                    // the decision and this await is not missed. A busy connection that turns
                    // idle frees nothing but can now make room: looked for every recheck.
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = self.freed.notified() => {}
                        _ = tokio::time::sleep(WAIT_RECHECK) => {}
                    }
                }
            }
        }
    }
}

/// One admitted connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evict: CancellationToken,
}

impl Ticket {
    /// Records what the connection does now (after its handshake).
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.admission.lock().set_phase(self.id, phase);
    }

    /// Completes when the connection is asked to close to make room for another.
    pub(crate) fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// The token [`Ticket::evicted`] waits on, for a handler that outlives a borrow.
    pub(crate) fn evict_token(&self) -> CancellationToken {
        self.evict.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().release(self.id);
        self.admission.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    impl Slots {
        /// Slots taken now.
        fn len(&self) -> usize {
            self.slots.len()
        }
    }

    fn key(last: u8) -> ClientKey {
        ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    fn limits(max: usize, per_ip: usize, handshakes: usize) -> Limits {
        Limits {
            max_connections: max,
            max_per_ip: per_ip,
            max_handshakes: handshakes,
        }
    }

    fn admit(slots: &mut Slots, k: ClientKey, now: Instant) -> (Decision, Vec<Eviction>) {
        let mut ev = Vec::new();
        let d = slots.admit(k, now, &mut ev);
        (d, ev)
    }

    fn id(d: Decision) -> u64 {
        match d {
            Decision::Admit(id) => id,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(ClientKey::of(mapped), key(7));
        assert_ne!(
            ClientKey::of("::".parse().expect("ip")),
            ClientKey::of("0.0.0.0".parse().expect("ip"))
        );
    }

    #[test]
    fn one_address_is_capped_and_others_are_not() {
        let now = Instant::now();
        let mut s = Slots::new(limits(100, 2, 100));
        id(admit(&mut s, key(1), now).0);
        let second = id(admit(&mut s, key(1), now).0);
        assert_eq!(admit(&mut s, key(1), now).0, Decision::Refuse);
        id(admit(&mut s, key(2), now).0);
        s.release(second);
        id(admit(&mut s, key(1), now).0);
        // 0 means no cap.
        let mut s = Slots::new(limits(100, 0, 100));
        for _ in 0..50 {
            id(admit(&mut s, key(1), now).0);
        }
    }

    #[test]
    fn a_full_handshake_budget_closes_the_oldest_handshake() {
        let t0 = Instant::now();
        let mut s = Slots::new(limits(100, 0, 2));
        let a = id(admit(&mut s, key(1), t0).0);
        let b = id(admit(&mut s, key(1), t0 + Duration::from_millis(1)).0);
        let (c, ev) = admit(&mut s, key(2), t0 + Duration::from_millis(2));
        id(c);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].cause, Refusal::HandshakeEvicted);
        // The one asked to close is `a`, the oldest; `b` stays.
        ev[0].token.cancel();
        assert!(s.token(a).expect("a").is_cancelled());
        assert!(!s.token(b).expect("b").is_cancelled());
        // A connection past its handshake no longer counts against the budget.
        s.set_phase(b, Phase::Pinned);
        let (_, ev) = admit(&mut s, key(3), t0 + Duration::from_millis(3));
        assert!(
            ev.is_empty(),
            "a is closing, b is serving: two handshakes fit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_full_the_longest_idle_keepalive_makes_room_once() {
        let mut s = Slots::new(limits(3, 0, 10));
        let t0 = Instant::now();
        let busy = Activity::new();
        let idle_long = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        let idle_short = Activity::new();
        busy.request_started();
        for activity in [&busy, &idle_long, &idle_short] {
            let slot = id(admit(&mut s, key(1), t0).0);
            s.set_phase(slot, Phase::Http((*activity).clone()));
        }
        let long_id = 1;
        let (d, ev) = admit(&mut s, key(2), Instant::now());
        assert_eq!(d, Decision::Wait);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].cause, Refusal::IdleEvicted);
        ev[0].token.cancel();
        assert!(s.token(long_id).expect("slot").is_cancelled());
        // While that slot is on its way, waiting does not close another.
        let (d, ev) = admit(&mut s, key(2), Instant::now());
        assert_eq!(d, Decision::Wait);
        assert!(ev.is_empty());
        s.release(long_id);
        id(admit(&mut s, key(2), Instant::now()).0);
    }

    #[test]
    fn busy_and_pinned_connections_are_never_closed_to_make_room() {
        let t0 = Instant::now();
        let mut s = Slots::new(limits(2, 0, 10));
        let busy = Activity::new();
        busy.request_started();
        let a = id(admit(&mut s, key(1), t0).0);
        s.set_phase(a, Phase::Http(busy));
        let b = id(admit(&mut s, key(1), t0).0);
        s.set_phase(b, Phase::Pinned);
        let (d, ev) = admit(&mut s, key(2), t0);
        assert_eq!(d, Decision::Wait);
        assert!(ev.is_empty());
        s.release(b);
        id(admit(&mut s, key(2), t0).0);
        assert_eq!(s.len(), 2);
        assert!(s.per_key.len() == 2);
    }

    /// The counters the table keeps equal what a full recount says, and the limits hold,
    /// whatever order admissions, phase changes, evictions and releases come in.
    #[test]
    fn counters_match_a_recount_under_random_operations() {
        let t0 = Instant::now();
        let mut s = Slots::new(limits(20, 6, 5));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut open: Vec<u64> = Vec::new();
        for step in 0..5000u64 {
            let now = t0 + Duration::from_millis(step);
            match next() % 4 {
                0 | 1 => {
                    let mut ev = Vec::new();
                    if let Decision::Admit(id) = s.admit(key((next() % 5) as u8), now, &mut ev) {
                        open.push(id);
                    }
                }
                2 if !open.is_empty() => {
                    let id = open[(next() % open.len() as u64) as usize];
                    let phase = if next() % 2 == 0 {
                        Phase::Pinned
                    } else {
                        Phase::Http(Activity::new())
                    };
                    s.set_phase(id, phase);
                }
                _ if !open.is_empty() => {
                    let i = (next() % open.len() as u64) as usize;
                    s.release(open.swap_remove(i));
                }
                _ => {}
            }
            let handshaking: BTreeSet<u64> = s
                .slots
                .iter()
                .filter(|(_, v)| !v.evicting && matches!(v.phase, Phase::Handshake))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(s.handshaking, handshaking, "step {step}");
            assert_eq!(s.evicting, s.slots.values().filter(|v| v.evicting).count());
            assert_eq!(s.per_key.values().sum::<usize>(), s.slots.len());
            assert!(s.per_key.values().all(|n| *n <= 6 && *n > 0));
            assert!(s.slots.len() <= 20);
            assert!(s.handshaking.len() <= 5);
        }
    }
}
