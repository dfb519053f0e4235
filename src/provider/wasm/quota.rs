//! The disk ledger of a wasm sandbox: what its files cost the host, and
//! what they may still grow by.
//!
//! A sandbox pays for every entry (file, directory, symlink) against
//! `sandbox.max_entries`, and for the bytes of each entry against its disk
//! quota: the larger of the blocks the entry holds and its apparent size,
//! so a sparse file counts at its full length.
//!
//! Usage is measured by walking the sandbox's tree, then every operation
//! that can add to it (a guest's write that grows a file, a new entry, an
//! upload) is charged against the ledger before it happens, and refused
//! with ENOSPC (a guest) or 429 (the files API) when it would not fit. All
//! the execs and file operations of one sandbox share its ledger, so N
//! concurrent execs cannot each spend the whole quota. Space freed during a
//! run is seen at the next measure, taken when nothing uses the ledger.
//!
//! The walk goes through directory file descriptors (`openat`), never path
//! strings, never follows a symlink, adds with saturation, and fails
//! closed: a tree it cannot read to the end counts as over quota.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt};

/// Directories the walk holds open at once, one per level. A tree deeper
/// than this cannot be measured, and so counts as over quota.
pub const MAX_WALK_DEPTH: usize = 256;

/// What a directory costs when a guest creates one: one block, as on ext4
/// and xfs (the walk then measures what it really holds).
pub const DIR_BYTES: u64 = 4096;

/// Bytes and entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

/// Why an operation does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverQuota {
    #[error("the sandbox's files would exceed its disk quota of {0} bytes")]
    Bytes(u64),
    #[error("the sandbox would hold more than its limit of {0} files and directories")]
    Entries(u64),
    #[error("the sandbox's files cannot be measured ({0}), so nothing more may be written")]
    Unmeasurable(String),
}

/// The ledger one sandbox's execs and file operations share.
pub struct DiskLedger {
    /// The sandbox's directory; None for a ledger nothing can exhaust.
    dir: Option<PathBuf>,
    quota_bytes: u64,
    max_entries: u64,
    state: Mutex<LedgerState>,
    /// Bytes the sandbox holds outside its tree: the memory images of its
    /// paused code contexts. They count against the quota like its files.
    reserved: std::sync::atomic::AtomicU64,
}

/// A charge that does not fit measures the tree again, in case the holder
/// freed space, at most this often: a guest retrying a write that cannot
/// fit must not turn into a walk per write.
const REMEASURE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct LedgerState {
    /// Usage as measured, plus everything charged since. None until the
    /// next measure.
    used: Option<Usage>,
    /// When a charge that did not fit last had the tree measured again.
    remeasured_at: Option<Instant>,
    /// Why the last measure failed, if it did (fail closed).
    unmeasurable: Option<String>,
    /// Execs and file operations holding the ledger.
    users: usize,
}

/// Holds the ledger for one exec or file operation. While any holder
/// lives, usage only grows by charges; when the last one goes, the next
/// holder measures again.
pub struct LedgerUse {
    ledger: Arc<DiskLedger>,
}

impl Drop for LedgerUse {
    fn drop(&mut self) {
        let mut state = self.ledger.lock();
        state.users -= 1;
        if state.users == 0 {
            state.used = None;
            state.unmeasurable = None;
            state.remeasured_at = None;
        }
    }
}

impl std::ops::Deref for LedgerUse {
    type Target = DiskLedger;

    fn deref(&self) -> &DiskLedger {
        &self.ledger
    }
}

impl DiskLedger {
    /// The ledger of the sandbox whose files are in `dir`.
    pub fn new(dir: PathBuf, quota_bytes: u64, max_entries: u64) -> Arc<DiskLedger> {
        Arc::new(DiskLedger {
            dir: Some(dir),
            quota_bytes,
            max_entries,
            state: Mutex::default(),
            reserved: Default::default(),
        })
    }

    /// A ledger whose limits nothing reaches (for the server's own runs).
    pub fn unlimited() -> Arc<DiskLedger> {
        Arc::new(DiskLedger {
            dir: None,
            quota_bytes: u64::MAX,
            max_entries: u64::MAX,
            state: Mutex::default(),
            reserved: Default::default(),
        })
    }

    /// Bytes held outside the tree (paused contexts).
    pub fn reserved(&self) -> u64 {
        self.reserved.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts `bytes` held outside the tree against the quota, or refuses
    /// them when the tree and what is already reserved leave no room.
    pub fn reserve(&self, bytes: u64) -> Result<(), OverQuota> {
        let mut state = self.lock();
        if state.used.is_none() && state.unmeasurable.is_none() {
            self.measure_into(&mut state);
        }
        if let Some(why) = &state.unmeasurable {
            let why = why.clone();
            if state.users == 0 {
                state.used = None;
                state.unmeasurable = None;
            }
            return Err(OverQuota::Unmeasurable(why));
        }
        let used = state.used.unwrap_or_default().bytes;
        if state.users == 0 {
            // Nobody holds the ledger: the next holder measures afresh.
            state.used = None;
        }
        let reserved = self.reserved();
        if used.saturating_add(reserved).saturating_add(bytes) > self.quota_bytes {
            return Err(OverQuota::Bytes(self.quota_bytes));
        }
        self.reserved.fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Gives back what [`Self::reserve`] took (a context resumed or deleted).
    pub fn release(&self, bytes: u64) {
        let _ = self.reserved.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |r| Some(r.saturating_sub(bytes)),
        );
    }

    /// Measures the tree into `state`.
    fn measure_into(&self, state: &mut LedgerState) {
        let Some(dir) = &self.dir else { return };
        match measure(dir) {
            Ok(usage) => {
                state.used = Some(usage);
                state.unmeasurable = None;
            }
            Err(why) => state.unmeasurable = Some(why),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        // The state is a few counters, consistent after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the ledger for an operation on the sandbox, measuring the tree
    /// first if nobody holds it. Blocks for the walk.
    pub fn begin(self: &Arc<Self>) -> LedgerUse {
        let mut state = self.lock();
        if state.used.is_none() && state.unmeasurable.is_none() {
            self.measure_into(&mut state);
        }
        state.users += 1;
        LedgerUse { ledger: self.clone() }
    }

    /// Charges `bytes` and `entries`, or nothing when they do not fit. A
    /// sole holder whose charge does not fit has the tree measured again
    /// first (it may have freed space), at most once a
    /// [`REMEASURE_INTERVAL`]; with others holding the ledger, their
    /// charges for writes in flight must not be forgotten, so it is not.
    pub fn charge(&self, bytes: u64, entries: u64) -> Result<(), OverQuota> {
        let mut state = self.lock();
        let result = self.try_charge(&mut state, bytes, entries);
        let stale = state.remeasured_at.is_none_or(|at| at.elapsed() >= REMEASURE_INTERVAL);
        if result.is_err() && state.users <= 1 && stale {
            state.remeasured_at = Some(Instant::now());
            self.measure_into(&mut state);
            return self.try_charge(&mut state, bytes, entries);
        }
        result
    }

    fn try_charge(&self, state: &mut LedgerState, bytes: u64, entries: u64) -> Result<(), OverQuota> {
        if let Some(why) = &state.unmeasurable {
            return Err(OverQuota::Unmeasurable(why.clone()));
        }
        let reserved = self.reserved();
        let used = state.used.get_or_insert_default();
        let new_bytes = used.bytes.saturating_add(bytes);
        let new_entries = used.entries.saturating_add(entries);
        if new_bytes.saturating_add(reserved) > self.quota_bytes {
            return Err(OverQuota::Bytes(self.quota_bytes));
        }
        if new_entries > self.max_entries {
            return Err(OverQuota::Entries(self.max_entries));
        }
        *used = Usage {
            bytes: new_bytes,
            entries: new_entries,
        };
        Ok(())
    }

    /// Gives back a charge whose operation did not happen.
    pub fn refund(&self, bytes: u64, entries: u64) {
        let mut state = self.lock();
        if let Some(used) = state.used.as_mut() {
            used.bytes = used.bytes.saturating_sub(bytes);
            used.entries = used.entries.saturating_sub(entries);
        }
    }

    /// Bytes that may still be added; zero when the tree is unmeasurable.
    #[cfg(test)]
    pub fn remaining_bytes(&self) -> u64 {
        let state = self.lock();
        if state.unmeasurable.is_some() {
            return 0;
        }
        self.quota_bytes.saturating_sub(state.used.unwrap_or_default().bytes)
    }
}

/// What the tree under `dir` costs, through directory descriptors only.
pub fn measure(dir: &Path) -> Result<Usage, String> {
    let root = Dir::open_ambient_dir(dir, ambient_authority()).map_err(|e| format!("cannot open the sandbox: {e}"))?;
    let mut usage = Usage::default();
    // Each level: the open directory and the entries still to visit.
    let mut stack: Vec<cap_std::fs::ReadDir> = vec![root.entries().map_err(|e| e.to_string())?];
    while let Some(entries) = stack.last_mut() {
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        let entry = entry.map_err(|e| format!("cannot list a directory: {e}"))?;
        // The entry itself, never what a symlink points to.
        let meta = entry.metadata().map_err(|e| format!("cannot stat an entry: {e}"))?;
        usage.entries = usage.entries.saturating_add(1);
        usage.bytes = usage.bytes.saturating_add(cost(&meta));
        if meta.is_dir() {
            if stack.len() >= MAX_WALK_DEPTH {
                return Err(format!("its tree is deeper than {MAX_WALK_DEPTH} levels"));
            }
            let sub = entry.open_dir().map_err(|e| format!("cannot open a directory: {e}"))?;
            stack.push(sub.entries().map_err(|e| e.to_string())?);
        }
    }
    Ok(usage)
}

/// What one entry costs: its blocks, or its length when that is more.
pub fn cost(meta: &cap_std::fs::Metadata) -> u64 {
    meta.blocks().saturating_mul(512).max(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_file_costs_its_whole_length() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.entries, 1);
        assert_eq!(usage.bytes, 1 << 40);
    }

    #[test]
    fn every_entry_counts_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/b/c/f"), b"12345").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("a/root")).unwrap();
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.entries, 5);
        assert!(usage.bytes >= 3 * 4096, "{usage:?}");
        assert!(usage.bytes < 1 << 20, "the symlink to / was followed: {usage:?}");
    }

    #[test]
    fn a_tree_too_deep_to_measure_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().to_path_buf();
        for _ in 0..MAX_WALK_DEPTH + 1 {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        let why = measure(dir.path()).unwrap_err();
        assert_eq!(why, format!("its tree is deeper than {MAX_WALK_DEPTH} levels"));
        let ledger = DiskLedger::new(dir.path().to_path_buf(), 1 << 30, 1000);
        let held = ledger.begin();
        assert_eq!(held.remaining_bytes(), 0);
        assert!(matches!(held.charge(1, 0), Err(OverQuota::Unmeasurable(_))));
    }

    #[test]
    fn holders_of_one_ledger_share_its_quota_and_the_next_one_measures_again() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DiskLedger::new(dir.path().to_path_buf(), 10_000, 3);
        let first = ledger.begin();
        let second = ledger.begin();
        assert_eq!(first.charge(6_000, 1), Ok(()));
        assert_eq!(second.charge(6_000, 0), Err(OverQuota::Bytes(10_000)));
        assert_eq!(second.charge(4_000, 2), Ok(()));
        assert_eq!(first.charge(0, 1), Err(OverQuota::Entries(3)));
        drop((first, second));
        // Nothing was written: a fresh measure finds the tree empty.
        let third = ledger.begin();
        assert_eq!(third.remaining_bytes(), 10_000);
    }

    #[test]
    fn a_sole_holder_that_freed_space_can_use_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = DiskLedger::new(dir.path().to_path_buf(), 10_000, 100);
        let held = ledger.begin();
        held.charge(8_000, 1).unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 8_000]).unwrap();
        std::fs::remove_file(dir.path().join("f")).unwrap();
        // The first charge that does not fit measures again, and fits.
        assert_eq!(held.charge(8_000, 1), Ok(()));
        std::fs::write(dir.path().join("g"), vec![1u8; 8_000]).unwrap();
        assert_eq!(held.charge(8_000, 1), Err(OverQuota::Bytes(10_000)));
        std::fs::remove_file(dir.path().join("g")).unwrap();
        // Within the interval, a charge that does not fit walks no more.
        assert_eq!(held.charge(8_000, 1), Err(OverQuota::Bytes(10_000)));
        std::thread::sleep(REMEASURE_INTERVAL);
        assert_eq!(held.charge(8_000, 1), Ok(()));
    }
}
