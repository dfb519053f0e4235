//! Per-tenant quotas: how many sandboxes a tenant may hold, how much memory
//! and disk they may reserve together, how many execs it may start a minute,
//! and the longest TTL and exec timeout it may ask for.
//!
//! Quotas are configured per tenant, in a `[quotas.<tenant>]` table or on the
//! tenant's `[[auth.keys]]` entries; what a tenant leaves out falls back to
//! the server-wide `sandbox.*` and `exec.*` limits (or to no limit where the
//! server has none: total memory, total disk, exec rate).
//!
//! Memory and disk are reservations: a sandbox reserves its `memory_mb`,
//! and its disk quota (`sandbox.disk_quota_mb`) which no sandbox can outgrow,
//! from the moment its create is admitted, so the sum over a tenant's live
//! sandboxes is a real bound on what they can use together.
//!
//! The exec rate is a generic cell rate algorithm (GCRA) per tenant: a
//! tenant may start its whole minute's allowance at once, then one exec
//! every `60 s / limit`; one instant per tenant is all it keeps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use super::id::TenantId;
use super::lock;
use crate::duration;

/// One tenant's quota as configured; a field left out is not limited by
/// the tenant's quota (the server-wide limit applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {
    /// Live sandboxes at once (replaces `sandbox.max_per_tenant`).
    pub max_sandboxes: Option<usize>,
    /// `memory_mb` of all the tenant's live sandboxes together.
    pub max_memory_mb: Option<u64>,
    /// Execs started in any minute.
    pub max_execs_per_minute: Option<u32>,
    /// Disk reserved by all the tenant's live sandboxes together, in MiB;
    /// each sandbox reserves `sandbox.disk_quota_mb`.
    pub max_disk_mb: Option<u64>,
    /// Longest TTL (replaces `sandbox.max_ttl`).
    #[serde(deserialize_with = "optional_duration")]
    pub max_ttl: Option<Duration>,
    /// Longest exec timeout (replaces `exec.max_timeout`).
    #[serde(deserialize_with = "optional_duration")]
    pub max_exec_timeout: Option<Duration>,
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse_positive(&s).map(Some).map_err(serde::de::Error::custom)
}

/// The largest configurable counts: far beyond any real deployment, far
/// from overflowing the sums they take part in.
const MAX_SANDBOXES: usize = 1 << 24;
const MAX_MIB: u64 = 1 << 40;
const MAX_EXECS_PER_MINUTE: u32 = 1 << 24;

impl TenantQuota {
    /// Adds the fields of `other`; a field both set to different values is
    /// a configuration error naming it.
    pub fn merge(&mut self, other: &TenantQuota, tenant: &str) -> Result<(), String> {
        fn one<T: PartialEq + Copy + std::fmt::Debug>(
            mine: &mut Option<T>,
            theirs: Option<T>,
            field: &str,
            tenant: &str,
        ) -> Result<(), String> {
            match (*mine, theirs) {
                (Some(a), Some(b)) if a != b => Err(format!(
                    "the quota {field} of tenant {tenant:?} is set twice, to {a:?} and {b:?}"
                )),
                (None, Some(b)) => {
                    *mine = Some(b);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        one(&mut self.max_sandboxes, other.max_sandboxes, "max_sandboxes", tenant)?;
        one(&mut self.max_memory_mb, other.max_memory_mb, "max_memory_mb", tenant)?;
        one(
            &mut self.max_execs_per_minute,
            other.max_execs_per_minute,
            "max_execs_per_minute",
            tenant,
        )?;
        one(&mut self.max_disk_mb, other.max_disk_mb, "max_disk_mb", tenant)?;
        one(&mut self.max_ttl, other.max_ttl, "max_ttl", tenant)?;
        one(
            &mut self.max_exec_timeout,
            other.max_exec_timeout,
            "max_exec_timeout",
            tenant,
        )?;
        Ok(())
    }

    /// Refuses values that could not work, naming the tenant and field.
    pub fn validate(&self, tenant: &str) -> Result<(), String> {
        let bad = |field: &str, what: &str| Err(format!("quota {field} of tenant {tenant:?} {what}"));
        if self.max_sandboxes.is_some_and(|n| n == 0 || n > MAX_SANDBOXES) {
            return bad("max_sandboxes", &format!("must be between 1 and {MAX_SANDBOXES}"));
        }
        if self.max_memory_mb.is_some_and(|n| n == 0 || n > MAX_MIB) {
            return bad("max_memory_mb", &format!("must be between 1 and {MAX_MIB}"));
        }
        if self.max_disk_mb.is_some_and(|n| n == 0 || n > MAX_MIB) {
            return bad("max_disk_mb", &format!("must be between 1 and {MAX_MIB}"));
        }
        if self
            .max_execs_per_minute
            .is_some_and(|n| n == 0 || n > MAX_EXECS_PER_MINUTE)
        {
            return bad(
                "max_execs_per_minute",
                &format!("must be between 1 and {MAX_EXECS_PER_MINUTE}"),
            );
        }
        Ok(())
    }

    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        *self == TenantQuota::default()
    }
}

/// A tenant's effective limits: its quota over the server-wide ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_sandboxes: usize,
    pub max_memory_mb: Option<u64>,
    pub max_execs_per_minute: Option<u32>,
    pub max_disk_mb: Option<u64>,
    pub max_ttl: Duration,
    pub max_exec_timeout: Duration,
    /// Whether the tenant has a quota of its own.
    pub configured: bool,
}

/// What a tenant holds or asks for: sandboxes, memory and disk reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sandboxes: usize,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Usage {
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            sandboxes: self.sandboxes.saturating_add(other.sandboxes),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            disk_mb: self.disk_mb.saturating_add(other.disk_mb),
        }
    }

    fn minus(self, other: Usage) -> Usage {
        Usage {
            sandboxes: self.sandboxes.saturating_sub(other.sandboxes),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            disk_mb: self.disk_mb.saturating_sub(other.disk_mb),
        }
    }
}

impl Limits {
    /// Why `held` plus `wanted` would go over these limits, if it would.
    pub fn refusal(&self, held: Usage, wanted: Usage) -> Option<String> {
        let after = held.plus(wanted);
        if after.sandboxes > self.max_sandboxes {
            return Some(format!(
                "this tenant already has the maximum of {} sandboxes",
                self.max_sandboxes
            ));
        }
        if let Some(max) = self.max_memory_mb
            && after.memory_mb > max
        {
            return Some(format!(
                "memory_mb {} would bring this tenant's sandboxes to {} MiB, above its quota of {max} MiB",
                wanted.memory_mb, after.memory_mb
            ));
        }
        if let Some(max) = self.max_disk_mb
            && after.disk_mb > max
        {
            return Some(format!(
                "a sandbox reserves {} MiB of disk, which would bring this tenant's sandboxes to {} MiB, above its quota of {max} MiB",
                wanted.disk_mb, after.disk_mb
            ));
        }
        None
    }
}

/// The exec-rate state of one tenant: when its next exec is due under a
/// steady rate (GCRA's theoretical arrival time).
struct RateCell {
    due: Instant,
}

/// Creates under way, exec rates, and the configured quotas.
pub struct QuotaBook {
    quotas: BTreeMap<String, TenantQuota>,
    /// Reserved by admitted creates that have not finished, per tenant.
    in_flight: Mutex<HashMap<TenantId, Usage>>,
    /// Only tenants with a rate limit get a cell; tenants come from the
    /// configuration, so this stays as small as it is.
    rates: Mutex<HashMap<TenantId, RateCell>>,
}

/// An admitted create's reservation; given back when dropped, whether the
/// create succeeded (the sandbox then counts itself), failed, or was abandoned.
pub struct Reservation<'a> {
    book: &'a QuotaBook,
    tenant: TenantId,
    usage: Usage,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.book.in_flight);
        if let Some(held) = in_flight.get_mut(&self.tenant) {
            *held = held.minus(self.usage);
            if *held == Usage::default() {
                in_flight.remove(&self.tenant);
            }
        }
    }
}

/// Why an exec must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    pub limit: u32,
    pub retry_after: Duration,
}

impl QuotaBook {
    pub fn new(quotas: BTreeMap<String, TenantQuota>) -> QuotaBook {
        QuotaBook {
            quotas,
            in_flight: Mutex::default(),
            rates: Mutex::default(),
        }
    }

    /// The tenant's quota as configured (empty when it has none).
    pub fn quota(&self, tenant: &TenantId) -> TenantQuota {
        self.quotas.get(tenant.as_str()).cloned().unwrap_or_default()
    }

    /// Every configured quota, by tenant.
    pub fn configured(&self) -> &BTreeMap<String, TenantQuota> {
        &self.quotas
    }

    /// What admitted creates of `tenant` hold until they finish.
    pub fn in_flight(&self, tenant: &TenantId) -> Usage {
        lock(&self.in_flight).get(tenant).copied().unwrap_or_default()
    }

    /// Reserves `wanted` for a create if `held` (the tenant's live
    /// sandboxes) plus what its creates under way hold leaves room for it.
    /// Checked and reserved under one lock, so parallel creates cannot
    /// both take the last place.
    pub fn reserve(
        &self,
        tenant: &TenantId,
        limits: &Limits,
        held: impl FnOnce() -> Usage,
        wanted: Usage,
    ) -> Result<Reservation<'_>, String> {
        let mut in_flight = lock(&self.in_flight);
        let under_way = in_flight.get(tenant).copied().unwrap_or_default();
        if let Some(why) = limits.refusal(held().plus(under_way), wanted) {
            return Err(why);
        }
        let entry = in_flight.entry(tenant.clone()).or_default();
        *entry = entry.plus(wanted);
        Ok(Reservation {
            book: self,
            tenant: tenant.clone(),
            usage: wanted,
        })
    }

    /// Counts one exec against the tenant's rate, or says how long to wait.
    pub fn take_exec(&self, tenant: &TenantId, limits: &Limits, now: Instant) -> Result<(), RateLimited> {
        let Some(limit) = limits.max_execs_per_minute else {
            return Ok(());
        };
        let interval = Duration::from_secs(60) / limit;
        // The whole minute's allowance may be spent at once.
        let tolerance = Duration::from_secs(60).saturating_sub(interval);
        let mut rates = lock(&self.rates);
        let cell = rates.entry(tenant.clone()).or_insert(RateCell { due: now });
        let due = cell.due.max(now);
        let ahead = due - now;
        if ahead > tolerance {
            return Err(RateLimited {
                limit,
                retry_after: ahead - tolerance,
            });
        }
        cell.due = due + interval;
        Ok(())
    }
}

impl QuotaBook {
    /// How many execs the tenant may start now without waiting; None when
    /// its rate is not limited.
    pub fn exec_allowance(&self, tenant: &TenantId, limits: &Limits, now: Instant) -> Option<u32> {
        let limit = limits.max_execs_per_minute?;
        let interval = Duration::from_secs(60) / limit;
        let ahead = lock(&self.rates)
            .get(tenant)
            .map_or(Duration::ZERO, |cell| cell.due.saturating_duration_since(now));
        let room = Duration::from_secs(60).saturating_sub(ahead);
        let n = room.as_nanos() / interval.as_nanos().max(1);
        Some(u32::try_from(n).unwrap_or(u32::MAX).min(limit))
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_sandboxes: 3,
            max_memory_mb: Some(1024),
            max_execs_per_minute: Some(3),
            max_disk_mb: Some(2048),
            max_ttl: Duration::from_secs(3600),
            max_exec_timeout: Duration::from_secs(60),
            configured: true,
        }
    }

    fn usage(sandboxes: usize, memory_mb: u64, disk_mb: u64) -> Usage {
        Usage {
            sandboxes,
            memory_mb,
            disk_mb,
        }
    }

    #[test]
    fn each_limit_refuses_what_would_pass_it_and_admits_what_fits() {
        let l = limits();
        let table = [
            (usage(2, 512, 1024), usage(1, 512, 512), None),
            (
                usage(3, 0, 0),
                usage(1, 1, 1),
                Some("this tenant already has the maximum of 3 sandboxes".to_string()),
            ),
            (
                usage(1, 768, 0),
                usage(1, 512, 0),
                Some(
                    "memory_mb 512 would bring this tenant's sandboxes to 1280 MiB, above its quota of 1024 MiB".into(),
                ),
            ),
            (
                usage(1, 0, 1536),
                usage(1, 0, 1024),
                Some("a sandbox reserves 1024 MiB of disk, which would bring this tenant's sandboxes to 2560 MiB, above its quota of 2048 MiB".into()),
            ),
        ];
        for (held, wanted, want) in table {
            assert_eq!(l.refusal(held, wanted), want, "{held:?} + {wanted:?}");
        }
    }

    #[test]
    fn reservations_count_until_dropped() {
        let book = QuotaBook::new(BTreeMap::new());
        let t = TenantId::new("a");
        let l = limits();
        let first = book.reserve(&t, &l, || usage(1, 0, 0), usage(1, 512, 512)).unwrap();
        let second = book.reserve(&t, &l, || usage(1, 0, 0), usage(1, 512, 512)).unwrap();
        assert_eq!(book.in_flight(&t), usage(2, 1024, 1024));
        assert_eq!(
            book.reserve(&t, &l, || usage(0, 0, 0), usage(1, 1, 0)).err().unwrap(),
            "memory_mb 1 would bring this tenant's sandboxes to 1025 MiB, above its quota of 1024 MiB"
        );
        drop(first);
        drop(second);
        assert_eq!(book.in_flight(&t), Usage::default());
        assert!(lock(&book.in_flight).is_empty());
    }

    #[test]
    fn the_exec_rate_allows_a_minute_at_once_then_one_per_interval() {
        let book = QuotaBook::new(BTreeMap::new());
        let t = TenantId::new("a");
        let l = limits();
        let start = Instant::now();
        for _ in 0..3 {
            book.take_exec(&t, &l, start).unwrap();
        }
        let refused = book.take_exec(&t, &l, start).unwrap_err();
        assert_eq!(
            refused,
            RateLimited {
                limit: 3,
                retry_after: Duration::from_secs(20)
            }
        );
        assert_eq!(retry_after_secs(refused.retry_after), 20);
        // Twenty seconds later one more is due, and only one.
        let later = start + Duration::from_secs(20);
        book.take_exec(&t, &l, later).unwrap();
        assert!(book.take_exec(&t, &l, later).is_err());
        // Another tenant has its own allowance.
        book.take_exec(&TenantId::new("b"), &l, start).unwrap();
        // No limit, no cell.
        let unlimited = Limits {
            max_execs_per_minute: None,
            ..l
        };
        book.take_exec(&TenantId::new("c"), &unlimited, start).unwrap();
        assert_eq!(lock(&book.rates).len(), 2);
        assert_eq!(book.exec_allowance(&TenantId::new("c"), &unlimited, start), None);
        assert_eq!(book.exec_allowance(&TenantId::new("new"), &l, start), Some(3));
        assert_eq!(book.exec_allowance(&t, &l, later), Some(0));
        assert_eq!(book.exec_allowance(&t, &l, later + Duration::from_secs(40)), Some(2));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20_001)), 21);
        assert_eq!(retry_after_secs(Duration::from_secs(20)), 20);
    }

    #[test]
    fn quotas_merge_and_refuse_contradictions_and_bad_values() {
        let mut a = TenantQuota {
            max_sandboxes: Some(5),
            ..Default::default()
        };
        a.merge(
            &TenantQuota {
                max_memory_mb: Some(100),
                max_sandboxes: Some(5),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
        assert_eq!((a.max_sandboxes, a.max_memory_mb), (Some(5), Some(100)));
        let err = a
            .merge(
                &TenantQuota {
                    max_sandboxes: Some(6),
                    ..Default::default()
                },
                "t",
            )
            .unwrap_err();
        assert_eq!(err, "the quota max_sandboxes of tenant \"t\" is set twice, to 5 and 6");
        let zero = TenantQuota {
            max_execs_per_minute: Some(0),
            ..Default::default()
        };
        assert_eq!(
            zero.validate("t").unwrap_err(),
            "quota max_execs_per_minute of tenant \"t\" must be between 1 and 16777216"
        );
        assert!(TenantQuota::default().is_empty());
    }
}
