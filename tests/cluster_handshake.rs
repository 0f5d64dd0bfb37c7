//! Start-up of a cluster: strangers that connect to a waiting process are
//! dropped without harm, processes of different jobs or keys refuse each
//! other with a message naming what differs, missing peers time out naming
//! them, and usage mistakes are exit code 2 — real processes, real sockets.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float32Array};
use arrow::datatypes::Float32Type;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use common::{finish, root, start, tidemill_ok};

const PIPELINE: &str = "pipelines/quickstart.toml";
/// Long enough for any correct run; a process that waits forever fails.
const LIMIT: Duration = Duration::from_secs(60);

/// A two-process job in `dir`: its hostfile and outputs.
struct Job {
    dir: tempfile::TempDir,
    hosts: PathBuf,
    ports: Vec<u16>,
}

impl Job {
    fn new() -> Job {
        let dir = tempfile::tempdir().unwrap();
        let ports = common::free_ports(2);
        let hosts = dir.path().join("hosts");
        let lines: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
        std::fs::write(&hosts, lines).unwrap();
        Job { dir, hosts, ports }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts process `p` with extra arguments and environment.
    fn start(&self, p: usize, extra: &[&str], envs: &[(&str, &str)]) -> Child {
        let (hosts, model, metrics) = (
            self.hosts.to_string_lossy().into_owned(),
            self.path("model.json").to_string_lossy().into_owned(),
            self.path("metrics.jsonl").to_string_lossy().into_owned(),
        );
        let p = p.to_string();
        let mut args = vec![
            "train",
            PIPELINE,
            "--processes",
            "2",
            "--process",
            &p,
            "--hostfile",
            &hosts,
            "--model-out",
            &model,
            "--metrics-out",
            &metrics,
        ];
        args.extend_from_slice(extra);
        start(&args, envs)
    }

    /// Waits until process 0 listens (strangers must find it waiting).
    fn wait_for_listener(&self) {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.ports[0])).is_err() {
            assert!(started.elapsed() < LIMIT, "process 0 never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stranger(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.ports[0])).unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", stderr(out));
}

/// The model of the same pipeline on two worker threads of one process.
fn threads_model(dir: &Path) -> Vec<u8> {
    let model = dir.join("threads.json");
    let metrics = dir.join("threads.jsonl");
    tidemill_ok(&[
        "train",
        PIPELINE,
        "--workers",
        "2",
        "--model-out",
        model.to_str().unwrap(),
        "--metrics-out",
        metrics.to_str().unwrap(),
    ]);
    std::fs::read(model).unwrap()
}

#[test]
fn strangers_are_dropped_and_the_job_runs() {
    let job = Job::new();
    // Process 0 waits at most 8 s, less than a handshake may take in all
    // (10 s): the job only succeeds if strangers do not hold up the real
    // peer.
    let p0 = job.start(0, &["--connect-timeout", "8"], &[]);
    job.wait_for_listener();
    // A port scan: connect and close (the probe above was one too).
    drop(job.stranger());
    // Random garbage.
    let mut garbage = job.stranger();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    garbage.write_all(&noise).unwrap();
    // A huge length prefix.
    let mut huge = job.stranger();
    huge.write_all(&u32::MAX.to_be_bytes()).unwrap();
    huge.write_all(&[7u8; 64]).unwrap();
    // Timely's own greeting: an 8-byte process index.
    let mut timely_peer = job.stranger();
    timely_peer.write_all(&1u64.to_be_bytes()).unwrap();
    // One that says nothing and stays.
    let silent = job.stranger();
    std::thread::sleep(Duration::from_millis(300));
    let p1 = job.start(1, &[], &[]);
    let out1 = finish(p1, LIMIT);
    let out0 = finish(p0, LIMIT);
    drop((garbage, huge, timely_peer, silent));
    assert_code(&out0, 0, "process 0");
    assert_code(&out1, 0, "process 1");
    let log = stderr(&out0);
    assert!(log.contains("not processes of this job"), "{log}");
    assert!(log.contains("-byte message where at most"), "{log}");
    let multi = std::fs::read(job.path("model.json")).unwrap();
    assert!(
        multi == threads_model(job.dir.path()),
        "the 2-process model differs from the 2-thread model"
    );
}

/// Strangers on process 0's port until dropped: one holds `held` idle
/// connections (reopening any that process 0 closes), another connects and
/// closes as fast as it can.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(port: u16, held: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let dial = move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok();
        let holder = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut idle: Vec<Option<TcpStream>> = (0..held).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    for slot in idle.iter_mut() {
                        let open = slot.as_mut().is_some_and(|s| {
                            let mut byte = [0u8; 1];
                            matches!(s.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        });
                        if !open {
                            *slot = dial().filter(|s| s.set_nonblocking(true).is_ok());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let flooder = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    drop(dial());
                }
            })
        };
        Flood {
            stop,
            threads: vec![holder, flooder],
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Regression: 40 idle connections kept process 1 out until both timed
/// out (exit 7), and process 0 logged a warning per dropped connection
/// (9,669 lines in 25 s).
#[test]
fn a_flood_of_strangers_does_not_keep_the_peer_out_or_flood_the_log() {
    let job = Job::new();
    let timeout = ["--connect-timeout", "15"];
    let p0 = job.start(0, &timeout, &[]);
    job.wait_for_listener();
    let flood = Flood::start(job.ports[0], 100);
    std::thread::sleep(Duration::from_millis(500));
    let p1 = job.start(1, &timeout, &[]);
    let out1 = finish(p1, LIMIT);
    let out0 = finish(p0, LIMIT);
    drop(flood);
    assert_code(&out0, 0, "process 0");
    assert_code(&out1, 0, "process 1");
    let log = stderr(&out0);
    let lines = log.lines().count();
    assert!(lines <= 40, "process 0 logged {lines} lines:\n{log}");
    assert!(log.contains("ignored"), "{log}");
}

/// A flood neither keeps a waiting process from its deadline (the accept
/// loop ran until the listener had nothing left) nor fills its log.
#[test]
fn a_flood_does_not_keep_a_lone_process_past_its_timeout() {
    let job = Job::new();
    let p0 = job.start(0, &["--connect-timeout", "3"], &[]);
    job.wait_for_listener();
    let flood = Flood::start(job.ports[0], 100);
    let out = finish(p0, LIMIT);
    drop(flood);
    assert_code(&out, 7, "process 0 alone");
    let log = stderr(&out);
    assert!(log.contains("process 1 at"), "{log}");
    let lines = log.lines().count();
    assert!(lines <= 10, "process 0 logged {lines} lines:\n{log}");
}

#[test]
fn stdout_of_a_cluster_run_is_one_json_document() {
    let job = Job::new();
    let p0 = job.start(0, &[], &[]);
    // Let process 0 wait a while before process 1 starts: nothing of the
    // waiting (nor of the probe's stranger warning) may reach stdout.
    job.wait_for_listener();
    std::thread::sleep(Duration::from_secs(2));
    let p1 = job.start(1, &[], &[]);
    let (out0, out1) = (finish(p0, LIMIT), finish(p1, LIMIT));
    assert_code(&out0, 0, "process 0");
    assert_code(&out1, 0, "process 1");
    let summary: serde_json::Value = serde_json::from_slice(&out0.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out0.stdout)
        )
    });
    assert!(summary.get("epochs").is_some(), "{summary}");
    assert!(out1.stdout.is_empty(), "process 1 printed on stdout");
}

/// Runs both processes, process 1 with `extra`, and returns both outputs.
fn mismatched(job: &Job, extra0: &[&str], extra1: &[&str]) -> (Output, Output) {
    let p0 = job.start(0, extra0, &[]);
    let p1 = job.start(1, extra1, &[]);
    (finish(p0, LIMIT), finish(p1, LIMIT))
}

/// Both processes exit 2 (neither waits for a timeout: that would be 7)
/// and both name `key`.
fn assert_both_refuse(out: &(Output, Output), key: &str) {
    for (p, o) in [&out.0, &out.1].into_iter().enumerate() {
        assert_code(o, 2, &format!("process {p}"));
        let err = stderr(o);
        assert!(err.contains("runs a different job"), "process {p}: {err}");
        assert!(err.contains(key), "process {p} does not name {key}: {err}");
    }
}

#[test]
fn a_different_pipeline_value_is_refused_on_both_sides() {
    let job = Job::new();
    let out = mismatched(&job, &[], &["--set", "model.l2=0.5"]);
    assert_both_refuse(&out, "model.l2");
    assert!(
        stderr(&out.0).contains("model.l2 = 0.5 there, 0.01 here"),
        "{}",
        stderr(&out.0)
    );
    assert!(!job.path("model.json").exists());
}

#[test]
fn a_different_seed_is_refused_on_both_sides() {
    let job = Job::new();
    let out = mismatched(&job, &[], &["--set", "data.seed=7"]);
    assert_both_refuse(&out, "data.seed");
}

/// Rewrites `src` with 128-row row groups; with `bump`, the first value of
/// the first column becomes 10^6.
fn rewrite(src: &Path, dst: &Path, bump: bool) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(src).unwrap())
        .unwrap()
        .with_batch_size(128)
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let schema = batches[0].schema();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(128))
        .build();
    let out = std::fs::File::create(dst).unwrap();
    let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props)).unwrap();
    for (i, batch) in batches.iter().enumerate() {
        if bump && i == 0 {
            let first = batch.column(0).as_primitive::<Float32Type>();
            let mut values: Vec<f32> = (0..first.len()).map(|r| first.value(r)).collect();
            values[0] = 1.0e6;
            let mut columns = batch.columns().to_vec();
            columns[0] = Arc::new(Float32Array::from(values));
            w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
                .unwrap();
        } else {
            w.write(batch).unwrap();
        }
    }
    w.close().unwrap();
}

#[test]
fn different_data_is_refused_on_both_sides_naming_the_file() {
    let job = Job::new();
    let original = root().join("datasets/breast_cancer.parquet");
    let (same, changed) = (job.path("same.parquet"), job.path("changed.parquet"));
    rewrite(&original, &same, false);
    rewrite(&original, &changed, true);
    let set = |p: &Path| format!("data.train=\"{}\"", p.display());
    let out = mismatched(&job, &["--set", &set(&same)], &["--set", &set(&changed)]);
    assert_both_refuse(&out, "data.train[0]");
    assert!(
        stderr(&out.0).contains("same.parquet"),
        "{}",
        stderr(&out.0)
    );
    assert!(
        stderr(&out.1).contains("changed.parquet"),
        "{}",
        stderr(&out.1)
    );
}

#[test]
fn data_paths_may_differ_when_contents_agree() {
    let job = Job::new();
    let copy = job.path("copy.parquet");
    std::fs::copy(root().join("datasets/breast_cancer.parquet"), &copy).unwrap();
    let set = format!("data.train=\"{}\"", copy.display());
    let (out0, out1) = mismatched(&job, &[], &["--set", &set]);
    assert_code(&out0, 0, "process 0");
    assert_code(&out1, 0, "process 1");
}

fn key_file(job: &Job, name: &str, secret: &str) -> String {
    let path = job.path(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path.to_string_lossy().into_owned()
}

#[test]
fn a_process_with_another_key_fails_and_process_0_keeps_waiting() {
    let job = Job::new();
    let right = key_file(&job, "right.key", "9d1f0c5e7a2b4c68b3e1f0a9d8c7b6a5");
    let wrong = key_file(&job, "wrong.key", "0000000000000000ffffffffffffffff");
    // Process 0 takes the key from the environment, the others from files.
    let env = [("TIDEMILL_CLUSTER_KEY", "9d1f0c5e7a2b4c68b3e1f0a9d8c7b6a5")];
    let p0 = job.start(0, &[], &env);
    job.wait_for_listener();
    let intruder = finish(job.start(1, &["--cluster-key-file", &wrong], &[]), LIMIT);
    assert_code(&intruder, 7, "process 1 with the wrong key");
    assert!(
        stderr(&intruder).contains("does not hold this process's cluster key"),
        "{}",
        stderr(&intruder)
    );
    // Without a key is a wrong key too.
    let keyless = finish(job.start(1, &[], &[]), LIMIT);
    assert_code(&keyless, 7, "process 1 without a key");
    let p1 = finish(job.start(1, &["--cluster-key-file", &right], &[]), LIMIT);
    let out0 = finish(p0, LIMIT);
    assert_code(&p1, 0, "process 1 with the right key");
    assert_code(&out0, 0, "process 0");
    assert!(
        stderr(&out0).contains("another cluster key"),
        "{}",
        stderr(&out0)
    );
}

/// Regression: without a key, a hostfile with addresses off this machine
/// ran silently on the public default key, with which anyone who can reach
/// the ports can take a missing process's place.
#[test]
fn no_key_with_an_address_off_this_machine_is_refused_unless_allowed() {
    let job = Job::new();
    // 192.0.2.1 (TEST-NET-1) is not loopback; process 0 only listens on
    // its own, loopback, address.
    let hosts = format!("127.0.0.1:{}\n192.0.2.1:{}\n", job.ports[0], job.ports[1]);
    std::fs::write(&job.hosts, hosts).unwrap();
    let refused = finish(job.start(0, &["--connect-timeout", "1"], &[]), LIMIT);
    assert_code(&refused, 2, "no key");
    let err = stderr(&refused);
    for needed in ["192.0.2.1:", "--allow-public-key", "TIDEMILL_CLUSTER_KEY"] {
        assert!(err.contains(needed), "no {needed}: {err}");
    }
    // Allowed, it runs (and times out waiting for process 1) after one warning.
    let allow = ["--connect-timeout", "1", "--allow-public-key"];
    let allowed = finish(job.start(0, &allow, &[]), LIMIT);
    assert_code(&allowed, 7, "--allow-public-key");
    let err = stderr(&allowed);
    assert_eq!(
        err.matches("public default cluster key").count(),
        1,
        "{err}"
    );
    assert!(err.contains("WARN") && err.contains("192.0.2.1:"), "{err}");
    // With a key, neither.
    let key = [("TIDEMILL_CLUSTER_KEY", "9d1f0c5e7a2b4c68b3e1f0a9d8c7b6a5")];
    let keyed = finish(job.start(0, &["--connect-timeout", "1"], &key), LIMIT);
    assert_code(&keyed, 7, "with a key");
    assert!(
        !stderr(&keyed).contains("public default"),
        "{}",
        stderr(&keyed)
    );
}

#[test]
fn a_process_alone_times_out_naming_its_peer() {
    for (alone, other) in [(0, 1), (1, 0)] {
        let job = Job::new();
        let out = finish(job.start(alone, &["--connect-timeout", "2"], &[]), LIMIT);
        assert_code(&out, 7, &format!("process {alone} alone"));
        let expected = format!(
            "process {other} at 127.0.0.1:{} did not connect within 2 s",
            job.ports[other]
        );
        assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
        // Loopback addresses only: the public default key draws no warning.
        assert!(!stderr(&out).contains("public default"), "{}", stderr(&out));
    }
}

fn usage_error(args: &[&str], hostfile: Option<&str>, expected: &str) {
    let job = Job::new();
    let hosts = job.path("bad-hosts");
    let mut all: Vec<String> = ["train", PIPELINE].map(String::from).to_vec();
    all.extend(args.iter().map(|s| s.to_string()));
    if let Some(text) = hostfile {
        std::fs::write(&hosts, text).unwrap();
        all.push("--hostfile".into());
        all.push(hosts.to_string_lossy().into_owned());
    }
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = finish(start(&refs, &[]), LIMIT);
    assert_code(&out, 2, &format!("{args:?} {hostfile:?}"));
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
}

#[test]
fn bad_hostfiles_and_layouts_are_usage_errors() {
    let two = ["-n", "2", "-p", "0"];
    usage_error(
        &two,
        Some("127.0.0.1:99999\n127.0.0.1:2\n"),
        "port 99999 is not in 1..=65535",
    );
    usage_error(&two, Some("127.0.0.1\n127.0.0.1:2\n"), "no port");
    usage_error(&two, Some("127.0.0.1:1\n"), "1 address(es) for 2 processes");
    usage_error(
        &two,
        Some("127.0.0.1:4000\n127.0.0.1:4000\n"),
        "same address",
    );
    usage_error(&["--workers", "0"], None, "--workers");
    usage_error(&["--process", "5", "--processes", "2"], None, "--process");
    usage_error(&["--connect-timeout", "0"], None, "--connect-timeout");
    usage_error(&["--peer-timeout", "0"], None, "--peer-timeout");
    usage_error(&["--peer-timeout", "1e9"], None, "--peer-timeout");
    usage_error(&["--peer-timeout", "NaN"], None, "--peer-timeout");
}

/// Two processes warm-starting from different models would train a hybrid:
/// the model's digest is part of the job, and a difference is refused.
#[test]
fn a_different_init_model_is_refused_on_both_sides() {
    let job = Job::new();
    let model = common::quickstart_model(job.dir.path());
    let mut other: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    other["intercept"] = serde_json::json!(0.25);
    let other_path = job.path("other.json");
    std::fs::write(&other_path, other.to_string()).unwrap();
    let (a, b) = (model.to_string_lossy(), other_path.to_string_lossy());
    let out = mismatched(&job, &["--init-model", &a], &["--init-model", &b]);
    assert_both_refuse(&out, "init_model");
    assert!(stderr(&out.1).contains("other.json"), "{}", stderr(&out.1));
    // The same weights under another path and layout of the JSON agree.
    let pretty = job.path("pretty.json");
    std::fs::write(
        &pretty,
        std::fs::read_to_string(&model)
            .unwrap()
            .replace('\n', "\n  "),
    )
    .unwrap();
    let p = pretty.to_string_lossy();
    let (out0, out1) = mismatched(&job, &["--init-model", &a], &["--init-model", &p]);
    assert_code(&out0, 0, "process 0");
    assert_code(&out1, 0, "process 1");
}
