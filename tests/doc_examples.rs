//! Every example in `README.md` and `docs/*.md` runs, so the docs cannot
//! drift from the binary.
//!
//! # Docs examples: the convention
//!
//! - A fenced block tagged `sh`, `bash` or `shell` is a script: it runs
//!   with `bash` under `set -Eeuo pipefail`, and any command that fails
//!   fails the test, naming the file, the line and the command, with the
//!   block's stderr. In a `console` block only the `$ ` lines (and their
//!   `\` continuations) run; the rest is output.
//! - The blocks of one file run in order in one scratch directory laid out
//!   like a fresh checkout (`datasets/`, `pipelines/`, `docs/`, and
//!   `target/release/tidemill`), so a later block may use what an earlier
//!   one wrote. `tidemill` (this build) is first on the `PATH`, then the
//!   directory of `TIDEMILL_PYTHON` (the test venv: `python3` with pyarrow,
//!   scikit-learn, DuckDB and Polars, and the `duckdb` CLI). `cargo` is a
//!   stand-in that accepts `cargo build --release` (already built) and
//!   `cargo run --release -- ARGS` (runs `tidemill ARGS`), nothing else.
//! - A block that calls `duckdb` or `python3` needs those neighbours: with
//!   `TIDEMILL_REQUIRE_ETL=1` (what `scripts/test.sh` sets) a missing one
//!   fails the test, otherwise the block is skipped.
//! - Background jobs (`&`) must be waited for (`wait $!`) or stopped by the
//!   block; one still running when the block ends fails it. A block gets
//!   at most two minutes.
//! - A `toml` block must parse. One whose first line names a file
//!   (`# pipeline.toml`) is written there, for the blocks after it. One
//!   with a `[data]` table naming `train` is a whole pipeline and must pass
//!   `tidemill validate` in the scratch directory; when its data is the
//!   reader's own (a path outside `datasets/` that does not exist yet) the
//!   keys and values are still checked, which `validate` does before it
//!   opens files (it then exits 3, not 2). Other blocks are snippets.
//! - Blocks tagged anything else (`text`, `json`, `ini`, `yaml`, none) are
//!   not run: use them for synopses, output, and what no test can run.
//! - A runnable block preceded by `<!-- doc-test: skip REASON -->` is not
//!   run; keep that for commands a test cannot run (the whole suite, a
//!   benchmark that takes hours) and say why. The reasons are printed.
//!
//! `TIDEMILL_DOC_TEST=docs/streaming.md` runs only files whose path
//! contains that text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a block may run.
const BLOCK_LIMIT: Duration = Duration::from_secs(120);

/// The languages whose blocks run as scripts.
const SHELLS: [&str; 4] = ["sh", "bash", "shell", "console"];

/// One fenced block of a Markdown file.
struct Block {
    /// The language after the opening fence.
    lang: String,
    /// The 1-based line of the opening fence.
    line: usize,
    /// The lines between the fences.
    body: Vec<String>,
    /// The reason of a `<!-- doc-test: skip REASON -->` before it.
    skip: Option<String>,
}

/// The fenced blocks of a Markdown text.
fn blocks(path: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let Some(info) = trimmed.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = lines[i].len() - trimmed.len();
        let lang = info.split_whitespace().next().unwrap_or("").to_string();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            let strip = indent.min(l.len() - l.trim_start().len());
            body.push(l[strip..].to_string());
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{path}:{}: a fence that is never closed",
            start + 1
        );
        i += 1;
        let before = lines[..start].iter().rev().find(|l| !l.trim().is_empty());
        let skip = before.and_then(|l| directive(path, start, l));
        out.push(Block {
            lang,
            line: start + 1,
            body,
            skip,
        });
    }
    out
}

/// The skip reason of a `<!-- doc-test: ... -->` line, if it is one.
fn directive(path: &str, fence: usize, line: &str) -> Option<String> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim();
    let rest = inner.strip_prefix("doc-test:")?.trim();
    let reason = rest.strip_prefix("skip").map(str::trim);
    match reason {
        Some(r) if !r.is_empty() => Some(r.to_string()),
        _ => panic!(
            "{path}:{fence}: unknown doc-test directive {line:?} (only `<!-- doc-test: skip REASON -->`)"
        ),
    }
}

/// The script of a shell block: a `console` block's `$ ` lines, the whole
/// block otherwise (lines kept in place so that line numbers match).
fn script(block: &Block) -> String {
    if block.lang != "console" {
        return block.body.join("\n");
    }
    let mut out = Vec::new();
    let mut continued = false;
    for l in &block.body {
        if let Some(cmd) = l.strip_prefix("$ ") {
            out.push(cmd.to_string());
            continued = cmd.ends_with('\\');
        } else if continued {
            out.push(l.clone());
            continued = l.ends_with('\\');
        } else {
            out.push(String::new());
        }
    }
    out.join("\n")
}

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a scratch directory");
    for entry in std::fs::read_dir(from).expect("read a directory to copy") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// A scratch directory laid out like a fresh checkout (`checkout/`), and
/// `bin/` with `tidemill` and the `cargo` stand-in.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let checkout = dir.path().join("checkout");
    let root = root();
    copy_dir(&root.join("pipelines"), &checkout.join("pipelines"));
    copy_dir(&root.join("docs"), &checkout.join("docs"));
    std::fs::create_dir_all(checkout.join("datasets")).expect("create datasets/");
    for entry in std::fs::read_dir(root.join("datasets")).expect("read datasets/") {
        let entry = entry.expect("a directory entry");
        std::os::unix::fs::symlink(
            entry.path(),
            checkout.join("datasets").join(entry.file_name()),
        )
        .expect("link a dataset");
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_tidemill"));
    std::fs::create_dir_all(checkout.join("target/release")).expect("create target/release");
    std::os::unix::fs::symlink(exe, checkout.join("target/release/tidemill"))
        .expect("link the binary");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("create bin/");
    std::os::unix::fs::symlink(exe, bin.join("tidemill")).expect("link the binary");
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        "#!/usr/bin/env bash\n\
         # The doc test's stand-in: tidemill is already built.\n\
         if [ \"$*\" = 'build --release' ]; then exit 0; fi\n\
         if [ \"${1-}\" = run ] && [ \"${2-}\" = --release ] && [ \"${3-}\" = -- ]; then\n\
         \x20 shift 3; exec tidemill \"$@\"\n\
         fi\n\
         echo \"doc test: 'cargo $*' does not run here (only 'cargo build --release' and\" \\\n\
         \x20    \"'cargo run --release -- ARGS'); mark the block <!-- doc-test: skip REASON -->\" >&2\n\
         exit 1\n",
    )
    .expect("write the cargo stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755))
        .expect("make the cargo stand-in executable");
    dir
}

/// The `PATH` the blocks run with, and whether the ETL neighbours
/// (`python3` with pyarrow, DuckDB and Polars; the `duckdb` CLI) are on it.
fn block_path(bin: &Path) -> (String, bool) {
    let mut dirs = vec![bin.to_path_buf()];
    if let Ok(python) = std::env::var("TIDEMILL_PYTHON") {
        if let Some(dir) = Path::new(&python).parent() {
            dirs.push(root().join(dir));
        }
    }
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&inherited));
    let path = std::env::join_paths(dirs)
        .expect("a PATH")
        .into_string()
        .expect("a UTF-8 PATH");
    let ok = |cmd: &str| {
        Command::new("bash")
            .args(["-c", cmd])
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let etl = ok("python3 -c 'import pyarrow, duckdb, polars'") && ok("duckdb --version");
    (path, etl)
}

/// Whether a script calls the ETL neighbours.
fn needs_etl(script: &str) -> bool {
    script
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == "duckdb" || w == "python3")
}

/// Shell blocks the docs hold at least (a harness that finds fewer has
/// lost them).
const MIN_BLOCKS: usize = 10;

/// What a block may not do because a failure would pass unseen: chain
/// commands with `&&` (`set -e` ignores a failure before the last
/// command of the chain), or start a background job it does not `wait`
/// for by its pid (a job that failed and exited is not seen otherwise).
fn lint(path: &str, block: &Block) -> Result<(), String> {
    let text = script(block);
    let code = |l: &&str| !l.trim_start().starts_with('#');
    if let Some(l) = text.lines().filter(code).find(|l| l.contains("&&")) {
        return Err(format!(
            "{path}:{}: `{}` chains with && (set -e ignores a failure before its last command): write one command per line",
            block.line,
            l.trim()
        ));
    }
    let background = text
        .lines()
        .filter(code)
        .filter(|l| l.split('#').next().unwrap_or("").trim_end().ends_with('&'))
        .count();
    let waited = text
        .split(['\n', ';'])
        .filter(|c| {
            let mut w = c.split_whitespace();
            w.next() == Some("wait") && w.next().is_some()
        })
        .count();
    if waited < background {
        return Err(format!(
            "{path}:{}: {background} background job(s), {waited} `wait PID`: wait for each by its pid, so that its exit status counts",
            block.line
        ));
    }
    Ok(())
}

/// Runs one shell block; the failure message if it fails.
fn run_block(path: &str, block: &Block, dir: &Path, env_path: &str) -> Result<(), String> {
    // The prelude is the script's line 1, so the block's line n is the
    // script's line n + 1 and the file's line `block.line + n`.
    let offset = block.line - 1;
    let prelude = format!(
        "set -Eeuo pipefail; shopt -s expand_aliases; \
         trap 'echo \"doc test: {path}:$(( LINENO + {offset} )): exit $?: $BASH_COMMAND\" >&2' ERR"
    );
    let epilogue = "\nif [ -n \"$(jobs -pr)\" ]; then \
         echo 'doc test: the block left background jobs running:' >&2; jobs -l >&2; \
         kill $(jobs -pr); exit 1; fi\n";
    let text = format!("{prelude}\n{}\n{epilogue}", script(block));
    let stdout = dir.join("block.stdout");
    let stderr = dir.join("block.stderr");
    let file = |p: &Path| std::fs::File::create(p).expect("create a block's output file");
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &text])
        .current_dir(dir.join("checkout"))
        .env("PATH", env_path)
        .env_remove("TIDEMILL_CLUSTER_KEY")
        .env_remove("TIDEMILL_LOG")
        .stdin(Stdio::null())
        .stdout(file(&stdout))
        .stderr(file(&stderr))
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a block") {
            break Some(status);
        }
        if started.elapsed() > BLOCK_LIMIT {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the block left behind in its process group goes with it.
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    if status.is_some_and(|s| s.success()) {
        return Ok(());
    }
    let tail = |p: &Path| {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let cut = s.len().saturating_sub(6000);
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[cut..].to_string()
    };
    let what = match status {
        Some(s) => format!("failed ({s})"),
        None => format!("ran past {BLOCK_LIMIT:?} and was killed"),
    };
    Err(format!(
        "{path}:{}: the ```{} block {what}\n--- stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}",
        block.line,
        block.lang,
        tail(&stderr),
        tail(&stdout)
    ))
}

/// The file a `toml` block names in its first line (`# pipeline.toml`).
fn named(block: &Block) -> Option<String> {
    let name = block.body.first()?.strip_prefix("# ")?.trim();
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    (plain && name.ends_with(".toml")).then(|| name.to_string())
}

/// Checks one `toml` block: it parses, and a whole pipeline validates.
/// Returns whether it was a whole pipeline.
fn check_toml(path: &str, block: &Block, dir: &Path) -> Result<bool, String> {
    let text = block.body.join("\n");
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        format!(
            "{path}:{}: the ```toml block does not parse: {e}",
            block.line
        )
    })?;
    if let Some(name) = named(block) {
        std::fs::write(dir.join("checkout").join(name), &text).expect("write a named TOML block");
    }
    let train = table
        .get("data")
        .and_then(|d| d.get("train"))
        .map(|t| t.to_string());
    let Some(train) = train else {
        return Ok(false);
    };
    let checkout = dir.join("checkout");
    let file =
        checkout.join(named(block).unwrap_or_else(|| format!("doc-test-{}.toml", block.line)));
    std::fs::write(&file, &text).expect("write a pipeline block");
    let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(["validate", "-q"])
        .arg(&file)
        .current_dir(&checkout)
        .output()
        .expect("tidemill validate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let own_data = out.status.code() == Some(3)
        && stderr.contains("(named by data.")
        && !train.contains("datasets/");
    if out.status.success() || own_data {
        Ok(true)
    } else {
        Err(format!(
            "{path}:{}: the ```toml pipeline fails `tidemill validate` ({}):\n{stderr}",
            block.line, out.status
        ))
    }
}

/// What ran in one file.
#[derive(Default)]
struct Tally {
    run: usize,
    pipelines: usize,
    snippets: usize,
    skipped: Vec<String>,
}

#[test]
fn every_doc_example_runs() {
    let root = root();
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().expect("a name").to_string_lossy()))
        .collect();
    docs.sort();
    files.extend(docs);
    let only = std::env::var("TIDEMILL_DOC_TEST").ok();
    let require_etl = std::env::var("TIDEMILL_REQUIRE_ETL").as_deref() == Ok("1");
    let mut failures = Vec::new();
    let mut report = String::new();
    let mut ran = 0;
    let started = Instant::now();
    for path in files
        .iter()
        .filter(|f| only.as_ref().is_none_or(|o| f.contains(o.as_str())))
    {
        let text = std::fs::read_to_string(root.join(path)).expect("read a Markdown file");
        let dir = scratch();
        let (env_path, etl) = block_path(&dir.path().join("bin"));
        let mut tally = Tally::default();
        let file_started = Instant::now();
        for block in blocks(path, &text) {
            let shell = SHELLS.contains(&block.lang.as_str());
            if let Some(reason) = &block.skip {
                assert!(
                    shell,
                    "{path}:{}: a skip directive on a ```{} block",
                    block.line, block.lang
                );
                tally
                    .skipped
                    .push(format!("{path}:{}: {reason}", block.line));
                continue;
            }
            let result = if shell {
                if let Err(e) = lint(path, &block) {
                    failures.push(e);
                    continue;
                }
                if needs_etl(&script(&block)) && !etl {
                    assert!(
                        !require_etl,
                        "{path}:{}: TIDEMILL_REQUIRE_ETL=1 but python3 with pyarrow, duckdb and polars, \
                         or the duckdb CLI, is missing (set TIDEMILL_PYTHON)",
                        block.line
                    );
                    tally.skipped.push(format!(
                        "{path}:{}: no DuckDB / Polars / pyarrow",
                        block.line
                    ));
                    continue;
                }
                tally.run += 1;
                run_block(path, &block, dir.path(), &env_path)
            } else if block.lang == "toml" {
                check_toml(path, &block, dir.path()).map(|whole| {
                    if whole {
                        tally.pipelines += 1;
                    } else {
                        tally.snippets += 1;
                    }
                })
            } else {
                Ok(())
            };
            if let Err(e) = result {
                failures.push(e);
            }
        }
        ran += tally.run;
        let _ = writeln!(
            report,
            "{path}: {} shell block(s) run, {} pipeline(s) validated, {} TOML snippet(s) parsed, \
             {} skipped, {:.1} s",
            tally.run,
            tally.pipelines,
            tally.snippets,
            tally.skipped.len(),
            file_started.elapsed().as_secs_f64()
        );
        for s in &tally.skipped {
            let _ = writeln!(report, "  skipped {s}");
        }
    }
    let _ = writeln!(
        report,
        "all files: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    eprint!("{report}");
    // Nothing run is no pass: a filter must name a file, and the whole
    // set holds dozens of blocks.
    match &only {
        Some(o) => assert!(
            ran > 0,
            "TIDEMILL_DOC_TEST={o} ran no shell block:\n{report}"
        ),
        None => assert!(
            ran >= MIN_BLOCKS,
            "only {ran} shell blocks ran (at least {MIN_BLOCKS} expected):\n{report}"
        ),
    }
    assert!(
        failures.is_empty(),
        "{} doc example(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
