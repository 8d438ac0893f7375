//! A Redis connection that is replaced when a reply times out.
//!
//! `ConnectionManager` reconnects when its socket reports an error, but a timeout is not one:
//! over a link that went silent (a network partition, a host gone without a reset) every later
//! command would wait out its timeout on the same dead socket, for ever. Here a timed-out reply
//! drops the connection, and the next command opens a fresh one.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    /// The connection in use, numbered so that of several commands timing out on it at once
    /// only the first replaces it.
    current: Mutex<(u64, ConnectionManager)>,
}

impl Conn {
    /// Connects lazily: on first use, and again after a failure.
    pub fn new(client: Client, config: ConnectionManagerConfig) -> RedisResult<Conn> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Conn {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new((0, manager)),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (u64, ConnectionManager)> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> (u64, ConnectionManager) {
        self.lock().clone()
    }

    /// Notes a command's outcome on connection `number`: a timeout retires that connection.
    fn after<T>(&self, number: u64, result: &RedisResult<T>) {
        if !matches!(result, Err(e) if e.is_timeout()) {
            return;
        }
        let shared = &self.shared;
        let mut current = self.lock();
        if current.0 == number {
            if let Ok(fresh) = ConnectionManager::new_lazy_with_config(
                shared.client.clone(),
                shared.config.clone(),
            ) {
                *current = (number + 1, fresh);
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            let (number, mut manager) = self.current();
            let result = manager.send_packed_command(cmd).await;
            self.after(number, &result);
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            let (number, mut manager) = self.current();
            let result = manager.send_packed_commands(pipeline, offset, count).await;
            self.after(number, &result);
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
