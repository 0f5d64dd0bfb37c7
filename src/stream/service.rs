//! `stream --metrics-addr`: the stream's gauges on a Prometheus endpoint,
//! and the progress line on stderr.

use std::time::Instant;

use crate::error::Result;
use crate::io::metrics_http::{serve, Gauges, Kind, Metric, Server};

/// The gauges the leader keeps up to date, and the server that shows them.
pub struct Service {
    _server: Server,
    rows: Metric,
    batches: Metric,
    rows_per_second: Metric,
    lag: Metric,
    loss: Metric,
    rolling_loss: Metric,
    snapshots: Metric,
    started: Instant,
}

/// What the gauges show.
pub struct Reading {
    /// Rows trained on (first pass), over the whole stream.
    pub rows: u64,
    /// Rows this run trained on.
    pub rows_this_run: u64,
    /// Batches.
    pub batches: u64,
    /// Rows taken from the source and not yet trained on.
    pub lag: u64,
    /// Progressive log loss (or squared error) over the whole stream.
    pub loss: Option<f64>,
    /// And over the rolling window.
    pub rolling_loss: Option<f64>,
    /// Snapshots published.
    pub snapshots: u64,
}

impl Service {
    /// Serves the gauges at `addr` (`HOST:PORT`).
    pub fn start(addr: &str) -> Result<Service> {
        let g = Gauges::new();
        let rows = g.register(
            "tidemill_stream_rows_total",
            "Rows scored and trained on, over the whole stream.",
            Kind::Counter,
        )?;
        let batches = g.register(
            "tidemill_stream_batches_total",
            "Batches trained.",
            Kind::Counter,
        )?;
        let rows_per_second = g.register(
            "tidemill_stream_rows_per_second",
            "Rows per second this run, since it started.",
            Kind::Gauge,
        )?;
        let lag = g.register(
            "tidemill_stream_lag_rows",
            "Rows taken from the source and not yet trained on.",
            Kind::Gauge,
        )?;
        let loss = g.register(
            "tidemill_stream_progressive_loss",
            "Progressive validation loss over the whole stream (each row scored before it was trained on).",
            Kind::Gauge,
        )?;
        let rolling_loss = g.register(
            "tidemill_stream_rolling_loss",
            "Progressive validation loss over the last stream.rolling_batches batches.",
            Kind::Gauge,
        )?;
        let snapshots = g.register(
            "tidemill_stream_snapshots_total",
            "Model snapshots published.",
            Kind::Counter,
        )?;
        let server = serve(addr, g)?;
        tracing::info!(addr = %server.local_addr(), "metrics at /metrics");
        Ok(Service {
            _server: server,
            rows,
            batches,
            rows_per_second,
            lag,
            loss,
            rolling_loss,
            snapshots,
            started: Instant::now(),
        })
    }

    /// Shows `r`.
    pub fn show(&self, r: &Reading) {
        self.rows.set(r.rows as f64);
        self.batches.set(r.batches as f64);
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.rows_per_second.set(r.rows_this_run as f64 / secs);
        self.lag.set(r.lag as f64);
        self.loss.set(r.loss.unwrap_or(f64::NAN));
        self.rolling_loss.set(r.rolling_loss.unwrap_or(f64::NAN));
        self.snapshots.set(r.snapshots as f64);
    }
}
