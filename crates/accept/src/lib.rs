//! The one step every accept loop of the workspace takes (the relay's listeners, the exchange
//! simulator's WebSocket and admin listeners, the load generator's baseline server): wait for the
//! next connection, and when `accept` fails, back off instead of spinning.
//!
//! Why the back-off: when the process is out of file descriptors (`EMFILE`, or `ENFILE` for the
//! whole system) the pending connection stays in the kernel's queue, so the listener is ready
//! again at once and a loop that retries immediately burns a core doing nothing until a
//! descriptor frees up. A short pause lets connections that are closing give theirs back.
//!
//! Its own crate because three crates use it and none of them is below the others; `protocol`,
//! the bottom crate, holds wire types and has no runtime.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! loop {
//!     let (stream, peer) = accept::next(&listener).await;
//!     tokio::spawn(async move { drop((stream, peer)) });
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The pause after a failed accept: long enough not to spin, short enough that a descriptor
/// freed meanwhile is used almost at once.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// What accepts connections: a [`TcpListener`], or a double in tests.
pub trait Listener {
    type Conn;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Listener for TcpListener {
    type Conn = (TcpStream, SocketAddr);
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send {
        TcpListener::accept(self)
    }
}

/// The next connection. A failed accept is logged and retried after [`BACKOFF`]. Cancel-safe:
/// dropped in a `select!` arm, no connection is lost.
pub async fn next<L: Listener>(listener: &L) -> L::Conn {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    /// Hands out scripted results and notes when each accept was tried.
    struct Scripted {
        results: Mutex<VecDeque<io::Result<u32>>>,
        tried: Mutex<Vec<Instant>>,
    }

    impl Listener for Scripted {
        type Conn = u32;
        fn accept(&self) -> impl Future<Output = io::Result<u32>> + Send {
            self.tried.lock().unwrap().push(Instant::now());
            let next = self.results.lock().unwrap().pop_front();
            async move { next.unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())) }
        }
    }

    fn emfile() -> io::Result<u32> {
        // EMFILE on Linux and the BSDs.
        Err(io::Error::from_raw_os_error(24))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_accept_is_retried_after_the_backoff_not_at_once() {
        let listener = Scripted {
            results: Mutex::new([emfile(), emfile(), Ok(7)].into()),
            tried: Mutex::new(Vec::new()),
        };
        let start = Instant::now();
        assert_eq!(next(&listener).await, 7);
        let tried: Vec<Duration> = listener
            .tried
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - start)
            .collect();
        assert_eq!(tried, [Duration::ZERO, BACKOFF, BACKOFF * 2]);
    }

    #[tokio::test]
    async fn a_tcp_listener_hands_out_its_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_stream, peer) = next(&listener).await;
        assert_eq!(peer, client.local_addr().unwrap());
    }
}
