//! The docker warm pool: containers created and started ahead of time, so
//! that a create the pool can serve answers without waiting for Docker.
//!
//! `[docker.pool]` lists images and how many ready containers to keep for
//! each. A pool container is an ordinary sandbox container made for a
//! sandbox id drawn in advance, with the server's default `memory_mb`, one
//! vCPU, and the label `stacyvm.pool`. A create for a pooled image with
//! those resources takes one: the sandbox gets the drawn id, so the
//! container already has the right name and labels, and nothing is asked of
//! the daemon before the answer. A background task refills the pool one
//! container at a time, checks that ready containers still run, and stops
//! with the provider.
//!
//! Containers never leak: a ready container belongs to no sandbox, so the
//! reconciliation at start (containers without a registry entry are
//! removed) removes any a crash left, except those this process's pool is
//! holding; graceful shutdown removes the ready ones; a container taken but
//! never claimed by its create is removed by the next check.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bollard::query_parameters::ListContainersOptions;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{DockerProvider, LABEL_INSTANCE, LABEL_POOL, LABEL_SANDBOX};
use crate::provider::{PoolImageStatus, PoolStatus};
use crate::sandbox::id::{SandboxId, TenantId};
use crate::sandbox::{Sandbox, SandboxState, lock};

/// `[docker.pool]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Images to keep ready containers of; empty disables the pool.
    pub images: Vec<String>,
    /// Ready containers per image.
    pub size: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            images: vec![],
            // Enough to absorb a burst of creates while the refill, one
            // container at a time, catches up.
            size: 4,
        }
    }
}

/// Most ready containers per image, and most pooled images: each ready
/// container holds its memory limit's worth of reservation on the host.
const MAX_SIZE: usize = 64;
const MAX_IMAGES: usize = 16;

impl PoolSettings {
    pub fn validate(&self, allowed: &[String], aliases: &BTreeMap<String, String>) -> Result<(), String> {
        if self.images.len() > MAX_IMAGES {
            return Err(format!("docker.pool.images may list at most {MAX_IMAGES} images"));
        }
        if !self.images.is_empty() && (self.size == 0 || self.size > MAX_SIZE) {
            return Err(format!("docker.pool.size must be between 1 and {MAX_SIZE}"));
        }
        let mut seen = HashSet::new();
        for image in &self.images {
            let image = aliases.get(image).unwrap_or(image);
            if image.trim().is_empty() {
                return Err("docker.pool.images must not hold an empty name".into());
            }
            if !super::image_allowed(allowed, image) {
                return Err(format!(
                    "docker.pool.images lists {image:?}, which docker.allowed_images does not match"
                ));
            }
            if !seen.insert(image.clone()) {
                return Err(format!("docker.pool.images lists {image:?} twice"));
            }
        }
        Ok(())
    }
}

/// How long a taken container may wait for its create to claim it before
/// the check removes it; a create claims it at once.
const CLAIM_GRACE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct ImagePool {
    ready: VecDeque<SandboxId>,
    creating: usize,
}

#[derive(Default)]
struct State {
    images: BTreeMap<String, ImagePool>,
    /// Being made for the pool.
    making: HashSet<SandboxId>,
    /// Taken by a create that has not claimed it yet, and since when.
    taken: HashMap<SandboxId, Instant>,
    /// Live sandboxes the pool served, with their tenants.
    serving: HashMap<SandboxId, TenantId>,
    /// Creates served since start, per tenant.
    served: HashMap<TenantId, u64>,
    /// Why the last refill failed, until one succeeds.
    last_error: Option<String>,
}

pub struct WarmPool {
    size: usize,
    memory_mb: u64,
    state: Mutex<State>,
    wake: Notify,
    stop: CancellationToken,
}

impl WarmPool {
    pub fn new(settings: &PoolSettings, aliases: &BTreeMap<String, String>, memory_mb: u64) -> Option<Arc<WarmPool>> {
        if settings.images.is_empty() {
            return None;
        }
        let images = settings
            .images
            .iter()
            .map(|i| (aliases.get(i).unwrap_or(i).clone(), ImagePool::default()))
            .collect();
        Some(Arc::new(WarmPool {
            size: settings.size,
            memory_mb,
            state: Mutex::new(State {
                images,
                ..State::default()
            }),
            wake: Notify::new(),
            stop: CancellationToken::new(),
        }))
    }

    /// The id of a ready container for this create, if the pool has one.
    pub fn take(&self, image: &str, memory_mb: u64, vcpus: u32) -> Option<SandboxId> {
        if memory_mb != self.memory_mb || vcpus != 1 {
            return None;
        }
        let mut state = lock(&self.state);
        let id = state.images.get_mut(image)?.ready.pop_front()?;
        state.taken.insert(id.clone(), Instant::now());
        drop(state);
        self.wake.notify_one();
        Some(id)
    }

    /// Whether `sandbox` was given a pooled container (and so needs no new
    /// one); records it as served.
    pub fn claim(&self, sandbox: &Sandbox) -> bool {
        let mut state = lock(&self.state);
        if state.taken.remove(&sandbox.id).is_none() {
            return false;
        }
        state.serving.insert(sandbox.id.clone(), sandbox.tenant.clone());
        *state.served.entry(sandbox.tenant.clone()).or_default() += 1;
        true
    }

    /// The sandbox is gone.
    pub fn forget(&self, id: &SandboxId) {
        lock(&self.state).serving.remove(id);
    }

    /// Ids whose containers the pool holds (being made, ready, or taken
    /// and not yet claimed): not orphans, whatever the registry says.
    pub fn holds(&self, id: &str) -> bool {
        let state = lock(&self.state);
        let Some(id) = SandboxId::parse(id) else { return false };
        state.making.contains(&id)
            || state.taken.contains_key(&id)
            || state.images.values().any(|p| p.ready.contains(&id))
    }

    /// The pool's figures: `scope` limits the served counts to one tenant.
    pub fn status(&self, scope: Option<&TenantId>) -> PoolStatus {
        let state = lock(&self.state);
        let in_scope = |t: &TenantId| scope.is_none_or(|s| s == t);
        PoolStatus {
            images: state
                .images
                .iter()
                .map(|(image, p)| PoolImageStatus {
                    image: image.clone(),
                    ready: p.ready.len(),
                    creating: p.creating,
                    target: self.size,
                })
                .collect(),
            serving: state.serving.values().filter(|t| in_scope(t)).count(),
            served: state.served.iter().filter(|(t, _)| in_scope(t)).map(|(_, n)| n).sum(),
            memory_mb: self.memory_mb,
            last_error: state.last_error.clone(),
        }
    }

    /// The next image short of its size, counting one more being made.
    fn start_one(&self) -> Option<(String, SandboxId)> {
        let mut state = lock(&self.state);
        let (image, pool) = state
            .images
            .iter_mut()
            .find(|(_, p)| p.ready.len() + p.creating < self.size)?;
        pool.creating += 1;
        let image = image.clone();
        let id = SandboxId::generate();
        // Held from before the container exists, so the reconciliation at
        // start cannot take it for an orphan.
        state.making.insert(id.clone());
        Some((image, id))
    }

    fn finish_one(&self, image: &str, id: SandboxId, made: bool) {
        let mut state = lock(&self.state);
        state.making.remove(&id);
        if let Some(pool) = state.images.get_mut(image) {
            pool.creating = pool.creating.saturating_sub(1);
            if made {
                pool.ready.push_back(id);
            }
        }
    }

    fn set_error(&self, error: Option<String>) {
        lock(&self.state).last_error = error;
    }

    /// Stops the refill and hands back the ready containers' ids, to be
    /// removed.
    pub fn drain(&self) -> Vec<SandboxId> {
        self.stop.cancel();
        let mut state = lock(&self.state);
        state.images.values_mut().flat_map(|p| p.ready.drain(..)).collect()
    }
}

/// A placeholder sandbox for a pool container: the server's default
/// resources, no tenant yet.
fn pool_sandbox(id: SandboxId, image: &str, memory_mb: u64) -> Sandbox {
    let now = SystemTime::now();
    Sandbox {
        id,
        tenant: TenantId::new(""),
        state: SandboxState::Running,
        provider: "docker".into(),
        image: image.to_string(),
        memory_mb,
        vcpus: 1,
        created_at: now,
        expires_at: now,
        metadata: BTreeMap::new(),
        owner_id: None,
    }
}

/// Keeps the pool full until the provider is dropped or shut down.
pub async fn refill(provider: Weak<DockerProvider>, pool: Arc<WarmPool>, interval: Duration) {
    let mut checked = Instant::now();
    loop {
        if pool.stop.is_cancelled() {
            return;
        }
        let Some(docker_provider) = provider.upgrade() else {
            return;
        };
        while let Some((image, id)) = pool.start_one() {
            let sandbox = pool_sandbox(id.clone(), &image, pool.memory_mb);
            let made = tokio::select! {
                made = docker_provider.make_container(&sandbox, true) => made,
                _ = pool.stop.cancelled() => Err(crate::provider::ProviderError::Cancelled),
            };
            match made {
                Ok(()) if pool.stop.is_cancelled() => {
                    // Shut down while it was being made: nobody will take it.
                    docker_provider.remove_container_of(&id).await;
                    pool.finish_one(&image, id, false);
                    return;
                }
                Ok(()) => {
                    pool.finish_one(&image, id, true);
                    pool.set_error(None);
                }
                Err(e) => {
                    docker_provider.remove_container_of(&id).await;
                    pool.finish_one(&image, id, false);
                    let message = format!("cannot make a pool container of {image}: {e}");
                    if lock(&pool.state).last_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!("{message}; retrying every {}", crate::duration::format(interval));
                    }
                    pool.set_error(Some(message));
                    break;
                }
            }
        }
        if checked.elapsed() >= interval {
            check(&docker_provider, &pool).await;
            checked = Instant::now();
        }
        drop(docker_provider);
        tokio::select! {
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = pool.stop.cancelled() => return,
        }
    }
}

/// Drops ready containers that no longer run, and removes taken containers
/// whose create never claimed them.
async fn check(provider: &DockerProvider, pool: &WarmPool) {
    let Ok(docker) = provider.conn.client() else { return };
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_INSTANCE}={}", provider.instance),
                LABEL_POOL.to_string(),
            ],
        )])),
        ..Default::default()
    };
    let Ok(list) = docker.list_containers(Some(options)).await else {
        return;
    };
    let running: HashSet<String> = list
        .into_iter()
        .filter(|c| c.state.as_ref().is_some_and(|s| s.to_string() == "running"))
        .filter_map(|c| c.labels?.get(LABEL_SANDBOX).cloned())
        .collect();
    let mut doomed = vec![];
    {
        let mut state = lock(&pool.state);
        for p in state.images.values_mut() {
            p.ready.retain(|id| {
                let alive = running.contains(id.as_str());
                if !alive {
                    doomed.push(id.clone());
                }
                alive
            });
        }
        let now = Instant::now();
        state.taken.retain(|id, since| {
            let stale = now.saturating_duration_since(*since) > CLAIM_GRACE;
            if stale {
                doomed.push(id.clone());
            }
            !stale
        });
    }
    for id in doomed {
        tracing::info!(container = %id, "removing a pool container that stopped or was never claimed");
        provider.remove_container_of(&id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize) -> Arc<WarmPool> {
        WarmPool::new(
            &PoolSettings {
                images: vec!["img:1".into()],
                size,
            },
            &BTreeMap::new(),
            512,
        )
        .unwrap()
    }

    #[test]
    fn the_pool_fills_to_its_size_and_serves_only_matching_creates() {
        let p = pool(2);
        let (image, a) = p.start_one().unwrap();
        let (_, b) = p.start_one().unwrap();
        assert!(p.start_one().is_none(), "two being made is the size");
        assert!(p.holds(a.as_str()), "held while being made");
        p.finish_one(&image, a.clone(), true);
        p.finish_one(&image, b.clone(), false);
        assert!(!p.holds(b.as_str()));
        assert_eq!(p.status(None).images[0].ready, 1);
        assert_eq!(p.take("img:1", 1024, 1), None, "other memory");
        assert_eq!(p.take("img:1", 512, 2), None, "other vcpus");
        assert_eq!(p.take("other:1", 512, 1), None, "other image");
        assert_eq!(p.take("img:1", 512, 1), Some(a.clone()));
        assert_eq!(p.take("img:1", 512, 1), None, "empty");
        assert!(p.holds(a.as_str()), "taken, not yet claimed");
        let mut sb = pool_sandbox(a.clone(), "img:1", 512);
        sb.tenant = TenantId::new("t");
        assert!(p.claim(&sb));
        assert!(!p.claim(&sb), "claimed once");
        assert!(!p.holds(a.as_str()));
        let status = p.status(Some(&TenantId::new("t")));
        assert_eq!((status.serving, status.served), (1, 1));
        assert_eq!(p.status(Some(&TenantId::new("u"))).served, 0);
        p.forget(&a);
        assert_eq!(p.status(None).serving, 0);
        assert_eq!(p.status(None).served, 1);
    }

    #[test]
    fn settings_are_bounded_and_checked_against_the_allow_list() {
        let ok = PoolSettings {
            images: vec!["stacyvm-test-busybox:latest".into()],
            size: 4,
        };
        ok.validate(&["stacyvm-test-*".into()], &BTreeMap::new()).unwrap();
        assert_eq!(
            ok.validate(&["python:*".into()], &BTreeMap::new()).unwrap_err(),
            "docker.pool.images lists \"stacyvm-test-busybox:latest\", which docker.allowed_images does not match"
        );
        let big = PoolSettings { size: 65, ..ok.clone() };
        assert_eq!(
            big.validate(&[], &BTreeMap::new()).unwrap_err(),
            "docker.pool.size must be between 1 and 64"
        );
        let twice = PoolSettings {
            images: vec!["a:1".into(), "a:1".into()],
            size: 1,
        };
        assert_eq!(
            twice.validate(&[], &BTreeMap::new()).unwrap_err(),
            "docker.pool.images lists \"a:1\" twice"
        );
        assert!(WarmPool::new(&PoolSettings::default(), &BTreeMap::new(), 512).is_none());
    }
}
