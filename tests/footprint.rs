//! Per-connection memory: an idle client costs its socket buffers, its subscriber, and one task
//! whose allocation is the size of the session future. That size is guarded here, so a change that
//! inlines a large state into every idle connection fails a test (measured in the test profile).

mod common;

use common::*;
use relay::security::{Identity, Permission};
use tokio_tungstenite::tungstenite::protocol::Role;

/// The session future's size today is 2,984 bytes in the test profile (it was 3,752 before the
/// handlers were boxed); 10,000 idle clients pay it 10,000 times.
const MAX_SESSION_FUTURE_BYTES: usize = 3_200;

#[tokio::test]
async fn an_idle_session_task_stays_small() {
    let sim = sim(exchange_sim::SimConfig::default()).await;
    let relay = relay(&sim, |_| {}).await;
    let app = relay.app().clone();
    let (_client, server) = tokio::io::duplex(64);
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        server,
        Role::Server,
        Some(app.ws_config()),
    )
    .await;
    let options = relay::session::SessionOptions {
        relay_events: false,
        peer: "127.0.0.1:1".parse().unwrap(),
        limits: app.config.downstream.limits(),
        identity: Identity::Anonymous(Permission::Private),
        admission: app.gate.admit("127.0.0.9".parse().unwrap()).ok().unwrap(),
    };
    let session = relay::session::run(app.clone(), ws, options);
    let size = std::mem::size_of_val(&session);
    assert!(
        size <= MAX_SESSION_FUTURE_BYTES,
        "a session task is {size} bytes, over {MAX_SESSION_FUTURE_BYTES}: box the new state"
    );
    drop(session);
    relay.shutdown().await;
    sim.shutdown().await;
}
