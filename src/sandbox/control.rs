//! Control-plane operations: whether a create would be admitted, pruning
//! a tenant's sandboxes, a tenant's quota usage, and the warm pools.

use std::time::Instant;

use futures_util::StreamExt as _;
use serde::Serialize;

use super::id::TenantId;
use super::quotas::Limits;
use super::{CreateSandbox, SandboxService, ServiceError, audit, audit_outcome};
use crate::duration;
use crate::provider::{PoolStatus, ProviderError};

/// The answer of `POST /sandboxes/admission`, in the StacyVM SDK's shape
/// (`SpawnAdmissionDecision`, which accepts no other field).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdmissionDecision {
    pub allowed: bool,
    /// Always false: a create is admitted now or refused, never queued.
    pub queueable: bool,
    /// Why it would be refused, or what the create would have to do first;
    /// empty when there is nothing to say.
    pub reason: String,
    /// The tenant's live sandboxes and creates under way.
    pub active_sandboxes: usize,
    pub max_sandboxes: usize,
    /// The owner's (`X-User-ID` or `owner_id`) live sandboxes.
    pub active_owner_sandboxes: usize,
    /// 0: there is no per-owner limit.
    pub max_owner_sandboxes: usize,
    pub max_ttl: String,
}

/// Destroys at once this many sandboxes of a prune: enough to overlap
/// Docker's removals, few enough not to flood the daemon.
const PRUNE_CONCURRENCY: usize = 8;

/// One limit and how much of it is used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gauge {
    pub used: u64,
    /// None: not limited.
    pub limit: Option<u64>,
}

/// A tenant's usage against its limits (`GET /quotas/usage`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaUsage {
    pub tenant: String,
    /// Whether the tenant has a quota of its own (else server-wide limits).
    pub configured: bool,
    pub sandboxes: Gauge,
    pub memory_mb: Gauge,
    pub disk_mb: Gauge,
    pub execs_per_minute: ExecRate,
    pub max_ttl: String,
    pub max_exec_timeout: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExecRate {
    pub limit: Option<u32>,
    /// Execs that may start now without waiting.
    pub available: Option<u32>,
}

/// Quota policy counts in the StacyVM SDK's shape (`QuotaSummary`, which
/// accepts no other field): how many tenants in the caller's view have a
/// quota, and how many of those set each kind of limit.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct QuotaSummary {
    pub total: usize,
    pub with_max_sandboxes: usize,
    pub with_max_ttl: usize,
    pub with_max_exec_timeout: usize,
}

impl SandboxService {
    /// Whether `req` would be admitted now, checked as a create checks it
    /// (provider and its availability, image, TTL, resources, metadata,
    /// the tenant's quotas), without creating anything. `detailed` lets an
    /// unavailable provider's reason through (operators only).
    pub async fn admission(&self, tenant: &TenantId, req: CreateSandbox, detailed: bool) -> AdmissionDecision {
        let limits = self.limits(tenant);
        let held = self.held(tenant).plus(self.quotas.in_flight(tenant));
        let owner = req.owner_id.as_ref().map(|o| o.as_str().to_string());
        let active_owner_sandboxes = owner.as_deref().map_or(0, |o| {
            self.registry
                .count(|sb| &sb.tenant == tenant && sb.owner_id.as_deref() == Some(o))
        });
        let decide = |allowed: bool, reason: String| AdmissionDecision {
            allowed,
            queueable: false,
            reason,
            active_sandboxes: held.sandboxes,
            max_sandboxes: limits.max_sandboxes,
            active_owner_sandboxes,
            max_owner_sandboxes: 0,
            max_ttl: duration::format(limits.max_ttl),
        };
        let refused = |e: ServiceError| {
            let reason = match e {
                ServiceError::Provider(ProviderError::Unavailable(m)) if !detailed => {
                    let head = m.split_once(": ").map_or(m.as_str(), |(h, _)| h);
                    format!("{head}; an operator can see why in GET /providers")
                }
                e => e.to_string(),
            };
            decide(false, reason)
        };
        let plan = match self.plan_create(tenant, &req) {
            Ok(plan) => plan,
            Err(e) => return refused(e),
        };
        if let Some(why) = limits.refusal(held, self.wanted(plan.memory_mb)) {
            return decide(false, why);
        }
        match plan.provider.check_image(&plan.image).await {
            Ok(note) => decide(true, note.unwrap_or_default()),
            Err(e) => refused(e.into()),
        }
    }

    /// Destroys every live sandbox of `tenant` (of one owner, when given);
    /// returns how many. Every sandbox is tried; the first failure is the
    /// answer when any failed.
    pub async fn prune(&self, tenant: &TenantId, owner: Option<&str>) -> Result<usize, ServiceError> {
        let doomed = self
            .registry
            .filter(|sb| &sb.tenant == tenant && owner.is_none_or(|o| sb.owner_id.as_deref() == Some(o)));
        let total = doomed.len();
        let results: Vec<Result<(), ServiceError>> = futures_util::stream::iter(doomed)
            .map(|sb| async move {
                let result = self.destroy_sandbox(&sb, "sandbox.destroyed").await;
                self.audit(
                    audit::Entry::new("sandbox.destroy", super::outcome_of(&result))
                        .tenant(tenant.as_str())
                        .owner(sb.owner_id.as_deref())
                        .sandbox(sb.id.as_str())
                        .subject("prune"),
                );
                result
            })
            .buffer_unordered(PRUNE_CONCURRENCY)
            .collect()
            .await;
        let pruned = results.iter().filter(|r| r.is_ok()).count();
        let first_error = results.into_iter().find_map(Result::err);
        let outcome = match &first_error {
            None => format!("pruned {pruned}"),
            Some(e) => format!("pruned {pruned} of {total}; {}", audit_outcome(e)),
        };
        let subject = owner.map_or_else(|| "all owners".to_string(), |o| format!("owner {o}"));
        self.audit(
            audit::Entry::new("sandbox.prune", outcome)
                .tenant(tenant.as_str())
                .owner(owner)
                .subject(subject),
        );
        match first_error {
            None => Ok(pruned),
            Some(e) => Err(e),
        }
    }

    /// The tenant's usage against its limits.
    pub fn quota_usage(&self, tenant: &TenantId) -> QuotaUsage {
        let limits: Limits = self.limits(tenant);
        let held = self.held(tenant).plus(self.quotas.in_flight(tenant));
        QuotaUsage {
            tenant: tenant.as_str().to_string(),
            configured: limits.configured,
            sandboxes: Gauge {
                used: held.sandboxes as u64,
                limit: Some(limits.max_sandboxes as u64),
            },
            memory_mb: Gauge {
                used: held.memory_mb,
                limit: limits.max_memory_mb,
            },
            disk_mb: Gauge {
                used: held.disk_mb,
                limit: limits.max_disk_mb,
            },
            execs_per_minute: ExecRate {
                limit: limits.max_execs_per_minute,
                available: self.quotas.exec_allowance(tenant, &limits, Instant::now()),
            },
            max_ttl: duration::format(limits.max_ttl),
            max_exec_timeout: duration::format(limits.max_exec_timeout),
        }
    }

    /// Quota policy counts over `scope` (one tenant), or over every
    /// configured tenant.
    pub fn quota_summary(&self, scope: Option<&TenantId>) -> QuotaSummary {
        let mut summary = QuotaSummary::default();
        for (tenant, quota) in self.quotas.configured() {
            if scope.is_some_and(|t| t.as_str() != tenant) || quota.is_empty() {
                continue;
            }
            summary.total += 1;
            summary.with_max_sandboxes += usize::from(quota.max_sandboxes.is_some());
            summary.with_max_ttl += usize::from(quota.max_ttl.is_some());
            summary.with_max_exec_timeout += usize::from(quota.max_exec_timeout.is_some());
        }
        summary
    }

    /// Every provider's warm pool; `scope` limits per-tenant counts.
    pub fn pool_statuses(&self, scope: Option<&TenantId>) -> Vec<(String, PoolStatus)> {
        let mut out: Vec<_> = self
            .providers
            .values()
            .filter_map(|p| Some((p.name().to_string(), p.pool_status(scope)?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
