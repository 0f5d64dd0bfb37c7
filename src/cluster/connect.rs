//! Establishing a cluster's connections, with timely's topology: listen on
//! this process's address, connect to every lower process, accept every
//! higher one — each connection through the [handshake](super::handshake),
//! all before one deadline. The result is the socket vector timely's
//! networking starts from.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handshake::{self, Fault, Local, HANDSHAKE_TIMEOUT};
use super::hostfile::Address;
use crate::error::{Error, Result};

/// The most handshakes with unidentified connections in flight at once;
/// connections beyond that are closed on arrival (a real peer retries).
pub const MAX_PENDING: usize = 32;

/// How often the listener is polled.
const POLL: Duration = Duration::from_millis(20);
/// The longest wait for one TCP connect.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);
/// Backoff between connection attempts: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// What the threads of the connection phase report.
enum Event {
    /// A higher process completed the handshake on an accepted connection.
    Accepted(usize, TcpStream),
    /// An accepted connection was not a peer of this job.
    Stranger(SocketAddr, String),
    /// A lower process completed the handshake on our connection.
    Connected(usize, TcpStream),
    /// An attempt to reach a lower process failed; it will be retried.
    Attempt(usize, String),
    /// Start-up must stop.
    Fatal(Error),
}

/// Sets a flag when dropped: tells the connecting threads to give up once
/// the connection phase is over, however it ended.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Connects process `local.me` to every other process of `addresses`
/// within `timeout`. Returns one blocking, no-delay stream per process
/// (`None` at `local.me`), each past the handshake.
pub(crate) fn establish(
    local: Local,
    addresses: &[Address],
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>> {
    let me = local.me;
    let deadline = Instant::now() + timeout;
    let listener = match addresses.get(me + 1) {
        Some(_) => Some(listen(&addresses[me])?),
        None => None,
    };
    tracing::info!(
        process = me,
        processes = addresses.len(),
        timeout_s = timeout.as_secs_f64(),
        "connecting to the other processes"
    );
    let local = Arc::new(local);
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (tx, rx) = mpsc::channel();
    for (peer, address) in addresses.iter().enumerate().take(me) {
        let (address, local, stop, tx) = (
            address.clone(),
            Arc::clone(&local),
            Arc::clone(&stop.0),
            tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("tidemill:dial-{peer}"))
            .spawn(move || dial(peer, &address, &local, deadline, &stop, &tx))
            .map_err(|e| Error::Cluster(format!("cannot start a connecting thread: {e}")))?;
    }
    let mut sockets: Vec<Option<TcpStream>> = addresses.iter().map(|_| None).collect();
    let mut last_attempt: Vec<Option<String>> = vec![None; addresses.len()];
    let mut pending = 0usize;
    while (0..sockets.len()).any(|j| j != me && sockets[j].is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(me, addresses, &sockets, &last_attempt, timeout));
        }
        if let Some(listener) = &listener {
            accept_waiting(listener, &local, deadline, &mut pending, &tx);
        }
        match rx.recv_timeout(POLL.min(left)) {
            Ok(Event::Accepted(j, stream)) => {
                pending = pending.saturating_sub(1);
                tracing::debug!(process = j, "accepted");
                sockets[j] = Some(stream);
            }
            Ok(Event::Stranger(from, reason)) => {
                pending = pending.saturating_sub(1);
                tracing::warn!(%from, %reason, "dropped a connection that is not a process of this job; still waiting");
            }
            Ok(Event::Connected(j, stream)) => {
                tracing::debug!(process = j, "connected");
                sockets[j] = Some(stream);
            }
            Ok(Event::Attempt(j, reason)) => last_attempt[j] = Some(reason),
            Ok(Event::Fatal(e)) => return Err(e),
            Err(_) => {}
        }
    }
    for stream in sockets.iter().flatten() {
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .map_err(|e| Error::Cluster(format!("cannot configure a connection: {e}")))?;
    }
    tracing::info!(processes = addresses.len(), "all processes connected");
    Ok(sockets)
}

/// Binds this process's address.
fn listen(address: &Address) -> Result<TcpListener> {
    let listener = TcpListener::bind(&address.resolved[..])
        .map_err(|e| Error::Cluster(format!("cannot listen on {address}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Cluster(format!("cannot listen on {address}: {e}")))?;
    Ok(listener)
}

/// Takes every connection waiting on the listener and starts a handshake
/// thread for each, up to [`MAX_PENDING`] at once.
fn accept_waiting(
    listener: &TcpListener,
    local: &Arc<Local>,
    deadline: Instant,
    pending: &mut usize,
    tx: &Sender<Event>,
) {
    loop {
        let (stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                return;
            }
        };
        if *pending >= MAX_PENDING {
            tracing::warn!(%from, "dropped a connection: {MAX_PENDING} handshakes are already in progress");
            continue;
        }
        let (local, tx) = (Arc::clone(local), tx.clone());
        let until = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
        let spawned = std::thread::Builder::new()
            .name("tidemill:handshake".into())
            .spawn(move || {
                let _ = tx.send(greet(stream, from, &local, until));
            });
        match spawned {
            Ok(_) => *pending += 1,
            Err(e) => {
                tracing::warn!(%from, error = %e, "dropped a connection: no thread for its handshake")
            }
        }
    }
}

/// Runs the accepting side of the handshake on one connection.
fn greet(mut stream: TcpStream, from: SocketAddr, local: &Local, until: Instant) -> Event {
    let ready = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true));
    if let Err(e) = ready {
        return Event::Stranger(from, e.to_string());
    }
    match handshake::accept(&mut stream, &from.to_string(), local, until) {
        Ok(j) => Event::Accepted(j, stream),
        Err(Fault::Transient(reason)) => Event::Stranger(from, reason),
        Err(Fault::Fatal(e)) => Event::Fatal(e),
    }
}

/// Connects to process `peer` until the handshake succeeds, fails for
/// good, the deadline passes, or the connection phase is over.
fn dial(
    peer: usize,
    address: &Address,
    local: &Local,
    deadline: Instant,
    stop: &AtomicBool,
    tx: &Sender<Event>,
) {
    let mut backoff = BACKOFF.0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match attempt(peer, address, local, deadline) {
            Ok(stream) => {
                let _ = tx.send(Event::Connected(peer, stream));
                return;
            }
            Err(Fault::Fatal(e)) => {
                let _ = tx.send(Event::Fatal(e));
                return;
            }
            Err(Fault::Transient(reason)) => {
                tracing::debug!(process = peer, %address, %reason, "not connected yet; retrying");
                let _ = tx.send(Event::Attempt(peer, reason));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(backoff.min(left));
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One attempt: connect to each of the address's socket addresses in turn
/// and run the handshake on the first that answers.
fn attempt(
    peer: usize,
    address: &Address,
    local: &Local,
    deadline: Instant,
) -> Result<TcpStream, Fault> {
    let mut reason = String::from("no attempt made before the deadline");
    for addr in &address.resolved {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(addr, left.min(CONNECT_ATTEMPT)) {
            Ok(mut stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| Fault::Transient(e.to_string()))?;
                let until = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
                handshake::connect(&mut stream, peer, &address.text, local, until)?;
                return Ok(stream);
            }
            Err(e) => reason = e.to_string(),
        }
    }
    Err(Fault::Transient(reason))
}

/// The error naming every process not connected at the deadline.
fn timed_out(
    me: usize,
    addresses: &[Address],
    sockets: &[Option<TcpStream>],
    last_attempt: &[Option<String>],
    timeout: Duration,
) -> Error {
    let missing: Vec<String> = (0..addresses.len())
        .filter(|&j| j != me && sockets[j].is_none())
        .map(|j| {
            let mut text = format!(
                "process {j} at {} did not connect within {} s",
                addresses[j],
                timeout.as_secs_f64()
            );
            if let Some(reason) = &last_attempt[j] {
                text.push_str(&format!(" (last attempt: {reason})"));
            }
            text
        })
        .collect();
    Error::Cluster(missing.join("; "))
}
