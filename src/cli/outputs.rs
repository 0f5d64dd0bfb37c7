//! The files a pipeline writes and reads, each with the flag or pipeline
//! key that named it (for messages and the same-path rule).

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::atomic::{Input, Request};
use crate::source::files as source;
use crate::spec::{Pipeline, ValidationSpec};

/// The outputs of a pipeline with the flag (or key) that named each.
pub(crate) struct PipelineOutputs {
    pub(crate) model: Option<(&'static str, PathBuf)>,
    pub(crate) metrics: Option<(&'static str, PathBuf)>,
}

impl PipelineOutputs {
    pub(crate) fn new(pipeline: &Pipeline, model_flag: bool, metrics_flag: bool) -> Self {
        let named = |flag: &'static str, key: &'static str, path: &Option<PathBuf>, by_flag| {
            path.clone().map(|p| (if by_flag { flag } else { key }, p))
        };
        let o = &pipeline.output;
        PipelineOutputs {
            model: named("--model-out", "output.model", &o.model, model_flag),
            metrics: named("--metrics-out", "output.metrics", &o.metrics, metrics_flag),
        }
    }

    pub(crate) fn requests(&self) -> Vec<Request<'_>> {
        [&self.model, &self.metrics]
            .into_iter()
            .flatten()
            .map(|(flag, path)| Request::file(flag, path))
            .collect()
    }

    /// One line for `validate`.
    pub(crate) fn describe(&self) -> String {
        let list: Vec<String> = [&self.model, &self.metrics]
            .into_iter()
            .flatten()
            .map(|(flag, path)| format!("{flag} {}", path.display()))
            .collect();
        if list.is_empty() {
            "no outputs".into()
        } else {
            format!("outputs writable: {}", list.join(", "))
        }
    }
}

/// The files a pipeline reads, each with the key that names it: no output
/// may replace one.
pub(crate) struct PipelineInputs(Vec<(&'static str, PathBuf)>);

impl PipelineInputs {
    /// The pipeline file and the data files of `data.train` and
    /// `data.validation.path`, with directories expanded into the files
    /// training reads from them ([`source::resolve`]). An entry that does
    /// not exist is kept as it is (nothing is there to destroy; training
    /// reports it); one that exists but cannot be expanded (an unreadable
    /// or empty directory) is an error now rather than a file left
    /// unprotected.
    pub(crate) fn new(file: &Path, pipeline: &Pipeline) -> Result<Self> {
        let d = &pipeline.data;
        let validation = match &d.validation {
            Some(ValidationSpec::Files(f)) => f.as_slice(),
            _ => &[],
        };
        let mut inputs = vec![("PIPELINE", file.to_path_buf())];
        for (key, paths) in [
            ("data.train", &d.train[..]),
            ("data.validation.path", validation),
        ] {
            for p in paths {
                match source::resolve(std::slice::from_ref(p)) {
                    Ok(files) => inputs.extend(files.into_iter().map(|f| (key, f))),
                    Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                        inputs.push((key, p.clone()))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(PipelineInputs(inputs))
    }

    /// As the inputs of an output set.
    pub(crate) fn list(&self) -> Vec<Input<'_>> {
        self.0.iter().map(|(key, p)| (*key, p.as_path())).collect()
    }
}
