//! The cluster handshake, run on every new TCP connection before timely
//! sees it.
//!
//! Every message is a frame: a 4-byte big-endian length, then that many
//! bytes, with a hard cap per message. The process that connects (the
//! higher index) is *C*, the one that accepts is *A*:
//!
//! 1. C → A `hello`: magic, protocol version, C's nonce.
//! 2. A → C `challenge`: magic, protocol version, A's nonce, and A's proof:
//!    the keyed BLAKE3 of (`accept`, protocol, both nonces).
//! 3. C checks A's proof, then C → A `proof`: C's index and C's proof,
//!    the keyed BLAKE3 of (`connect`, protocol, both nonces, the index).
//! 4. C → A C's job card (JSON, with the job description as a digest);
//!    A checks C's proof first.
//! 5. A → C A's job card. Both compare the cards (the same comparison on
//!    both sides, so both see a mismatch).
//! 6. Only if the job digests differ: C → A, then A → C, the job
//!    description (canonical JSON, or nothing if it is over
//!    [`MAX_JOB_BYTES`]), so that both can name the keys that differ.
//! 7. A → C the verdict: accepted, or refused with a reason (a different
//!    job; an index A does not expect or already has).
//!
//! Fresh random nonces on both sides make every proof good for one
//! connection only; the two labels keep a proof made as A from passing as
//! one made as C. The key itself never travels.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::TryRngCore;

use super::admission::Stage;
use super::card::{self, Card, Job, JobDescription};
use super::key::ClusterKey;
use crate::error::Error;

/// This build's fingerprint (see `build/fingerprint.rs`): processes must
/// be built from the same sources, not only carry the same version.
pub const BUILD: &str = env!("TIDEMILL_BUILD");

/// The handshake protocol version; processes must speak the same one.
pub const PROTOCOL: u32 = 2;

/// The largest job card accepted, in bytes (the job is in it as a digest).
pub const MAX_CARD_BYTES: usize = 4096;

/// The largest job description exchanged to name differences when the
/// digests differ, in bytes; over it, a mismatch names the digests only.
pub const MAX_JOB_BYTES: usize = 64 << 20;

/// How long an accepted connection may take to authenticate (its hello
/// and its proof): a real peer needs one round trip, a stranger holds a
/// slot no longer than this.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one handshake may take in all.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// When the accepting side's handshake must have got how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// The hello and the proof, received.
    pub authenticated: Instant,
    /// The whole handshake.
    pub done: Instant,
}

impl Deadlines {
    /// The deadlines of a handshake that starts at `start`, none past
    /// `limit`.
    pub fn from(start: Instant, limit: Instant) -> Deadlines {
        Deadlines {
            authenticated: limit.min(start + AUTH_TIMEOUT),
            done: limit.min(start + HANDSHAKE_TIMEOUT),
        }
    }
}

const MAGIC: &[u8; 8] = b"TIDEMILL";
const NONCE: usize = 32;
const MAC: usize = blake3::OUT_LEN;
const HELLO_BYTES: usize = MAGIC.len() + 4 + NONCE;
const CHALLENGE_BYTES: usize = HELLO_BYTES + MAC;
const PROOF_BYTES: usize = 4 + MAC;
/// The most bytes of a frame read at once.
const READ_CHUNK: usize = 64 * 1024;
/// The largest verdict: a status byte and a reason.
const MAX_VERDICT_BYTES: usize = 4096;
const ACCEPT: &[u8] = b"tidemill/accept";
const CONNECT: &[u8] = b"tidemill/connect";
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;

/// Why a handshake did not complete.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Not (yet) one of ours: A drops the connection and keeps waiting, C
    /// tries again until the deadline. The text says why.
    Transient(String),
    /// A failure that ends the start-up of this process.
    Fatal(Error),
}

/// What this process brings to every handshake.
pub(crate) struct Local {
    /// The shared key.
    pub key: ClusterKey,
    /// This process's index.
    pub me: usize,
    /// Our card, serialized once.
    pub card_bytes: Vec<u8>,
    /// Our card.
    pub card: Card,
    /// Our job description, sent when the digests differ.
    pub job: Job,
    /// Labels for messages about differences.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Every process's address as written, for messages.
    pub addresses: Vec<String>,
    /// Which higher processes have completed a handshake with us (A side).
    pub claimed: Mutex<Vec<bool>>,
}

impl Local {
    /// Our side of the handshake for process `me` of the processes at
    /// `addresses`.
    pub fn new(
        key: ClusterKey,
        me: usize,
        addresses: Vec<String>,
        workers: usize,
        job: JobDescription,
    ) -> Result<Local, Error> {
        Local::of_build(key, me, addresses, workers, job, BUILD)
    }

    /// [`Local::new`] for a given build fingerprint.
    fn of_build(
        key: ClusterKey,
        me: usize,
        addresses: Vec<String>,
        workers: usize,
        job: JobDescription,
        build: &str,
    ) -> Result<Local, Error> {
        let processes = addresses.len();
        let described = Job::new(&job.identity)
            .map_err(|e| Error::Cluster(format!("cannot encode the job description: {e}")))?;
        let card = Card {
            protocol: PROTOCOL,
            tidemill: env!("CARGO_PKG_VERSION").to_string(),
            build: build.to_string(),
            processes,
            workers,
            process: me,
            job: described.digest.clone(),
        };
        let card_bytes = serde_json::to_vec(&card)
            .map_err(|e| Error::Cluster(format!("cannot encode the job card: {e}")))?;
        Ok(Local {
            key,
            me,
            card_bytes,
            card,
            job: described,
            labels: job.labels,
            addresses,
            claimed: Mutex::new(vec![false; processes]),
        })
    }
}

/// A side: runs the handshake on an accepted connection from `from` and
/// returns the process index the peer proved it is. `progress` is told
/// each [`Stage`] reached; when it answers false (the listener dropped the
/// connection meanwhile), the handshake stops.
pub(crate) fn accept(
    stream: &mut TcpStream,
    from: &str,
    local: &Local,
    deadlines: Deadlines,
    progress: &dyn Fn(Stage) -> bool,
) -> Result<usize, Fault> {
    let reached = |stage| {
        if progress(stage) {
            Ok(())
        } else {
            Err(Fault::Transient(
                "dropped to make room before it authenticated".into(),
            ))
        }
    };
    let deadline = deadlines.authenticated;
    let hello = read_frame(stream, HELLO_BYTES, deadline)?;
    if hello.len() != HELLO_BYTES || !hello.starts_with(MAGIC) {
        return Err(Fault::Transient(
            "it did not open with the tidemill handshake".into(),
        ));
    }
    reached(Stage::Hello)?;
    let protocol = be_u32(&hello[MAGIC.len()..]);
    let their_nonce = &hello[MAGIC.len() + 4..];
    let our_nonce = nonce()?;
    let proof = local
        .key
        .mac(&[ACCEPT, &PROTOCOL.to_be_bytes(), their_nonce, &our_nonce]);
    let mut challenge = Vec::with_capacity(CHALLENGE_BYTES);
    challenge.extend_from_slice(MAGIC);
    challenge.extend_from_slice(&PROTOCOL.to_be_bytes());
    challenge.extend_from_slice(&our_nonce);
    challenge.extend_from_slice(proof.as_bytes());
    write_frame(stream, &challenge, deadline)?;
    if protocol != PROTOCOL {
        return Err(Fault::Transient(format!(
            "it speaks handshake protocol {protocol}, this process speaks {PROTOCOL}"
        )));
    }
    let answer = read_frame(stream, PROOF_BYTES, deadline).map_err(|f| match f {
        Fault::Transient(reason) => Fault::Transient(format!(
            "{reason}, after our challenge (a process given another cluster key does that)"
        )),
        fatal => fatal,
    })?;
    if answer.len() != PROOF_BYTES {
        return Err(Fault::Transient("its proof is malformed".into()));
    }
    let index_bytes = &answer[..4];
    let index = be_u32(index_bytes) as usize;
    let expected = local.key.mac(&[
        CONNECT,
        &PROTOCOL.to_be_bytes(),
        their_nonce,
        &our_nonce,
        index_bytes,
    ]);
    if !mac_matches(&expected, &answer[4..]) {
        return Err(Fault::Transient(
            "it failed authentication (it does not hold this job's cluster key)".into(),
        ));
    }
    reached(Stage::Authenticated)?;
    let deadline = deadlines.done;
    let theirs = read_frame(stream, MAX_CARD_BYTES, deadline)?;
    let there: Card = serde_json::from_slice(&theirs)
        .map_err(|e| Fault::Transient(format!("its job card is unreadable: {e}")))?;
    write_frame(stream, &local.card_bytes, deadline)?;
    if there.process != index {
        return Err(Fault::Transient(format!(
            "it proved index {index} but its card says process {}",
            there.process
        )));
    }
    if let Some(differences) = compare(stream, local, &there, Side::Accepting, deadline)? {
        // Best effort: the peer compares the cards itself.
        let _ = write_verdict(stream, REFUSED, "a different job", deadline);
        let address = match local.addresses.get(index) {
            Some(a) => format!("{a} (connected from {from})"),
            None => from.to_string(),
        };
        return Err(Fault::Fatal(Error::JobMismatch {
            process: index,
            address,
            differences,
        }));
    }
    if let Err(reason) = claim(local, index) {
        let _ = write_verdict(stream, REFUSED, &reason, deadline);
        return Err(Fault::Transient(reason));
    }
    if let Err(e) = write_verdict(stream, ACCEPTED, "", deadline) {
        unclaim(local, index);
        return Err(e);
    }
    Ok(index)
}

/// C side: runs the handshake on a connection to process `peer` at
/// `address`.
pub(crate) fn connect(
    stream: &mut TcpStream,
    peer: usize,
    address: &str,
    local: &Local,
    deadline: Instant,
) -> Result<(), Fault> {
    let our_nonce = nonce()?;
    let mut hello = Vec::with_capacity(HELLO_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&PROTOCOL.to_be_bytes());
    hello.extend_from_slice(&our_nonce);
    write_frame(stream, &hello, deadline)?;
    let challenge = read_frame(stream, CHALLENGE_BYTES, deadline)?;
    if challenge.len() != CHALLENGE_BYTES || !challenge.starts_with(MAGIC) {
        return Err(Fault::Transient(
            "it answered with something that is not the tidemill handshake".into(),
        ));
    }
    let protocol = be_u32(&challenge[MAGIC.len()..]);
    if protocol != PROTOCOL {
        return Err(Fault::Fatal(Error::Cluster(format!(
            "process {peer} at {address} speaks handshake protocol {protocol}, this process speaks {PROTOCOL}: run the same tidemill version everywhere"
        ))));
    }
    let their_nonce = &challenge[HELLO_BYTES - NONCE..HELLO_BYTES];
    let expected = local
        .key
        .mac(&[ACCEPT, &PROTOCOL.to_be_bytes(), &our_nonce, their_nonce]);
    if !mac_matches(&expected, &challenge[HELLO_BYTES..]) {
        return Err(Fault::Fatal(Error::Cluster(format!(
            "process {peer} at {address} does not hold this process's cluster key: give every process the same key (--cluster-key-file or TIDEMILL_CLUSTER_KEY)"
        ))));
    }
    let index = u32::try_from(local.me)
        .map_err(|_| {
            Fault::Fatal(Error::Cluster(format!(
                "process index {} is too large",
                local.me
            )))
        })?
        .to_be_bytes();
    let proof = local.key.mac(&[
        CONNECT,
        &PROTOCOL.to_be_bytes(),
        &our_nonce,
        their_nonce,
        &index,
    ]);
    let mut answer = Vec::with_capacity(PROOF_BYTES);
    answer.extend_from_slice(&index);
    answer.extend_from_slice(proof.as_bytes());
    write_frame(stream, &answer, deadline)?;
    write_frame(stream, &local.card_bytes, deadline)?;
    let theirs = read_frame(stream, MAX_CARD_BYTES, deadline)?;
    let there: Card = serde_json::from_slice(&theirs).map_err(|e| {
        Fault::Fatal(Error::Cluster(format!(
            "process {peer} at {address} sent an unreadable job card: {e}"
        )))
    })?;
    if let Some(differences) = compare(stream, local, &there, Side::Connecting, deadline)? {
        return Err(Fault::Fatal(Error::JobMismatch {
            process: peer,
            address: address.to_string(),
            differences,
        }));
    }
    if there.process != peer {
        return Err(Fault::Fatal(Error::Cluster(format!(
            "{address} is process {} of this job, not process {peer}: the hostfiles differ in order",
            there.process
        ))));
    }
    let verdict = read_frame(stream, MAX_VERDICT_BYTES, deadline)?;
    match verdict.split_first() {
        Some((&ACCEPTED, _)) => Ok(()),
        Some((&REFUSED, reason)) => Err(Fault::Fatal(Error::Cluster(format!(
            "process {peer} at {address} refused this process: {}",
            String::from_utf8_lossy(reason)
        )))),
        _ => Err(Fault::Transient("its verdict is malformed".into())),
    }
}

/// Which side of the handshake this process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Accepting,
    Connecting,
}

/// Compares our card with theirs, and, when the job digests differ,
/// exchanges the job descriptions to name the keys that differ (the
/// connecting side sends first). `None` when the jobs are the same.
fn compare(
    stream: &mut TcpStream,
    local: &Local,
    there: &Card,
    side: Side,
    deadline: Instant,
) -> Result<Option<String>, Fault> {
    let mut found = card::differences(&local.card, there);
    if there.job != local.card.job {
        let ours: &[u8] = if local.job.bytes.len() <= MAX_JOB_BYTES {
            &local.job.bytes
        } else {
            &[]
        };
        if side == Side::Connecting {
            write_frame(stream, ours, deadline)?;
        }
        let theirs = read_frame(stream, MAX_JOB_BYTES, deadline)?;
        if side == Side::Accepting {
            write_frame(stream, ours, deadline)?;
        }
        let (here, there_digest) = (&local.card.job, &there.job);
        let keys = if ours.is_empty() || theirs.is_empty() {
            let why = format!("too large to compare key by key, over {MAX_JOB_BYTES} bytes");
            vec![card::digest_difference(here, there_digest, &why)]
        } else {
            match serde_json::from_slice(&theirs) {
                Ok(value) => card::job_differences(&local.job.value, &value, &local.labels),
                Err(e) => {
                    let why = format!("its description is unreadable: {e}");
                    vec![card::digest_difference(here, there_digest, &why)]
                }
            }
        };
        if keys.is_empty() {
            let why = "the descriptions are equal but not byte for byte";
            found.push(card::digest_difference(here, there_digest, why));
        }
        found.extend(keys);
    }
    Ok(card::summary(found))
}

/// Marks process `index` as connected, if it is one that connects to us
/// and has not already.
fn claim(local: &Local, index: usize) -> Result<(), String> {
    let mut claimed = local.claimed.lock().unwrap_or_else(|p| p.into_inner());
    let processes = claimed.len();
    if index <= local.me || index >= processes {
        return Err(format!(
            "process {index} does not connect to process {} (processes {}..{processes} do)",
            local.me,
            local.me + 1
        ));
    }
    if claimed[index] {
        return Err(format!("process {index} is already connected"));
    }
    claimed[index] = true;
    Ok(())
}

fn unclaim(local: &Local, index: usize) {
    let mut claimed = local.claimed.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = claimed.get_mut(index) {
        *c = false;
    }
}

/// Compares a received proof with the expected one in constant time.
fn mac_matches(expected: &blake3::Hash, received: &[u8]) -> bool {
    <[u8; MAC]>::try_from(received).is_ok_and(|r| *expected == r)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(b)
}

/// A fresh nonce from the operating system's random source.
fn nonce() -> Result<[u8; NONCE], Fault> {
    let mut n = [0u8; NONCE];
    rand::rngs::OsRng.try_fill_bytes(&mut n).map_err(|e| {
        Fault::Fatal(Error::Cluster(format!(
            "the operating system's random source failed: {e}"
        )))
    })?;
    Ok(n)
}

fn write_verdict(
    stream: &mut TcpStream,
    status: u8,
    reason: &str,
    deadline: Instant,
) -> Result<(), Fault> {
    let mut verdict = vec![status];
    verdict.extend(reason.bytes().take(MAX_VERDICT_BYTES - 1));
    write_frame(stream, &verdict, deadline)
}

/// Writes one frame, giving up at `deadline`.
fn write_frame(stream: &mut TcpStream, payload: &[u8], deadline: Instant) -> Result<(), Fault> {
    let length = u32::try_from(payload.len())
        .map_err(|_| Fault::Transient("a message too large to send".into()))?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(payload);
    let left = remaining(deadline)?;
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(&frame))
        .and_then(|()| stream.flush())
        .map_err(fault)
}

/// Reads one frame of at most `limit` bytes, giving up at `deadline`.
fn read_frame(stream: &mut TcpStream, limit: usize, deadline: Instant) -> Result<Vec<u8>, Fault> {
    let mut length = [0u8; 4];
    read_exact_by(stream, &mut length, deadline)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > limit {
        return Err(Fault::Transient(format!(
            "it announced a {length}-byte message where at most {limit} bytes are allowed"
        )));
    }
    // Grown as the bytes arrive: an announced length allocates nothing.
    let mut payload = Vec::new();
    while payload.len() < length {
        let start = payload.len();
        payload.resize(length.min(start + READ_CHUNK), 0);
        read_exact_by(stream, &mut payload[start..], deadline)?;
    }
    Ok(payload)
}

/// `read_exact` that a peer sending a byte at a time cannot stretch past
/// `deadline`.
fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Fault> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = remaining(deadline)?;
        stream.set_read_timeout(Some(left)).map_err(fault)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(fault(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fault(e)),
        }
    }
    Ok(())
}

fn remaining(deadline: Instant) -> Result<Duration, Fault> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(fault(io::ErrorKind::TimedOut.into()))
    } else {
        Ok(left)
    }
}

/// An I/O failure during the handshake, in words.
fn fault(e: io::Error) -> Fault {
    Fault::Transient(match e.kind() {
        io::ErrorKind::UnexpectedEof => "it closed the connection during the handshake".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            "it did not complete the handshake in time".into()
        }
        _ => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn local(me: usize, secret: Option<&[u8]>, seed: u64) -> Local {
        let key = match secret {
            Some(s) => ClusterKey::from_secret(s, "test").unwrap(),
            None => ClusterKey::public_default(),
        };
        local_job(me, key, serde_json::json!({ "data": { "seed": seed } }))
    }

    fn local_job(me: usize, key: ClusterKey, identity: serde_json::Value) -> Local {
        let job = JobDescription {
            identity,
            labels: Default::default(),
        };
        let addresses = vec!["a:1".into(), "b:2".into(), "c:3".into()];
        Local::new(key, me, addresses, 1, job).unwrap()
    }

    /// The error of a side that found the other runs a different job.
    fn differences<T: std::fmt::Debug>(r: Result<T, Fault>) -> String {
        match r {
            Err(Fault::Fatal(Error::JobMismatch { differences, .. })) => differences,
            other => panic!("{other:?}"),
        }
    }

    /// Regression: the job card was capped at 1 MiB, so a job of some 10,000
    /// data files or more could not run on several processes.
    #[test]
    fn a_job_of_many_files_connects_and_a_difference_among_them_is_named() {
        let files = |changed: Option<u64>| {
            let train: Vec<serde_json::Value> = (0..20_000u64)
                .map(|i| {
                    let size = if changed == Some(i) { 1 } else { 1000 + i };
                    let footer = blake3::hash(&i.to_be_bytes());
                    serde_json::json!({ "size": size, "footer_blake3": footer.to_hex().as_str() })
                })
                .collect();
            serde_json::json!({ "data": { "train": train } })
        };
        assert!(files(None).to_string().len() > 1 << 20);
        let key = || ClusterKey::public_default();
        let a = local_job(0, key(), files(None));
        let (got, sent) = run(&a, &local_job(1, key(), files(None)));
        assert_eq!(got.unwrap(), 1);
        sent.unwrap();
        let (got, sent) = run(&a, &local_job(2, key(), files(Some(15_000))));
        assert_eq!(
            differences(got),
            "data.train[15000].size = 1 there, 16000 here"
        );
        assert_eq!(
            differences(sent),
            "data.train[15000].size = 16000 there, 1 here"
        );
    }

    /// Runs both sides over loopback: `acceptor` accepts, `connector` (process `peer` to it) connects.
    fn run(acceptor: &Local, connector: &Local) -> (Result<usize, Fault>, Result<(), Fault>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        std::thread::scope(|s| {
            let a = s.spawn(|| {
                let (mut stream, from) = listener.accept().unwrap();
                let deadlines = Deadlines {
                    authenticated: deadline,
                    done: deadline,
                };
                accept(&mut stream, &from.to_string(), acceptor, deadlines, &|_| {
                    true
                })
            });
            let mut stream = TcpStream::connect(addr).unwrap();
            let c = connect(&mut stream, acceptor.me, "a:1", connector, deadline);
            drop(stream);
            (a.join().unwrap(), c)
        })
    }

    #[test]
    fn peers_with_one_key_and_job_connect_once() {
        let (a, c) = (local(0, Some(b"k"), 1), local(1, Some(b"k"), 1));
        let (got, sent) = run(&a, &c);
        assert_eq!(got.unwrap(), 1);
        sent.unwrap();
        // The same process again is refused, and told why.
        let (got, sent) = run(&a, &c);
        assert!(matches!(got, Err(Fault::Transient(r)) if r.contains("already connected")));
        assert!(
            matches!(sent, Err(Fault::Fatal(Error::Cluster(m))) if m.contains("already connected"))
        );
    }

    #[test]
    fn a_wrong_key_fails_the_connector_and_is_a_stranger_to_the_acceptor() {
        let (a, c) = (local(0, Some(b"k"), 1), local(1, None, 1));
        let (got, sent) = run(&a, &c);
        assert!(matches!(got, Err(Fault::Transient(r)) if r.contains("another cluster key")));
        assert!(matches!(sent, Err(Fault::Fatal(Error::Cluster(m))) if m.contains("cluster key")));
    }

    #[test]
    fn a_silent_connection_is_dropped_at_the_authentication_deadline() {
        let a = local(0, Some(b"k"), 1);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut stream, from) = listener.accept().unwrap();
        let start = Instant::now();
        let deadlines = Deadlines {
            authenticated: start + Duration::from_millis(100),
            done: start + Duration::from_secs(30),
        };
        let got = accept(&mut stream, &from.to_string(), &a, deadlines, &|_| true);
        assert!(matches!(got, Err(Fault::Transient(r)) if r.contains("in time")));
        assert!(
            Instant::now() < deadlines.done,
            "it waited past authentication"
        );
    }

    #[test]
    fn a_connection_dropped_by_the_listener_stops_at_the_next_stage() {
        let (a, c) = (local(0, Some(b"k"), 1), local(1, Some(b"k"), 1));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let deadlines = Deadlines::from(Instant::now(), deadline);
        std::thread::scope(|s| {
            let acceptor = s.spawn(|| {
                let (mut stream, from) = listener.accept().unwrap();
                let dropped_after_hello = |stage| stage == Stage::Hello;
                accept(
                    &mut stream,
                    &from.to_string(),
                    &a,
                    deadlines,
                    &dropped_after_hello,
                )
            });
            let mut stream = TcpStream::connect(addr).unwrap();
            let sent = connect(&mut stream, 0, "a:1", &c, deadline);
            assert!(matches!(sent, Err(Fault::Transient(_))), "{sent:?}");
            let got = acceptor.join().unwrap();
            assert!(matches!(got, Err(Fault::Transient(r)) if r.contains("dropped to make room")));
        });
        assert!(
            !a.claimed.lock().unwrap()[1],
            "a dropped connection claimed its index"
        );
    }

    /// Regression: only the version number was compared, so different
    /// builds of one version ran together.
    #[test]
    fn builds_of_different_sources_refuse_each_other_naming_both() {
        let a = local(0, None, 1);
        let job = JobDescription {
            identity: serde_json::json!({ "data": { "seed": 1 } }),
            labels: Default::default(),
        };
        let addresses = a.addresses.clone();
        let key = ClusterKey::public_default();
        let other = "0000000000000000";
        let c = Local::of_build(key, 1, addresses, 1, job, other).unwrap();
        assert_eq!(c.card.tidemill, a.card.tidemill);
        let (got, sent) = run(&a, &c);
        assert_eq!(
            differences(got),
            format!("tidemill build {other} there, {BUILD} here")
        );
        assert_eq!(
            differences(sent),
            format!("tidemill build {BUILD} there, {other} here")
        );
    }

    #[test]
    fn a_different_job_fails_both_sides() {
        let (a, c) = (local(0, None, 1), local(2, None, 2));
        let (got, sent) = run(&a, &c);
        assert_eq!(differences(got), "data.seed = 2 there, 1 here");
        assert_eq!(differences(sent), "data.seed = 1 there, 2 here");
    }
}
