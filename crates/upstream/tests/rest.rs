//! The REST client against the in-process `exchange-sim` over real HTTP on 127.0.0.1. Timing
//! tests run on tokio's paused clock (the simulator in the same runtime, so its injected delays
//! are on that clock too), so the delays asserted are exact; the simulator is silent (rate 0)
//! and its fills come from `burst` faults.

use std::sync::Arc;
use std::time::Duration;

use exchange_sim::{Fault, Sim, SimAuth, SimConfig};
use protocol::{Count, Price, Verifier};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use upstream::rest::{OrderQuery, PositionQuery};
use upstream::{RestClient, RestConfig, RestError, UpstreamConfig};

async fn sim(auth: SimAuth) -> Sim {
    let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SimConfig {
        auth,
        rate: 0.0,
        ..SimConfig::default()
    };
    exchange_sim::start(config, ws, admin).await.unwrap()
}

/// Quick retries, a fast bucket and small pages, so tests see many pages and retries.
fn rest_config(sim: &Sim) -> RestConfig {
    RestConfig {
        base_url: Some(sim.rest_url()),
        reads_per_second: 1000.0,
        read_burst: std::num::NonZeroU32::new(1000).unwrap(),
        page_limit: 7,
        request_timeout_seconds: settings::Seconds::from_secs(2),
        max_total_seconds: settings::Seconds::from_secs(30),
        backoff_base_seconds: settings::Seconds::from_secs_f64(0.2),
        backoff_cap_seconds: settings::Seconds::from_secs_f64(0.2),
    }
}

fn client(sim: &Sim) -> RestClient {
    RestClient::new(&UpstreamConfig::default(), &rest_config(sim)).unwrap()
}

/// `GET path` on the admin listener: the JSON body of a 200.
async fn admin_get(sim: &Sim, path: &str) -> Value {
    let mut s = TcpStream::connect(sim.admin_addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

/// Makes fills (about one per 50 messages) and returns `/admin/fills`.
async fn make_fills(sim: &Sim, messages: u64) -> Vec<Value> {
    sim.fault(Fault::Burst { count: messages });
    let truth = admin_get(sim, "/admin/fills").await;
    assert_eq!(truth["evicted"], 0);
    truth["fills"].as_array().unwrap().clone()
}

fn requests(sim: &Sim) -> u64 {
    sim.stats().rest_requests
}

#[tokio::test]
async fn every_fill_order_and_position_agrees_with_the_simulator_across_pages() {
    let (private_pem, public_pem) = protocol::sign::generate_key_pair(2048);
    let mut verifier = Verifier::new(10_000);
    verifier.add_public_pem(&public_pem).unwrap();
    let sim = sim(SimAuth::Verifier(verifier)).await;
    let truth = make_fills(&sim, 20_000).await;
    assert!(truth.len() > 50, "{} fills", truth.len());
    let signed = UpstreamConfig {
        key_id: Some("key-1".into()),
        private_key_pem: Some(private_pem),
        ..UpstreamConfig::default()
    };
    let rest = RestClient::new(&signed, &rest_config(&sim)).unwrap();

    let fills = rest.fills_since(None, None).await.unwrap();
    let got: Vec<&str> = fills.iter().map(|f| f.trade_id.as_str()).collect();
    let want: Vec<&str> = truth
        .iter()
        .map(|f| f["trade_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "every fill, once, in exchange order");
    for (f, t) in fills.iter().zip(&truth) {
        assert_eq!(f.order_id, t["order_id"].as_str().unwrap());
        assert_eq!(f.ticker, t["market_ticker"].as_str().unwrap());
        assert_eq!(
            f.yes_price_dollars,
            t["yes_price_dollars"]
                .as_str()
                .unwrap()
                .parse::<Price>()
                .unwrap()
        );
        assert_eq!(
            f.count_fp,
            t["count_fp"].as_str().unwrap().parse::<Count>().unwrap()
        );
        assert_eq!(f.fee_cost, t["fee_cost"].as_str().unwrap());
        assert_eq!(f.outcome_side.as_deref(), t["outcome_side"].as_str());
        assert_eq!(f.book_side.as_deref(), t["book_side"].as_str());
        assert_eq!(f.is_taker, t["is_taker"].as_bool().unwrap());
        assert_eq!(f.ts, Some(t["ts_ms"].as_i64().unwrap() / 1000));
    }
    let ts = fills[0].ts.unwrap();
    let window = rest.fills_since(Some(ts), Some(ts)).await.unwrap();
    assert_eq!(
        window.len(),
        fills.iter().filter(|f| f.ts == Some(ts)).count()
    );

    let orders = rest.orders(&OrderQuery::default()).await.unwrap();
    let mut order_ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let mut want_ids: Vec<&str> = truth
        .iter()
        .map(|f| f["order_id"].as_str().unwrap())
        .collect();
    order_ids.sort_unstable();
    want_ids.sort_unstable();
    assert_eq!(order_ids, want_ids);

    let positions = rest.positions(&PositionQuery::default()).await.unwrap();
    let mut last = std::collections::BTreeMap::new();
    for t in &truth {
        last.insert(
            t["market_ticker"].as_str().unwrap(),
            t["post_position_fp"].as_str().unwrap(),
        );
    }
    let got: std::collections::BTreeMap<&str, String> = positions
        .market_positions
        .iter()
        .map(|p| (p.ticker.as_str(), p.position_fp.to_string()))
        .collect();
    let want: std::collections::BTreeMap<&str, String> =
        last.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
    assert_eq!(
        got, want,
        "each market's position is the last fill's post_position"
    );

    // A key the exchange does not know: refused at once, not retried.
    let (other_pem, _) = protocol::sign::generate_key_pair(2048);
    let wrong = UpstreamConfig {
        key_id: Some("key-1".into()),
        private_key_pem: Some(other_pem),
        ..UpstreamConfig::default()
    };
    let before = requests(&sim);
    let err = RestClient::new(&wrong, &rest_config(&sim))
        .unwrap()
        .fills_since(None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RestError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(requests(&sim) - before, 1);
}

#[tokio::test]
async fn truncated_pages_are_followed_and_cut_bodies_retried() {
    let sim = sim(SimAuth::None).await;
    let truth = make_fills(&sim, 10_000).await;
    let want: Vec<&str> = truth
        .iter()
        .map(|f| f["trade_id"].as_str().unwrap())
        .collect();
    let rest = client(&sim);
    for cut_body in [false, true] {
        sim.fault(Fault::RestTruncate { cut_body, count: 3 });
        let fills = rest.fills_since(None, None).await.unwrap();
        let got: Vec<&str> = fills.iter().map(|f| f.trade_id.as_str()).collect();
        assert_eq!(got, want, "cut_body = {cut_body}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_for_retry_after_and_without_one_backs_off() {
    let sim = sim(SimAuth::None).await;
    let rest = client(&sim);
    sim.fault(Fault::RestRateLimit {
        retry_after_seconds: Some(3),
        count: 2,
    });
    let start = Instant::now();
    rest.fills_since(None, None).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(6) && waited < Duration::from_secs(7),
        "{waited:?}"
    );
    assert_eq!(requests(&sim), 3);

    // The exchange itself sends no Retry-After: the backoff (<= 0.2 s here) decides.
    sim.fault(Fault::RestRateLimit {
        retry_after_seconds: None,
        count: 2,
    });
    let start = Instant::now();
    rest.fills_since(None, None).await.unwrap();
    assert!(
        start.elapsed() <= Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(requests(&sim), 6);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried() {
    let sim = sim(SimAuth::None).await;
    let rest = client(&sim);
    sim.fault(Fault::RestError {
        status: 503,
        count: 3,
    });
    rest.orders(&OrderQuery::default()).await.unwrap();
    assert_eq!(requests(&sim), 4);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_is_awaited_up_to_the_request_timeout_then_retried() {
    let sim = sim(SimAuth::None).await;
    let rest = client(&sim); // request timeout 2 s
    sim.fault(Fault::RestSlow {
        delay_ms: 1_500,
        count: 1,
    });
    let start = Instant::now();
    rest.positions(&PositionQuery::default()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(1_500));
    assert_eq!(requests(&sim), 1, "answered within the timeout: no retry");

    sim.fault(Fault::RestSlow {
        delay_ms: 60_000,
        count: 1,
    });
    let start = Instant::now();
    rest.positions(&PositionQuery::default()).await.unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(requests(&sim), 3);
}

#[tokio::test(start_paused = true)]
async fn failing_past_the_bound_returns_gave_up_with_the_last_error() {
    let sim = sim(SimAuth::None).await;
    let config = RestConfig {
        max_total_seconds: settings::Seconds::from_secs(5),
        ..rest_config(&sim)
    };
    let rest = RestClient::new(&UpstreamConfig::default(), &config).unwrap();
    sim.fault(Fault::RestError {
        status: 500,
        count: 1_000_000,
    });
    let start = Instant::now();
    let err = rest.fills_since(None, None).await.unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited > Duration::from_secs(4) && waited <= Duration::from_secs(5),
        "{waited:?}"
    );
    match err {
        RestError::GaveUp { attempts, last, .. } => {
            assert!(attempts >= 20, "retried every 0.1-0.2 s: {attempts}");
            assert_eq!(u64::from(attempts), requests(&sim));
            assert!(matches!(
                last.as_deref(),
                Some(RestError::Unavailable { status: 500, .. })
            ));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn requests_are_paced_by_the_token_bucket() {
    let sim = sim(SimAuth::None).await;
    let truth = make_fills(&sim, 10_000).await;
    let config = RestConfig {
        reads_per_second: 2.0,
        read_burst: std::num::NonZeroU32::new(1).unwrap(),
        page_limit: 10,
        ..rest_config(&sim)
    };
    let rest = RestClient::new(&UpstreamConfig::default(), &config).unwrap();
    let start = Instant::now();
    let fills = rest.fills_since(None, None).await.unwrap();
    assert_eq!(fills.len(), truth.len());
    let pages = requests(&sim);
    assert!(pages >= 5, "{pages} pages");
    // The first request spends the burst; each later one waits half a second.
    let waited = start.elapsed();
    let paced = Duration::from_millis(500) * (pages as u32 - 1);
    assert!(
        waited >= paced && waited < paced + Duration::from_millis(100),
        "{waited:?} for {pages} pages"
    );
}

/// A CA and a `localhost` certificate it signed, as (CA PEM, leaf DER, leaf key DER).
fn tls_material() -> (String, Vec<u8>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.der().to_vec(), key.serialize_der())
}

#[tokio::test]
async fn https_through_a_tls_front_trusting_an_extra_ca() {
    let sim = sim(SimAuth::None).await;
    let truth = make_fills(&sim, 5_000).await;
    let (ca_pem, cert, key) = tls_material();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = front.local_addr().unwrap().port();
    let backend = sim.admin_addr();
    // Terminates TLS and pipes each connection to the simulator's plain HTTP listener.
    tokio::spawn(async move {
        while let Ok((tcp, _)) = front.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let ca_file = std::env::temp_dir().join(format!("rest-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let upstream = UpstreamConfig {
        extra_ca_file: Some(ca_file.clone()),
        ..UpstreamConfig::default()
    };
    let config = RestConfig {
        base_url: Some(format!("https://localhost:{port}/trade-api/v2")),
        ..rest_config(&sim)
    };
    let result = RestClient::new(&upstream, &config)
        .unwrap()
        .fills_since(None, None)
        .await;
    std::fs::remove_file(&ca_file).unwrap();
    let got: Vec<String> = result.unwrap().into_iter().map(|f| f.trade_id).collect();
    let want: Vec<&str> = truth
        .iter()
        .map(|f| f["trade_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, want);
}
