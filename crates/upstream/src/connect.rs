//! One connection attempt: TCP with a timeout, then TLS (for `wss://`) and the signed upgrade
//! with another, and the classification of every way it can fail.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{client_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream};

use crate::backoff::parse_retry_after;
use crate::config::Settings;
use crate::event::DisconnectReason;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// tungstenite zeroes this much of its read buffer before every read attempt, the one that
/// finds nothing included: at its 128 KiB default, each upstream message costs a quarter of a
/// MiB of writes and evicts the fanout's working set from the cache. A bigger message takes
/// more reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// A failed attempt: why (a metric label and the state), what exactly (for the log), and the
/// exchange's `Retry-After`, if it gave one.
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub reason: DisconnectReason,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

impl ConnectError {
    fn new(reason: DisconnectReason, detail: impl ToString) -> ConnectError {
        ConnectError {
            reason,
            detail: detail.to_string(),
            retry_after: None,
        }
    }
}

/// Opens the WebSocket, with freshly signed headers when credentials are configured.
pub(crate) async fn connect(settings: &Settings) -> Result<Ws, ConnectError> {
    let failed = |e: &dyn std::fmt::Display| ConnectError::new(DisconnectReason::ConnectFailed, e);
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| failed(&e))?;
    // `into_client_request` adds the upgrade headers and no Origin: the exchange refuses one.
    if let Some(signer) = &settings.signer {
        let path = request.uri().path().to_owned();
        let auth = signer.sign_now(&path);
        for (name, value) in auth.pairs() {
            let value = HeaderValue::from_str(value).map_err(|e| failed(&e))?;
            request.headers_mut().insert(name, value);
        }
    }
    let uri = request.uri();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });

    let tcp = match tokio::time::timeout(
        settings.connect_timeout,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => {
            return Err(ConnectError::new(
                DisconnectReason::ConnectTimeout,
                "TCP connect timed out",
            ))
        }
        Ok(Err(e)) => return Err(failed(&e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);

    let connector = Connector::Rustls(settings.tls.clone());
    let handshake = client_async_tls_with_config(
        request,
        tcp,
        Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)),
        Some(connector),
    );
    match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Err(_) => Err(ConnectError::new(
            DisconnectReason::HandshakeTimeout,
            "TLS or upgrade timed out",
        )),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => {
            let status = response.status();
            let retry_after = if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            } else {
                None
            };
            let reason = if status == StatusCode::UNAUTHORIZED {
                DisconnectReason::AuthRejected
            } else {
                DisconnectReason::HandshakeRejected {
                    status: status.as_u16(),
                }
            };
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let detail = format!(
                "upgrade answered {status}: {}",
                body.chars().take(200).collect::<String>()
            );
            Err(ConnectError {
                reason,
                detail,
                retry_after,
            })
        }
        Ok(Err(e)) => Err(failed(&e)),
    }
}
