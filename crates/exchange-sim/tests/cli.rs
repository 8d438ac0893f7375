//! The `exchange-sim` binary: help, the ready line, and one-line errors with non-zero exits.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_exchange-sim");

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--admin-listen",
        "--markets",
        "--rate",
        "--seed",
        "--pacing",
        "--public-key",
        "--no-auth",
        "--auth-window-ms",
        "--allow-anonymous",
        "--ping-interval",
        "--stamp",
        "--reject-origin",
        "--duplicate-subscribe",
        "--max-markets-per-subscription",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for default in [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
        "[default: 10]",
        "[default: merge]",
        "[default: tick]",
    ] {
        assert!(
            help.contains(default),
            "{default} missing from --help:\n{help}"
        );
    }
}

#[test]
fn no_flags_says_that_no_auth_runs_it_unsigned() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--no-auth (accept unsigned handshakes: no signature checks"),
        "{stderr}"
    );
}

fn one_line_error(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    (out.status.code().unwrap(), lines[0].to_owned())
}

#[test]
fn a_port_in_use_is_one_line_and_a_non_zero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, line) = one_line_error(&[
        "--no-auth",
        "--listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(line.contains("--listen") && line.contains(&addr), "{line}");
}

#[test]
fn a_missing_key_file_or_bad_flag_is_one_line_and_a_non_zero_exit() {
    let (code, line) = one_line_error(&[
        "--public-key",
        "/nonexistent/key.pem",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 64);
    assert!(line.contains("/nonexistent/key.pem"), "{line}");
    let (code, line) = one_line_error(&["--no-auth", "--ping-interval", "0"]);
    assert_eq!(code, 64);
    assert!(line.contains("--ping-interval"), "{line}");
    let out = Command::new(BIN)
        .args(["--no-auth", "--markets", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects a bad flag value");
    let out = Command::new(BIN)
        .args(["--no-auth", "--pacing", "sometimes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown pacing");
    let out = Command::new(BIN).output().unwrap();
    assert!(
        !out.status.success(),
        "one of --public-key / --no-auth is required"
    );
}

#[test]
fn prints_one_ready_line_with_both_addresses() {
    let mut child = Command::new(BIN)
        .args([
            "--no-auth",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.starts_with("exchange-sim ready ws=ws://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("/trade-api/ws/v2 admin=http://127.0.0.1:"),
        "{line}"
    );
}
