//! A record of the operations a test's clients ran against a queue service, and a checker of
//! what the service promises about them.
//!
//! Clients record every send (with its unique message body), every receive (with what it
//! delivered) and every delete, each with the time it started and ended, plus the faults the test
//! injected. [`History::check`] then reports:
//!
//! * acknowledged sends never delivered (the service lost them; must be 0 after a drain);
//! * deliveries of messages never sent (invented or corrupted; must be 0);
//! * deliveries to another tenant or another queue than the one sent to (must be 0);
//! * deliveries that started after a delete of that message had succeeded (must be 0);
//! * FIFO order: a FIFO stream's messages (one group, `STREAM/N` sent in order) first delivered
//!   after one sent later (must be 0);
//! * duplicates: deliveries beyond a message's first (allowed, at-least-once; counted);
//! * recovery after each fault: from the fault until every stream (a tenant's queue) that
//!   sends again after it has had a send acknowledged, with p50 and p99 over the faults.
//!
//! A send whose outcome is unknown (a timeout, a lost connection, a 5xx) may or may not have
//! been stored: delivering it is fine, not delivering it is too. Only acknowledged (2xx) sends
//! must arrive. Message bodies are the message ids, so they must be unique across the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Where a message went: a tenant's queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stream {
    pub tenant: String,
    pub queue: String,
}

impl Stream {
    pub fn new(tenant: &str, queue: &str) -> Self {
        Self { tenant: tenant.to_owned(), queue: queue.to_owned() }
    }

    /// Whether the queue is a FIFO queue (its sends go to one group, in order).
    pub fn is_fifo(&self) -> bool {
        self.queue.ends_with(".fifo")
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.queue)
    }
}

/// How a call ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service acknowledged it (2xx).
    Ok,
    /// The service definitely did not do it (refused before doing anything: 4xx, connection
    /// refused).
    Failed,
    /// It may or may not have happened (timeout, connection lost mid-call, 5xx).
    Unknown,
}

#[derive(Debug, Clone)]
enum Event {
    Send { stream: Stream, id: String, started_ms: u64, ended_ms: u64, outcome: Outcome },
    Receive { stream: Stream, ids: Vec<String>, started_ms: u64 },
    Delete { id: String, ended_ms: u64, outcome: Outcome },
    Fault { label: String, at_ms: u64 },
}

/// The recorded operations of one test run; cheap to clone and share between client tasks.
#[derive(Clone)]
pub struct History {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        Self { start: Instant::now(), events: Arc::default() }
    }

    /// Milliseconds since the history began: the clock of every recorded time.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A send of message `id` to `stream`, which started at `started_ms` and ended now.
    pub fn send(&self, stream: &Stream, id: &str, started_ms: u64, outcome: Outcome) {
        let ended_ms = self.now_ms();
        self.push(Event::Send { stream: stream.clone(), id: id.to_owned(), started_ms, ended_ms, outcome });
    }

    /// A receive from `stream` that started at `started_ms` and delivered `ids` (record only
    /// receives that answered).
    pub fn receive(&self, stream: &Stream, ids: Vec<String>, started_ms: u64) {
        self.push(Event::Receive { stream: stream.clone(), ids, started_ms });
    }

    /// A delete of message `id` that ended now.
    pub fn delete(&self, id: &str, outcome: Outcome) {
        let ended_ms = self.now_ms();
        self.push(Event::Delete { id: id.to_owned(), ended_ms, outcome });
    }

    /// A fault injected now (or a heal, when recovery is to be measured from it).
    pub fn fault(&self, label: &str) {
        let at_ms = self.now_ms();
        self.push(Event::Fault { label: label.to_owned(), at_ms });
    }

    fn push(&self, event: Event) {
        self.events.lock().push(event);
    }

    /// Acknowledged sends to any of `streams` that started at or after `from_ms` and ended
    /// before `to_ms`: a test that made those streams unable to commit expects none.
    pub fn acknowledged_sends_between(&self, streams: &[Stream], from_ms: u64, to_ms: u64) -> Vec<String> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Event::Send { stream, id, started_ms, ended_ms, outcome: Outcome::Ok }
                    if streams.contains(stream) && *started_ms >= from_ms && *ended_ms < to_ms =>
                {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Acknowledged sends not delivered yet, per stream: what a drain still waits for.
    pub fn undelivered(&self) -> usize {
        self.check().acknowledged_never_delivered.len()
    }

    /// Checks the history (see the module docs).
    pub fn check(&self) -> Report {
        let events = self.events.lock().clone();
        let mut sent: HashMap<&str, (&Stream, Outcome)> = HashMap::new();
        let mut deleted_at: HashMap<&str, u64> = HashMap::new();
        let mut report = Report::default();
        for event in &events {
            match event {
                Event::Send { stream, id, outcome, .. } => {
                    match outcome {
                        Outcome::Ok => report.sends_acknowledged += 1,
                        Outcome::Failed => report.sends_failed += 1,
                        Outcome::Unknown => report.sends_unknown += 1,
                    }
                    // A retry of the same id after an unknown outcome: the acknowledgement counts.
                    let entry = sent.entry(id).or_insert((stream, *outcome));
                    if *outcome == Outcome::Ok {
                        entry.1 = Outcome::Ok;
                    }
                }
                Event::Delete { id, ended_ms, outcome: Outcome::Ok } => {
                    let at = deleted_at.entry(id).or_insert(*ended_ms);
                    *at = (*at).min(*ended_ms);
                }
                _ => {}
            }
        }
        let mut deliveries: HashMap<&str, usize> = HashMap::new();
        for event in &events {
            let Event::Receive { stream, ids, started_ms } = event else { continue };
            for id in ids {
                report.deliveries += 1;
                *deliveries.entry(id).or_default() += 1;
                match sent.get(id.as_str()) {
                    None => report.delivered_never_sent.push(id.clone()),
                    Some((to, _)) if to.tenant != stream.tenant => {
                        report.wrong_tenant.push(format!("{id} (sent to {to}, delivered from {stream})"))
                    }
                    Some((to, _)) if *to != stream => {
                        report.wrong_queue.push(format!("{id} (sent to {to}, delivered from {stream})"))
                    }
                    Some(_) => {}
                }
                if deleted_at.get(id.as_str()).is_some_and(|deleted| started_ms > deleted) {
                    report.delivered_after_delete.push(id.clone());
                }
            }
        }
        report.duplicates = deliveries.values().map(|n| n - 1).sum();
        report.fifo_out_of_order = fifo_out_of_order(&events);
        let mut never: Vec<String> = sent
            .iter()
            .filter(|(id, (_, outcome))| *outcome == Outcome::Ok && !deliveries.contains_key(*id))
            .map(|(id, _)| id.to_string())
            .collect();
        never.sort();
        report.acknowledged_never_delivered = never;
        report.recoveries = recoveries(&events);
        report
    }
}

/// Messages of a FIFO stream (one group, sent in order, ids `STREAM/N`) delivered for the first
/// time before one sent earlier was: each as `id (after later)`.
fn fifo_out_of_order(events: &[Event]) -> Vec<String> {
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut last: HashMap<&Stream, (u64, &str)> = HashMap::new();
    let mut out = Vec::new();
    for event in events {
        let Event::Receive { stream, ids, .. } = event else { continue };
        if !stream.is_fifo() {
            continue;
        }
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let Some(n) = id.rsplit('/').next().and_then(|n| n.parse::<u64>().ok()) else { continue };
            if let Some((before, before_id)) = last.get(stream)
                && *before > n
            {
                out.push(format!("{id} (after {before_id})"));
            }
            let entry = last.entry(stream).or_insert((n, id.as_str()));
            if entry.0 < n {
                *entry = (n, id.as_str());
            }
        }
    }
    out
}

/// For each fault: how long until every stream that had a send acknowledged after it had one,
/// counting sends that started at or after the fault. `None` if some stream never did (it
/// stopped sending, or never recovered).
fn recoveries(events: &[Event]) -> Vec<(String, Option<u64>)> {
    let mut acked: BTreeMap<&Stream, Vec<(u64, u64)>> = BTreeMap::new();
    for event in events {
        if let Event::Send { stream, started_ms, ended_ms, outcome: Outcome::Ok, .. } = event {
            acked.entry(stream).or_default().push((*started_ms, *ended_ms));
        }
    }
    let streams: BTreeSet<&Stream> = acked.keys().copied().collect();
    events
        .iter()
        .filter_map(|e| match e {
            Event::Fault { label, at_ms } => Some((label.clone(), *at_ms)),
            _ => None,
        })
        .map(|(label, at_ms)| {
            let mut slowest = Some(0);
            for stream in &streams {
                let first = acked[stream].iter().filter(|(s, _)| *s >= at_ms).map(|(_, e)| e - at_ms).min();
                slowest = match (slowest, first) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            (label, slowest)
        })
        .collect()
}

/// What [`History::check`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub sends_acknowledged: usize,
    pub sends_failed: usize,
    pub sends_unknown: usize,
    pub deliveries: usize,
    pub acknowledged_never_delivered: Vec<String>,
    pub delivered_never_sent: Vec<String>,
    pub wrong_tenant: Vec<String>,
    pub wrong_queue: Vec<String>,
    pub delivered_after_delete: Vec<String>,
    /// Deliveries beyond each message's first.
    pub duplicates: usize,
    /// FIFO messages first delivered after one sent later (see [`fifo_out_of_order`]).
    pub fifo_out_of_order: Vec<String>,
    /// Per fault, in order: its label and the recovery time in ms (`None`: no recovery seen).
    pub recoveries: Vec<(String, Option<u64>)>,
}

impl Report {
    /// Whether every must-be-zero count is zero.
    pub fn is_safe(&self) -> bool {
        self.acknowledged_never_delivered.is_empty()
            && self.delivered_never_sent.is_empty()
            && self.wrong_tenant.is_empty()
            && self.wrong_queue.is_empty()
            && self.delivered_after_delete.is_empty()
            && self.fifo_out_of_order.is_empty()
    }

    /// The recovery time at quantile `q` (0-1) over the faults that recovered.
    pub fn recovery_ms_quantile(&self, q: f64) -> Option<u64> {
        let mut times: Vec<u64> = self.recoveries.iter().filter_map(|(_, t)| *t).collect();
        times.sort_unstable();
        let last = times.len().checked_sub(1)?;
        Some(times[((last as f64) * q).round() as usize])
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(items: &[String]) -> String {
            let shown: Vec<&str> = items.iter().take(10).map(String::as_str).collect();
            format!("{}{}", shown.join(", "), if items.len() > shown.len() { ", ..." } else { "" })
        }
        writeln!(
            f,
            "sends: {} acknowledged, {} failed, {} unknown; {} deliveries",
            self.sends_acknowledged, self.sends_failed, self.sends_unknown, self.deliveries
        )?;
        for (what, items) in [
            ("acknowledged sends never delivered", &self.acknowledged_never_delivered),
            ("deliveries of messages never sent", &self.delivered_never_sent),
            ("deliveries to the wrong tenant", &self.wrong_tenant),
            ("deliveries to the wrong queue", &self.wrong_queue),
            ("deliveries after a successful delete", &self.delivered_after_delete),
            ("FIFO messages delivered before one sent earlier", &self.fifo_out_of_order),
        ] {
            writeln!(f, "{what}: {} {}", items.len(), list(items))?;
        }
        writeln!(f, "duplicates: {}", self.duplicates)?;
        for (label, ms) in &self.recoveries {
            match ms {
                Some(ms) => writeln!(f, "recovery after {label}: {ms} ms")?,
                None => writeln!(f, "recovery after {label}: none seen")?,
            }
        }
        let p = |q| self.recovery_ms_quantile(q).map_or("-".to_owned(), |ms| format!("{ms} ms"));
        write!(f, "recovery p50 {}, p99 {}", p(0.5), p(0.99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(history: &History, event: Event) {
        history.push(event);
    }

    fn send(stream: &Stream, id: &str, started_ms: u64, ended_ms: u64, outcome: Outcome) -> Event {
        Event::Send { stream: stream.clone(), id: id.into(), started_ms, ended_ms, outcome }
    }

    fn receive(stream: &Stream, ids: &[&str], started_ms: u64) -> Event {
        Event::Receive { stream: stream.clone(), ids: ids.iter().map(|s| s.to_string()).collect(), started_ms }
    }

    #[test]
    fn a_clean_history_is_safe_and_counts_duplicates() {
        let a = Stream::new("t1", "q");
        let h = History::new();
        at(&h, send(&a, "m1", 0, 5, Outcome::Ok));
        at(&h, send(&a, "m2", 5, 9, Outcome::Unknown));
        at(&h, send(&a, "m3", 9, 12, Outcome::Failed));
        at(&h, receive(&a, &["m1", "m2"], 10));
        at(&h, receive(&a, &["m1"], 11));
        at(&h, Event::Delete { id: "m1".into(), ended_ms: 20, outcome: Outcome::Ok });
        let report = h.check();
        assert!(report.is_safe(), "{report}");
        assert_eq!(report.duplicates, 1);
        assert_eq!((report.sends_acknowledged, report.sends_unknown, report.sends_failed), (1, 1, 1));
        assert_eq!(report.deliveries, 3);
    }

    #[test]
    fn each_violation_is_reported() {
        let a = Stream::new("t1", "q");
        let a2 = Stream::new("t1", "other");
        let b = Stream::new("t2", "q");
        let h = History::new();
        at(&h, send(&a, "lost", 0, 1, Outcome::Ok));
        at(&h, send(&a, "crossed", 0, 1, Outcome::Ok));
        at(&h, send(&a, "moved", 0, 1, Outcome::Ok));
        at(&h, send(&a, "deleted", 0, 1, Outcome::Ok));
        at(&h, receive(&b, &["crossed"], 2));
        at(&h, receive(&a2, &["moved"], 2));
        at(&h, receive(&a, &["invented", "deleted"], 2));
        at(&h, Event::Delete { id: "deleted".into(), ended_ms: 3, outcome: Outcome::Ok });
        // Concurrent with the delete (started before it ended): not a violation.
        at(&h, receive(&a, &["deleted"], 3));
        at(&h, receive(&a, &["deleted"], 4));
        let report = h.check();
        assert!(!report.is_safe());
        assert_eq!(report.acknowledged_never_delivered, ["lost"]);
        assert_eq!(report.delivered_never_sent, ["invented"]);
        assert_eq!(report.wrong_tenant.len(), 1, "{report}");
        assert!(report.wrong_tenant[0].starts_with("crossed"));
        assert_eq!(report.wrong_queue.len(), 1, "{report}");
        assert_eq!(report.delivered_after_delete, ["deleted"]);
        assert_eq!(report.duplicates, 2);
    }

    #[test]
    fn a_retried_send_counts_once_acknowledged() {
        let a = Stream::new("t1", "q");
        let h = History::new();
        at(&h, send(&a, "m", 0, 1, Outcome::Unknown));
        at(&h, send(&a, "m", 2, 3, Outcome::Ok));
        assert_eq!(h.check().acknowledged_never_delivered, ["m"]);
        assert_eq!(h.undelivered(), 1);
        at(&h, receive(&a, &["m"], 4));
        assert_eq!(h.undelivered(), 0);
    }

    #[test]
    fn recovery_waits_for_every_stream_and_windows_find_unsafe_acks() {
        let a = Stream::new("t1", "a");
        let b = Stream::new("t1", "b");
        let h = History::new();
        at(&h, send(&a, "a0", 0, 1, Outcome::Ok));
        at(&h, send(&b, "b0", 0, 1, Outcome::Ok));
        at(&h, Event::Fault { label: "kill".into(), at_ms: 10 });
        // Started before the fault: does not count as recovered.
        at(&h, send(&a, "a1", 9, 15, Outcome::Ok));
        at(&h, send(&a, "a2", 11, 30, Outcome::Ok));
        at(&h, send(&b, "b1", 12, 40, Outcome::Unknown));
        at(&h, send(&b, "b2", 41, 110, Outcome::Ok));
        at(&h, Event::Fault { label: "stop".into(), at_ms: 200 });
        at(&h, send(&a, "a3", 201, 250, Outcome::Ok));
        let report = h.check();
        assert_eq!(report.recoveries, [("kill".to_owned(), Some(100)), ("stop".to_owned(), None)]);
        assert_eq!(report.recovery_ms_quantile(0.5), Some(100));
        assert_eq!(h.acknowledged_sends_between(std::slice::from_ref(&b), 12, 200), ["b2"]);
        assert!(h.acknowledged_sends_between(std::slice::from_ref(&b), 12, 100).is_empty());
    }

    #[test]
    fn a_fifo_message_first_delivered_after_one_sent_later_is_out_of_order() {
        let history = History::new();
        let (fifo, standard) = (Stream::new("t", "q.fifo"), Stream::new("t", "q"));
        let ids = |ns: &[u32], stream: &Stream| ns.iter().map(|n| format!("{stream}/{n}")).collect::<Vec<_>>();
        at(&history, Event::Receive { stream: fifo.clone(), ids: ids(&[0, 2], &fifo), started_ms: 1 });
        // 0 again is a redelivery, not a first delivery; 1 came after 2.
        at(&history, Event::Receive { stream: fifo.clone(), ids: ids(&[1, 0, 3], &fifo), started_ms: 2 });
        at(&history, Event::Receive { stream: standard.clone(), ids: ids(&[5, 4], &standard), started_ms: 3 });
        assert_eq!(history.check().fifo_out_of_order, ["t/q.fifo/1 (after t/q.fifo/2)"]);
    }
}
