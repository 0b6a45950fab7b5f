//! The routing proxy's bookkeeping (`crate::proxy`): sessions per port and backend, which are
//! also the slots of `max_sessions_per_backend`; sessions waiting for a slot, each with a ticket
//! (its arrival number) so that those waiting for a backend get its slots in arrival order
//! (`vigil_core::proxy::closed_backends`); refusals by reason. The metrics mirror it, and
//! `GET /proxy` shows it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;
use vigil_core::proxy as rules;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    Rw,
    Ro,
}

impl Port {
    pub fn name(self) -> &'static str {
        match self {
            Port::Rw => "rw",
            Port::Ro => "ro",
        }
    }
}

#[derive(Default)]
struct Counts {
    /// Sessions by port and backend: open, or being connected (their slot is taken).
    open: BTreeMap<(Port, String), usize>,
    /// Sessions waiting for a slot now, by port.
    queued: BTreeMap<Port, usize>,
    /// The tickets of the sessions waiting for each backend (lowest first in line).
    waiting: BTreeMap<String, BTreeSet<u64>>,
    next_ticket: u64,
    queued_total: BTreeMap<Port, u64>,
    refused_total: BTreeMap<(Port, &'static str), u64>,
}

pub struct Book {
    /// `max_sessions_per_backend` (None: no limit).
    max: Option<usize>,
    counts: Mutex<Counts>,
    /// Bumped whenever a slot is given back: queued sessions look again.
    freed: watch::Sender<u64>,
}

impl Book {
    pub fn new(max: Option<usize>) -> Arc<Book> {
        Arc::new(Book { max, counts: Mutex::new(Counts::default()), freed: watch::Sender::new(0) })
    }

    pub fn max(&self) -> Option<usize> {
        self.max
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions of `port`, by backend (least connections on the read-only port).
    pub fn open_of(&self, port: Port) -> BTreeMap<String, usize> {
        self.counts().open.iter().filter(|((p, _), _)| *p == port).map(|((_, b), n)| (b.clone(), *n)).collect()
    }

    fn per_backend(counts: &Counts) -> BTreeMap<String, usize> {
        let mut all = BTreeMap::new();
        for ((_, b), n) in &counts.open {
            *all.entry(b.clone()).or_default() += n;
        }
        all
    }

    /// The backends a session may not take a slot on now (at the limit, or an earlier queued
    /// session waits for it); `ticket`: the session's place in the queue, if it is queued.
    pub fn closed(&self, ticket: Option<u64>) -> BTreeSet<String> {
        let counts = self.counts();
        rules::closed_backends(&Book::per_backend(&counts), self.max, &counts.waiting, ticket)
    }

    /// Subscribe before looking for a slot, so that one given back in between is not missed.
    pub fn freed(&self) -> watch::Receiver<u64> {
        self.freed.subscribe()
    }

    /// A slot on `backend` for a session of `port`, if the backend is below the limit and no
    /// session queued before this one (`ticket`: its place, if it is queued) waits for it.
    pub fn try_reserve(self: &Arc<Self>, port: Port, backend: &str, ticket: Option<u64>) -> Option<Slot> {
        let mut counts = self.counts();
        if rules::closed_backends(&Book::per_backend(&counts), self.max, &counts.waiting, ticket).contains(backend) {
            return None;
        }
        *counts.open.entry((port, backend.to_string())).or_default() += 1;
        metrics::gauge!("pgvigil_proxy_sessions", &labels(port, backend)).increment(1.0);
        Some(Slot { book: self.clone(), port, backend: backend.to_string() })
    }

    /// A session of `port` waits for a slot on `backend` while the guard lives; it is given
    /// the next ticket.
    pub fn queue(self: &Arc<Self>, port: Port, backend: &str) -> Queued {
        let mut counts = self.counts();
        let ticket = counts.next_ticket;
        counts.next_ticket += 1;
        counts.waiting.entry(backend.to_string()).or_default().insert(ticket);
        *counts.queued.entry(port).or_default() += 1;
        *counts.queued_total.entry(port).or_default() += 1;
        metrics::counter!("pgvigil_proxy_queued_total", &labels(port, backend)).increment(1);
        metrics::gauge!("pgvigil_proxy_queued", "port" => port.name()).increment(1.0);
        Queued { book: self.clone(), port, ticket, backend: backend.to_string() }
    }

    pub fn refused(&self, port: Port, reason: &'static str) {
        *self.counts().refused_total.entry((port, reason)).or_default() += 1;
        metrics::counter!("pgvigil_proxy_refused_total", "port" => port.name(), "reason" => reason).increment(1);
    }

    /// Open sessions on the read-write and the read-only port, queued now, refused since start.
    pub fn summary(&self) -> (u64, u64, u64, u64) {
        let counts = self.counts();
        let open = |port: Port| counts.open.iter().filter(|((p, _), _)| *p == port).map(|(_, n)| *n as u64).sum();
        let queued = counts.queued.values().map(|n| *n as u64).sum();
        (open(Port::Rw), open(Port::Ro), queued, counts.refused_total.values().sum())
    }

    /// `GET /proxy`'s part: sessions, queued, refused.
    pub fn status(&self) -> serde_json::Value {
        let counts = self.counts();
        let sessions: Vec<serde_json::Value> = counts
            .open
            .iter()
            .map(|((port, backend), n)| serde_json::json!({ "port": port.name(), "backend": backend, "sessions": n }))
            .collect();
        let by_port = |m: &BTreeMap<Port, u64>| -> BTreeMap<&'static str, u64> {
            [Port::Rw, Port::Ro].into_iter().map(|p| (p.name(), m.get(&p).copied().unwrap_or(0))).collect()
        };
        let queued: BTreeMap<Port, u64> = counts.queued.iter().map(|(p, n)| (*p, *n as u64)).collect();
        let mut refused: BTreeMap<&'static str, BTreeMap<&'static str, u64>> =
            [("rw", BTreeMap::new()), ("ro", BTreeMap::new())].into();
        for ((port, reason), n) in &counts.refused_total {
            refused.entry(port.name()).or_default().insert(reason, *n);
        }
        serde_json::json!({
            "sessions": sessions,
            "max_sessions_per_backend": self.max,
            "queued": by_port(&queued),
            "queued_total": by_port(&counts.queued_total),
            "refused_total": refused,
        })
    }
}

fn labels(port: Port, backend: &str) -> [(&'static str, String); 2] {
    [("port", port.name().to_string()), ("backend", backend.to_string())]
}

/// A session's slot on its backend, given back on drop.
pub struct Slot {
    book: Arc<Book>,
    port: Port,
    backend: String,
}

impl Slot {
    /// The session reached its backend.
    pub fn established(&self) {
        metrics::counter!("pgvigil_proxy_sessions_total", &labels(self.port, &self.backend)).increment(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut counts = self.book.counts();
            let key = (self.port, self.backend.clone());
            if let Some(n) = counts.open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.open.remove(&key);
                }
            }
        }
        metrics::gauge!("pgvigil_proxy_sessions", &labels(self.port, &self.backend)).decrement(1.0);
        self.book.freed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A session waiting for a slot, with its ticket; it leaves the queue on drop.
pub struct Queued {
    book: Arc<Book>,
    port: Port,
    ticket: u64,
    /// The backend it waits for.
    backend: String,
}

impl Queued {
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// It waits for another backend now (a new primary, a less loaded standby), keeping its
    /// place in arrival order.
    pub fn wait_for(&mut self, backend: &str) {
        if self.backend == backend {
            return;
        }
        {
            let mut counts = self.book.counts();
            Queued::leave(&mut counts, &self.backend, self.ticket);
            counts.waiting.entry(backend.to_string()).or_default().insert(self.ticket);
        }
        self.backend = backend.to_string();
        // The next one in line for the old backend may be first now.
        self.book.freed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn leave(counts: &mut Counts, backend: &str, ticket: u64) {
        if let Some(tickets) = counts.waiting.get_mut(backend) {
            tickets.remove(&ticket);
            if tickets.is_empty() {
                counts.waiting.remove(backend);
            }
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        {
            let mut counts = self.book.counts();
            if let Some(n) = counts.queued.get_mut(&self.port) {
                *n = n.saturating_sub(1);
            }
            Queued::leave(&mut counts, &self.backend, self.ticket);
        }
        metrics::gauge!("pgvigil_proxy_queued", "port" => self.port.name()).decrement(1.0);
        // The next one in line may be first now.
        self.book.freed.send_modify(|n| *n = n.wrapping_add(1));
    }
}
