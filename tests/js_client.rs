//! The JavaScript client (`clients/js`, npm package `kalshi-relay-client`) tested against this
//! build's relay binary: installs its locked dependencies when `node_modules` is missing or stale,
//! compiles it, and runs its Node test suite (which includes the headless Chromium tests). Fails
//! with the suite's output when any of its tests fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The whole JS run (install, build, tests) must finish within this.
const DEADLINE: Duration = Duration::from_secs(300);

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
}

/// Runs `program args` in `dir` to completion (killed at the deadline); panics with its output on failure.
fn run(dir: &Path, program: &str, args: &[&str], deadline: Instant) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("RELAY_BIN", env!("CARGO_BIN_EXE_relay"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (node 20+ and npm are required): {e}"));
    // Output is drained on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).ok();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).ok();
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `npm ci` unless `node_modules` was installed from exactly this `package-lock.json`.
fn install(dir: &Path, deadline: Instant) {
    let lock = std::fs::read(dir.join("package-lock.json")).expect("clients/js/package-lock.json");
    let stamp = dir.join("node_modules/.installed-package-lock.json");
    if std::fs::read(&stamp).ok().as_deref() == Some(&lock[..]) {
        return;
    }
    run(
        dir,
        "npm",
        &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
        deadline,
    );
    std::fs::write(&stamp, &lock).expect("write the install stamp");
}

#[test]
fn js_client_suite_passes_against_the_relay() {
    let deadline = Instant::now() + DEADLINE;
    let dir = client_dir();
    install(&dir, deadline);
    run(&dir, "npm", &["run", "--silent", "build"], deadline);
    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("test/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no clients/js/test/*.test.mjs");
    let mut args = vec!["--test", "--test-concurrency=2", "--test-reporter=spec"];
    args.extend(files.iter().map(String::as_str));
    let output = run(&dir, "node", &args, deadline);
    // The suite passed; print its summary for the cargo test log (shown with --nocapture).
    println!("{}", String::from_utf8_lossy(&output.stdout));
}
