//! The files a pipeline writes and reads, each with the flag or pipeline
//! key that named it (for messages and the same-path rule).

use std::path::{Path, PathBuf};

use crate::io::atomic::Request;
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

/// The files a pipeline reads, with the key that names them: no output may
/// replace one.
pub(crate) fn pipeline_inputs<'a>(
    file: &'a Path,
    pipeline: &'a Pipeline,
) -> Vec<(&'static str, &'a Path)> {
    let d = &pipeline.data;
    let validation = match &d.validation {
        Some(ValidationSpec::Files(f)) => f.as_slice(),
        _ => &[],
    };
    std::iter::once(("PIPELINE", file))
        .chain(d.train.iter().map(|p| ("data.train", p.as_path())))
        .chain(validation.iter().map(|p| ("data.validation", p.as_path())))
        .collect()
}
