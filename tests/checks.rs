//! What is checked before training, and what a run says about itself:
//! mistakes name their source (the file's line, or the `--set`) and the
//! nearest valid value; too few units for the workers is warned about with
//! the setting that fixes it; the summary says why training stopped; logs
//! can be quiet or JSON.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::{root, tidemill};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `tidemill ARGS` with `TIDEMILL_LOG` unset, so that `--log` and
/// `-q` decide, and a progress line after every round.
fn tidemill_logged(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .current_dir(root())
        .env_remove("TIDEMILL_LOG")
        .env("TIDEMILL_PROGRESS_EVERY", "0")
        .output()
        .unwrap()
}

#[test]
fn mistakes_name_their_source_and_the_nearest_valid_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[data]\ntrain = \"datasets/adult.parquet\"\nlabel = \"income\"\ncategorical = [\"workclass\"]\n[model]\nkind = \"logistic\"\nl3 = 0.1\n",
    )
    .unwrap();
    let f = file.to_string_lossy().to_string();
    let cases: [(&[&str], u8, &[&str]); 7] = [
        // In the file: its line, and the key meant.
        (&["validate", &f], 2, &["line 7", "did you mean `l2`?"]),
        // From --set: the assignment is named, not the file.
        (
            &["validate", "pipelines/adult.toml", "--set", "model.l3=0.1"],
            2,
            &["--set model.l3=0.1", "did you mean `l2`?"],
        ),
        (
            &["validate", "pipelines/adult.toml", "--set", "model.l2=abc"],
            2,
            &["--set model.l2=abc", "expected f64"],
        ),
        (
            &[
                "validate",
                "pipelines/adult.toml",
                "--set",
                "model.kind=\"logistc\"",
            ],
            2,
            &["did you mean 'logistic'?", "(from --set model.kind"],
        ),
        (
            &[
                "validate",
                "pipelines/adult.toml",
                "--set",
                "data.categorical=[\"workclas\"]",
            ],
            2,
            &["data.categorical", "did you mean 'workclass'?"],
        ),
        // A missing file: the key that names it, the cause said once.
        (
            &[
                "validate",
                "pipelines/adult.toml",
                "--set",
                "data.train=\"nope.parquet\"",
            ],
            3,
            &["nope.parquet (named by data.train)"],
        ),
        (
            &["validate", "pipelines/adult.toml", "--log", "verbose"],
            2,
            &[
                "verbose: not a log level",
                "use error, warn, info, debug or trace",
            ],
        ),
    ];
    for (args, code, needles) in cases {
        let out = tidemill(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(i32::from(code)), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?} should say {n:?}: {err}");
        }
        assert!(
            !err.contains("caused by"),
            "{args:?} repeats its cause: {err}"
        );
    }
}

/// A pipeline file that leaves a required key to `--set` (a template) is
/// a whole pipeline once the `--set` values are in.
#[test]
fn a_template_completed_by_set_is_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("template.toml");
    std::fs::write(
        &file,
        "[data]\ntrain = \"datasets/breast_cancer.parquet\"\n",
    )
    .unwrap();
    let f = file.to_string_lossy().to_string();
    let out = tidemill(&[
        "validate",
        &f,
        "--set",
        "data.label=\"target\"",
        "--set",
        "model.kind=\"logistic\"",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without them, the file's own mistake, named by the file.
    let out = tidemill(&["validate", &f]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&f) && err.contains("label"), "{err}");
}

#[test]
fn fewer_units_than_workers_is_warned_with_the_setting_that_cuts_finer() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json").to_string_lossy().to_string();
    let args = [
        "train",
        "pipelines/quickstart.toml",
        "-w",
        "8",
        "--model-out",
        &m,
    ];
    let out = tidemill(&args);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("5 unit(s) for 8 workers") && err.contains("--set data.max_unit_rows=71"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["rows_per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == 0));
    // The setting it names gives every worker rows, and no warning.
    let mut finer = args.to_vec();
    finer.extend(["--set", "data.max_unit_rows=71"]);
    let out = tidemill(&finer);
    let err = stderr(&out);
    assert!(
        out.status.success() && !err.contains("unit(s) for"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = summary["rows_per_worker"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r.as_u64().unwrap() > 0), "{rows:?}");
}

/// Runs `tidemill ARGS`, asserts it succeeded, and returns its stderr.
fn warnings_of(args: &[&str]) -> String {
    let out = tidemill(args);
    let err = stderr(&out);
    assert!(out.status.success(), "{args:?}: {err}");
    err
}

#[test]
fn steps_that_reach_few_workers_are_warned_with_the_setting_that_widens_them() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json").to_string_lossy().to_string();
    // 20 units in slices of 2.5 per worker: a wave of 4 units reaches 4 of 8.
    let base = [
        "train",
        "pipelines/nycflights.toml",
        "--set",
        "data.partition=\"slice\"",
        "--set",
        "train.epochs=1",
        "--model-out",
        &m,
    ];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        warnings_of(&a)
    };
    let err = with(&["-w", "8"]);
    assert!(
        err.contains("at most 4 of 8 workers") && err.contains("--set data.units_per_step=10"),
        "{err}"
    );
    // The value it names, one worker, a full-batch optimizer, or replicas
    // that meet only every sync_every steps: no warning.
    for extra in [
        &["-w", "8", "--set", "data.units_per_step=10"][..],
        &["-w", "1"][..],
        &["-w", "8", "--set", "optimizer.kind=\"lbfgs\""][..],
        &["-w", "8", "--set", "train.strategy=\"model-average\""][..],
    ] {
        let err = with(extra);
        assert!(!err.contains("reads rows on at most"), "{extra:?}: {err}");
    }
}

#[test]
fn the_summary_says_why_training_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json").to_string_lossy().to_string();
    let cases: [(&str, &[&str], &str); 4] = [
        ("pipelines/quickstart.toml", &[], "converged"),
        (
            "pipelines/quickstart.toml",
            &["train.epochs=2"],
            "iteration_limit",
        ),
        (
            "pipelines/adult.toml",
            &[
                "train.early_stopping={ metric = \"loss\", patience = 1 }",
                "train.epochs=40",
            ],
            "early_stopping",
        ),
        ("pipelines/adult.toml", &["train.epochs=2"], "epochs"),
    ];
    // L-BFGS with early stopping stops early, and says so.
    let out = tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        "train.early_stopping={ metric = \"loss\", patience = 1 }",
        "--model-out",
        &m,
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["stopped_by"], "early_stopping", "{summary}");
    assert!(
        summary["epoch_reported"].as_u64() < summary["epochs"].as_u64(),
        "{summary}"
    );
    for (pipeline, sets, want) in cases {
        let mut args = vec!["train", pipeline, "--model-out", &m];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = tidemill(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            summary["stopped_by"], want,
            "{pipeline} {sets:?}: {summary}"
        );
        if want == "early_stopping" {
            assert!(summary["epochs"].as_u64().unwrap() < 40);
        }
    }
    // L-BFGS names the test that ended it, and the log its value.
    for (sets, want) in [
        (&[][..], "gradient"),
        (&["optimizer.gradient_tolerance=0.01"][..], "gradient"),
        (
            &[
                "optimizer.tolerance=0.001",
                "optimizer.gradient_tolerance=0",
            ][..],
            "objective_change",
        ),
    ] {
        let mut args = vec!["train", "pipelines/quickstart.toml", "--model-out", &m];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = tidemill_logged(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["stopped_by"], "converged", "{sets:?}: {summary}");
        assert_eq!(summary["converged_by"], want, "{sets:?}: {summary}");
        let log = stderr(&out);
        let said = match want {
            "gradient" => "≤ optimizer.gradient_tolerance",
            _ => "≤ optimizer.tolerance",
        };
        assert!(log.contains(said), "{sets:?}: {log}");
    }
}

/// `train.eval_every` changes which L-BFGS iterations are evaluated, not
/// the model; a first-order optimizer refuses it.
#[test]
fn eval_every_thins_the_evaluations_and_keeps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let run_with = |every: &str, tag: &str, sets: &[&str]| {
        let m = dir.path().join(format!("m{every}{tag}.json"));
        let metrics = dir.path().join(format!("m{every}{tag}.jsonl"));
        let every = format!("train.eval_every={every}");
        let mut args = vec![
            "train",
            "pipelines/quickstart.toml",
            "--set",
            &every,
            "--model-out",
            m.to_str().unwrap(),
            "--metrics-out",
            metrics.to_str().unwrap(),
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = tidemill(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let epochs: Vec<u64> = std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        (std::fs::read(&m).unwrap(), summary, epochs)
    };
    let run = |every: &str| run_with(every, "", &[]);
    let (every_one, s1, e1) = run("1");
    let (every_four, s4, e4) = run("4");
    assert!(every_one == every_four, "the model depends on eval_every");
    let ran = s1["epochs"].as_u64().unwrap();
    assert_eq!(s4["epochs"].as_u64().unwrap(), ran);
    assert_eq!(e1, (1..=ran).collect::<Vec<_>>());
    let mut want: Vec<u64> = (1..=ran).filter(|e| e % 4 == 0).collect();
    if ran % 4 != 0 {
        want.push(ran);
    }
    assert_eq!(e4, want);
    assert_eq!(s4["validation"], s1["validation"]);
    // Checkpoints every iteration wait for the evaluated ones, and do not
    // change the model.
    let checkpoints = dir.path().join("ckpt");
    let at = format!("output.checkpoint={:?}", checkpoints.to_str().unwrap());
    let (checkpointed, _, ec) = run_with("4", "c", &[&at, "output.checkpoint_keep=100"]);
    assert!(checkpointed == every_one, "checkpoints changed the model");
    assert_eq!(ec, e4);
    assert!(std::fs::read_dir(&checkpoints).unwrap().count() > 0);
    // Run to the objective's floor (no tolerance): the last iterate is
    // evaluated even when it ends between two evaluations.
    let floor = [
        "optimizer.tolerance=0",
        "optimizer.gradient_tolerance=0",
        "train.epochs=1000",
    ];
    let (f1, sf1, _) = run_with("1", "f", &floor);
    let (f1000, sf1000, ef) = run_with("1000", "f", &floor);
    assert!(f1 == f1000, "the model at the floor depends on eval_every");
    assert_eq!(sf1000["converged_by"], "no_decrease", "{sf1000}");
    assert_eq!(ef, vec![sf1000["epochs"].as_u64().unwrap()]);
    assert_eq!(sf1["validation"], sf1000["validation"]);
    let out = tidemill(&[
        "train",
        "pipelines/adult.toml",
        "--set",
        "train.eval_every=2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("train.eval_every"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_are_quiet_or_json_on_request_and_results_stay_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json").to_string_lossy().to_string();
    let base = ["train", "pipelines/quickstart.toml", "--model-out", &m];
    let quiet = tidemill_logged(&[&base[..], &["-q"]].concat());
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", stderr(&quiet));
    let summary: serde_json::Value = serde_json::from_slice(&quiet.stdout).unwrap();
    assert_eq!(summary["stopped_by"], "converged");
    let json = tidemill_logged(&[&base[..], &["--log-format", "json"]].concat());
    assert!(json.status.success());
    let lines: Vec<serde_json::Value> = stderr(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.len() > 3);
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["message"].is_string()));
    assert!(lines.iter().any(|l| l["message"] == "epoch done"));
    let _: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // Progress inside epochs (first-order steps): where, how fast, how
    // long; the last line of an epoch is at its last step.
    let adult = [
        "train",
        "pipelines/adult.toml",
        "--set",
        "train.epochs=2",
        "--model-out",
        &m,
        "--log-format",
        "json",
    ];
    let run = tidemill_logged(&adult);
    assert!(run.status.success(), "{}", stderr(&run));
    let progress: Vec<serde_json::Value> = stderr(&run)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["message"] == "progress")
        .collect();
    assert!(progress.len() > 4, "{}", stderr(&run));
    for p in &progress {
        assert!(p["rows_per_s"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["train_loss"].as_f64().unwrap() > 0.0, "{p}");
        assert_eq!(p["epochs"], 2, "{p}");
    }
    let last = progress.last().unwrap();
    assert_eq!(last["epoch"], 2);
    assert_eq!(last["step"], last["steps"], "{last}");
    assert_eq!(last["eta_s"].as_f64(), Some(0.0), "{last}");
}

/// On a terminal (a real pseudo-terminal, through util-linux's `script`)
/// progress is a bar with the epoch, step, loss and rows/s, and log lines
/// are written above it; `-q` and JSON logs draw none; off a terminal the
/// plain progress lines come instead.
#[test]
fn a_terminal_gets_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let metrics = dir.path().join("metrics.jsonl");
    let run = format!(
        "{} {{}} train pipelines/adult.toml --set 'optimizer.kind=\"adam\"' --set train.epochs=2 --set optimizer.batch_size=64 --model-out {} --metrics-out {}",
        env!("CARGO_BIN_EXE_tidemill"),
        model.display(),
        metrics.display()
    );
    let on_terminal = |flags: &str| -> String {
        let out = std::process::Command::new("script")
            .args(["-qfec", &run.replace("{}", flags), "/dev/null"])
            .current_dir(root())
            .env_remove("TIDEMILL_LOG")
            .env("TIDEMILL_PROGRESS_EVERY", "0")
            .output()
            .expect("util-linux `script` runs a command on a pseudo-terminal; install it");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{flags}: {text}");
        text
    };
    let bar = on_terminal("");
    for needle in [
        "epoch 1/2 step",
        "· loss 0.",
        "rows/s",
        " 50%",
        "100%",
        "ETA",
    ] {
        assert!(bar.contains(needle), "no {needle:?} in the bar:\n{bar}");
    }
    assert!(bar.contains("epoch done"), "log lines are kept:\n{bar}");
    assert!(!bar.contains("INFO progress"), "lines and a bar:\n{bar}");
    for flags in ["-q", "--log-format json"] {
        let quiet = on_terminal(flags);
        assert!(!quiet.contains("rows/s"), "{flags} drew a bar:\n{quiet}");
    }
    // Off a terminal: plain lines.
    let out = tidemill_logged(&[
        "train",
        "pipelines/adult.toml",
        "--set",
        "optimizer.kind=\"adam\"",
        "--set",
        "train.epochs=1",
        "--model-out",
        &model.to_string_lossy(),
        "--metrics-out",
        &metrics.to_string_lossy(),
    ]);
    let err = stderr(&out);
    assert!(err.contains("progress"), "{err}");
    assert!(!err.contains('%'), "a bar off a terminal:\n{err}");
}

/// `TIDEMILL_IDLE_SPIN_US` tunes how long idle workers poll before
/// parking: it changes timing only (the same model bytes), and a value
/// that is not whole microseconds is a usage error naming it, not ignored.
#[test]
fn idle_spin_changes_timing_not_the_model_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = |spin: Option<&str>, name: &str| {
        let m = dir.path().join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidemill"));
        cmd.args(["train", "pipelines/nycflights.toml", "-w", "2"])
            .args(["--set", "train.epochs=1", "--model-out"])
            .arg(&m)
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn");
        match spin {
            Some(v) => cmd.env("TIDEMILL_IDLE_SPIN_US", v),
            None => cmd.env_remove("TIDEMILL_IDLE_SPIN_US"),
        };
        let out = cmd.output().unwrap();
        (out.status.code(), stderr(&out), std::fs::read(&m).ok())
    };
    let (code, err, plain) = model(None, "plain.json");
    assert_eq!(code, Some(0), "{err}");
    let (code, err, spun) = model(Some("500"), "spun.json");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(plain, spun, "the idle spin changed the model");
    for bad in ["abc", "-1", "2000000", "1.5"] {
        let (code, err, written) = model(Some(bad), &format!("bad{bad}.json"));
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(err.contains("TIDEMILL_IDLE_SPIN_US"), "{bad}: {err}");
        assert!(written.is_none(), "{bad}: a model was written");
    }
}
