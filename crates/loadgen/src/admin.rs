//! Tiny HTTP/1.1 client for the simulator's admin API and the relay's health endpoints, plus
//! market discovery over the exchange protocol.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One request with `Connection: close`; returns the status and the body.
pub async fn http(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("only http:// is supported, got {base:?}"))?
        .trim_end_matches('/');
    let request = async {
        let mut stream = TcpStream::connect(authority).await?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, request)
        .await
        .with_context(|| format!("{method} {base}{path} timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET /admin/stats` of the simulator, as JSON.
pub async fn sim_stats(admin: &str) -> Result<serde_json::Value> {
    let (status, body) = http("GET", admin, "/admin/stats", None).await?;
    if status != 200 {
        bail!("GET /admin/stats: HTTP {status}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// `POST /admin/fault/{kind}` with an optional JSON body.
pub async fn sim_fault(admin: &str, kind: &str, body: Option<&str>) -> Result<()> {
    let (status, text) = http("POST", admin, &format!("/admin/fault/{kind}"), body).await?;
    if !(200..300).contains(&status) {
        bail!("POST /admin/fault/{kind}: HTTP {status}: {text}");
    }
    Ok(())
}

/// The exchange's markets, learned by subscribing to `ticker` on all markets with initial
/// snapshots and collecting tickers until none is new for a moment.
pub async fn discover_markets(url: &str, limit: Duration) -> Result<Vec<String>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url} to list markets"))?;
    ws.send(Message::text(
        r#"{"id":1,"cmd":"subscribe","params":{"channels":["ticker"],"send_initial_snapshot":true}}"#,
    ))
    .await?;
    let mut markets = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + limit;
    // Done when no new ticker arrived for this long (the initial tickers come at once).
    let quiet = Duration::from_millis(300);
    let mut last_new = tokio::time::Instant::now();
    loop {
        let until = if markets.is_empty() {
            deadline
        } else {
            deadline.min(last_new + quiet)
        };
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let ticker = protocol::Envelope::parse(t.as_bytes())
                    .ok()
                    .filter(|env| env.message_type().as_str() == "ticker")
                    .and_then(|env| env.market_ticker());
                if let Some(m) = ticker {
                    if markets.insert(m) {
                        last_new = tokio::time::Instant::now();
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = ws.close(None).await;
    if markets.is_empty() {
        bail!("{url} sent no ticker within {limit:?}: cannot list its markets");
    }
    Ok(markets.into_iter().collect())
}

/// The subscribe command for `channels` on `markets`.
pub fn subscribe_command(channels: &[String], markets: &[String]) -> String {
    serde_json::json!({
        "id": 1,
        "cmd": "subscribe",
        "params": {"channels": channels, "market_tickers": markets},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
