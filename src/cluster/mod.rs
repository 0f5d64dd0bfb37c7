//! Where the job runs: worker threads per process, processes, and their
//! addresses, started as a timely computation.
//!
//! With several processes, timely's cluster mode stays the transport, but
//! tidemill makes the TCP connections itself (`connect.rs`) so that each one
//! first passes the [`handshake`]: the processes prove they hold the same
//! cluster [`key`], and compare job cards ([`card`]) so that processes of
//! different jobs refuse each other. Strangers are dropped; the real peers
//! are waited for up to a deadline.

mod admission;
pub mod card;
mod connect;
pub mod handshake;
pub mod hostfile;
mod ignored;
pub mod key;

use std::any::Any;
use std::path::PathBuf;
use std::time::Duration;

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks, WorkerGuards};

use crate::error::{Error, Result};
pub use card::JobDescription;
pub use hostfile::Address;
pub use key::ClusterKey;

/// The addresses of this job's processes, once it connects (for messages
/// about a lost peer, which may come from a panicking network thread).
static PEERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The peer process a timely network thread talks to, from the thread's
/// name (`timely:recv-N`, `timely:send-N`), with its address: `"process N
/// at HOST:PORT"`.
pub fn peer_of_thread(name: &str) -> Option<String> {
    let n: usize = name
        .strip_prefix("timely:recv-")
        .or_else(|| name.strip_prefix("timely:send-"))?
        .parse()
        .ok()?;
    let at = PEERS
        .get()
        .and_then(|p| p.get(n))
        .map(|a| format!(" at {a}"))
        .unwrap_or_default();
    Some(format!("process {n}{at}"))
}

/// How long start-up waits for the other processes by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `--connect-timeout` accepted (a year).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a peer may be silent during the job by default before it is
/// taken for lost: generous, because a worker busy inside one long
/// operator invocation sends no heartbeat.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `--peer-timeout` accepted (a year).
pub const MAX_PEER_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// How long start-up waits for every other process to connect.
    pub connect_timeout: Duration,
    /// How long a worker of another process may be silent during the job
    /// before it is taken for lost (the heartbeat of
    /// `dataflow::liveness`; unused with one process).
    pub peer_timeout: Duration,
    /// The key processes prove they share.
    pub key: ClusterKey,
    /// Run with the public default key even when an address is not
    /// loopback (else that is refused: see [`Cluster::validate`]).
    pub allow_public_key: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            key: ClusterKey::public_default(),
            allow_public_key: false,
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

    /// Checks the layout, the addresses and the key; every mistake is a
    /// usage error (exit code 2). With several processes, the public
    /// default key is refused when an address is not loopback (anyone who
    /// can reach the ports could take a missing process's place), unless
    /// [`Cluster::allow_public_key`].
    pub fn validate(&self) -> Result<()> {
        self.check_layout()?;
        if self.processes > 1 {
            self.key_exposure(&self.addresses()?)?;
        }
        Ok(())
    }

    /// Refuses the public default key with addresses off this machine,
    /// unless allowed; when allowed, returns the warning to log.
    fn key_exposure(&self, addresses: &[Address]) -> Result<Option<String>> {
        if !self.key.is_public() {
            return Ok(None);
        }
        let exposed: Vec<&str> = addresses
            .iter()
            .filter(|a| a.resolved.iter().any(|r| !r.ip().is_loopback()))
            .map(|a| a.text.as_str())
            .collect();
        let Some(first) = exposed.first() else {
            return Ok(None);
        };
        let listed = match exposed.len() {
            1 => format!("{first} is not a loopback address"),
            n => format!("{first} and {} other address(es) are not loopback", n - 1),
        };
        let risk = "with the public default cluster key, anyone who can reach the job's ports can take a missing process's place or stop the job";
        let fix = "give every process the same secret key with --cluster-key-file PATH or the TIDEMILL_CLUSTER_KEY environment variable (e.g. head -c 32 /dev/urandom | base64 > key)";
        if self.allow_public_key {
            return Ok(Some(format!(
                "no cluster key is set and {listed}: {risk}; {fix}"
            )));
        }
        Err(Error::Usage {
            option: "--cluster-key-file".into(),
            message: format!(
                "no cluster key is set and {listed}: {risk}. To fix it, {fix}; or pass --allow-public-key to run with the public key anyway"
            ),
        })
    }

    fn check_layout(&self) -> Result<()> {
        let usage = |option: &str, message: String| {
            Err(Error::Usage {
                option: option.into(),
                message,
            })
        };
        if self.workers == 0 {
            return usage("--workers", "must be at least 1".into());
        }
        if self.processes == 0 {
            return usage("--processes", "must be at least 1".into());
        }
        if self.process >= self.processes {
            return usage(
                "--process",
                format!(
                    "{} is not in 0..{} (the processes are numbered from 0)",
                    self.process, self.processes
                ),
            );
        }
        for (option, timeout, max) in [
            (
                "--connect-timeout",
                self.connect_timeout,
                MAX_CONNECT_TIMEOUT,
            ),
            ("--peer-timeout", self.peer_timeout, MAX_PEER_TIMEOUT),
        ] {
            if timeout.is_zero() || timeout > max {
                return usage(
                    option,
                    format!("must be more than 0 and at most {} seconds", max.as_secs()),
                );
            }
        }
        Ok(())
    }

    /// The checked addresses of the processes: the hostfile's first
    /// `processes` entries, or `127.0.0.1:2101+i`.
    pub fn addresses(&self) -> Result<Vec<Address>> {
        match &self.hostfile {
            None => hostfile::defaults(self.processes),
            Some(path) => hostfile::read(path, self.processes),
        }
    }

    /// Waits for the workers of `guards` and returns what each returned, in
    /// worker order; a worker that panicked is an error naming it (by its
    /// index in the whole cluster).
    pub fn join<T: Send + 'static>(&self, guards: WorkerGuards<T>) -> Result<Vec<T>> {
        guards
            .join()
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.map_err(|panic| Error::Worker {
                    worker: self.process * self.workers + i,
                    message: format!("panicked: {panic}"),
                })
            })
            .collect()
    }

    /// Starts `func` on every worker thread of this process, connected to
    /// the workers of the other processes. `job` describes the job for the
    /// handshake; it is only called when there are other processes.
    ///
    /// Returns timely's guards; dropping them waits for the workers and
    /// then for the network threads, as `timely::execute` does.
    pub fn execute<T, F>(
        &self,
        job: impl FnOnce() -> Result<JobDescription>,
        func: F,
    ) -> Result<WorkerGuards<T>>
    where
        T: Send + 'static,
        F: Fn(&mut timely::worker::Worker) -> T + Send + Sync + 'static,
    {
        self.check_layout()?;
        let (builders, others): (Vec<AllocatorBuilder>, Box<dyn Any + Send>) = if self.processes > 1
        {
            self.network(job)?
        } else if self.workers > 1 {
            timely::CommunicationConfig::Process(self.workers)
                .try_build()
                .map_err(Error::Cluster)?
        } else {
            timely::CommunicationConfig::Thread
                .try_build()
                .map_err(Error::Cluster)?
        };
        timely::execute::execute_from(builders, others, worker_config()?, func)
            .map_err(Error::Cluster)
    }

    /// Connects to the other processes through the handshake and starts
    /// timely's network threads on the sockets (what timely's own
    /// `CommunicationConfig::Cluster` does after making its connections).
    fn network(
        &self,
        job: impl FnOnce() -> Result<JobDescription>,
    ) -> Result<(Vec<AllocatorBuilder>, Box<dyn Any + Send>)> {
        let addresses = self.addresses()?;
        let _ = PEERS.set(addresses.iter().map(|a| a.text.clone()).collect());
        if let Some(warning) = self.key_exposure(&addresses)? {
            tracing::warn!("{warning}");
        }
        let local = handshake::Local::new(
            self.key.clone(),
            self.process,
            addresses.iter().map(|a| a.text.clone()).collect(),
            self.workers,
            job()?,
        )?;
        let sockets = connect::establish(local, &addresses, self.connect_timeout)?;
        let hooks = Hooks::default();
        let process_allocators = ProcessBuilder::new_typed_vector(
            self.workers,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (builders, guard) = initialize_networking_from_sockets(
            process_allocators,
            sockets,
            self.process,
            self.workers,
            hooks,
        )
        .map_err(|e| Error::Cluster(format!("cannot start the network threads: {e}")))?;
        Ok((
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(guard),
        ))
    }
}

/// The environment variable that sets how long an idle worker polls its
/// channels before parking its thread, in microseconds (timely's
/// `WorkerConfig::idle_spin`; its default is 10).
pub const IDLE_SPIN_ENV: &str = "TIDEMILL_IDLE_SPIN_US";

/// The idle spin [`IDLE_SPIN_ENV`] asks for, `None` when it is unset. A
/// value that is not whole microseconds from 0 to one second is a usage
/// error, not ignored. The CLI checks it as it starts, before anything is
/// opened or any process connects.
pub fn idle_spin_from_env() -> Result<Option<Duration>> {
    let bad = |message: String| Error::Usage {
        option: IDLE_SPIN_ENV.into(),
        message,
    };
    match std::env::var(IDLE_SPIN_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(micros) if micros <= 1_000_000 => Ok(Some(Duration::from_micros(micros))),
            _ => Err(bad(format!(
                "{text:?} is not whole microseconds from 0 to 1000000"
            ))),
        },
        Err(std::env::VarError::NotUnicode(_)) => Err(bad(
            "not valid UTF-8; expected whole microseconds from 0 to 1000000".into(),
        )),
    }
}

/// Timely's worker configuration: its defaults, with `idle_spin` from
/// [`IDLE_SPIN_ENV`] when that is set.
fn worker_config() -> Result<timely::WorkerConfig> {
    let config = timely::WorkerConfig::default();
    Ok(match idle_spin_from_env()? {
        Some(spin) => config.idle_spin(spin),
        None => config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_and_bounded() {
        let refused = |c: Cluster| match c.validate() {
            Err(Error::Usage { option, .. }) => option,
            other => panic!("accepted: {other:?}"),
        };
        let zero = Cluster {
            peer_timeout: Duration::ZERO,
            ..Cluster::default()
        };
        assert_eq!(refused(zero), "--peer-timeout");
        let long = Cluster {
            peer_timeout: MAX_PEER_TIMEOUT + Duration::from_secs(1),
            ..Cluster::default()
        };
        assert_eq!(refused(long), "--peer-timeout");
        let zero = Cluster {
            connect_timeout: Duration::ZERO,
            ..Cluster::default()
        };
        assert_eq!(refused(zero), "--connect-timeout");
        assert!(Cluster::default().validate().is_ok());
    }
}
