//! Sandbox events (`sandbox.created`, `exec.completed`, ...), fanned out to
//! every subscriber. A subscriber that falls behind loses the oldest events
//! and is told how many; it never slows the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use super::Sandbox;
use super::id::TenantId;

/// Events kept for a slow subscriber before it starts losing the oldest.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sandbox_id: String,
    pub timestamp: String,
    pub data: serde_json::Value,
    #[serde(skip)]
    pub tenant: TenantId,
}

pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    next_id: AtomicU64,
}

pub type Subscription = broadcast::Receiver<Arc<Event>>;

impl EventBus {
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::channel(BACKLOG).0,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn publish(&self, sandbox: &Sandbox, kind: &'static str, data: serde_json::Value) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let event = Event {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kind,
            sandbox_id: sandbox.id.to_string(),
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            data,
            tenant: sandbox.tenant.clone(),
        };
        // No subscriber is not an error.
        self.tx.send(Arc::new(event)).ok();
    }

    pub fn subscribe(&self) -> Subscription {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}
