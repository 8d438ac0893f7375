//! Published Kalshi client libraries, installed from PyPI, against `relay --demo`: each subscribes
//! to books, ticker and trade on four markets, its books equal the simulator's after a pause, and
//! after the relay is stopped (SIGTERM) and started again on the same port it reconnects by itself
//! and its books are right again.
//!
//! Pinned (whole dependency closure in each file):
//! - `pykalshi==2.0.0`: `tests/pyclients/requirements-pykalshi.txt`, driver `pykalshi_driver.py`
//! - `pykalshi-client==1.3.0`: `tests/pyclients/requirements-pykalshi-client.txt`, driver
//!   `pykalshi_client_driver.py`
//! - `kalshi-sdk==22.4.0` (Python >= 3.12): `tests/pyclients/requirements-kalshi-sdk.txt`, driver
//!   `kalshi_sdk_driver.py`
//!
//! Each library gets its own virtual environment under the target directory (two of them install
//! the same top-level package, `pykalshi`), rebuilt only when its requirements file or interpreter
//! changes. The drivers only point the libraries at the relay's URL and report what the libraries
//! deliver; they never reconnect by hand. Needs `python3` with `venv` and `pip` (`.ci/run`
//! installs `python3-venv` where it is missing), a Python >= 3.12 for kalshi-sdk (`python3.12`
//! or newer on PATH, or one of pyenv's versions), and PyPI the first time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Markets each library follows.
const MARKETS: usize = 4;
/// Time for a fresh connection to deliver every kind of message on the demo's feed.
const DATA_DEADLINE: Duration = Duration::from_secs(30);
/// Time for books to settle on the truth once the simulator is paused.
const SETTLE_DEADLINE: Duration = Duration::from_secs(10);
/// Creating a virtual environment and installing from PyPI.
const INSTALL_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn pykalshi_keeps_right_books_and_reconnects_after_a_relay_restart() {
    scenario("pykalshi", "pykalshi_driver.py", &python_at_least(11));
}

#[test]
fn pykalshi_client_keeps_right_books_and_reconnects_after_a_relay_restart() {
    scenario(
        "pykalshi-client",
        "pykalshi_client_driver.py",
        &python_at_least(11),
    );
}

#[test]
fn kalshi_sdk_keeps_right_books_and_reconnects_after_a_relay_restart() {
    scenario("kalshi-sdk", "kalshi_sdk_driver.py", &python_at_least(12));
}

fn scenario(library: &str, driver: &str, base_python: &Path) {
    let python = venv(library, base_python);
    let port = free_port();
    let relay = Relay::start(port);
    let markets: Vec<String> =
        serde_json::from_str::<Vec<String>>(&http(relay.admin, "GET", "/admin/markets"))
            .expect("the admin API lists markets")
            .into_iter()
            .take(MARKETS)
            .collect();
    let mut client = Driver::start(&python, driver, &relay.ws_url(), &markets);

    client.await_data("first connection", &markets);
    relay.pause();
    client.await_books(&relay, &markets);

    client.command("mark");
    relay.stop();
    let relay = Relay::start(port);
    client.await_data("after the relay restart", &markets);
    let stats = client.command("stats");
    if let Some(n) = stats.get("reconnects") {
        assert!(
            n.as_u64() >= Some(1),
            "the library counts no reconnect: {stats}"
        );
    }
    relay.pause();
    client.await_books(&relay, &markets);
    client.quit();
}

/// The child is killed when this is dropped (a failed assertion included).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Relay {
    child: Killed,
    port: u16,
    admin: SocketAddr,
}

impl Relay {
    fn start(port: u16) -> Relay {
        let log = tmp().join(format!("relay-{port}.log"));
        let mut child = Killed(
            Command::new(env!("CARGO_BIN_EXE_relay"))
                .args(["--demo", "--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("the relay binary starts"),
        );
        let lines = lines_of(child.0.stdout.take().unwrap());
        let what = format!("relay ready line (log: {})", log.display());
        let ready = next_line(&lines, Duration::from_secs(20), &what);
        assert!(ready.starts_with("relay ready ws="), "{ready}");
        // demo: embedded exchange simulator, 20 markets, fault injection at http://ADDR/admin/stats
        let hint = next_line(&lines, Duration::from_secs(5), "the demo's admin line");
        let admin = hint
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in {hint:?}"));
        Relay { child, port, admin }
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/trade-api/ws/v2", self.port)
    }

    fn pause(&self) {
        let answer = http(self.admin, "POST", "/admin/pause");
        assert!(answer.contains("\"paused\":true"), "{answer}");
    }

    /// The simulator's true book, as `{side: [(price, qty)]}` in integer units.
    fn truth(&self, market: &str) -> Book {
        let body = http(self.admin, "GET", &format!("/admin/books/{market}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let side = |key: &str| levels(v.get(key).unwrap_or(&Value::Array(vec![])));
        Book {
            yes: side("yes_dollars_fp"),
            no: side("no_dollars_fp"),
        }
    }

    /// SIGTERM, then the exit status must be success within the drain grace.
    fn stop(mut self) {
        let pid = self.child.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                assert!(status.success(), "relay exit status {status:?}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Book {
    yes: Vec<(i64, i64)>,
    no: Vec<(i64, i64)>,
}

/// `[[price, qty], ...]` as sorted (price in 1/10000, qty in 1/100) with empty levels left out.
fn levels(v: &Value) -> Vec<(i64, i64)> {
    let num = |x: &Value, scale: f64| -> i64 {
        let s = x
            .as_str()
            .unwrap_or_else(|| panic!("a decimal string, got {x}"));
        let f: f64 = s
            .parse()
            .unwrap_or_else(|_| panic!("a decimal string, got {s:?}"));
        (f * scale).round() as i64
    };
    let mut out: Vec<(i64, i64)> = v
        .as_array()
        .unwrap_or_else(|| panic!("a list of levels, got {v}"))
        .iter()
        .map(|l| (num(&l[0], 10_000.0), num(&l[1], 100.0)))
        .filter(|&(_, q)| q != 0)
        .collect();
    out.sort();
    out
}

/// A driver script: one command a line in, one JSON object a line out.
struct Driver {
    child: Killed,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Driver {
    fn start(python: &Path, script: &str, url: &str, markets: &[String]) -> Driver {
        let log = tmp().join(format!("{script}.log"));
        let mut child = Killed(
            Command::new(python)
                .arg(scripts().join(script))
                .args(["--url", url, "--markets", &markets.join(",")])
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("the driver starts"),
        );
        let stdin = child.0.stdin.take().unwrap();
        let lines = lines_of(child.0.stdout.take().unwrap());
        let mut d = Driver {
            child,
            stdin,
            lines,
            log,
        };
        let ready = d.read(Duration::from_secs(30), "the driver's ready line");
        assert_eq!(ready["ready"], true, "{ready}");
        d
    }

    fn read(&mut self, within: Duration, what: &str) -> Value {
        match self.lines.recv_timeout(within) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")),
            Err(_) => panic!(
                "no {what} within {within:?}; driver log:\n{}",
                self.log_tail()
            ),
        }
    }

    fn command(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").expect("the driver reads commands");
        self.stdin.flush().unwrap();
        self.read(Duration::from_secs(10), cmd)
    }

    /// Waits for a snapshot of every market, deltas, tickers and trades, delivered by the library
    /// and accepted by its message models; anything the library rejected fails at once.
    fn await_data(&mut self, phase: &str, markets: &[String]) {
        let deadline = Instant::now() + DATA_DEADLINE;
        loop {
            let stats = self.command("stats");
            let count = |k: &str| stats["counts"][k].as_u64().unwrap_or(0);
            let clean = stats["invalid"].as_object().is_some_and(|m| m.is_empty())
                && stats["errors"].as_array().is_some_and(|e| e.is_empty())
                && count("sequence_gap") == 0
                && stats.get("listener_failed").is_none();
            assert!(
                clean,
                "{phase}: the library rejected what the relay sent: {stats}"
            );
            if count("orderbook_snapshot") >= markets.len() as u64
                && count("orderbook_delta") > 0
                && count("ticker") > 0
                && count("trade") > 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{phase}: not every kind of message within {DATA_DEADLINE:?}: {stats}\ndriver log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// With the simulator paused, the library's books must settle on the truth.
    fn await_books(&mut self, relay: &Relay, markets: &[String]) {
        let truth: BTreeMap<&str, Book> = markets
            .iter()
            .map(|m| (m.as_str(), relay.truth(m)))
            .collect();
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let reply = self.command("books");
            let books: BTreeMap<&str, Book> = markets
                .iter()
                .filter_map(|m| {
                    let b = reply["books"].get(m)?;
                    Some((
                        m.as_str(),
                        Book {
                            yes: levels(&b["yes"]),
                            no: levels(&b["no"]),
                        },
                    ))
                })
                .collect();
            if books == truth {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "books differ from the simulator's after a pause:\nlibrary: {books:?}\ntruth: {truth:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the driver did not exit after quit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Lines of a child's output, read on a thread so every wait can have a deadline.
fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(lines: &Receiver<String>, within: Duration, what: &str) -> String {
    lines
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
}

/// A plain HTTP/1.1 request without a body; returns the response body.
fn http(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("an HTTP response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{body}"
    );
    body.to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pyclients")
}

fn tmp() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyclients");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Python 3.`minor` or newer: `python3` if it is new enough, else `python3.N` on PATH, else one
/// of pyenv's versions.
fn python_at_least(minor: u32) -> PathBuf {
    let mut candidates: Vec<PathBuf> = vec!["python3".into()];
    candidates.extend((minor..=14).map(|m| PathBuf::from(format!("python3.{m}"))));
    if let Ok(root) = run(Command::new("pyenv").arg("root"), "pyenv root") {
        let mut found: Vec<PathBuf> = std::fs::read_dir(Path::new(&root).join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin/python3"))
            .collect();
        found.sort();
        candidates.extend(found);
    }
    for python in &candidates {
        let Ok(version) = run(Command::new(python).arg("--version"), "python --version") else {
            continue;
        };
        // "Python 3.12.1"
        let found = version
            .strip_prefix("Python 3.")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok());
        if found.is_some_and(|m| m >= minor) {
            return python.clone();
        }
    }
    panic!(
        "these tests need Python >= 3.{minor} with venv and pip; tried {candidates:?} \
         (.ci/run installs python3-venv; kalshi-sdk needs 3.12 or newer, e.g. pyenv's)"
    );
}

/// The library's virtual environment, created from `base_python` and filled from its pinned
/// requirements unless one built from the same requirements and interpreter is already there.
/// Returns its python.
fn venv(library: &str, base_python: &Path) -> PathBuf {
    let requirements = scripts().join(format!("requirements-{library}.txt"));
    let pins = std::fs::read_to_string(&requirements).expect("the requirements file");
    let version = run(
        Command::new(base_python).arg("--version"),
        "python --version",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stamp = format!("{} {version}\n{pins}", base_python.display());
    let dir = tmp().join(format!("venv-{library}"));
    let python = dir.join("bin/python");
    if std::fs::read_to_string(dir.join("stamp")).ok().as_deref() == Some(stamp.as_str()) {
        return python;
    }
    // Built beside, then renamed: a half-built environment is never taken for a finished one.
    let building = tmp().join(format!("venv-{library}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    run(
        Command::new(base_python).args(["-m", "venv"]).arg(&building),
        "python -m venv",
    )
    .unwrap_or_else(|e| {
        panic!("{e}\ncannot create a virtual environment: on Debian `apt-get install -y python3-venv` (.ci/run does)")
    });
    run(
        Command::new(building.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--only-binary", ":all:", "-r"])
            .arg(&requirements),
        "pip install",
    )
    .unwrap_or_else(|e| panic!("{e}\ncannot install {} from PyPI", requirements.display()));
    std::fs::write(building.join("stamp"), &stamp).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&building, &dir).unwrap();
    python
}

/// Runs a command to completion within the install deadline; its stdout, or what went wrong.
fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let mut child = Killed(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: cannot start: {e}"))?,
    );
    let out = lines_of(child.0.stdout.take().unwrap());
    let err = lines_of(child.0.stderr.take().unwrap());
    let deadline = Instant::now() + INSTALL_DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: still running after {INSTALL_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let collect = |rx: Receiver<String>| rx.iter().collect::<Vec<_>>().join("\n");
    let (out, err) = (collect(out), collect(err));
    if status.success() {
        Ok(out.trim().to_owned())
    } else {
        Err(format!("{what}: {status}\n{out}\n{err}"))
    }
}
