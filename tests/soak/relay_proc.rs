//! The relay as a child process on a fixed address, so a restart keeps the clients' URL, and
//! what /proc says about it (RSS, file descriptors, threads).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// `RELAY__DOWNSTREAM__SHUTDOWN_DRAIN_SECONDS` below.
pub const SHUTDOWN_DRAIN_SECONDS: u64 = 3;

/// Environment for the child: fast upstream failure detection and reconnects (the simulator
/// pings every 300 ms), no linger, small client queues so stalls really lag.
const ENV: &[(&str, &str)] = &[
    ("RELAY__UPSTREAM__LIVENESS_WINDOW_SECONDS", "2"),
    ("RELAY__UPSTREAM__BACKOFF_BASE_SECONDS", "0.2"),
    ("RELAY__UPSTREAM__BACKOFF_CAP_SECONDS", "2"),
    ("RELAY__UPSTREAM__CONNECT_TIMEOUT_SECONDS", "2"),
    ("RELAY__UPSTREAM__HANDSHAKE_TIMEOUT_SECONDS", "1.5"),
    ("RELAY__UPSTREAM__SNAPSHOT_TIMEOUT_SECONDS", "3"),
    ("RELAY__UPSTREAM__CLOSE_TIMEOUT_SECONDS", "1"),
    ("RELAY__FANOUT__LINGER_SECONDS", "0"),
    ("RELAY__FANOUT__QUEUE_MESSAGES", "256"),
    ("RELAY__DOWNSTREAM__SHUTDOWN_DRAIN_SECONDS", "3"),
    ("RELAY__DOWNSTREAM__SOCKET_SEND_BUFFER_BYTES", "32768"),
    // The faults flap the upstream every few seconds and refuse up to three reconnects in a row,
    // far more often than the 60 s a connection must last to reset the failure count: with the
    // default 10 the relay gives up within minutes, by design, and closes clients 1013
    // `upstream unavailable` (tests/security.rs covers giving up). The soak checks correctness
    // through faults, so its relay never gives up.
    ("RELAY__UPSTREAM__MAX_CONSECUTIVE_FAILURES", "1000000"),
];

/// A free loopback port, released at once so the relay can bind it (and rebind it on restart).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct RelayProc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl RelayProc {
    /// Spawns the relay (with `extra` environment on top of the soak's) and waits for its
    /// `relay ready` line (retrying while the port is still held by the previous process). Its
    /// stderr is appended to `log`.
    pub fn spawn(
        addr: SocketAddr,
        upstream_url: &str,
        rest_url: &str,
        extra: &[(String, String)],
        log: &Path,
    ) -> RelayProc {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("the relay log opens");
            let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--upstream-url",
                    upstream_url,
                ])
                .envs(ENV.iter().copied())
                .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                // The simulator's REST API, for the relay's backfills.
                .env("RELAY__UPSTREAM__REST__BASE_URL", rest_url)
                .env(
                    "RUST_LOG",
                    std::env::var("SOAK_RELAY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(Stdio::piped())
                .stderr(err)
                .spawn()
                .expect("the relay binary starts");
            let stdout = child.stdout.take().unwrap();
            let mut lines = std::io::BufReader::new(stdout).lines();
            match lines.next() {
                Some(Ok(line)) if line.starts_with("relay ready") => {
                    // Keep draining stdout so a later print never blocks the relay.
                    std::thread::spawn(move || for _ in lines {});
                    let pid = child.id();
                    return RelayProc { child, pid, addr };
                }
                other => {
                    let status = child.wait();
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the relay never started on {addr}: {other:?} {status:?} (see {})",
                        log.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status();
    }

    /// SIGKILL, and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (it must not, until we stop it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `grace` for the exit. `None` when it did not exit in time
    /// (then it is killed).
    pub async fn terminate(mut self, grace: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        loop {
            if let Some(status) = self.exited() {
                return (Some(status), started.elapsed());
            }
            if started.elapsed() > grace {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (None, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What /proc says about a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

pub fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    ProcSample {
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    }
}

/// Where a relay's stderr goes (`node`: its name in a cluster).
pub fn log_path(seed: u64, node: Option<&str>) -> PathBuf {
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let node = node.map(|n| format!("-{n}")).unwrap_or_default();
    dir.join(format!(
        "soak-relay-{seed}-{}{node}.log",
        std::process::id()
    ))
}
