//! Resolving a data source (file, directory, list) to Parquet files and
//! checking that they agree on the columns a pipeline uses.
//!
//! [`Source`] is the list of files; [`super::parquet::ParquetSource`] adds
//! their units and is what the layers above read through.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::error::{Error, Result};

/// One Parquet file with its parsed footer.
#[derive(Debug, Clone)]
pub struct ParquetFile {
    /// Path as given (or found in a directory).
    pub path: PathBuf,
    /// Parsed footer, reused for every read.
    pub metadata: ArrowReaderMetadata,
}

impl ParquetFile {
    /// Opens a file and parses its footer.
    pub fn open(path: &Path) -> Result<ParquetFile> {
        Ok(ParquetFile {
            path: path.to_path_buf(),
            metadata: crate::io::footer::read(path)?,
        })
    }

    /// The Arrow schema of the file.
    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    /// Rows in each row group.
    pub fn row_group_rows(&self) -> Vec<usize> {
        crate::io::footer::row_group_rows(&self.metadata)
    }

    /// Total rows.
    pub fn rows(&self) -> u64 {
        self.row_group_rows().iter().map(|&r| r as u64).sum()
    }

    /// The type of a column, or a [`Error::MissingColumn`] naming the ones
    /// there are; a name the file gives two columns is refused (which one
    /// was meant cannot be told, and the second would be silently ignored).
    pub fn column_type(&self, column: &str) -> Result<&DataType> {
        unique_column(self.schema(), column, &self.path)?;
        match self.schema().field_with_name(column) {
            Ok(f) => Ok(f.data_type()),
            Err(_) => Err(Error::missing_column(&self.path, column, self.schema())),
        }
    }
}

/// Fails if `schema` has more than one column named `name`.
pub fn unique_column(schema: &Schema, name: &str, file: &Path) -> Result<()> {
    let count = schema.fields().iter().filter(|f| f.name() == name).count();
    if count > 1 {
        return Err(Error::ColumnType {
            file: file.to_path_buf(),
            column: name.to_string(),
            found: format!("{count} columns of that name"),
            expected: "every column tidemill reads must have a name of its own (rename one)".into(),
        });
    }
    Ok(())
}

/// A resolved data source: an ordered list of Parquet files.
#[derive(Debug, Clone)]
pub struct Source {
    /// Files in a fixed order (as listed; directories sorted by name).
    pub files: Vec<Arc<ParquetFile>>,
}

/// Expands files and directories (recursively, sorted by path) into Parquet files.
pub fn resolve(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            if found.is_empty() {
                return Err(Error::NoFiles { path: p.clone() });
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue; // hidden files, _SUCCESS markers, _metadata
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if name.ends_with(".parquet") || name.ends_with(".parq") || name.ends_with(".pq") {
            out.push(path);
        }
    }
    Ok(())
}

impl Source {
    /// Opens every file of a source and checks that `columns` have the same
    /// type in all of them (the first file is the reference).
    pub fn open(paths: &[PathBuf], columns: &[String]) -> Result<Source> {
        let files = resolve(paths)?
            .iter()
            .map(|p| ParquetFile::open(p).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let source = Source { files };
        source.check_columns(columns)?;
        Ok(source)
    }

    /// The first file; every source has at least one.
    pub fn reference(&self) -> &ParquetFile {
        &self.files[0]
    }

    /// Checks presence and type agreement of `columns` across files.
    pub fn check_columns(&self, columns: &[String]) -> Result<()> {
        let Some(first) = self.files.first() else {
            return Err(Error::NoFiles {
                path: PathBuf::from("(empty list)"),
            });
        };
        for c in columns {
            let want = first.column_type(c)?;
            for f in &self.files[1..] {
                match f.schema().field_with_name(c) {
                    Err(_) => {
                        return Err(Error::SchemaDrift {
                            file: f.path.clone(),
                            reference: first.path.clone(),
                            difference: format!("column '{c}' is missing"),
                        })
                    }
                    Ok(field) if field.data_type() != want => {
                        return Err(Error::SchemaDrift {
                            file: f.path.clone(),
                            reference: first.path.clone(),
                            difference: format!(
                                "column '{c}' has type {} instead of {want}",
                                field.data_type()
                            ),
                        })
                    }
                    Ok(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Each file's canonical path (links and `..` resolved), as listed.
    fn canonical(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone()))
            .collect()
    }

    /// Two entries that are the same file (listed twice, or once by name and
    /// once inside a listed directory): their rows would count twice.
    pub fn repeated_file(&self) -> Option<(PathBuf, PathBuf)> {
        let canonical = self.canonical();
        let mut seen = std::collections::HashMap::new();
        for (i, c) in canonical.iter().enumerate() {
            if let Some(j) = seen.insert(c.clone(), i) {
                return Some((self.files[j].path.clone(), self.files[i].path.clone()));
            }
        }
        None
    }

    /// A file of `self` that is also a file of `other`.
    pub fn shared_file(&self, other: &Source) -> Option<PathBuf> {
        let theirs: std::collections::HashSet<PathBuf> = other.canonical().into_iter().collect();
        self.canonical()
            .iter()
            .position(|c| theirs.contains(c))
            .map(|i| self.files[i].path.clone())
    }

    /// Total rows over all files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows()).sum()
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self.files.len() {
            1 => self.files[0].path.display().to_string(),
            n => format!("{} (+{} more files)", self.files[0].path.display(), n - 1),
        }
    }
}
