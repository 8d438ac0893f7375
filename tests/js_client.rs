//! The JavaScript client (`clients/js`, npm package `kalshi-relay-client`) tested against this
//! build's relay binary: installs its locked dependencies when `node_modules` is missing or stale,
//! compiles it, and runs its Node test suite (which includes the headless Chromium tests). Fails
//! with the suite's output when any of its tests fail.

#[path = "common/node.rs"]
mod node;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node::{install, run};

/// The whole JS run (install, build, tests) must finish within this.
const DEADLINE: Duration = Duration::from_secs(300);

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js")
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
