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
