//! Sandbox directories made ahead of the creates that take them.
//!
//! A wasm create is a directory with its skeleton (`workspace`, `tmp`).
//! Making three directories costs the file system an inode allocation each,
//! which on ext4 slows down while many inodes were recently freed (the
//! trash reaper frees them all the time). A background thread keeps a few
//! skeletons ready in `<data>/spare/`; a create renames one into place, and
//! makes its own only when none is ready.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::sandbox::lock;

/// How many skeletons are kept ready: a burst of creates larger than this
/// makes its own directories until the thread catches up.
const READY: usize = 64;

pub struct Spares {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    skeleton: &'static [&'static str],
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    ready: Vec<PathBuf>,
    next: u64,
    closed: bool,
}

impl Spares {
    /// Empties `dir` (what an earlier run left goes to `discard`) and
    /// starts the thread that fills it.
    pub fn open(
        dir: PathBuf,
        skeleton: &'static [&'static str],
        discard: impl Fn(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<Spares> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            discard(&entry?.path())?;
        }
        let shared = Arc::new(Shared {
            dir,
            skeleton,
            state: Mutex::default(),
            wake: Condvar::new(),
        });
        let filler = shared.clone();
        std::thread::Builder::new()
            .name("stacyvm-spares".into())
            .spawn(move || filler.fill())?;
        Ok(Spares { shared })
    }

    /// Puts a sandbox directory with its skeleton at `dest`: a ready one
    /// moved there, else one made on the spot.
    pub fn take(&self, dest: &Path) -> std::io::Result<()> {
        let ready = {
            let mut state = lock(&self.shared.state);
            let ready = state.ready.pop();
            self.shared.wake.notify_one();
            ready
        };
        if let Some(spare) = ready {
            match std::fs::rename(&spare, dest) {
                Ok(()) => return Ok(()),
                // Gone from under us (an operator cleaning up): make one.
                Err(e) => tracing::warn!("cannot use spare directory {}: {e}", spare.display()),
            }
        }
        make(dest, self.shared.skeleton)
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn fill(&self) {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return;
            }
            if state.ready.len() >= READY {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let path = self.dir.join(state.next.to_string());
            state.next += 1;
            drop(state);
            let made = make(&path, self.skeleton);
            state = lock(&self.state);
            match made {
                Ok(()) => state.ready.push(path),
                Err(e) => {
                    tracing::warn!("cannot make a spare sandbox directory {}: {e}", path.display());
                    std::fs::remove_dir_all(&path).ok();
                    // Creates make their own until a later wake-up.
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

fn make(dir: &Path, skeleton: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir(dir)?;
    for sub in skeleton {
        std::fs::create_dir(dir.join(sub))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_places_a_ready_skeleton_and_falls_back_to_making_one() {
        let data = tempfile::tempdir().unwrap();
        let spare_dir = data.path().join("spare");
        std::fs::create_dir_all(spare_dir.join("left-from-before")).unwrap();
        let discarded = Mutex::new(vec![]);
        let spares = Spares::open(spare_dir.clone(), &["workspace", "tmp"], |p| {
            discarded.lock().unwrap().push(p.to_path_buf());
            std::fs::remove_dir_all(p)
        })
        .unwrap();
        assert_eq!(*discarded.lock().unwrap(), [spare_dir.join("left-from-before")]);
        // Many more than are kept ready: the rest are made on the spot.
        for i in 0..(READY * 3) {
            let dest = data.path().join(format!("sb_{i}"));
            spares.take(&dest).unwrap();
            assert!(dest.join("workspace").is_dir() && dest.join("tmp").is_dir(), "{i}");
            assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 2);
        }
        // A taken name that exists already is an error, not a merge.
        let taken = data.path().join("sb_0");
        assert_eq!(
            spares.take(&taken).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        drop(spares);
    }
}
