//! Where the job runs: worker threads per process, processes, and the
//! hostfile, turned into a timely configuration (timely's own cluster mode
//! over TCP).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Workers and processes of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes.
    pub processes: usize,
    /// This process's index in `0..processes`.
    pub process: usize,
    /// File with one `host:port` per process, in process order.
    pub hostfile: Option<PathBuf>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

impl Cluster {
    /// Total workers over all processes.
    pub fn total_workers(&self) -> usize {
        self.workers * self.processes
    }

    /// True for the process that writes outputs (process 0).
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// Reads the hostfile (or defaults to `127.0.0.1:2101+i`).
    pub fn addresses(&self) -> Result<Vec<String>> {
        match &self.hostfile {
            None => Ok((0..self.processes)
                .map(|i| format!("127.0.0.1:{}", 2101 + i))
                .collect()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                let hosts: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect();
                if hosts.len() < self.processes {
                    return Err(Error::Cluster(format!(
                        "{}: {} addresses for {} processes",
                        path.display(),
                        hosts.len(),
                        self.processes
                    )));
                }
                if let Some(bad) = hosts.iter().find(|h| !h.contains(':')) {
                    return Err(Error::Cluster(format!(
                        "{}: '{bad}' is not host:port",
                        path.display()
                    )));
                }
                Ok(hosts.into_iter().take(self.processes).collect())
            }
        }
    }

    /// The timely configuration.
    pub fn timely_config(&self) -> Result<timely::Config> {
        if self.workers == 0 {
            return Err(Error::Cluster("--workers must be at least 1".into()));
        }
        if self.processes == 0 || self.process >= self.processes {
            return Err(Error::Cluster(format!(
                "--process {} is not in 0..{}",
                self.process, self.processes
            )));
        }
        let communication = if self.processes > 1 {
            timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses()?,
                report: false,
                zerocopy: false,
            }
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
        } else {
            timely::CommunicationConfig::Thread
        };
        Ok(timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        })
    }
}
