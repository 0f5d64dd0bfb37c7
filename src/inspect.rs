//! `tidemill inspect`: what a data source holds — schema, row groups, rows,
//! null counts (from the Parquet footers, without reading the data), and
//! the units tidemill would cut it into.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::source::files::Source;
use crate::source::unit;

/// One column of the schema.
#[derive(Debug, Serialize)]
pub struct ColumnInfo {
    /// Name.
    pub name: String,
    /// Arrow type.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Nulls according to the footers (`None` if a row group lacks statistics).
    pub null_count: Option<u64>,
}

/// One file.
#[derive(Debug, Serialize)]
pub struct FileInfo {
    /// Path.
    pub path: PathBuf,
    /// Rows.
    pub rows: u64,
    /// Rows per row group.
    pub row_groups: Vec<usize>,
    /// Compressed bytes of the column chunks.
    pub compressed_bytes: i64,
    /// Columns.
    pub columns: Vec<ColumnInfo>,
}

/// A whole source.
#[derive(Debug, Serialize)]
pub struct SourceInfo {
    /// Files in order.
    pub files: Vec<FileInfo>,
    /// Total rows.
    pub rows: u64,
    /// Units at the default `max_unit_rows` (65,536).
    pub units: usize,
}

/// Describes the files under `paths`.
pub fn inspect(paths: &[PathBuf]) -> Result<SourceInfo> {
    let source = Source::open(paths, &[])?;
    let mut files = Vec::new();
    for f in &source.files {
        let md = f.metadata.metadata();
        let schema = f.schema();
        let leaves = md.file_metadata().schema_descr();
        let mut columns = Vec::new();
        for field in schema.fields() {
            // Sum null counts over the row groups for the leaf of this column.
            let leaf = (0..leaves.num_columns())
                .find(|&i| leaves.column(i).path().parts().first() == Some(field.name()));
            let null_count = leaf.and_then(|i| {
                md.row_groups()
                    .iter()
                    .map(|rg| rg.column(i).statistics().and_then(|s| s.null_count_opt()))
                    .sum::<Option<u64>>()
            });
            columns.push(ColumnInfo {
                name: field.name().clone(),
                data_type: field.data_type().to_string(),
                null_count,
            });
        }
        files.push(FileInfo {
            path: f.path.clone(),
            rows: f.rows(),
            row_groups: f.row_group_rows(),
            compressed_bytes: md.row_groups().iter().map(|rg| rg.compressed_size()).sum(),
            columns,
        });
    }
    Ok(SourceInfo {
        rows: source.rows(),
        units: unit::cut(&source, 65_536).len(),
        files,
    })
}

/// A human-readable rendering.
pub fn render(info: &SourceInfo) -> String {
    let mut out = String::new();
    for f in &info.files {
        out.push_str(&format!(
            "{}\n  rows: {}   row groups: {}   compressed: {:.1} MiB\n",
            f.path.display(),
            f.rows,
            f.row_groups.len(),
            f.compressed_bytes as f64 / (1024.0 * 1024.0)
        ));
        out.push_str(&format!(
            "  row group sizes: {:?}\n  columns:\n",
            f.row_groups
        ));
        let width = f.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &f.columns {
            let nulls = c.null_count.map_or("?".to_string(), |n| n.to_string());
            out.push_str(&format!(
                "    {:width$}  {:<24} nulls: {}\n",
                c.name, c.data_type, nulls
            ));
        }
    }
    out.push_str(&format!(
        "total: {} rows in {} file(s), {} units\n",
        info.rows,
        info.files.len(),
        info.units
    ));
    out
}
