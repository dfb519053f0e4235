//! The audit log: who did what to which sandbox, and how it ended.
//!
//! Every create, destroy, prune, exec (its command summarised), file write,
//! move, chmod or delete, template change and spawn, and every failed
//! authentication is kept with its time, tenant, key id (a hash of the key,
//! never the key), owner, sandbox and outcome, in `audit.db` in the data
//! directory, beside the registry.
//!
//! Requests never wait for the disk: entries go through a bounded queue to a
//! writer thread that commits them in batches. When the queue is full (a
//! flood of failed logins, say) further entries are counted instead, and the
//! writer records how many were lost as soon as it catches up, so the log
//! never hides a gap. A reader sees every entry enqueued before its query.
//! Entries older than `audit.retention`, and the oldest beyond
//! `audit.max_entries`, are deleted once a minute, so the file is bounded.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use super::lock;
use crate::duration;

/// `[audit]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// How long entries are kept.
    #[serde(deserialize_with = "go_duration")]
    pub retention: Duration,
    /// The most entries kept; the oldest go first.
    pub max_entries: u64,
}

fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s).map_err(serde::de::Error::custom)
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            // A month: long enough to look into last week's incident.
            retention: Duration::from_secs(30 * 24 * 3600),
            // About 200 MB of SQLite at the typical entry size.
            max_entries: 1_000_000,
        }
    }
}

impl AuditSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.retention < Duration::from_secs(1) {
            return Err("audit.retention must be at least 1s".into());
        }
        if self.max_entries == 0 || self.max_entries > 1_000_000_000 {
            return Err("audit.max_entries must be between 1 and 1000000000".into());
        }
        Ok(())
    }
}

/// Entries waiting for the writer. A burst beyond it is counted, not kept.
const QUEUE: usize = 65_536;
/// Entries committed in one transaction.
const BATCH: usize = 1024;
/// How often old entries are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a query waits for the entries enqueued before it.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);
/// Longest text kept in a field: entries describe, they do not archive.
const MAX_FIELD: usize = 512;
/// Most entries one query answers.
pub const MAX_LIMIT: usize = 1000;

/// Who made the current request, as the audit log names them.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// `key_` and 12 hex digits of the SHA-256 of the API key; None when
    /// auth is off or no key was sent.
    pub key_id: Option<String>,
}

tokio::task_local! {
    static ACTOR: Actor;
}

/// Runs `f` with `actor` as the current request's actor.
pub async fn scope<F: Future>(actor: Actor, f: F) -> F::Output {
    ACTOR.scope(actor, f).await
}

/// The current request's actor (empty outside a request).
pub fn current_actor() -> Actor {
    ACTOR.try_with(Clone::clone).unwrap_or_default()
}

/// The id under which a key appears in the log: a hash, so the log never
/// holds a key, and the operator can compute it from the key.
pub fn key_id(key: &[u8]) -> String {
    format!("key_{}", &hex::encode(Sha256::digest(key))[..12])
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Increasing; 0 until written.
    pub id: i64,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// None for what belongs to no tenant (a failed authentication).
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub owner_id: Option<String>,
    pub sandbox_id: Option<String>,
    /// `sandbox.create`, `exec`, `file.write`, `auth.failure`...
    pub action: String,
    /// What the action was about: the command, the path, the template.
    pub subject: Option<String>,
    /// `ok`, or the answer's status and message.
    pub outcome: String,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

impl Entry {
    pub fn new(action: &str, outcome: impl Into<String>) -> Entry {
        Entry {
            id: 0,
            time: SystemTime::now(),
            tenant: None,
            key_id: current_actor().key_id,
            owner_id: None,
            sandbox_id: None,
            action: action.to_string(),
            subject: None,
            outcome: outcome.into(),
        }
    }

    pub fn tenant(mut self, tenant: &str) -> Entry {
        self.tenant = Some(tenant.to_string());
        self
    }

    pub fn owner(mut self, owner: Option<&str>) -> Entry {
        self.owner_id = owner.map(String::from);
        self
    }

    pub fn sandbox(mut self, id: &str) -> Entry {
        self.sandbox_id = Some(id.to_string());
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Entry {
        self.subject = Some(subject.into());
        self
    }

    fn bounded(mut self) -> Entry {
        for field in [
            &mut self.tenant,
            &mut self.key_id,
            &mut self.owner_id,
            &mut self.sandbox_id,
            &mut self.subject,
        ]
        .into_iter()
        .flatten()
        {
            clip(field);
        }
        clip(&mut self.action);
        clip(&mut self.outcome);
        self
    }
}

fn clip(s: &mut String) {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

/// What a query asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this tenant's entries; None for every tenant (operators).
    pub tenant: Option<String>,
    pub since: Option<SystemTime>,
    pub sandbox_id: Option<String>,
    pub limit: usize,
}

/// Entries enqueued and written, for read-your-writes.
#[derive(Default)]
struct Progress {
    written: Mutex<u64>,
    changed: Condvar,
}

pub struct AuditLog {
    queue: SyncSender<Entry>,
    enqueued: AtomicU64,
    dropped: Arc<AtomicU64>,
    progress: Arc<Progress>,
    reader: Mutex<Connection>,
}

impl AuditLog {
    /// Opens (or creates) `path` and starts the writer thread, which ends
    /// when the log is dropped.
    pub fn open(path: &Path, settings: &AuditSettings) -> anyhow::Result<AuditLog> {
        let open = || -> anyhow::Result<Connection> {
            let db = Connection::open(path).with_context(|| format!("cannot open the audit log {}", path.display()))?;
            db.pragma_update(None, "journal_mode", "WAL")?;
            db.pragma_update(None, "synchronous", "NORMAL")?;
            db.busy_timeout(Duration::from_secs(5))?;
            Ok(db)
        };
        let writer = open()?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time_ms INTEGER NOT NULL,
                tenant TEXT, key_id TEXT, owner_id TEXT, sandbox_id TEXT,
                action TEXT NOT NULL, subject TEXT, outcome TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
             CREATE INDEX IF NOT EXISTS audit_tenant ON audit (tenant, id);
             CREATE INDEX IF NOT EXISTS audit_sandbox ON audit (sandbox_id, id);",
        )?;
        let reader = open()?;
        let (queue, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Progress::default());
        let writer_state = Writer {
            db: writer,
            dropped: dropped.clone(),
            progress: progress.clone(),
            settings: settings.clone(),
        };
        std::thread::Builder::new()
            .name("stacyvm-audit".into())
            .spawn(move || writer_state.run(rx))?;
        Ok(AuditLog {
            queue,
            enqueued: AtomicU64::new(0),
            dropped,
            progress,
            reader: Mutex::new(reader),
        })
    }

    /// Queues an entry; never blocks.
    pub fn record(&self, entry: Entry) {
        match self.queue.try_send(entry.bounded()) {
            Ok(()) => {
                self.enqueued.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The newest entries matching `q`, newest first, including every entry
    /// recorded before the call. Blocking: call it off the async workers.
    pub fn query(&self, q: &Query) -> anyhow::Result<Vec<Entry>> {
        self.wait_written(self.enqueued.load(Ordering::Acquire));
        let since = q.since.map(millis);
        let limit = q.limit.clamp(1, MAX_LIMIT) as i64;
        let db = lock(&self.reader);
        let mut stmt = db.prepare_cached(
            "SELECT id, time_ms, tenant, key_id, owner_id, sandbox_id, action, subject, outcome FROM audit
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR time_ms >= ?2) AND (?3 IS NULL OR sandbox_id = ?3)
             ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![q.tenant, since, q.sandbox_id, limit], |r| {
            Ok(Entry {
                id: r.get(0)?,
                time: UNIX_EPOCH + Duration::from_millis(r.get::<_, i64>(1)?.max(0) as u64),
                tenant: r.get(2)?,
                key_id: r.get(3)?,
                owner_id: r.get(4)?,
                sandbox_id: r.get(5)?,
                action: r.get(6)?,
                subject: r.get(7)?,
                outcome: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Entries in the log (for tests and `doctor`).
    pub fn len(&self) -> anyhow::Result<u64> {
        self.wait_written(self.enqueued.load(Ordering::Acquire));
        let n: i64 = lock(&self.reader).query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    fn wait_written(&self, target: u64) {
        let deadline = Instant::now() + READ_YOUR_WRITES;
        let mut written = lock(&self.progress.written);
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            written = self
                .progress
                .changed
                .wait_timeout(written, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Writer {
    db: Connection,
    dropped: Arc<AtomicU64>,
    progress: Arc<Progress>,
    settings: AuditSettings,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        // At start (what expired while the server was down), then once a
        // PRUNE_EVERY.
        let mut pruned_at: Option<Instant> = None;
        loop {
            if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                if let Err(e) = prune(&self.db, &self.settings, SystemTime::now()) {
                    tracing::warn!("cannot prune the audit log: {e:#}");
                }
                pruned_at = Some(Instant::now());
            }
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(entry) => Some(entry),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Entry> = first.into_iter().collect();
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let real = batch.len() as u64;
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                batch.push(Entry {
                    key_id: None,
                    ..Entry::new(
                        "audit.dropped",
                        format!("{lost} entries were lost because the audit queue was full"),
                    )
                });
            }
            if !batch.is_empty() {
                if let Err(e) = self.write(&batch) {
                    tracing::error!("cannot write {} audit entries: {e:#}", batch.len());
                }
                let mut written = lock(&self.progress.written);
                *written += real;
                self.progress.changed.notify_all();
            }
        }
    }

    fn write(&mut self, batch: &[Entry]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (time_ms, tenant, key_id, owner_id, sandbox_id, action, subject, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in batch {
                insert.execute(params![
                    millis(e.time),
                    e.tenant,
                    e.key_id,
                    e.owner_id,
                    e.sandbox_id,
                    e.action,
                    e.subject,
                    e.outcome
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Deletes entries older than the retention, then the oldest beyond the
/// maximum count. Returns how many went.
fn prune(db: &Connection, settings: &AuditSettings, now: SystemTime) -> anyhow::Result<usize> {
    let cutoff = millis(now.checked_sub(settings.retention).unwrap_or(UNIX_EPOCH));
    let mut removed = db.execute("DELETE FROM audit WHERE time_ms < ?1", params![cutoff])?;
    let keep = i64::try_from(settings.max_entries).unwrap_or(i64::MAX);
    let boundary: Option<i64> = db
        .query_row(
            "SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1",
            params![keep],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = boundary {
        removed += db.execute("DELETE FROM audit WHERE id <= ?1", params![id])?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, tenant: &str, age: Duration) -> Entry {
        Entry {
            time: SystemTime::now() - age,
            ..Entry::new(action, "ok").tenant(tenant)
        }
    }

    #[test]
    fn entries_are_read_back_newest_first_by_tenant_sandbox_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.db"), &AuditSettings::default()).unwrap();
        log.record(entry("sandbox.create", "a", Duration::from_secs(7200)).sandbox("sb_1"));
        log.record(entry("exec", "a", Duration::ZERO).sandbox("sb_1").subject("echo hi"));
        log.record(entry("exec", "b", Duration::ZERO).sandbox("sb_2"));
        log.record(Entry::new("auth.failure", "401 unauthorized"));
        let all = log
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["auth.failure", "exec", "exec", "sandbox.create"]);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let a = log
            .query(&Query {
                tenant: Some("a".into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].subject.as_deref(), Some("echo hi"));
        let recent = log
            .query(&Query {
                tenant: Some("a".into()),
                since: Some(SystemTime::now() - Duration::from_secs(60)),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(recent.len(), 1);
        let sb2 = log
            .query(&Query {
                sandbox_id: Some("sb_2".into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(sb2[0].tenant.as_deref(), Some("b"));
        let one = log
            .query(&Query {
                limit: 1,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn retention_and_the_maximum_count_bound_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let settings = AuditSettings {
            retention: Duration::from_secs(3600),
            max_entries: 3,
        };
        let log = AuditLog::open(&path, &settings).unwrap();
        log.record(entry("old", "a", Duration::from_secs(7200)));
        for i in 0..5 {
            log.record(entry(&format!("new{i}"), "a", Duration::ZERO));
        }
        assert_eq!(log.len().unwrap(), 6);
        let db = Connection::open(&path).unwrap();
        assert_eq!(prune(&db, &settings, SystemTime::now()).unwrap(), 3);
        let kept: Vec<String> = log
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(kept, ["new4", "new3", "new2"]);
    }

    #[test]
    fn long_fields_are_clipped_and_keys_appear_only_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.db"), &AuditSettings::default()).unwrap();
        log.record(Entry::new("exec", "ok").subject("é".repeat(1000)));
        let got = log
            .query(&Query {
                limit: 1,
                ..Query::default()
            })
            .unwrap();
        let subject = got[0].subject.as_deref().unwrap();
        assert!(
            subject.len() <= MAX_FIELD && subject.ends_with("..."),
            "{}",
            subject.len()
        );
        let id = key_id(b"sk_test_secret_key");
        assert!(id.starts_with("key_") && id.len() == 16, "{id}");
        assert!(!id.contains("secret"));
        assert_eq!(id, key_id(b"sk_test_secret_key"));
        assert_ne!(id, key_id(b"sk_test_other_key"));
    }

    #[test]
    fn a_full_queue_counts_what_it_loses_and_the_writer_records_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.db"), &AuditSettings::default()).unwrap();
        log.dropped.fetch_add(7, Ordering::Relaxed);
        log.record(Entry::new("exec", "ok"));
        // The gap is written in the same batch as the entry after it.
        let got = log
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        let gap = got
            .iter()
            .find(|e| e.action == "audit.dropped")
            .expect("the gap is recorded");
        assert_eq!(gap.outcome, "7 entries were lost because the audit queue was full");
        assert_eq!(gap.tenant, None);
    }
}
