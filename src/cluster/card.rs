//! The job card: what two processes tell each other about their job once
//! they have authenticated, and how two cards are compared so that a
//! mismatch names the keys that differ.
//!
//! The card carries the job description as a digest of its canonical
//! JSON (object keys sorted), so that its size does not grow with the data
//! files; the descriptions themselves travel only when the digests differ,
//! to name what differs.

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
    /// The build fingerprint: a digest of the sources tidemill was built
    /// from (`TIDEMILL_BUILD`, see `build/fingerprint.rs`).
    pub build: String,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// The sender's process index (not compared).
    pub process: usize,
    /// [`Job::digest`] of [`JobDescription::identity`].
    pub job: String,
}

/// A job description as it is hashed and sent: canonical JSON (object
/// keys sorted, no white space), so that equal descriptions have equal
/// bytes on every machine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Job {
    /// The canonical JSON.
    pub bytes: Vec<u8>,
    /// The description parsed back from `bytes`, so that both sides
    /// compare values that went through JSON alike.
    pub value: Value,
    /// The BLAKE3 digest of `bytes`, in hex.
    pub digest: String,
}

impl Job {
    /// The canonical form of `identity`.
    pub fn new(identity: &Value) -> serde_json::Result<Job> {
        let mut bytes = Vec::new();
        canonical(identity, &mut bytes)?;
        let value = serde_json::from_slice(&bytes)?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        Ok(Job {
            bytes,
            value,
            digest,
        })
    }
}

/// Writes `v` as JSON with the keys of every object sorted.
fn canonical(v: &Value, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match v {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                canonical(item, out)?;
            }
            out.push(b'}');
        }
        leaf => serde_json::to_writer(out, leaf)?,
    }
    Ok(())
}

/// The most differences a message names.
const SHOWN: usize = 4;

/// The longest value shown in a message, in characters.
const VALUE_CHARS: usize = 80;

/// The digits of a digest shown in a message.
const DIGEST_CHARS: usize = 16;

/// The differences between the compared fields of two cards (the process
/// index and the job digest aside), as `name there there, here here`.
pub(crate) fn differences(here: &Card, there: &Card) -> Vec<String> {
    let field = |name: &'static str, get: fn(&Card) -> String| (name, get(here), get(there));
    let header = [
        field("handshake protocol", |c| c.protocol.to_string()),
        field("tidemill version", |c| c.tidemill.clone()),
        field("tidemill build", |c| c.build.clone()),
        field("--processes", |c| c.processes.to_string()),
        field("--workers", |c| c.workers.to_string()),
    ];
    header
        .into_iter()
        .filter(|(_, here, there)| here != there)
        .map(|(name, here, there)| format!("{name} {there} there, {here} here"))
        .collect()
}

/// The differences between two job descriptions, as `key = there there,
/// here here` with the local label of the key, if any.
pub(crate) fn job_differences(
    here: &Value,
    there: &Value,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut keys = Vec::new();
    walk(String::new(), here, there, &mut keys);
    keys.iter().map(|d| d.describe(labels)).collect()
}

/// The difference of two job digests whose descriptions were not compared
/// key by key.
pub(crate) fn digest_difference(here: &str, there: &str, why: &str) -> String {
    let short = |d: &str| d.chars().take(DIGEST_CHARS).collect::<String>();
    format!(
        "the job description (digest {} there, {} here; {why})",
        short(there),
        short(here)
    )
}

/// The first differences joined by `; ` for a message, or `None` when
/// there are none.
pub(crate) fn summary(mut found: Vec<String>) -> Option<String> {
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

    fn card(job: Value) -> (Card, Job) {
        let job = Job::new(&job).unwrap();
        let card = Card {
            protocol: 1,
            tidemill: "0.1.0".into(),
            build: "0123456789abcdef".into(),
            processes: 2,
            workers: 1,
            process: 0,
            job: job.digest.clone(),
        };
        (card, job)
    }

    /// What the handshake reports for two cards.
    fn compare(
        here: &(Card, Job),
        there: &(Card, Job),
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut found = differences(&here.0, &there.0);
        if here.0.job != there.0.job {
            found.extend(job_differences(&here.1.value, &there.1.value, labels));
        }
        summary(found)
    }

    #[test]
    fn equal_cards_from_other_processes_agree() {
        let a = card(json!({"model": {"l2": 0.0001}}));
        let mut b = a.clone();
        b.0.process = 1;
        assert_eq!(compare(&a, &b, &BTreeMap::new()), None);
    }

    #[test]
    fn equal_descriptions_have_one_digest_whatever_their_key_order() {
        let a = card(json!({"model": {"l2": 0.5, "kind": "logistic"}, "data": {"seed": 1}}));
        let b = card(json!({"data": {"seed": 1}, "model": {"kind": "logistic", "l2": 0.5}}));
        assert_eq!(a.1.digest, b.1.digest);
        assert_eq!(
            String::from_utf8(a.1.bytes).unwrap(),
            r#"{"data":{"seed":1},"model":{"kind":"logistic","l2":0.5}}"#
        );
        assert_ne!(a.1.digest, card(json!({"data": {"seed": 2}})).1.digest);
    }

    #[test]
    fn differences_name_the_dotted_keys_and_both_values() {
        let here = card(json!({"model": {"l2": 0.0001, "kind": "logistic"}, "data": {"seed": 1}}));
        let mut there =
            card(json!({"model": {"l2": 0.5, "kind": "logistic"}, "data": {"seed": 2}}));
        there.0.workers = 2;
        there.0.build = "fedcba9876543210".into();
        let d = compare(&here, &there, &BTreeMap::new()).unwrap();
        assert_eq!(
            d,
            "tidemill build fedcba9876543210 there, 0123456789abcdef here; --workers 2 there, 1 here; data.seed = 2 there, 1 here; model.l2 = 0.5 there, 0.0001 here"
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
        let d = compare(&here, &there, &labels).unwrap();
        assert_eq!(
            d,
            "data.train[1].size = 21 there, 20 here (b.parquet here); data.train[2] = {\"size\":5} there, (absent) here"
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let here = card(json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": "x".repeat(200)}));
        let there = card(json!({"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "f": "y"}));
        let d = compare(&here, &there, &BTreeMap::new()).unwrap();
        assert!(d.ends_with("; and 2 more"), "{d}");
    }

    #[test]
    fn a_digest_difference_names_both_digests_shortly() {
        let d = digest_difference(&"a".repeat(64), &"b".repeat(64), "too large");
        assert_eq!(
            d,
            "the job description (digest bbbbbbbbbbbbbbbb there, aaaaaaaaaaaaaaaa here; too large)"
        );
    }
}
