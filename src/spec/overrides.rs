//! `--set key.path=value` overrides applied to the parsed TOML before typing.

use crate::error::{Error, Result};

/// Applies one `key.path=value` assignment to a TOML document.
///
/// The value is parsed as a TOML value (`0.1`, `true`, `"x"`, `[1, 2]`,
/// `{ fraction = 0.2 }`); if it does not parse, it is taken as a string.
pub fn apply(doc: &mut toml::Table, assignment: &str) -> Result<()> {
    let bad = |message: &str| Error::Override {
        assignment: assignment.to_string(),
        message: message.to_string(),
    };
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected key.path=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(bad("empty key"));
    }
    let value = parse_value(value.trim());
    let parts: Vec<&str> = key.split('.').collect();
    let (last, parents) = parts.split_last().ok_or_else(|| bad("empty key"))?;
    let mut table = doc;
    for part in parents {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("'{part}' is not a table")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// The key path an assignment sets (`model.l2` of `model.l2=0.5`).
fn key_of(assignment: &str) -> &str {
    assignment
        .split_once('=')
        .map_or(assignment, |(k, _)| k.trim())
}

/// The assignment among `overrides` that set `key` (or a table above or a
/// key below it), if any; the last one wins, as it does when applied.
pub fn setting<'a>(overrides: &'a [String], key: &str) -> Option<&'a str> {
    overrides
        .iter()
        .rev()
        .find(|a| {
            let k = key_of(a);
            k == key
                || key.strip_prefix(k).is_some_and(|r| r.starts_with('.'))
                || k.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
        })
        .map(String::as_str)
}

/// The assignment a typing error of the overridden document is blamed on:
/// the last one whose key (or its last part) the parser's `message` names
/// in backquotes.
pub fn named<'a>(overrides: &'a [String], message: &str) -> Option<&'a str> {
    overrides
        .iter()
        .rev()
        .find(|a| {
            let k = key_of(a);
            let last = k.rsplit('.').next().unwrap_or(k);
            message.contains(&format!("`{last}`")) || message.contains(&format!("`{k}`"))
        })
        .map(String::as_str)
}

/// `message` from the TOML parser, with "did you mean" added to an
/// unknown field's ``unknown field `x`, expected one of `a`, `b` ``.
pub fn suggest(message: &str) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return message.to_string();
    };
    let Some((wrong, after)) = rest.split_once('`') else {
        return message.to_string();
    };
    let expected: Vec<&str> = after
        .split_once("expected one of ")
        .map(|(_, list)| list.lines().next().unwrap_or(list))
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().trim_matches('`'))
        .filter(|s| !s.is_empty())
        .collect();
    match crate::error::nearest(wrong, &expected) {
        Some(n) => format!("{message} (did you mean `{n}`?)"),
        None => message.to_string(),
    }
}

fn parse_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_are_traced_to_their_assignment_with_a_suggestion() {
        let sets = vec![
            "model.l2=abc".to_string(),
            "data.partition=slice".to_string(),
        ];
        assert_eq!(setting(&sets, "model.l2"), Some("model.l2=abc"));
        assert_eq!(setting(&sets, "model"), Some("model.l2=abc"));
        assert_eq!(setting(&sets, "model.l1"), None);
        assert_eq!(
            setting(&sets, "data.partition.x"),
            Some("data.partition=slice")
        );
        assert_eq!(
            named(
                &sets,
                "invalid type: string \"abc\", expected f64\nin `model.l2`"
            ),
            Some("model.l2=abc")
        );
        assert_eq!(named(&sets, "something"), None);
        let m = "unknown field `l3`, expected one of `kind`, `l2`, `l1`\nin `model`";
        assert!(
            suggest(m).ends_with("(did you mean `l2`?)"),
            "{}",
            suggest(m)
        );
        assert_eq!(
            suggest("unknown field `zzzzzz`, expected one of `kind`"),
            "unknown field `zzzzzz`, expected one of `kind`"
        );
        assert_eq!(suggest("other"), "other");
    }

    #[test]
    fn sets_nested_and_typed_values() {
        let mut doc: toml::Table = "[model]\nkind = \"linear\"\n".parse().unwrap();
        apply(&mut doc, "model.l2=0.5").unwrap();
        apply(&mut doc, "optimizer.kind=adam").unwrap();
        apply(&mut doc, "data.validation={ fraction = 0.25 }").unwrap();
        assert_eq!(doc["model"]["l2"].as_float(), Some(0.5));
        assert_eq!(doc["optimizer"]["kind"].as_str(), Some("adam"));
        assert_eq!(doc["data"]["validation"]["fraction"].as_float(), Some(0.25));
    }

    #[test]
    fn rejects_malformed_assignments() {
        let mut doc = toml::Table::new();
        assert!(apply(&mut doc, "no_equals").is_err());
        assert!(apply(&mut doc, "a..b=1").is_err());
        apply(&mut doc, "a=1").unwrap();
        assert!(apply(&mut doc, "a.b=1").is_err());
    }
}
