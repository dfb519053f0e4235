//! The sandbox registry: an in-memory map for reads, written through to an
//! embedded SQLite database in the data directory so that sandboxes survive
//! a restart, including a `kill -9`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use rusqlite::{Connection, params};

use super::Sandbox;
use super::id::SandboxId;

pub struct SandboxRegistry {
    live: Mutex<HashMap<SandboxId, Sandbox>>,
    db: Mutex<Connection>,
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
            live: Mutex::new(HashMap::new()),
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
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sandbox.id.clone(), sandbox.clone());
        Ok(())
    }

    /// Takes back an entry loaded by [`Self::open`], which is already on
    /// disk: memory only, so a start with many sandboxes writes nothing.
    pub fn adopt(&self, sandbox: Sandbox) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sandbox.id.clone(), sandbox);
    }

    pub fn remove(&self, id: &SandboxId) -> anyhow::Result<Option<Sandbox>> {
        self.db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prepare_cached("DELETE FROM sandboxes WHERE id = ?1")?
            .execute(params![id.as_str()])?;
        Ok(self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(id))
    }

    pub fn get(&self, id: &SandboxId) -> Option<Sandbox> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Entries matching `keep`, cloned out of the lock.
    pub fn filter(&self, keep: impl Fn(&Sandbox) -> bool) -> Vec<Sandbox> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| keep(s))
            .cloned()
            .collect()
    }

    /// Folds over every entry without cloning any.
    pub fn fold<T>(&self, init: T, f: impl Fn(T, &Sandbox) -> T) -> T {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .fold(init, f)
    }

    /// Runs `f` on the registry's database, for the tables other modules
    /// keep beside the sandboxes (templates); one connection, so writes
    /// never contend.
    pub fn with_db<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.db.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn count(&self, keep: impl Fn(&Sandbox) -> bool) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| keep(s))
            .count()
    }
}
