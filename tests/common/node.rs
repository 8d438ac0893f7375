//! Running a Node package's tests from `cargo test`: `npm ci` when `node_modules` is stale, and
//! child processes bounded by a deadline, with this build's relay binary in `RELAY_BIN`.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `program args` in `dir` to completion (killed at the deadline); panics with its output on
/// failure.
pub fn run(dir: &Path, program: &str, args: &[&str], deadline: Instant) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("RELAY_BIN", env!("CARGO_BIN_EXE_relay"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (node 20+ and npm are required): {e}"));
    // Drained on threads so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            pipe.read_to_end(&mut buf).ok();
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish by its deadline");
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

/// `npm ci` in `dir` unless `node_modules` was installed from exactly its `package-lock.json`.
pub fn install(dir: &Path, deadline: Instant) {
    let lock = std::fs::read(dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("{}/package-lock.json: {e}", dir.display()));
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
