//! The sandbox registry: an in-memory map for reads, written through to an
//! embedded SQLite database in the data directory so that sandboxes survive
//! a restart, including a `kill -9`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use rusqlite::{Connection, params};

use super::Sandbox;
use super::id::{SandboxId, TenantId};

pub struct SandboxRegistry {
    live: Mutex<Live>,
    db: Mutex<Connection>,
}

/// The entries, and per tenant their number and memory, kept as entries
/// come and go so that a quota check costs the same with 100,000 sandboxes
/// as with one.
#[derive(Default)]
struct Live {
    by_id: HashMap<SandboxId, Sandbox>,
    tenants: HashMap<TenantId, Tally>,
}

/// What one tenant's entries hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sandboxes: usize,
    pub memory_mb: u64,
}

impl Live {
    fn insert(&mut self, sandbox: Sandbox) {
        let tally = self.tenants.entry(sandbox.tenant.clone()).or_default();
        tally.sandboxes += 1;
        tally.memory_mb += sandbox.memory_mb;
        if let Some(old) = self.by_id.insert(sandbox.id.clone(), sandbox) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, id: &SandboxId) -> Option<Sandbox> {
        let old = self.by_id.remove(id)?;
        self.forget(&old);
        Some(old)
    }

    fn forget(&mut self, old: &Sandbox) {
        if let Some(tally) = self.tenants.get_mut(&old.tenant) {
            tally.sandboxes -= 1;
            tally.memory_mb -= old.memory_mb;
            if tally.sandboxes == 0 {
                self.tenants.remove(&old.tenant);
            }
        }
    }
}

impl SandboxRegistry {
    /// Opens (or creates) the registry database and loads every entry.
    pub fn open(path: &Path) -> anyhow::Result<(SandboxRegistry, Vec<Sandbox>)> {
        let db = Connection::open(path).with_context(|| format!("cannot open registry {}", path.display()))?;
        // WAL with synchronous=NORMAL: a committed create survives a process
        // crash (the WAL is in the OS), at tens of microseconds per write.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch("CREATE TABLE IF NOT EXISTS sandboxes (id TEXT PRIMARY KEY, record TEXT NOT NULL)")?;
        let mut loaded = vec![];
        {
            let mut stmt = db.prepare("SELECT id, record FROM sandboxes")?;
            let rows = stmt.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, record) = row?;
                match serde_json::from_str::<Sandbox>(&record) {
                    Ok(sb) => loaded.push(sb),
                    Err(e) => tracing::warn!(%id, "dropping unreadable registry entry: {e}"),
                }
            }
        }
        let registry = SandboxRegistry {
            live: Mutex::default(),
            db: Mutex::new(db),
        };
        Ok((registry, loaded))
    }

    /// Adds or replaces an entry, durably.
    pub fn put(&self, sandbox: &Sandbox) -> anyhow::Result<()> {
        let record = serde_json::to_string(sandbox)?;
        self.db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prepare_cached("INSERT OR REPLACE INTO sandboxes (id, record) VALUES (?1, ?2)")?
            .execute(params![sandbox.id.as_str(), record])?;
        self.lock().insert(sandbox.clone());
        Ok(())
    }

    /// Takes back an entry loaded by [`Self::open`], which is already on
    /// disk: memory only, so a start with many sandboxes writes nothing.
    pub fn adopt(&self, sandbox: Sandbox) {
        self.lock().insert(sandbox);
    }

    pub fn remove(&self, id: &SandboxId) -> anyhow::Result<Option<Sandbox>> {
        self.db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prepare_cached("DELETE FROM sandboxes WHERE id = ?1")?
            .execute(params![id.as_str()])?;
        Ok(self.lock().remove(id))
    }

    pub fn get(&self, id: &SandboxId) -> Option<Sandbox> {
        self.lock().by_id.get(id).cloned()
    }

    /// Entries matching `keep`, cloned out of the lock.
    pub fn filter(&self, keep: impl Fn(&Sandbox) -> bool) -> Vec<Sandbox> {
        self.lock().by_id.values().filter(|s| keep(s)).cloned().collect()
    }

    /// What `tenant`'s entries hold, without visiting them.
    pub fn tally(&self, tenant: &TenantId) -> Tally {
        self.lock().tenants.get(tenant).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the registry's database, for the tables other modules
    /// keep beside the sandboxes (templates); one connection, so writes
    /// never contend.
    pub fn with_db<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.db.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn count(&self, keep: impl Fn(&Sandbox) -> bool) -> usize {
        self.lock().by_id.values().filter(|s| keep(s)).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::sandbox::SandboxState;

    fn sandbox(tenant: &str, memory_mb: u64) -> Sandbox {
        Sandbox {
            id: SandboxId::generate(),
            tenant: TenantId::new(tenant.to_string()),
            state: SandboxState::Running,
            provider: "wasm".into(),
            image: "python:3.14".into(),
            memory_mb,
            vcpus: 1,
            created_at: SystemTime::now(),
            expires_at: SystemTime::now(),
            metadata: Default::default(),
            owner_id: None,
        }
    }

    #[test]
    fn each_tenants_tally_follows_puts_replacements_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, loaded) = SandboxRegistry::open(&dir.path().join("registry.db")).unwrap();
        assert!(loaded.is_empty());
        let (a, b) = (TenantId::new("a".to_string()), TenantId::new("b".to_string()));
        let first = sandbox("a", 256);
        registry.put(&first).unwrap();
        registry.put(&sandbox("a", 512)).unwrap();
        registry.put(&sandbox("b", 128)).unwrap();
        let tally = |t| registry.tally(t);
        assert_eq!(
            tally(&a),
            Tally {
                sandboxes: 2,
                memory_mb: 768
            }
        );
        assert_eq!(
            tally(&b),
            Tally {
                sandboxes: 1,
                memory_mb: 128
            }
        );
        // A put of an existing id (an extend) replaces it: no double count.
        let mut extended = first.clone();
        extended.memory_mb = 300;
        registry.put(&extended).unwrap();
        assert_eq!(
            tally(&a),
            Tally {
                sandboxes: 2,
                memory_mb: 812
            }
        );
        registry.remove(&first.id).unwrap();
        registry.remove(&first.id).unwrap();
        assert_eq!(
            tally(&a),
            Tally {
                sandboxes: 1,
                memory_mb: 512
            }
        );
        // Loaded entries adopted at start are counted too.
        drop(registry);
        let (registry, loaded) = SandboxRegistry::open(&dir.path().join("registry.db")).unwrap();
        assert_eq!(loaded.len(), 2);
        for sb in loaded {
            registry.adopt(sb);
        }
        assert_eq!(
            registry.tally(&a),
            Tally {
                sandboxes: 1,
                memory_mb: 512
            }
        );
        assert_eq!(
            registry.tally(&b),
            Tally {
                sandboxes: 1,
                memory_mb: 128
            }
        );
    }
}
