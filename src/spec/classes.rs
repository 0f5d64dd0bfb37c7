//! Class lists: how many a model may have and what makes a list valid.
//! The pipeline checks `data.classes` with them; the decoder and model files
//! use the same rules.

use std::collections::HashMap;

/// The most classes a model may have.
pub const MAX_CLASSES: usize = 10_000;

/// Checks a list of class names: at least one, no name twice, and no two
/// names that are the same number (`"1"` and `"1.0"` would both match the
/// label value 1). The message names the offending classes.
pub fn check_classes(names: &[String]) -> std::result::Result<(), String> {
    if names.is_empty() {
        return Err("no classes".into());
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(j) = seen.insert(n.as_str(), i) {
            return Err(format!(
                "class '{n}' is listed twice (positions {j} and {i}): every class must be distinct"
            ));
        }
    }
    let mut values: Vec<(f64, &str)> = names
        .iter()
        .filter_map(|n| n.parse::<f64>().ok().map(|v| (v + 0.0, n.as_str())))
        .collect();
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(w) = values.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "classes '{}' and '{}' are the same number: a label value would match both",
            w[0].1, w[1].1
        ));
    }
    Ok(())
}
