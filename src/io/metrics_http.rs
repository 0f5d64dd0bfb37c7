//! A tiny HTTP endpoint that serves metrics in the Prometheus text
//! exposition format 0.0.4 (`--metrics-addr HOST:PORT`).
//!
//! [`Gauges`] is the registry: each metric is registered once with its
//! name, help text and [`Kind`], and the [`Metric`] handle it returns sets
//! the value lock-free (an `f64` in an `AtomicU64`) from any thread.
//! [`serve`] binds the address and starts one thread that accepts
//! connections; each connection is answered on a short-lived thread of its
//! own, at most [`MAX_CONNECTIONS`] at once (more are closed on arrival),
//! within [`DEADLINE`] to read the request head and as long again to write
//! the answer. Nothing a client sends can panic the server or hold it for
//! longer than that.
//!
//! `GET /metrics` answers the metrics, `GET /` and `GET /healthz` a short
//! `ok`; other paths are 404, other methods 405, a malformed request 400, a
//! request head over [`MAX_HEAD`] bytes 431. Every answer closes the
//! connection.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The command-line option whose address [`serve`] binds, named in its errors.
const OPTION: &str = "--metrics-addr";

/// How long a client has to send its request head, and again to take the answer.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// The longest request head (request line and headers) read, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// How many connections are answered at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long unread request bytes are drained after an answer, at most.
const LINGER: Duration = Duration::from_millis(200);

/// How often the accepting thread looks for a new connection or a stop.
const POLL: Duration = Duration::from_millis(20);

/// The content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric measures over time, its Prometheus `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (rows per second, lag).
    Gauge,
    /// A running total that only goes up (batches, snapshots written).
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One registered metric.
#[derive(Debug)]
struct Entry {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: Arc<AtomicU64>,
}

/// The registry of metrics a server renders: a cheap handle (clones share
/// one registry) that any thread may register in or render.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    entries: Arc<Mutex<Vec<Entry>>>,
}

/// The handle to one registered metric's value; clones set the same value.
#[derive(Clone, Debug)]
pub struct Metric {
    value: Arc<AtomicU64>,
}

impl Metric {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` to the value (a counter's increment).
    pub fn add(&self, delta: f64) {
        // `fetch_update` retries until no other thread changed the value
        // between the read and the write; the closure never refuses.
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }
}

impl Gauges {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a metric, with value 0, and returns the handle that sets
    /// it. The name must match `[a-zA-Z_:][a-zA-Z0-9_:]*` and be new to
    /// this registry; otherwise the error (a bug in the caller) says why.
    pub fn register(&self, name: &'static str, help: &'static str, kind: Kind) -> Result<Metric> {
        if !valid_name(name) {
            return Err(Error::Internal(format!(
                "metric name '{name}' does not match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )));
        }
        let mut entries = self.entries();
        if entries.iter().any(|e| e.name == name) {
            return Err(Error::Internal(format!(
                "metric '{name}' is registered twice"
            )));
        }
        let value = Arc::new(AtomicU64::new(0f64.to_bits()));
        entries.push(Entry {
            name,
            help,
            kind,
            value: Arc::clone(&value),
        });
        Ok(Metric { value })
    }

    /// All metrics in the text exposition format 0.0.4, in the order they
    /// were registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for e in self.entries().iter() {
            let help = e.help.replace('\\', "\\\\").replace('\n', "\\n");
            let value = format_value(f64::from_bits(e.value.load(Ordering::Relaxed)));
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n",
                name = e.name,
                kind = e.kind.as_str()
            );
        }
        out
    }
}

/// Whether `name` is a valid Prometheus metric name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A sample value as Prometheus writes it: `NaN`, `+Inf`, `-Inf` or the
/// shortest decimal that reads back as the same `f64`.
fn format_value(v: f64) -> String {
    match v {
        v if v.is_nan() => "NaN".into(),
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

/// A running metrics endpoint; dropping it (or [`Server::shutdown`]) stops
/// accepting connections within a few milliseconds. Connections being
/// answered then finish on their own, within their deadlines.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The address bound, with the port chosen when `:0` was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the accepting thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Binds `addr` (`HOST:PORT`; port 0 picks a free one) and serves `gauges`
/// there until the returned [`Server`] is dropped. An address that does not
/// resolve or cannot be bound is a usage error naming `--metrics-addr`.
pub fn serve(addr: &str, gauges: Gauges) -> Result<Server> {
    let usage = |what: &str, e: std::io::Error| Error::Usage {
        option: OPTION.into(),
        message: format!("{what} {addr}: {e}"),
    };
    let listener = TcpListener::bind(addr).map_err(|e| usage("cannot listen on", e))?;
    let bound = listener
        .local_addr()
        .and_then(|a| listener.set_nonblocking(true).map(|()| a))
        .map_err(|e| usage("cannot listen on", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("tidemill:metrics".into())
        .spawn(move || accept_loop(&listener, &gauges, &flag))
        .map_err(|e| usage("cannot start the thread serving", e))?;
    Ok(Server {
        addr: bound,
        stop,
        thread: Some(thread),
    })
}

/// Accepts connections until `stop`, each answered on a thread of its own.
fn accept_loop(listener: &TcpListener, gauges: &Gauges, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            // Nothing waiting, or a transient failure (out of descriptors,
            // a connection reset before it was accepted): look again soon.
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed on arrival
        }
        let (gauges, slot) = (gauges.clone(), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("tidemill:metrics-conn".into())
            .spawn(move || {
                answer(stream, &gauges);
                slot.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// An answer to one request.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    /// False for `HEAD`: the headers alone.
    with_body: bool,
}

impl Reply {
    fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            with_body: true,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Request Header Fields Too Large",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if self.with_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request head.
fn route(head: &str, gauges: &Gauges) -> Reply {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::text(400, "malformed request line\n");
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Reply::text(400, "malformed request line\n");
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET and HEAD are answered\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    let mut reply = match path {
        "/metrics" => Reply {
            status: 200,
            content_type: CONTENT_TYPE,
            body: gauges.render(),
            with_body: true,
        },
        "/" | "/healthz" => Reply::text(200, "ok\n"),
        _ => Reply::text(404, "not found; metrics are at /metrics\n"),
    };
    reply.with_body = method == "GET";
    reply
}

/// Reads one request from `stream` and writes its answer; any I/O failure
/// (a timeout, a reset) just ends the connection.
fn answer(mut stream: TcpStream, gauges: &Gauges) {
    let deadline = Instant::now() + DEADLINE;
    if stream.set_nonblocking(false).is_err() || stream.set_write_timeout(Some(DEADLINE)).is_err() {
        return;
    }
    let reply = match read_head(&mut stream, deadline) {
        Head::Complete(head) => route(&head, gauges),
        Head::TooLarge => Reply::text(431, "request head too large\n"),
        Head::Gone => return,
    };
    if stream.write_all(&reply.bytes()).is_err() {
        return;
    }
    // Close gently: data left unread would make the close a reset, which
    // can throw the answer away before the client reads it. What is left
    // is read and dropped, for a short while at most.
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        if matches!(stream.read(&mut buf), Ok(0) | Err(_)) {
            return;
        }
    }
}

/// What reading a request head came to.
enum Head {
    /// The request line and headers, up to the blank line.
    Complete(String),
    /// [`MAX_HEAD`] bytes without the blank line.
    TooLarge,
    /// The client closed, stalled past the deadline or failed.
    Gone,
}

/// Where the blank line that ends a head starts (CRLF or bare LF lines).
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find(|&i| {
        bytes[i] == b'\n'
            && (bytes[i + 1..].starts_with(b"\n") || bytes[i + 1..].starts_with(b"\r\n"))
    })
}

/// Reads up to the blank line that ends a request head, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Head {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Head::Complete(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() >= MAX_HEAD {
            return Head::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Head::Gone;
        }
        let want = buf.len().min(MAX_HEAD - head.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real HTTP client that reads 4xx answers as answers, not errors.
    fn client() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into()
    }

    /// `(status, content type, body)` of a GET.
    fn get(server: &Server, path: &str) -> (u16, String, String) {
        let url = format!("http://{}{path}", server.local_addr());
        let mut response = client().get(&url).call().expect("request");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.body_mut().read_to_string().expect("body");
        (response.status().as_u16(), content_type, body)
    }

    /// Sends `request` raw and returns all the server answered.
    fn raw(server: &Server, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // A server that refuses early may close before all is written.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn started() -> (Gauges, Metric, Server) {
        let gauges = Gauges::new();
        let rows = gauges
            .register(
                "tidemill_rows_per_second",
                "Rows read per second.",
                Kind::Gauge,
            )
            .expect("register");
        let server = serve("127.0.0.1:0", gauges.clone()).expect("serve");
        (gauges, rows, server)
    }

    #[test]
    fn metrics_are_served_in_the_text_format() {
        let (gauges, rows, server) = started();
        let batches = gauges
            .register(
                "tidemill_batches_total",
                "Batches trained on,\nso far \\ total.",
                Kind::Counter,
            )
            .expect("register");
        rows.set(1250.5);
        batches.add(3.0);
        let (status, content_type, body) = get(&server, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(
            body,
            "# HELP tidemill_rows_per_second Rows read per second.\n\
             # TYPE tidemill_rows_per_second gauge\n\
             tidemill_rows_per_second 1250.5\n\
             # HELP tidemill_batches_total Batches trained on,\\nso far \\\\ total.\n\
             # TYPE tidemill_batches_total counter\n\
             tidemill_batches_total 3\n"
        );
    }

    #[test]
    fn an_update_shows_on_the_next_scrape() {
        let (_gauges, rows, server) = started();
        assert!(get(&server, "/metrics")
            .2
            .contains("\ntidemill_rows_per_second 0\n"));
        rows.set(42.0);
        assert!(get(&server, "/metrics")
            .2
            .contains("\ntidemill_rows_per_second 42\n"));
        for (value, text) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (-0.125, "-0.125"),
        ] {
            rows.set(value);
            let body = get(&server, "/metrics?x=1").2;
            assert!(
                body.ends_with(&format!("\ntidemill_rows_per_second {text}\n")),
                "{body}"
            );
        }
    }

    #[test]
    fn health_unknown_paths_and_methods() {
        let (_gauges, _rows, server) = started();
        assert_eq!(get(&server, "/healthz").0, 200);
        assert_eq!(get(&server, "/").2, "ok\n");
        assert_eq!(get(&server, "/nope").0, 404);
        let url = format!("http://{}/metrics", server.local_addr());
        let posted = client().post(&url).send("x").expect("request");
        assert_eq!(posted.status().as_u16(), 405);
        let head = raw(&server, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {head}"
        );
        for malformed in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\x00\xff \r\n\r\n",
        ] {
            let answer = raw(&server, malformed);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        }
    }

    /// A client that connects and says nothing must not keep a scrape
    /// that follows from being answered.
    #[test]
    fn a_silent_client_does_not_block_a_scrape() {
        let (_gauges, _rows, server) = started();
        let silent: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(server.local_addr()).expect("connect"))
            .collect();
        let started = Instant::now();
        assert_eq!(get(&server, "/metrics").0, 200);
        assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
        // The silent ones are closed at the deadline, unanswered.
        let mut first = &silent[0];
        first.set_read_timeout(Some(DEADLINE * 3)).expect("timeout");
        assert_eq!(first.read(&mut [0u8; 16]).expect("closed"), 0);
    }

    /// More silent clients than [`MAX_CONNECTIONS`]: those over the cap
    /// are closed on arrival, and scrapes are answered again once the
    /// silent ones time out.
    #[test]
    fn a_flood_of_silent_clients_is_bounded() {
        let (_gauges, _rows, server) = started();
        let _silent: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| TcpStream::connect(server.local_addr()).expect("connect"))
            .collect();
        let started = Instant::now();
        let url = format!("http://{}/metrics", server.local_addr());
        while client().get(&url).call().is_err() {
            assert!(
                started.elapsed() < DEADLINE * 2,
                "no answer after the flood"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn an_oversized_head_is_refused_and_the_server_goes_on() {
        let (_gauges, _rows, server) = started();
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        request.resize(MAX_HEAD * 2, b'a');
        request.extend_from_slice(b"\r\n\r\n");
        let answer = raw(&server, &request);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert_eq!(get(&server, "/metrics").0, 200);
    }

    #[test]
    fn names_are_checked_at_registration() {
        let gauges = Gauges::new();
        for good in ["a", "_x", ":a:b_1", "tidemill_rows_total"] {
            assert!(gauges.register(good, "", Kind::Gauge).is_ok(), "{good}");
        }
        for bad in ["", "1a", "a-b", "a b", "é", "rows/s"] {
            let e = gauges.register(bad, "", Kind::Gauge).expect_err("refused");
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        let twice = gauges
            .register("a", "", Kind::Counter)
            .expect_err("refused");
        assert!(twice.to_string().contains("registered twice"), "{twice}");
    }

    #[test]
    fn a_taken_address_is_a_usage_error_naming_it() {
        let (_gauges, _rows, server) = started();
        let addr = server.local_addr().to_string();
        let e = serve(&addr, Gauges::new()).expect_err("taken");
        assert_eq!(e.exit_code(), 2);
        let message = e.to_string();
        assert!(
            message.starts_with("--metrics-addr: cannot listen on "),
            "{message}"
        );
        assert!(message.contains(&addr), "{message}");
        assert!(serve("no-such-host.invalid:9", Gauges::new()).is_err());
        assert!(serve("127.0.0.1", Gauges::new()).is_err());
    }

    #[test]
    fn dropping_the_server_stops_it_promptly() {
        let (_gauges, _rows, server) = started();
        let addr = server.local_addr();
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(TcpStream::connect(addr).is_err());
    }
}
