//! The job card: what two processes tell each other about their job once
//! they have authenticated, and how two cards are compared so that a
//! mismatch names the keys that differ.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the caller says about its job. Every process of a cluster must
/// describe the same job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobDescription {
    /// Everything that must be equal on every process, as a JSON tree
    /// whose dotted paths name the difference in messages (e.g. the resolved
    /// pipeline less outputs and data paths, with each data file's size and
    /// footer digest).
    pub identity: Value,
    /// Local names for keys of `identity` (e.g. `data.train[0]` → the local
    /// path of that file), added to a message about a difference at or
    /// below that key. Never sent: paths may differ between machines.
    pub labels: BTreeMap<String, String>,
}

/// The card on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Card {
    /// The handshake protocol version.
    pub protocol: u32,
    /// The tidemill version.
    pub tidemill: String,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// The sender's process index (not compared).
    pub process: usize,
    /// [`JobDescription::identity`].
    pub job: Value,
}

/// The most differences a message names.
const SHOWN: usize = 4;

/// The longest value shown in a message, in characters.
const VALUE_CHARS: usize = 80;

/// The differences between two cards (the process index aside), as
/// `key = there there, here here` items joined by `; `, or `None` when the
/// cards describe the same job.
pub(crate) fn differences(
    here: &Card,
    there: &Card,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    let field = |name: &'static str, get: fn(&Card) -> String| (name, get(here), get(there));
    let header = [
        field("handshake protocol", |c| c.protocol.to_string()),
        field("tidemill version", |c| c.tidemill.clone()),
        field("--processes", |c| c.processes.to_string()),
        field("--workers", |c| c.workers.to_string()),
    ];
    let mut found: Vec<String> = header
        .into_iter()
        .filter(|(_, here, there)| here != there)
        .map(|(name, here, there)| format!("{name} {there} there, {here} here"))
        .collect();
    let mut keys = Vec::new();
    walk(String::new(), &here.job, &there.job, &mut keys);
    found.extend(keys.iter().map(|d| d.describe(labels)));
    if found.is_empty() {
        return None;
    }
    let more = found.len().saturating_sub(SHOWN);
    found.truncate(SHOWN);
    let mut message = found.join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Some(message)
}

/// One differing key.
struct Difference<'a> {
    key: String,
    here: Option<&'a Value>,
    there: Option<&'a Value>,
}

impl Difference<'_> {
    fn describe(&self, labels: &BTreeMap<String, String>) -> String {
        let key = if self.key.is_empty() {
            "the job"
        } else {
            &self.key
        };
        let mut text = format!(
            "{key} = {} there, {} here",
            show(self.there),
            show(self.here)
        );
        let label = labels
            .iter()
            .filter(|(prefix, _)| {
                self.key
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
            .max_by_key(|(prefix, _)| prefix.len());
        if let Some((_, name)) = label {
            text.push_str(&format!(" ({name} here)"));
        }
        text
    }
}

/// The most differing keys collected (messages show a few).
const COLLECTED: usize = 64;

/// Collects the keys under `key` where the two trees differ.
fn walk<'a>(key: String, here: &'a Value, there: &'a Value, out: &mut Vec<Difference<'a>>) {
    if here == there || out.len() >= COLLECTED {
        return;
    }
    let child = |name: &str| {
        if key.is_empty() {
            name.to_string()
        } else {
            format!("{key}.{name}")
        }
    };
    match (here, there) {
        (Value::Object(h), Value::Object(t)) => {
            for (name, hv) in h {
                match t.get(name) {
                    Some(tv) => walk(child(name), hv, tv, out),
                    None => out.push(Difference {
                        key: child(name),
                        here: Some(hv),
                        there: None,
                    }),
                }
            }
            for (name, tv) in t.iter().filter(|(n, _)| !h.contains_key(*n)) {
                out.push(Difference {
                    key: child(name),
                    here: None,
                    there: Some(tv),
                });
            }
        }
        (Value::Array(h), Value::Array(t)) => {
            for i in 0..h.len().max(t.len()) {
                let key = format!("{key}[{i}]");
                match (h.get(i), t.get(i)) {
                    (Some(hv), Some(tv)) => walk(key, hv, tv, out),
                    (here, there) => out.push(Difference { key, here, there }),
                }
            }
        }
        _ => out.push(Difference {
            key,
            here: Some(here),
            there: Some(there),
        }),
    }
}

/// A value for a message: compact JSON, shortened; `(absent)` for none.
fn show(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(absent)".into();
    };
    let text = v.to_string();
    if text.chars().count() <= VALUE_CHARS {
        text
    } else {
        let short: String = text.chars().take(VALUE_CHARS).collect();
        format!("{short}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn card(job: Value) -> Card {
        Card {
            protocol: 1,
            tidemill: "0.1.0".into(),
            processes: 2,
            workers: 1,
            process: 0,
            job,
        }
    }

    #[test]
    fn equal_cards_from_other_processes_agree() {
        let a = card(json!({"model": {"l2": 0.0001}}));
        let mut b = a.clone();
        b.process = 1;
        assert_eq!(differences(&a, &b, &BTreeMap::new()), None);
    }

    #[test]
    fn differences_name_the_dotted_keys_and_both_values() {
        let here = card(json!({"model": {"l2": 0.0001, "kind": "logistic"}, "data": {"seed": 1}}));
        let mut there =
            card(json!({"model": {"l2": 0.5, "kind": "logistic"}, "data": {"seed": 2}}));
        there.workers = 2;
        let d = differences(&here, &there, &BTreeMap::new()).unwrap();
        assert_eq!(
            d,
            "--workers 2 there, 1 here; model.l2 = 0.5 there, 0.0001 here; data.seed = 2 there, 1 here"
        );
    }

    #[test]
    fn arrays_and_labels() {
        let here = card(json!({"data": {"train": [{"size": 10}, {"size": 20}]}}));
        let there = card(json!({"data": {"train": [{"size": 10}, {"size": 21}, {"size": 5}]}}));
        let labels = BTreeMap::from([
            ("data.train[1]".to_string(), "b.parquet".to_string()),
            ("data.train[10]".to_string(), "k.parquet".to_string()),
        ]);
        let d = differences(&here, &there, &labels).unwrap();
        assert_eq!(
            d,
            "data.train[1].size = 21 there, 20 here (b.parquet here); data.train[2] = {\"size\":5} there, (absent) here"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let here = card(json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": "x".repeat(200)}));
        let there = card(json!({"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "f": "y"}));
        let d = differences(&here, &there, &BTreeMap::new()).unwrap();
        assert!(d.ends_with("; and 2 more"), "{d}");
    }
}
