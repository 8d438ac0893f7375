//! Child processes of the suite: the simulator, the relay and the baseline, on free ports.
//!
//! Every child is spawned with `kill_on_drop`, so an error, a panic or Ctrl-C anywhere in the
//! suite kills it; [`ChildProc::stop`] kills and reaps it explicitly on the normal path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::admin;

/// How long a child may take to accept connections after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running child process; killed when dropped.
pub struct ChildProc {
    pub name: String,
    pub pid: u32,
    child: Child,
}

impl ChildProc {
    /// Spawns `bin args`, with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        cwd: &Path,
        log: &Path,
    ) -> Result<ChildProc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", name, bin.display()))?;
        let pid = child.id().context("child has no pid")?;
        tracing::debug!(name, pid, ?args, "spawned");
        Ok(ChildProc {
            name: name.to_owned(),
            pid,
            child,
        })
    }

    /// Fails if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Kills and reaps the process.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Waits until `addr` accepts TCP connections (and, with `health`, answers 200 there).
    pub async fn wait_ready(&mut self, addr: SocketAddr, health: Option<&str>) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let ok = match health {
                None => tokio::net::TcpStream::connect(addr).await.is_ok(),
                Some(path) => matches!(
                    admin::http("GET", &format!("http://{addr}"), path, None).await,
                    Ok((200, _))
                ),
            };
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} not ready on {addr} within {READY_TIMEOUT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A free loopback port (bound, read, released: another process could take it in between, but
/// the window is short and ports are not reused quickly).
pub fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// Where sibling binaries live: the directory of this executable (`target/release/`).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

/// A sibling binary, or a clear error saying how to build it.
pub fn sibling(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p {name}) or pass --bin-dir",
            path.display()
        );
    }
    Ok(path)
}
