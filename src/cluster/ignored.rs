//! The connections a waiting process ignored, summed up for the log: one
//! line at most every [`EVERY`], whatever the rate of strangers, so that a
//! flood cannot flood the log too.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The shortest time between two summaries.
pub const EVERY: Duration = Duration::from_secs(1);

/// The most distinct reasons a summary names; others are counted.
const REASONS: usize = 4;

/// The most addresses a summary names; the others are counted (up to
/// [`ADDRESSES_COUNTED`]).
const ADDRESSES_NAMED: usize = 3;
const ADDRESSES_COUNTED: usize = 1024;

/// Ignored connections since the last summary.
#[derive(Debug)]
pub(crate) struct Ignored {
    since: Instant,
    connections: u64,
    addresses: BTreeSet<IpAddr>,
    /// Reasons in order of first appearance, with their counts.
    reasons: Vec<(String, u64)>,
    /// Connections whose reason did not fit in `reasons`.
    other: u64,
}

impl Ignored {
    /// An empty tally that starts at `now`.
    pub fn new(now: Instant) -> Ignored {
        Ignored {
            since: now,
            connections: 0,
            addresses: BTreeSet::new(),
            reasons: Vec::new(),
            other: 0,
        }
    }

    /// Counts one ignored connection (from an unknown address: `None`).
    pub fn record(&mut self, from: Option<IpAddr>, reason: &str) {
        self.connections += 1;
        if let Some(ip) = from {
            if self.addresses.len() < ADDRESSES_COUNTED {
                self.addresses.insert(ip);
            }
        }
        if let Some((_, n)) = self.reasons.iter_mut().find(|(r, _)| r == reason) {
            *n += 1;
        } else if self.reasons.len() < REASONS {
            self.reasons.push((reason.to_string(), 1));
        } else {
            self.other += 1;
        }
    }

    /// The summary line, when there is something to say and [`EVERY`] has
    /// passed since the last one (or `now` is the end: `last`); the tally
    /// then starts again.
    pub fn summary(&mut self, now: Instant, last: bool) -> Option<String> {
        if self.connections == 0 || (!last && now.duration_since(self.since) < EVERY) {
            return None;
        }
        let n = self.connections;
        let count = self.addresses.len();
        let mut from = String::new();
        if count > 0 {
            let mut named: Vec<String> = self
                .addresses
                .iter()
                .take(ADDRESSES_NAMED)
                .map(IpAddr::to_string)
                .collect();
            if count > ADDRESSES_NAMED {
                named.push("…".into());
            }
            from = format!(
                " from {count}{} address{} ({})",
                if count >= ADDRESSES_COUNTED { "+" } else { "" },
                if count == 1 { "" } else { "es" },
                named.join(", ")
            );
        }
        let mut why: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count} × {reason}"))
            .collect();
        if self.other > 0 {
            why.push(format!("{} × other reasons", self.other));
        }
        let line = format!(
            "ignored {n} connection{}{from} in the last {:.1} s, not processes of this job; still waiting: {}",
            if n == 1 { "" } else { "s" },
            now.duration_since(self.since).as_secs_f64(),
            why.join("; ")
        );
        *self = Ignored::new(now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_whatever_the_rate() {
        let start = Instant::now();
        let mut tally = Ignored::new(start);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        for i in 0..10_000u32 {
            let from = if i % 2 == 0 { a } else { b };
            tally.record(Some(from), "it closed the connection during the handshake");
        }
        tally.record(Some(a), "it failed authentication");
        assert_eq!(
            tally.summary(start + Duration::from_millis(500), false),
            None
        );
        let line = tally.summary(start + EVERY, false).unwrap();
        assert_eq!(
            line,
            "ignored 10001 connections from 2 addresses (10.0.0.1, 10.0.0.2) in the last 1.0 s, \
             not processes of this job; still waiting: 10000 × it closed the connection during \
             the handshake; 1 × it failed authentication"
        );
        // The tally starts again; the end reports whatever is left at once.
        assert_eq!(tally.summary(start + EVERY * 3, false), None);
        tally.record(None, "accepting a connection failed: too many open files");
        let line = tally
            .summary(start + EVERY + Duration::from_millis(100), true)
            .unwrap();
        assert!(
            line.starts_with("ignored 1 connection in the last 0.1 s, not"),
            "{line}"
        );
    }

    #[test]
    fn reasons_and_addresses_are_capped() {
        let start = Instant::now();
        let mut tally = Ignored::new(start);
        for i in 0..2000u32 {
            let from = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            tally.record(Some(from), &format!("reason {}", i % 10));
        }
        let line = tally.summary(start + EVERY, false).unwrap();
        assert!(line.contains("from 1024+ addresses"), "{line}");
        assert!(line.contains(", …)"), "{line}");
        assert!(
            line.ends_with("200 × reason 3; 1200 × other reasons"),
            "{line}"
        );
    }
}
