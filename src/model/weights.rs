//! The weights of a model file, typed: one number, numbers by name, or
//! (softmax) numbers by name per class.
//!
//! A file is read with a visitor that accepts numbers only where numbers go
//! — no arrays, no strings, no deeper nesting — so that what a file can
//! make tidemill hold is proportional to its size (about 1.5 bytes of
//! memory a byte of JSON), and a name listed twice is seen instead of one
//! silently replacing the other.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Named numbers, in file order.
pub type Named = Vec<(String, f64)>;

/// The weights under one key of a model file.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// A single number (an intercept).
    Number(f64),
    /// Numbers by name (feature or hashed slot).
    Named(Named),
    /// Numbers by name, per class (softmax).
    PerClass(Vec<(String, Named)>),
}

impl Weights {
    /// The number, if this is one.
    pub fn number(&self) -> Option<f64> {
        match self {
            Weights::Number(v) => Some(*v),
            _ => None,
        }
    }

    /// The named numbers, if these are.
    pub fn named(&self) -> Option<&Named> {
        match self {
            Weights::Named(v) => Some(v),
            // An empty object reads as `Named`; per class it is empty too.
            _ => None,
        }
    }

    /// The class entries, if these are per class (an empty object is a
    /// class list with no entries).
    pub fn per_class(&self) -> Option<Vec<(&str, Option<&Named>)>> {
        match self {
            Weights::PerClass(v) => Some(v.iter().map(|(c, n)| (c.as_str(), Some(n))).collect()),
            Weights::Named(v) if v.is_empty() => Some(Vec::new()),
            _ => None,
        }
    }
}

struct NamedRef<'a>(&'a Named);

impl Serialize for NamedRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Weights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Weights::Number(v) => s.serialize_f64(*v),
            Weights::Named(n) => NamedRef(n).serialize(s),
            Weights::PerClass(classes) => {
                let mut m = s.serialize_map(Some(classes.len()))?;
                for (c, n) in classes {
                    m.serialize_entry(c, &NamedRef(n))?;
                }
                m.end()
            }
        }
    }
}

/// One value inside an object of weights: a number, or an object of numbers.
enum Entry {
    Number(f64),
    Named(Named),
}

/// Reads an object of numbers.
fn read_named<'de, A: MapAccess<'de>>(mut map: A) -> Result<Named, A::Error> {
    let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
    while let Some(key) = map.next_key::<String>()? {
        let v: f64 = map.next_value()?;
        out.push((key, v));
    }
    Ok(out)
}

struct EntrySeed;

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = Entry;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or an object of numbers")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Entry, E> {
                Ok(Entry::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Entry, E> {
                Ok(Entry::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Entry, E> {
                Ok(Entry::Number(v as f64))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                read_named(map).map(Entry::Named)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Weights, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Weights;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, an object of numbers, or an object of such objects")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weights, E> {
                Ok(Weights::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weights, E> {
                Ok(Weights::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weights, E> {
                Ok(Weights::Number(v as f64))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Weights, A::Error> {
                let mut numbers: Named = Vec::new();
                let mut classes: Vec<(String, Named)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match map.next_value_seed(EntrySeed)? {
                        Entry::Number(v) => numbers.push((key, v)),
                        Entry::Named(n) => classes.push((key, n)),
                    }
                    if !numbers.is_empty() && !classes.is_empty() {
                        return Err(de::Error::custom(
                            "an object mixes numbers and objects of numbers",
                        ));
                    }
                }
                Ok(if classes.is_empty() {
                    Weights::Named(numbers)
                } else {
                    Weights::PerClass(classes)
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The first name listed twice in `named`, if any.
pub fn repeated(named: &Named) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(named.len());
    named
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !seen.insert(*k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_shape() {
        for text in [
            "1.5",
            r#"{"a":1.0,"b":-2.5}"#,
            r#"{"x":{"a":1.0},"y":{"a":2.0,"b":0.5}}"#,
            "{}",
        ] {
            let w: Weights = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(serde_json::to_string(&w).ok().as_deref(), Some(text));
        }
    }

    #[test]
    fn refuses_what_is_not_weights() {
        for text in [
            "[1, 2]",
            r#""1""#,
            "null",
            r#"{"a":[1]}"#,
            r#"{"a":{"b":{"c":1}}}"#,
            r#"{"a":1,"b":{"c":1}}"#,
        ] {
            assert!(serde_json::from_str::<Weights>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn keys_listed_twice_are_kept_to_be_seen() {
        let w: Weights = serde_json::from_str(r#"{"a":1,"a":2}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.named().and_then(repeated), Some("a"));
    }
}
