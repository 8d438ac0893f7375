//! The socket under a session's WebSocket, and whether a read is worth attempting.
//!
//! A session parks after every write. Asking tungstenite for a frame then costs a buffer fill,
//! two waker registrations and its frame parser, only to learn that the client sent nothing, as
//! it almost never has. A transport that can say whether its socket has become readable lets the
//! session skip that attempt: once a read attempt has come back empty, the next is made only
//! when the socket says it may find data.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A byte stream a session can run on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Pending until a read might find data, with the task registered to be woken then; only
    /// asked after a read came back pending. Ready by default: a stream that cannot tell is read
    /// at every wake-up.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // An error is for the read to report.
        TcpStream::poll_read_ready(self, cx).map(|_| ())
    }
}

/// A pending TLS read means rustls holds no plaintext and the socket had nothing more: new
/// bytes on the socket are the only thing that can change that.
impl Transport for TlsStream<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        TcpStream::poll_read_ready(self.get_ref().0, cx).map(|_| ())
    }
}

impl Transport for tokio::io::DuplexStream {}

impl Transport for TokioIo<hyper::upgrade::Upgraded> {}

/// A client's socket after the upgrade, taken back out of hyper so that its readiness can be
/// asked (hyper hands it over behind a trait object).
pub enum ClientSocket {
    Plain(TcpStream),
    /// Boxed: a TLS stream is large, and every plain client would be sized for it.
    Tls(Box<TlsStream<TcpStream>>),
    /// Any other stream hyper was given: read at every wake-up.
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl ClientSocket {
    /// The socket hyper upgraded, and the bytes hyper read past the request (the client's first
    /// frames, if it sent them without waiting for the answer).
    pub fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> (ClientSocket, Vec<u8>) {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                return (
                    ClientSocket::Plain(parts.io.into_inner()),
                    parts.read_buf.to_vec(),
                )
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            Ok(parts) => (
                ClientSocket::Tls(Box::new(parts.io.into_inner())),
                parts.read_buf.to_vec(),
            ),
            Err(upgraded) => (ClientSocket::Other(TokioIo::new(upgraded)), Vec::new()),
        }
    }
}

impl Transport for ClientSocket {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            ClientSocket::Plain(s) => Transport::poll_read_ready(s, cx),
            ClientSocket::Tls(s) => Transport::poll_read_ready(&**s, cx),
            ClientSocket::Other(s) => Transport::poll_read_ready(s, cx),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientSocket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientSocket::Other(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientSocket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientSocket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            ClientSocket::Other(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientSocket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientSocket::Other(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientSocket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientSocket::Other(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
