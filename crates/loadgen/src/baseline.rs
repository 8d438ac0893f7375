//! The baseline broadcaster: the cheapest server that delivers the same frames.
//!
//! One upstream WebSocket to the simulator, subscribed with a client's command; every text frame
//! it receives is broadcast, as the same shared [`Utf8Bytes`] (encoded once by the simulator, never
//! copied), to every connected client. No protocol logic: no per-client sids or seqs, no snapshots
//! for late joiners, no commands answered. It is the floor the relay is compared against, in two
//! [`Mode`]s: each client feeds every frame queued for it and flushes once its queue is empty
//! ([`Mode::Batch`], what a careful tokio-tungstenite broadcaster does), or writes each frame with
//! a `send` of its own ([`Mode::Naive`], one write per frame per client).

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames buffered for the slowest client before it starts skipping (broadcast `Lagged`).
/// At 3,000 frames/s this is about 1.4 s of traffic; memory is shared by all clients.
const BROADCAST_CAPACITY: usize = 4096;
/// Pause between upstream reconnect attempts.
const UPSTREAM_RETRY: Duration = Duration::from_millis(100);

/// How a client's frames reach its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Feed every queued frame into the write buffer, flush when the queue is empty.
    Batch,
    /// One `send` (one write) per frame.
    Naive,
}

/// Serves clients on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    upstream_url: String,
    subscribe: Option<String>,
    mode: Mode,
    shutdown: CancellationToken,
) -> Result<()> {
    // Owned by the upstream task (sender) and by each client task (a receiver each); closed when
    // the upstream task ends. Full: the slowest receivers lag and skip, the sender never waits.
    let (tx, _) = broadcast::channel::<Utf8Bytes>(BROADCAST_CAPACITY);
    let tasks = TaskTracker::new();
    tasks.spawn(upstream(
        upstream_url,
        subscribe,
        tx.clone(),
        shutdown.clone(),
    ));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept::next(&listener) => accepted,
        };
        tasks.spawn(client(stream, tx.subscribe(), mode, shutdown.clone()));
    }
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    Ok(())
}

async fn upstream(
    url: String,
    subscribe: Option<String>,
    tx: broadcast::Sender<Utf8Bytes>,
    shutdown: CancellationToken,
) {
    loop {
        let session = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .context("upstream connect")?;
            if let Some(cmd) = &subscribe {
                ws.send(Message::text(cmd.as_str())).await?;
            }
            tracing::info!(%url, "baseline upstream connected");
            while let Some(msg) = ws.next().await {
                if let Message::Text(text) = msg? {
                    // No receivers is fine: nobody connected yet.
                    let _ = tx.send(text);
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => match result {
                Ok(()) => tracing::warn!("baseline upstream closed"),
                Err(e) => tracing::warn!(error = %e, "baseline upstream lost"),
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(UPSTREAM_RETRY) => {}
        }
    }
}

async fn client(
    stream: TcpStream,
    mut rx: broadcast::Receiver<Utf8Bytes>,
    mode: Mode,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // Clients send one command. Naive: no write buffer, each frame is written at once. Batch:
    // frames wait in the buffer for the flush (written early only past 64 KiB).
    let write_buffer = match mode {
        Mode::Batch => 64 * 1024,
        Mode::Naive => 0,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(write_buffer);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
                return;
            }
            frame = rx.recv() => match frame {
                Ok(text) => {
                    let written = match mode {
                        Mode::Naive => ws.send(Message::Text(text)).await,
                        Mode::Batch => feed_queued(&mut ws, text, &mut rx).await,
                    };
                    if written.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "baseline client lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // Reading answers pings and notices closes; client commands are ignored.
            incoming = ws.next() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Feeds `first` and every frame already queued behind it, then flushes: one write per wake-up.
async fn feed_queued(
    ws: &mut WebSocketStream<TcpStream>,
    first: Utf8Bytes,
    rx: &mut broadcast::Receiver<Utf8Bytes>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use broadcast::error::TryRecvError;
    ws.feed(Message::Text(first)).await?;
    loop {
        match rx.try_recv() {
            Ok(text) => ws.feed(Message::Text(text)).await?,
            Err(TryRecvError::Lagged(n)) => tracing::debug!(skipped = n, "baseline client lagged"),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    ws.flush().await
}

/// Binds a listener with a deep accept queue, so a connection storm is not cut at 128.
pub fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(4096)?)
}
