//! Establishing a cluster's connections, with timely's topology: listen on
//! this process's address, connect to every lower process, accept every
//! higher one — each connection through the [handshake](super::handshake),
//! all before one deadline. The result is the socket vector timely's
//! networking starts from.
//!
//! Accepted connections are admitted by the [admission](super::admission)
//! policy, a bounded number per poll; the ones ignored are logged as a
//! [summary](super::ignored) at most once a second.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{self, Decision, Stage, MAX_PENDING};
use super::handshake::{self, Deadlines, Fault, Local, HANDSHAKE_TIMEOUT};
use super::hostfile::Address;
use super::ignored::Ignored;
use crate::error::{Error, Result};

/// How often the listener is polled.
const POLL: Duration = Duration::from_millis(20);
/// The most connections accepted per poll: fewer than
/// [`admission::PER_SOURCE`], so that a connection accepted in one poll is
/// not dropped to make room before the next, and the loop gets back to
/// its deadline and its events.
const ACCEPTS_PER_POLL: usize = 8;
/// The most handshake threads at once, counting those dropped to make
/// room that are still ending.
const MAX_THREADS: usize = 2 * MAX_PENDING;
/// The longest wait for one TCP connect.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);
/// Backoff between connection attempts: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// What the threads of the connection phase report.
enum Event {
    /// A higher process completed the handshake on accepted connection `id`.
    Accepted(u64, usize, TcpStream),
    /// Accepted connection `id` was not a peer of this job.
    Stranger(u64, SocketAddr, String),
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
    let mut gate = listener.map(|listener| Gate::new(listener, Arc::clone(&local), tx.clone()));
    let mut sockets: Vec<Option<TcpStream>> = addresses.iter().map(|_| None).collect();
    let mut last_attempt: Vec<Option<String>> = vec![None; addresses.len()];
    while (0..sockets.len()).any(|j| j != me && sockets[j].is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(me, addresses, &sockets, &last_attempt, timeout));
        }
        if let Some(gate) = &mut gate {
            gate.accept_waiting(deadline);
        }
        let first = rx.recv_timeout(POLL.min(left)).ok();
        for event in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match event {
                Event::Accepted(id, j, stream) => {
                    if let Some(gate) = &mut gate {
                        gate.settle(id);
                    }
                    tracing::debug!(process = j, "accepted");
                    sockets[j] = Some(stream);
                }
                Event::Stranger(id, from, reason) => {
                    tracing::debug!(%from, %reason, "ignored a connection");
                    if let Some(gate) = &mut gate {
                        if gate.settle(id) {
                            gate.ignored.record(Some(from.ip()), &reason);
                        }
                    }
                }
                Event::Connected(j, stream) => {
                    tracing::debug!(process = j, "connected");
                    sockets[j] = Some(stream);
                }
                Event::Attempt(j, reason) => last_attempt[j] = Some(reason),
                Event::Fatal(e) => return Err(e),
            }
        }
        if let Some(gate) = &mut gate {
            gate.report(false);
        }
    }
    drop(gate);
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

/// The stage value of a connection dropped to make room.
const DROPPED: u8 = u8::MAX;

/// How far an accepted connection's handshake has come, shared by its
/// thread (which advances it) and the listener (which may drop the
/// connection while it is unauthenticated).
#[derive(Default)]
struct Progress(AtomicU8);

impl Progress {
    fn code(stage: Stage) -> u8 {
        match stage {
            Stage::Silent => 0,
            Stage::Hello => 1,
            Stage::Authenticated => 2,
        }
    }

    /// The stage reached (a dropped connection reads as authenticated: it
    /// is not dropped twice).
    fn stage(&self) -> Stage {
        match self.0.load(Ordering::SeqCst) {
            0 => Stage::Silent,
            1 => Stage::Hello,
            _ => Stage::Authenticated,
        }
    }

    /// The handshake reached `stage`; false if it was dropped meanwhile.
    fn advance(&self, stage: Stage) -> bool {
        let code = Self::code(stage);
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s != DROPPED).then_some(code)
            })
            .is_ok()
    }

    /// Marks the connection dropped unless it has authenticated; true if
    /// it was.
    fn drop_unauthenticated(&self) -> bool {
        let authenticated = Self::code(Stage::Authenticated);
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s < authenticated).then_some(DROPPED)
            })
            .is_ok()
    }
}

/// An accepted connection whose handshake is running on its own thread.
struct Handshake {
    id: u64,
    from: SocketAddr,
    /// A handle on the thread's socket, to shut it down.
    stream: TcpStream,
    progress: Arc<Progress>,
}

/// The listening side: accepts connections, admits them, and keeps the
/// tally of those ignored.
struct Gate {
    listener: TcpListener,
    local: Arc<Local>,
    tx: Sender<Event>,
    /// Handshakes in progress, oldest first.
    pending: Vec<Handshake>,
    /// Threads of dropped connections that have not reported yet.
    ending: usize,
    next_id: u64,
    ignored: Ignored,
}

impl Gate {
    fn new(listener: TcpListener, local: Arc<Local>, tx: Sender<Event>) -> Gate {
        Gate {
            listener,
            local,
            tx,
            pending: Vec::new(),
            ending: 0,
            next_id: 0,
            ignored: Ignored::new(Instant::now()),
        }
    }

    /// Accepts the connections waiting on the listener, at most
    /// [`ACCEPTS_PER_POLL`] and none past `deadline`, and starts a
    /// handshake for each one admitted.
    fn accept_waiting(&mut self, deadline: Instant) {
        for _ in 0..ACCEPTS_PER_POLL {
            if Instant::now() >= deadline {
                return;
            }
            match self.listener.accept() {
                Ok((stream, from)) => self.admit(stream, from, deadline),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ignored
                        .record(None, &format!("accepting a connection failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Starts the handshake of a new connection if the admission policy
    /// lets it in (dropping another to make room if need be).
    fn admit(&mut self, stream: TcpStream, from: SocketAddr, deadline: Instant) {
        if !self.make_room(from) {
            return;
        }
        if self.pending.len() + self.ending >= MAX_THREADS {
            self.ignored.record(
                Some(from.ip()),
                "closed on arrival: too many handshakes are still ending",
            );
            return;
        }
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => {
                self.ignored
                    .record(Some(from.ip()), &format!("closed on arrival: {e}"));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let progress = Arc::new(Progress::default());
        let deadlines = Deadlines::from(Instant::now(), deadline);
        let (local, tx, shared) = (
            Arc::clone(&self.local),
            self.tx.clone(),
            Arc::clone(&progress),
        );
        let spawned = std::thread::Builder::new()
            .name("tidemill:handshake".into())
            .spawn(move || {
                let _ = tx.send(greet(id, stream, from, &local, deadlines, &shared));
            });
        match spawned {
            Ok(_) => self.pending.push(Handshake {
                id,
                from,
                stream: handle,
                progress,
            }),
            Err(e) => self.ignored.record(
                Some(from.ip()),
                &format!("closed on arrival: no thread for its handshake: {e}"),
            ),
        }
    }

    /// Applies the admission policy for a newcomer from `from`; false if
    /// it is turned away.
    fn make_room(&mut self, from: SocketAddr) -> bool {
        loop {
            let view: Vec<admission::Pending> = self
                .pending
                .iter()
                .map(|h| admission::Pending {
                    source: h.from.ip(),
                    stage: h.progress.stage(),
                })
                .collect();
            match admission::decide(&view, from.ip()) {
                Decision::Admit => return true,
                Decision::Refuse(why) => {
                    self.ignored.record(Some(from.ip()), why);
                    return false;
                }
                Decision::Evict(i, why) => {
                    // It may have authenticated since: then decide again.
                    if self.pending[i].progress.drop_unauthenticated() {
                        let dropped = self.pending.remove(i);
                        let _ = dropped.stream.shutdown(Shutdown::Both);
                        self.ending += 1;
                        self.ignored.record(Some(dropped.from.ip()), why);
                        return true;
                    }
                }
            }
        }
    }

    /// The thread of connection `id` has ended; true if the connection
    /// was still pending (false if it was dropped to make room, and so
    /// already counted).
    fn settle(&mut self, id: u64) -> bool {
        match self.pending.iter().position(|h| h.id == id) {
            Some(i) => {
                self.pending.remove(i);
                true
            }
            None => {
                self.ending = self.ending.saturating_sub(1);
                false
            }
        }
    }

    /// Logs the summary of ignored connections if one is due (`last`: at
    /// the end of the connection phase, whatever is left).
    fn report(&mut self, last: bool) {
        if let Some(line) = self.ignored.summary(Instant::now(), last) {
            tracing::warn!("{line}");
        }
    }
}

impl Drop for Gate {
    /// The connection phase is over: the handshakes still running are of
    /// strangers or duplicates; end them, and report the last tally.
    fn drop(&mut self) {
        for h in &self.pending {
            let _ = h.stream.shutdown(Shutdown::Both);
        }
        self.report(true);
    }
}

/// Runs the accepting side of the handshake on connection `id`.
fn greet(
    id: u64,
    mut stream: TcpStream,
    from: SocketAddr,
    local: &Local,
    deadlines: Deadlines,
    progress: &Progress,
) -> Event {
    let ready = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true));
    if let Err(e) = ready {
        return Event::Stranger(id, from, e.to_string());
    }
    let advance = |stage| progress.advance(stage);
    match handshake::accept(&mut stream, &from.to_string(), local, deadlines, &advance) {
        Ok(j) => Event::Accepted(id, j, stream),
        Err(Fault::Transient(reason)) => Event::Stranger(id, from, reason),
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
