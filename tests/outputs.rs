//! Outputs on real files, devices, FIFOs and links, with the real binary:
//! temporary files never follow links, devices and FIFOs are streamed into
//! (not renamed over), links are written through, a command's outputs
//! appear together or not at all and are checked before training, and one
//! path named twice is a usage error.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{predict_breast_cancer, quickstart_model, root, tidemill, tidemill_ok};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn train(args: &[&str]) -> Output {
    let mut all = vec!["train", "pipelines/quickstart.toml"];
    all.extend(args);
    tidemill(&all)
}

fn assert_char_device(path: &str) {
    let ft = std::fs::metadata(path).unwrap().file_type();
    assert!(
        ft.is_char_device(),
        "{path} is no longer a character device"
    );
}

/// Regression (issue 6): the old temporary name `.NAME.tmp-PID` was opened
/// with `File::create`, which followed a link planted there and overwrote
/// its target with the model. Process 0 of a two-process job waits for
/// process 1, which gives time to plant links at its old names.
#[test]
fn links_planted_at_the_old_temporary_names_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hosts = common::hostfile(d, 2);
    let (model, metrics) = (d.join("model.json"), d.join("metrics.jsonl"));
    let spawn = |p: &str| {
        Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            .args(["train", "pipelines/quickstart.toml", "-n", "2", "-p", p])
            .arg("--hostfile")
            .arg(&hosts)
            .arg("--model-out")
            .arg(&model)
            .arg("--metrics-out")
            .arg(&metrics)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let leader = spawn("0");
    let mut victims = Vec::new();
    for name in ["model.json", "metrics.jsonl"] {
        let victim = d.join(format!("victim-{name}"));
        std::fs::write(&victim, b"precious").unwrap();
        symlink(&victim, d.join(format!(".{name}.tmp-{}", leader.id()))).unwrap();
        victims.push(victim);
    }
    let follower = spawn("1");
    let (out0, out1) = (
        leader.wait_with_output().unwrap(),
        follower.wait_with_output().unwrap(),
    );
    assert!(out0.status.success(), "{}", stderr(&out0));
    assert!(out1.status.success(), "{}", stderr(&out1));
    for v in &victims {
        assert_eq!(std::fs::read(v).unwrap(), b"precious", "{v:?} overwritten");
    }
    for out in [&model, &metrics] {
        let meta = out.symlink_metadata().unwrap();
        assert!(meta.file_type().is_file(), "{out:?} is not a regular file");
    }
    assert!(std::fs::read_to_string(&model).unwrap().starts_with('{'));
}

/// The same for `predict`, which creates its temporary file after reading
/// the input's schema from stdin: the link is planted before any is sent.
#[test]
fn predict_never_follows_a_link_at_a_temporary_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = quickstart_model(d);
    let out = d.join("p.parquet");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .args(["predict", "-m", &s(&model), "-i", "-", "-o", &s(&out)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, d.join(format!(".p.parquet.tmp-{}", child.id()))).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&common::ipc_stream("breast_cancer.parquet", 1))
        .unwrap();
    drop(stdin);
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(out.symlink_metadata().unwrap().file_type().is_file());
}

/// Regression (issue 7): `/dev/null` was renamed over (as root) and became
/// a regular file.
#[test]
fn dev_null_stays_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let out = train(&["--model-out", "/dev/null", "--metrics-out", &s(&metrics)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_char_device("/dev/null");
    assert!(metrics.exists());

    let model = quickstart_model(dir.path());
    let out = predict_breast_cancer(&model, Path::new("/dev/null"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_char_device("/dev/null");
}

/// `/dev/full` fails every write with ENOSPC: exit 3 with a message, the
/// device intact, and (train) the other output of the set not written.
#[test]
fn dev_full_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let out = train(&["--model-out", "/dev/full", "--metrics-out", &s(&metrics)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("--model-out /dev/full"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_char_device("/dev/full");
    assert!(!metrics.exists(), "half of the output set was committed");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));

    let model = quickstart_model(dir.path());
    let out = predict_breast_cancer(&model, Path::new("/dev/full"), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("--output /dev/full"), "{err}");
    assert_char_device("/dev/full");
}

/// A FIFO with a reader: the reader gets the whole file, the FIFO stays.
fn read_fifo_while(run: impl FnOnce(&Path) -> Output) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, rx) = mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || tx.send(std::fs::read(path).unwrap()));
    let out = run(&fifo);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the FIFO's reader got nothing (was the FIFO replaced?)");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    got
}

#[test]
fn a_fifo_reader_gets_the_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("model.json");
    let metrics = dir.path().join("m.jsonl");
    let args = |model: &Path| {
        train(&[
            "--model-out",
            &s(model),
            "--metrics-out",
            &s(&metrics),
            "--set",
            "train.epochs=5",
        ])
    };
    let got = read_fifo_while(args);
    assert!(args(&reference).status.success());
    assert_eq!(got, std::fs::read(&reference).unwrap());
}

#[test]
fn a_fifo_reader_gets_the_whole_prediction_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let reference = dir.path().join("p.parquet");
    let predict = |out: &Path| predict_breast_cancer(&model, out, &["--format", "parquet"]);
    let got = read_fifo_while(predict);
    assert!(predict(&reference).status.success());
    assert_eq!(got, std::fs::read(&reference).unwrap());
}

/// Links are written through: the link stays, the file it names is
/// replaced atomically (a dangling link gets its file created).
#[test]
fn a_symlinked_output_keeps_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/model.json"), b"old").unwrap();
    symlink("real/model.json", d.join("model.json")).unwrap();
    symlink("real/metrics.jsonl", d.join("metrics.jsonl")).unwrap();
    let out = train(&[
        "--model-out",
        &s(&d.join("model.json")),
        "--metrics-out",
        &s(&d.join("metrics.jsonl")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (link, target) in [
        ("model.json", "real/model.json"),
        ("metrics.jsonl", "real/metrics.jsonl"),
    ] {
        let meta = d.join(link).symlink_metadata().unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
        assert_eq!(std::fs::read_link(d.join(link)).unwrap(), Path::new(target));
    }
    let model = std::fs::read_to_string(d.join("real/model.json")).unwrap();
    assert!(model.starts_with('{'), "{model}");
    assert!(std::fs::read_to_string(d.join("real/metrics.jsonl"))
        .unwrap()
        .contains("\"epoch\""));
    assert_eq!(names(&d.join("real")), ["metrics.jsonl", "model.json"]);
}

/// Regression (issue 8): `--metrics-out` failing after training left the
/// model written. Now the outputs are prepared before training: it fails
/// at once (no training step traced), exit 3, and writes nothing.
#[test]
fn an_unwritable_output_fails_before_training_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("file"), b"a regular file").unwrap();
    let bad = d.join("file/metrics.jsonl");
    let trace = d.join("trace");
    for existing in [None, Some("the previous model")] {
        let model = d.join("model.json");
        if let Some(text) = existing {
            std::fs::write(&model, text).unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            .env("TIDEMILL_TRACE_STEPS", &trace)
            .args(["train", "pipelines/quickstart.toml"])
            .args(["--model-out", &s(&model), "--metrics-out", &s(&bad)])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains("--metrics-out") && err.contains(&s(&bad)),
            "{err}"
        );
        assert!(!trace.exists(), "it trained before failing");
        match existing {
            None => assert!(!model.exists(), "a model was written"),
            Some(text) => assert_eq!(std::fs::read_to_string(&model).unwrap(), text),
        }
        let expected: &[&str] = if existing.is_some() {
            &["file", "model.json"]
        } else {
            &["file"]
        };
        assert_eq!(names(d), expected);
    }
}

/// Regression (issue 8): `--model-out X --metrics-out X` silently lost the
/// model. The same file named twice (directly, through `..`, through a
/// link, or as an input) is a usage error naming both flags.
#[test]
fn one_path_named_twice_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("sub")).unwrap();
    let x = d.join("x.json");
    symlink(&x, d.join("link")).unwrap();
    for (model, metrics) in [
        (x.clone(), x.clone()),
        (x.clone(), d.join("sub/../x.json")),
        (x.clone(), d.join("link")),
    ] {
        let out = train(&["--model-out", &s(&model), "--metrics-out", &s(&metrics)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--model-out") && err.contains("--metrics-out"),
            "{err}"
        );
    }
    assert!(!x.exists());

    let model = quickstart_model(d);
    let before = std::fs::read(&model).unwrap();
    let input = d.join("in.parquet");
    std::fs::copy(root().join("datasets/breast_cancer.parquet"), &input).unwrap();
    let input_bytes = std::fs::read(&input).unwrap();
    for (output, flag) in [(&input, "--input"), (&model, "--model")] {
        let out = tidemill(&[
            "predict",
            "-m",
            &s(&model),
            "-i",
            &s(&input),
            "-o",
            &s(output),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("--output") && err.contains(flag), "{err}");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
    assert_eq!(std::fs::read(&input).unwrap(), input_bytes);
}

/// Regression (issue 8): `validate` said ok for an unwritable output.
#[test]
fn validate_checks_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("file"), b"a regular file").unwrap();
    let bad = d.join("file/m.jsonl");
    let set = format!("output.metrics={}", s(&bad));
    let out = tidemill(&["validate", "pipelines/quickstart.toml", "--set", &set]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("output.metrics") && err.contains(&s(&bad)),
        "{err}"
    );

    let good = format!("output.metrics={}", s(&d.join("new/dir/m.jsonl")));
    let ok = tidemill_ok(&["validate", "pipelines/quickstart.toml", "--set", &good]);
    assert!(ok.contains("outputs writable"), "{ok}");
    assert_eq!(names(d), ["file"], "validate left something behind");
}

/// Regression: `..` through a directory that did not exist yet was kept
/// as written, so `new/x/../m.json` and `new/m.json` compared different,
/// and the metrics replaced the model with exit 0. It is the same file
/// once the directories are created: a usage error, nothing created.
#[test]
fn dots_through_a_new_directory_name_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = train(&[
        "--model-out",
        &s(&d.join("new/x/../m.json")),
        "--metrics-out",
        &s(&d.join("new/m.json")),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--model-out") && err.contains("--metrics-out"),
        "{err}"
    );
    assert!(names(d).is_empty(), "{:?}", names(d));
}

/// Regression: an output inside a directory listed in `data.train` (or
/// `data.validation.path`) was not compared with the files read from it,
/// and replaced a training file with exit 0.
#[test]
fn an_output_over_a_data_file_inside_a_listed_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    std::fs::create_dir_all(data.join("part")).unwrap();
    let file = data.join("part/breast_cancer.parquet");
    std::fs::copy(root().join("datasets/breast_cancer.parquet"), &file).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let train_dir = format!("data.train={:?}", s(&data));
    let validation_dir = format!("data.validation={{ path = {:?} }}", s(&data));
    for (set, key) in [
        (train_dir.as_str(), "data.train"),
        (validation_dir.as_str(), "data.validation.path"),
    ] {
        let out = train(&[
            "--set",
            set,
            "--model-out",
            &s(&d.join("m.json")),
            "--metrics-out",
            &s(&file),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(key) && err.contains("--metrics-out"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "{set}");
        assert_eq!(names(d), ["data"], "{set}");

        let metrics = format!("output.metrics={:?}", s(&file));
        let out = tidemill(&[
            "validate",
            "pipelines/quickstart.toml",
            "--set",
            set,
            "--set",
            &metrics,
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "validate {set}: {}",
            stderr(&out)
        );
    }
}

/// Regression: a symbolic link at an output path was followed whoever
/// owned it, where the kernel (with `fs.protected_symlinks`, as most
/// distributions set it) refuses to follow, for `>` in a shell, a link in
/// a sticky world-writable directory (like /tmp) owned by neither the user
/// nor the directory's owner: another user could plant `model.json ->
/// ~/.bashrc` there. Such a link is refused (exit 3, the target intact);
/// links owned by the user or by the directory's owner, and links in
/// directories that are not sticky, are still written through.
///
/// A link owned by someone else can only be made as root (CI runs as
/// root); otherwise that half is skipped.
#[test]
fn foreign_links_in_sticky_world_writable_directories_are_not_followed() {
    use std::os::unix::fs::{lchown, PermissionsExt};
    const OTHER: u32 = 54_321;
    const THIRD: u32 = 54_322;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shared = d.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let metrics = d.join("metrics.jsonl");
    let model_into = |link: &Path| train(&["--model-out", &s(link), "--metrics-out", &s(&metrics)]);

    // Planted by another user (as root, chown can make one), in a
    // directory a third user owns.
    let planted = shared.join("model.json");
    symlink(&victim, &planted).unwrap();
    let as_root = match lchown(&planted, Some(OTHER), Some(OTHER)) {
        Ok(()) => {
            lchown(&shared, Some(THIRD), Some(THIRD)).unwrap();
            true
        }
        Err(e) => {
            eprintln!("only the own-link half runs (not root: {e})");
            false
        }
    };

    // Our own link: written through.
    let own = shared.join("own.json");
    symlink(&victim, &own).unwrap();
    let out = model_into(&own);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&victim).unwrap().starts_with('{'));
    assert!(own.symlink_metadata().unwrap().file_type().is_symlink());
    std::fs::write(&victim, b"precious").unwrap();
    if !as_root {
        return;
    }

    let out = model_into(&planted);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--model-out") && err.contains("sticky"),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(planted.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(names(&shared), ["model.json", "own.json"]);

    // Owned by the directory's owner: followed, as the kernel does.
    lchown(&shared, Some(OTHER), None).unwrap();
    let out = model_into(&planted);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&victim).unwrap().starts_with('{'));
    std::fs::write(&victim, b"precious").unwrap();

    // Not sticky: followed.
    lchown(&shared, Some(THIRD), None).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = model_into(&planted);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&victim).unwrap().starts_with('{'));
}

/// Regression: any error whose message mentioned "Broken pipe" exited 0
/// as if a reader had closed the pipe; here a column of that name.
#[test]
fn a_message_mentioning_a_broken_pipe_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let out = predict_breast_cancer(
        &model,
        &dir.path().join("p.parquet"),
        &["--keep", "Broken pipe"],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("'Broken pipe' not found"), "{err}");
}

/// Runs `tidemill args` with a standard output whose reader has gone.
fn with_stdout_closed(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// A reader that closes standard output early ends `predict -o -`
/// quietly, with exit code 0.
#[test]
fn a_reader_closing_stdout_early_is_a_quiet_exit() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let out = with_stdout_closed(&[
        "predict",
        "-m",
        &s(&model),
        "-i",
        "datasets/breast_cancer.parquet",
        "-o",
        "-",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// Regression: `inspect`, `eval`, `validate` and `train` printed with
/// `println!`, which panics (exit 1) when the reader has gone; every
/// command that writes to standard output must end quietly instead.
#[test]
fn every_command_ends_quietly_when_stdout_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let model = s(&model);
    let (m2, metrics) = (dir.path().join("m2.json"), dir.path().join("m.jsonl"));
    let (m2, metrics) = (s(&m2), s(&metrics));
    let commands: [&[&str]; 5] = [
        &["inspect", "datasets/breast_cancer.parquet", "--json"],
        &["inspect", "datasets/breast_cancer.parquet"],
        &["eval", "-m", &model, "-i", "datasets/breast_cancer.parquet"],
        &["validate", "pipelines/quickstart.toml"],
        &[
            "train",
            "pipelines/quickstart.toml",
            "--model-out",
            &m2,
            "--metrics-out",
            &metrics,
        ],
    ];
    for args in commands {
        let out = with_stdout_closed(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
