//! `tidemill init DATA`: a commented starter pipeline from a table's
//! schema and a sample of its rows — the label, numeric and categorical
//! columns, columns left out and why, the model the label calls for, a
//! validation split and an optimizer — that `validate` accepts as written.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;

use crate::error::{Error, Result};
use crate::io::table::{self, CsvColumns};
use crate::plan::features::{is_numeric_type, is_token_type};

/// Rows read to describe the columns.
const SAMPLE_ROWS: usize = 100_000;
/// Distinct values counted per column (beyond this a column is "many").
const DISTINCT_CAP: usize = 1_000;
/// Most classes a label may have for a classifier to be suggested.
const MAX_CLASSES: usize = 50;
/// Names that usually mean "the label", checked in this order.
const LABEL_NAMES: [&str; 10] = [
    "label", "target", "y", "class", "outcome", "income", "clicked", "churn", "price", "result",
];

/// What the sample says about one column.
struct Column {
    name: String,
    data_type: DataType,
    /// Distinct non-null values seen, up to [`DISTINCT_CAP`] (as text).
    distinct: BTreeSet<String>,
    /// Nulls seen.
    nulls: usize,
}

impl Column {
    fn many(&self) -> bool {
        self.distinct.len() >= DISTINCT_CAP
    }

    fn observe(&mut self, array: &ArrayRef) {
        self.nulls += array.null_count();
        if self.many() {
            return;
        }
        for i in 0..array.len() {
            if array.is_valid(i) {
                if let Ok(v) = array_value_to_string(array, i) {
                    self.distinct.insert(v);
                    if self.many() {
                        return;
                    }
                }
            }
        }
    }
}

/// Writes a starter pipeline for the table at `data` (a path, or `-`), with
/// `label` as its label if given.
pub fn starter(data: &str, label: Option<&str>) -> Result<String> {
    // A directory: its first file stands for all (the pipeline names it all).
    let sample = match Path::new(data) {
        p if data != "-" && p.is_dir() => {
            let files = crate::source::files::resolve(&[p.to_path_buf()])?;
            files.into_iter().next().ok_or_else(|| Error::Usage {
                option: "DATA".into(),
                message: format!("{data} holds no Parquet file"),
            })?
        }
        p => p.to_path_buf(),
    };
    let csv = CsvColumns::Inferred(Vec::new());
    let input = if data == "-" {
        table::open("-", &csv)?
    } else {
        table::open_detected(&sample, &csv)?
    };
    let schema = input.schema.clone();
    let mut columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().clone(),
            distinct: BTreeSet::new(),
            nulls: 0,
        })
        .collect();
    let mut rows = 0usize;
    for batch in input {
        let (batch, _) = batch?;
        for (c, array) in columns.iter_mut().zip(batch.columns()) {
            c.observe(array);
        }
        rows += batch.num_rows();
        if rows >= SAMPLE_ROWS {
            break;
        }
    }
    if rows == 0 {
        return Err(Error::Usage {
            option: "DATA".into(),
            message: format!("{data} has no rows to describe"),
        });
    }
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let label = match label {
        Some(l) if names.contains(&l) => l.to_string(),
        Some(l) => {
            let hint = crate::error::hint(l, &names);
            return Err(Error::Usage {
                option: "--label".into(),
                message: format!("'{l}' is not a column of {data}{hint}"),
            });
        }
        None => guess_label(&columns),
    };
    let Some(y) = columns.iter().find(|c| c.name == label) else {
        return Err(Error::Usage {
            option: "DATA".into(),
            message: format!("{data} has no column to take as the label"),
        });
    };
    let refuse = |why: String| Error::Usage {
        option: "--label".into(),
        message: format!("'{label}' {why}: name the label with --label"),
    };
    if y.distinct.len() < 2 {
        return Err(refuse("has fewer than two values in the sample".into()));
    }
    let text = !is_numeric_type(&y.data_type);
    if text && (y.many() || y.distinct.len() > MAX_CLASSES) {
        return Err(refuse(format!(
            "is text with more than {MAX_CLASSES} values: neither classes nor a number"
        )));
    }
    if !is_numeric_type(&y.data_type) && !is_token_type(&y.data_type) {
        return Err(refuse(format!(
            "has type {}, which no model takes as a label",
            y.data_type
        )));
    }
    Ok(render(data, &label, y, &columns, rows))
}

/// The column most likely to be the label: a usual name, else the last.
fn guess_label(columns: &[Column]) -> String {
    for want in LABEL_NAMES {
        if let Some(c) = columns.iter().find(|c| c.name.eq_ignore_ascii_case(want)) {
            return c.name.clone();
        }
    }
    columns.last().map(|c| c.name.clone()).unwrap_or_default()
}

/// What to do with a non-label column, and why (a comment).
enum Role {
    Numeric,
    Categorical,
    Exclude(&'static str),
}

fn role(c: &Column, rows: usize) -> Role {
    let t = &c.data_type;
    let all_distinct = !c.many() && c.distinct.len() + c.nulls == rows && rows > 50;
    if c.distinct.len() <= 1 {
        return Role::Exclude("one value: nothing to learn from");
    }
    let lower = c.name.to_ascii_lowercase();
    if lower == "id" || lower.ends_with("_id") || lower.ends_with(" id") {
        return Role::Exclude("an identifier, by its name (data.key names rows for `forget`)");
    }
    if is_numeric_type(t) {
        return Role::Numeric;
    }
    if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(..))
    {
        if c.many() || all_distinct {
            return Role::Exclude("a distinct value on (nearly) every row: an id, not a category");
        }
        return Role::Categorical;
    }
    if is_token_type(t) {
        return Role::Categorical;
    }
    Role::Exclude("a type tidemill does not train on")
}

/// A TOML string (escaped as TOML escapes it).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A name as a comment may show it: control characters as `?`.
fn shown(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn quoted(v: &[&str]) -> String {
    let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

fn render(data: &str, label: &str, y: &Column, columns: &[Column], rows: usize) -> String {
    let classes: Vec<&str> = y.distinct.iter().map(String::as_str).collect();
    let classify = !y.many()
        && (classes.len() <= MAX_CLASSES)
        && (!y.data_type.is_floating() || classes.len() <= 2);
    let (kind, why) = if !classify {
        (
            "linear",
            "a numeric label with many values: regression (squared loss)",
        )
    } else if classes.len() == 2 {
        ("logistic", "two label values: binary logistic regression")
    } else {
        (
            "softmax",
            "a few label values: multinomial (softmax) regression",
        )
    };
    let mut numeric = Vec::new();
    let mut categorical = Vec::new();
    let mut excluded: Vec<(&str, &str)> = Vec::new();
    for c in columns.iter().filter(|c| c.name != label) {
        match role(c, rows) {
            Role::Numeric => numeric.push(c.name.as_str()),
            Role::Categorical => categorical.push(c.name.as_str()),
            Role::Exclude(why) => excluded.push((c.name.as_str(), why)),
        }
    }
    let stem = Path::new(data)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| *s != "-" && !s.is_empty())
        .unwrap_or("model");
    let lbfgs = rows < 1_000_000 && kind != "softmax";
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# A starter pipeline written by `tidemill init` from {data}"
    );
    let _ = writeln!(
        t,
        "# ({rows} rows sampled). Check it with `tidemill validate`, then train it."
    );
    let _ = writeln!(t, "\n[data]");
    let _ = writeln!(t, "train = {}", toml_str(data));
    let _ = writeln!(t, "label = {}", toml_str(label));
    let _ = writeln!(
        t,
        "validation = {{ fraction = 0.2 }}   # or {{ path = \"holdout.parquet\" }}"
    );
    let _ = writeln!(
        t,
        "# numeric features ({}): {}",
        numeric.len(),
        if numeric.is_empty() {
            "none".into()
        } else {
            numeric.join(", ")
        }
    );
    let _ = writeln!(
        t,
        "categorical = {}   # hashed into 2^hash_bits slots",
        quoted(&categorical)
    );
    if !excluded.is_empty() {
        let _ = writeln!(
            t,
            "exclude = {}",
            quoted(&excluded.iter().map(|e| e.0).collect::<Vec<_>>())
        );
        for (name, why) in &excluded {
            let _ = writeln!(t, "#   {}: {why}", shown(name));
        }
    }
    // Text classes are listed (a stream needs them); numbers and booleans
    // are found by the statistics scan as training reads them.
    let text_label = matches!(
        y.data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    if kind != "linear" && text_label && classes.iter().all(|c| !c.is_empty()) {
        let _ = writeln!(t, "classes = {}", quoted(&classes));
    }
    if y.nulls > 0 {
        let _ = writeln!(
            t,
            "# {} rows of the sample have no label: training refuses them; filter them out first",
            y.nulls
        );
    }
    let _ = writeln!(t, "standardize = true");
    if columns.iter().any(|c| c.nulls > 0) {
        let _ = writeln!(t, "on_missing = \"mean\"   # some columns have nulls: \"error\" refuses them, \"zero\" or \"skip_row\"");
    }
    let _ = writeln!(t, "\n[model]");
    let _ = writeln!(t, "kind = {kind:?}   # {why}");
    let _ = writeln!(t, "l2 = 1e-4");
    let _ = writeln!(t, "\n[optimizer]");
    if lbfgs {
        let _ = writeln!(
            t,
            "kind = \"lbfgs\"   # the exact optimum; for large data: \"adam\" with batch_size"
        );
        let _ = writeln!(
            t,
            "\n[train]\nepochs = 200   # L-BFGS iterations (it stops when it converges)"
        );
    } else {
        let (batch, epochs) = if rows < 100_000 {
            (128, 30)
        } else {
            (1024, 10)
        };
        let _ = writeln!(
            t,
            "kind = \"adam\"\nlearning_rate = 0.01\nbatch_size = {batch}"
        );
        let _ = writeln!(t, "\n[train]\nepochs = {epochs}");
    }
    let _ = writeln!(t, "\n[output]");
    let _ = writeln!(t, "model = \"out/{stem}/model.json\"");
    let _ = writeln!(t, "metrics = \"out/{stem}/metrics.jsonl\"");
    t
}
