//! Deleting sandbox directories off the request path.
//!
//! A destroy only renames the sandbox's directory into `<data>/trash/` (one
//! `rename`, whatever the directory holds) and answers; a reaper thread
//! deletes what lands there. A directory stays charged to its tenant's disk
//! reservation until it is gone, so that destroying in a loop cannot hold
//! more disk than the quota allows. Whatever a stop leaves in the trash is
//! deleted by the next start, in the background.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::sandbox::lock;

/// A directory gone from the trash can still be written by a guest that
/// was running when its sandbox was destroyed; it is tried again this many
/// times before being left for the next start.
const ATTEMPTS: u32 = 5;

pub struct Trash {
    dir: PathBuf,
    /// Directories still being deleted, by tenant.
    pending: Arc<Mutex<HashMap<String, usize>>>,
    queue: Mutex<mpsc::Sender<(PathBuf, String)>>,
    /// Makes each name in the trash unique, even for one sandbox id twice.
    serial: AtomicU64,
}

impl Trash {
    /// Opens `dir` (creating it) and starts its reaper, which first deletes
    /// whatever an earlier run left there.
    pub fn open(dir: PathBuf) -> std::io::Result<Trash> {
        std::fs::create_dir_all(&dir)?;
        let pending: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (tx, rx) = mpsc::channel::<(PathBuf, String)>();
        let mut left = vec![];
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let tenant = tenant_of(&path);
            *lock(&pending).entry(tenant.clone()).or_default() += 1;
            left.push((path, tenant));
        }
        if !left.is_empty() {
            tracing::info!(
                count = left.len(),
                "deleting the sandboxes an earlier run left in the trash"
            );
        }
        for item in left {
            tx.send(item).expect("the receiver is alive");
        }
        let reaper_pending = pending.clone();
        std::thread::Builder::new()
            .name("stacyvm-trash".into())
            .spawn(move || reap(rx, reaper_pending))?;
        Ok(Trash {
            dir,
            pending,
            queue: Mutex::new(tx),
            serial: AtomicU64::new(0),
        })
    }

    /// Moves `path` into the trash, charged to `tenant` until deleted.
    /// A path that does not exist is nothing to do.
    pub fn discard(&self, path: &Path, tenant: &str) -> std::io::Result<()> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let dest = self.dir.join(format!(
            "{name}.{}.{serial}-{}",
            hex::encode(tenant),
            std::process::id()
        ));
        match std::fs::rename(path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        *lock(&self.pending).entry(tenant.to_string()).or_default() += 1;
        if lock(&self.queue).send((dest.clone(), tenant.to_string())).is_err() {
            // The reaper is gone (it never is while the provider lives):
            // delete inline rather than leak.
            remove(&dest);
            release(&self.pending, tenant);
        }
        Ok(())
    }

    /// How many of `tenant`'s directories are still being deleted.
    pub fn pending(&self, tenant: &str) -> usize {
        lock(&self.pending).get(tenant).copied().unwrap_or(0)
    }
}

/// The tenant a trash entry is charged to: `<id>.<hex tenant>.<serial>`.
fn tenant_of(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.split('.')
        .nth(1)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

fn reap(rx: mpsc::Receiver<(PathBuf, String)>, pending: Arc<Mutex<HashMap<String, usize>>>) {
    while let Ok((path, tenant)) = rx.recv() {
        let mut attempt = 1;
        while !remove(&path) && attempt < ATTEMPTS {
            std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
            attempt += 1;
        }
        release(&pending, &tenant);
    }
}

/// Deletes `path` (never following symlinks); whether it is gone.
fn remove(path: &Path) -> bool {
    match remove_tree(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!("cannot delete {} yet: {e}", path.display());
            false
        }
    }
}

/// Directories held open at once while deleting; a subdirectory found
/// deeper is moved up to the top of the tree and deleted from there.
const MAX_DEPTH: usize = 64;

/// Deletes the tree at `path` with a bounded stack and bounded open
/// directories, whatever its depth (see [`remove_tree_at`]).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no directory to delete"))?;
    let parent = cap_std::fs::Dir::open_ambient_dir(parent, cap_std::ambient_authority())?;
    remove_tree_at(&parent, Path::new(name))
}

/// Deletes the directory `name` in `parent` and everything in it (a
/// symlink inside is removed, never followed), with a bounded stack and at most [`MAX_DEPTH`]
/// directories open, whatever its depth: a guest can nest directories far
/// deeper than a recursive delete (`std::fs::remove_dir_all`, cap-std's
/// `remove_dir_all`) survives: 100,000 levels overflow a 2 MiB stack and
/// abort the process.
pub(crate) fn remove_tree_at(parent: &cap_std::fs::Dir, name: &Path) -> std::io::Result<()> {
    use cap_std::fs::{Dir, ReadDir};
    struct Level {
        dir: Dir,
        entries: ReadDir,
        name: std::ffi::OsString,
    }
    let root = parent.open_dir(name)?;
    let mut moved: u64 = 0;
    // Subtrees moved up while the top was being listed may be missed by
    // that listing: the tree is walked again while each walk removes
    // something, until the top itself can go.
    loop {
        let mut progress = false;
        let mut stack = vec![Level {
            entries: root.entries()?,
            dir: root.try_clone()?,
            name: Default::default(),
        }];
        loop {
            let depth = stack.len();
            let Some(level) = stack.last_mut() else { break };
            match level.entries.next() {
                Some(entry) => {
                    let entry = entry?;
                    let name = entry.file_name();
                    if !entry.file_type()?.is_dir() {
                        level.dir.remove_file(&name)?;
                        progress = true;
                    } else if depth >= MAX_DEPTH {
                        moved += 1;
                        let to = format!(".stacyvm-deep-{}-{moved}", std::process::id());
                        level.dir.rename(&name, &root, to)?;
                        progress = true;
                    } else {
                        let dir = level.dir.open_dir(&name)?;
                        stack.push(Level {
                            entries: dir.entries()?,
                            dir,
                            name,
                        });
                    }
                }
                None => {
                    let done = stack.pop().expect("the loop holds a level");
                    if let Some(parent) = stack.last() {
                        drop(done.entries);
                        drop(done.dir);
                        parent.dir.remove_dir(&done.name)?;
                        progress = true;
                    }
                }
            }
        }
        match parent.remove_dir(name) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && progress => continue,
            other => return other,
        }
    }
}

fn release(pending: &Mutex<HashMap<String, usize>>, tenant: &str) {
    let mut pending = lock(pending);
    if let Some(n) = pending.get_mut(tenant) {
        *n -= 1;
        if *n == 0 {
            pending.remove(tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_discarded_directory_leaves_at_once_and_stays_charged_until_deleted() {
        let data = tempfile::tempdir().unwrap();
        let trash = Trash::open(data.path().join("trash")).unwrap();
        let sandbox = data.path().join("sb_1");
        std::fs::create_dir_all(sandbox.join("a/b/c")).unwrap();
        for i in 0..2000 {
            std::fs::write(sandbox.join(format!("a/f{i}")), b"x").unwrap();
        }
        trash.discard(&sandbox, "tenant/one").unwrap();
        assert!(!sandbox.exists());
        // Charged from the discard until the reaper has deleted it.
        let charged = trash.pending("tenant/one");
        let left = std::fs::read_dir(data.path().join("trash")).unwrap().count();
        assert!(charged == 1 || left == 0, "{charged} charged, {left} left");
        wait_until(|| trash.pending("tenant/one") == 0);
        assert_eq!(std::fs::read_dir(data.path().join("trash")).unwrap().count(), 0);
        // Nothing there is nothing to do.
        trash.discard(&sandbox, "tenant/one").unwrap();
        assert_eq!(trash.pending("tenant/one"), 0);
    }

    #[test]
    fn a_tree_a_hundred_thousand_levels_deep_is_deleted_without_overflowing_the_stack() {
        use std::os::fd::{FromRawFd, OwnedFd};
        let data = tempfile::tempdir().unwrap();
        let top = data.path().join("deep");
        std::fs::create_dir(&top).unwrap();
        // Built through directory descriptors, as a guest can: no path
        // could name the bottom.
        let mut fd: OwnedFd = std::fs::File::open(&top).unwrap().into();
        for i in 0..100_000 {
            use std::os::fd::AsRawFd;
            let name = if i % 1000 == 0 { c"f" } else { c"a" };
            // SAFETY: valid descriptor and C strings.
            unsafe {
                if i % 1000 == 0 {
                    let f = libc::openat(fd.as_raw_fd(), name.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                    assert!(f >= 0);
                    libc::close(f);
                }
                assert_eq!(libc::mkdirat(fd.as_raw_fd(), c"a".as_ptr(), 0o700), 0);
                let next = libc::openat(fd.as_raw_fd(), c"a".as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
                assert!(next >= 0);
                fd = OwnedFd::from_raw_fd(next);
            }
        }
        drop(fd);
        // The reaper's thread has a 2 MiB stack; so does this one.
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || remove_tree(&top).map_err(|e| e.to_string()))
            .unwrap();
        assert_eq!(handle.join().unwrap(), Ok(()));
        assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);
    }

    #[test]
    fn what_an_earlier_run_left_in_the_trash_is_charged_and_deleted_at_open() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("trash");
        let left = dir.join(format!("sb_2.{}.0-1", hex::encode("acme")));
        std::fs::create_dir_all(left.join("deep/er")).unwrap();
        std::fs::write(left.join("deep/er/file"), b"data").unwrap();
        let trash = Trash::open(dir.clone()).unwrap();
        wait_until(|| !left.exists());
        wait_until(|| trash.pending("acme") == 0);
        assert_eq!(tenant_of(&left), "acme");
        assert_eq!(tenant_of(Path::new("no-tenant")), "");
    }
}
