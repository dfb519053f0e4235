//! Sandbox events (`sandbox.created`, `exec.completed`, ...), fanned out to
//! the subscribers of the sandbox's tenant. Each tenant has its own buffer,
//! made when its first subscriber comes and dropped when its last one
//! leaves, so a noisy tenant can never push another's events out. A
//! subscriber that falls behind loses the oldest events of its own tenant
//! and is told how many; it never slows the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use super::Sandbox;
use super::id::TenantId;

/// Events kept per tenant for a slow subscriber before it starts losing
/// the oldest: a few seconds of a busy tenant, about 1 MiB at most.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing within a tenant, so ids reveal nothing about others.
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sandbox_id: String,
    pub timestamp: String,
    pub data: serde_json::Value,
    #[serde(skip)]
    pub tenant: TenantId,
}

/// One tenant's channel; the sender goes when nobody listens, the id
/// counter stays (tenants are as few as the configured keys).
#[derive(Default)]
struct TenantChannel {
    tx: Option<broadcast::Sender<Arc<Event>>>,
    next_id: u64,
}

#[derive(Default)]
pub struct EventBus {
    tenants: Arc<Mutex<HashMap<TenantId, TenantChannel>>>,
}

/// A subscription to one tenant's events; dropping the last one of a
/// tenant drops that tenant's buffer.
pub struct Subscription {
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    tenant: TenantId,
    tenants: Arc<Mutex<HashMap<TenantId, TenantChannel>>>,
}

fn lock(m: &Mutex<HashMap<TenantId, TenantChannel>>) -> MutexGuard<'_, HashMap<TenantId, TenantChannel>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn publish(&self, sandbox: &Sandbox, kind: &'static str, data: serde_json::Value) {
        let mut tenants = lock(&self.tenants);
        let Some(channel) = tenants.get_mut(&sandbox.tenant) else {
            return;
        };
        let Some(tx) = channel.tx.as_ref().filter(|tx| tx.receiver_count() > 0) else {
            return;
        };
        channel.next_id = channel.next_id.saturating_add(1);
        let event = Event {
            id: channel.next_id,
            kind,
            sandbox_id: sandbox.id.to_string(),
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            data,
            tenant: sandbox.tenant.clone(),
        };
        // A subscriber may leave at any time; that is not an error.
        tx.send(Arc::new(event)).ok();
    }

    /// Live events of `tenant`'s sandboxes.
    pub fn subscribe(&self, tenant: &TenantId) -> Subscription {
        let mut tenants = lock(&self.tenants);
        let channel = tenants.entry(tenant.clone()).or_default();
        let rx = match &channel.tx {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(BACKLOG);
                channel.tx = Some(tx);
                rx
            }
        };
        Subscription {
            rx: Some(rx),
            tenant: tenant.clone(),
            tenants: self.tenants.clone(),
        }
    }

    /// Tenants that hold an event buffer now.
    pub fn buffers(&self) -> usize {
        lock(&self.tenants).values().filter(|c| c.tx.is_some()).count()
    }
}

impl Subscription {
    pub async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Drop the receiver first, then look under the lock, so that a
        // subscriber arriving at the same time either sees the buffer or
        // makes a new one.
        drop(self.rx.take());
        let mut tenants = lock(&self.tenants);
        if let Some(channel) = tenants.get_mut(&self.tenant)
            && channel.tx.as_ref().is_some_and(|tx| tx.receiver_count() == 0)
        {
            channel.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::id::SandboxId;
    use tokio::sync::broadcast::error::TryRecvError;

    fn sandbox(tenant: &str) -> Sandbox {
        Sandbox {
            id: SandboxId::generate(),
            tenant: TenantId::new(tenant),
            state: crate::sandbox::SandboxState::Running,
            provider: "wasm".into(),
            image: "python".into(),
            memory_mb: 64,
            vcpus: 1,
            created_at: SystemTime::now(),
            expires_at: SystemTime::now(),
            metadata: Default::default(),
            owner_id: None,
        }
    }

    #[test]
    fn a_noisy_tenant_cannot_push_another_tenants_events_out() {
        let bus = EventBus::new();
        let (a, b) = (sandbox("a"), sandbox("b"));
        let mut sub_a = bus.subscribe(&a.tenant);
        let mut sub_b = bus.subscribe(&b.tenant);
        bus.publish(&b, "sandbox.created", serde_json::json!({}));
        for _ in 0..10 * BACKLOG {
            bus.publish(&a, "exec.completed", serde_json::json!({}));
        }
        bus.publish(&b, "sandbox.destroyed", serde_json::json!({}));
        let rx = sub_b.rx.as_mut().unwrap();
        let first = rx.try_recv().unwrap();
        let second = rx.try_recv().unwrap();
        assert_eq!((first.kind, first.id), ("sandbox.created", 1));
        assert_eq!((second.kind, second.id), ("sandbox.destroyed", 2));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        // The noisy tenant's own slow subscriber is the one that lags.
        assert!(matches!(
            sub_a.rx.as_mut().unwrap().try_recv(),
            Err(TryRecvError::Lagged(_))
        ));
    }

    #[test]
    fn a_tenants_buffer_lives_while_someone_listens() {
        let bus = EventBus::new();
        let t = TenantId::new("t");
        assert_eq!(bus.buffers(), 0);
        let one = bus.subscribe(&t);
        let two = bus.subscribe(&t);
        assert_eq!(bus.buffers(), 1);
        drop(one);
        assert_eq!(bus.buffers(), 1);
        drop(two);
        assert_eq!(bus.buffers(), 0);
        // Nobody listens: publishing keeps nothing.
        bus.publish(&sandbox("t"), "sandbox.created", serde_json::json!({}));
        assert_eq!(bus.buffers(), 0);
    }
}
