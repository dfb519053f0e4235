//! File operations on a wasm sandbox's directory, through cap-std, so that
//! no path or symlink can lead outside the sandbox root.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use cap_std::fs::MetadataExt;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use super::quota::{DIR_BYTES, DiskLedger};
use crate::provider::glob::{GLOB_TIME, GlobPattern, WALK_BUDGET, walk};
use crate::provider::{FileEntry, ProviderError};
use crate::sandbox::path::SandboxPath;

pub fn open_root(dir: &Path) -> Result<Dir, ProviderError> {
    Dir::open_ambient_dir(dir, ambient_authority())
        .map_err(|e| ProviderError::Internal(anyhow::anyhow!("cannot open sandbox directory {}: {e}", dir.display())))
}

/// Linux's errno values for a name too long and a symlink loop.
const ENAMETOOLONG: i32 = 36;
const ELOOP: i32 = 40;

/// Maps an I/O error on `path` to what the client should hear.
pub fn io_error(path: &SandboxPath, e: io::Error) -> ProviderError {
    // cap-std reports an attempted escape (an absolute symlink, or `..`
    // through a symlink) as PermissionDenied with this text.
    if e.to_string().contains("outside of the filesystem") {
        return ProviderError::InvalidInput(format!("path {path} escapes the sandbox"));
    }
    match e.raw_os_error() {
        Some(ENAMETOOLONG) => {
            return ProviderError::InvalidInput(format!("a name in {path} is longer than 255 bytes"));
        }
        Some(ELOOP) => {
            return ProviderError::InvalidInput(format!("{path} goes through too many symbolic links"));
        }
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => ProviderError::NotFound(format!("file {path} not found")),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
            ProviderError::InvalidInput(format!("{path} is not a valid path here"))
        }
        io::ErrorKind::IsADirectory => ProviderError::InvalidInput(format!("{path} is a directory")),
        io::ErrorKind::NotADirectory => ProviderError::InvalidInput(format!("a parent of {path} is not a directory")),
        io::ErrorKind::AlreadyExists => ProviderError::Conflict(format!("{path} already exists")),
        io::ErrorKind::DirectoryNotEmpty => ProviderError::Conflict(format!(
            "directory {path} is not empty; pass recursive=true to delete it"
        )),
        io::ErrorKind::PermissionDenied => ProviderError::InvalidInput(format!("permission denied on {path}")),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            ProviderError::QuotaExceeded(format!("no space left for {path}"))
        }
        _ => ProviderError::Internal(anyhow::anyhow!("file operation on {path} failed: {e}")),
    }
}

/// Writes a file, creating its parents, charging the ledger the entries it
/// adds and the growth of the file. `mode` keeps only permission bits: no
/// setuid, setgid or sticky bit ever reaches the host.
pub fn write(root: &Dir, path: &SandboxPath, data: &[u8], mode: u32, ledger: &DiskLedger) -> Result<(), ProviderError> {
    if path.is_root() {
        return Err(ProviderError::InvalidInput("cannot write to the sandbox root".into()));
    }
    let rel = path.relative();
    let (old_size, new_file) = match root.symlink_metadata(&rel) {
        Ok(m) if m.is_dir() => return Err(ProviderError::InvalidInput(format!("{path} is a directory"))),
        Ok(m) => (m.len(), false),
        Err(_) => (0, true),
    };
    let missing_parents = path.parent().map_or(0, |parent| missing_dirs(root, &parent));
    let bytes = (data.len() as u64)
        .saturating_sub(old_size)
        .saturating_add(missing_parents * DIR_BYTES);
    let entries = missing_parents + u64::from(new_file);
    ledger
        .charge(bytes, entries)
        .map_err(|over| ProviderError::QuotaExceeded(format!("writing {} bytes to {path}: {over}", data.len())))?;
    let result = write_charged(root, path, data, mode);
    if result.is_err() {
        ledger.refund(bytes, entries);
    }
    result
}

/// How many directories from `dir` up do not exist yet.
fn missing_dirs(root: &Dir, dir: &SandboxPath) -> u64 {
    let mut missing = 0;
    let mut next = Some(dir.clone());
    while let Some(dir) = next.filter(|p| !p.is_root()) {
        if root.symlink_metadata(dir.relative()).is_ok() {
            break;
        }
        missing += 1;
        next = dir.parent();
    }
    missing
}

fn write_charged(root: &Dir, path: &SandboxPath, data: &[u8], mode: u32) -> Result<(), ProviderError> {
    if let Some(parent) = path.parent().filter(|p| !p.is_root()) {
        root.create_dir_all(parent.relative())
            .map_err(|e| io_error(&parent, e))?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    let mut f = root.open_with(path.relative(), &opts).map_err(|e| io_error(path, e))?;
    f.write_all(data).map_err(|e| io_error(path, e))?;
    f.set_permissions(permissions(mode)).map_err(|e| io_error(path, e))?;
    Ok(())
}

/// Permission bits only, whatever the client asked for.
fn permissions(mode: u32) -> cap_std::fs::Permissions {
    cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(mode & 0o777))
}

/// Reads a whole file, refusing one above `limit` bytes. The read itself
/// is bounded too: the file may grow while it is read.
pub fn read(root: &Dir, path: &SandboxPath, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let rel = path.relative();
    let too_big = |len: u64| {
        ProviderError::QuotaExceeded(format!(
            "{path} is {len} bytes, above the download limit of {limit} bytes"
        ))
    };
    let file = root.open(&rel).map_err(|e| io_error(path, e))?;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(ProviderError::InvalidInput(format!("{path} is a directory")));
    }
    if meta.len() > limit as u64 {
        return Err(too_big(meta.len()));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_error(path, e))?;
    if data.len() > limit {
        return Err(too_big(data.len() as u64));
    }
    Ok(data)
}

pub fn delete(root: &Dir, path: &SandboxPath, recursive: bool) -> Result<(), ProviderError> {
    if path.is_root() {
        return Err(ProviderError::InvalidInput(
            "refusing to delete the sandbox root".into(),
        ));
    }
    let rel = path.relative();
    let meta = root.symlink_metadata(&rel).map_err(|e| io_error(path, e))?;
    let result = if meta.is_dir() {
        if recursive {
            // Bounded, whatever the depth the guest built.
            super::trash::remove_tree_at(root, Path::new(&rel))
        } else {
            root.remove_dir(&rel)
        }
    } else {
        root.remove_file(&rel)
    };
    result.map_err(|e| io_error(path, e))
}

fn entry(path: &SandboxPath, meta: &cap_std::fs::Metadata) -> FileEntry {
    let modified = meta
        .modified()
        .map(|t| t.into_std())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    FileEntry {
        name: path.file_name().unwrap_or("/").to_string(),
        path: path.to_string(),
        size: if meta.is_dir() { 0 } else { meta.len() },
        mode: format!("{:04o}", meta.mode() & 0o7777),
        is_dir: meta.is_dir(),
        mod_time: humantime::format_rfc3339_seconds(modified).to_string(),
    }
}

pub fn stat(root: &Dir, path: &SandboxPath) -> Result<FileEntry, ProviderError> {
    let meta = root.symlink_metadata(path.relative()).map_err(|e| io_error(path, e))?;
    Ok(entry(path, &meta))
}

pub fn list(root: &Dir, path: &SandboxPath) -> Result<Vec<FileEntry>, ProviderError> {
    let rel = path.relative();
    let meta = root.metadata(&rel).map_err(|e| io_error(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![entry(path, &meta)]);
    }
    let mut out = vec![];
    for item in root.read_dir(&rel).map_err(|e| io_error(path, e))? {
        let item = item.map_err(|e| io_error(path, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let child = path
            .join(&name)
            .map_err(|e| ProviderError::InvalidInput(e.to_string()))?;
        if let Ok(m) = item.metadata() {
            out.push(entry(&child, &m));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn rename(root: &Dir, from: &SandboxPath, to: &SandboxPath, ledger: &DiskLedger) -> Result<(), ProviderError> {
    if from.is_root() || to.is_root() {
        return Err(ProviderError::InvalidInput("cannot move the sandbox root".into()));
    }
    root.symlink_metadata(from.relative()).map_err(|e| io_error(from, e))?;
    if let Some(parent) = to.parent().filter(|p| !p.is_root()) {
        let missing = missing_dirs(root, &parent);
        ledger
            .charge(missing * DIR_BYTES, missing)
            .map_err(|over| ProviderError::QuotaExceeded(format!("moving {from} to {to}: {over}")))?;
        root.create_dir_all(parent.relative())
            .map_err(|e| io_error(&parent, e))?;
    }
    root.rename(from.relative(), root, to.relative())
        .map_err(|e| io_error(to, e))
}

/// Sets permission bits only: no setuid, setgid or sticky bit.
pub fn chmod(root: &Dir, path: &SandboxPath, mode: u32) -> Result<(), ProviderError> {
    root.set_permissions(path.relative(), permissions(mode))
        .map_err(|e| io_error(path, e))
}

/// Sandbox paths matching `pattern` (`*`, `?`, `[...]`, and `**` for any
/// depth), relative patterns resolving against `/workspace`. Sorted. The
/// walk is bounded (see `provider::glob::walk`): past its budget or its
/// time it answers what it found so far.
pub fn glob(root: &Dir, pattern: &str) -> Result<Vec<String>, ProviderError> {
    let pattern = GlobPattern::parse(pattern).map_err(ProviderError::InvalidInput)?;
    let deadline = std::time::Instant::now() + GLOB_TIME;
    let result = walk(
        &pattern,
        WALK_BUDGET,
        |dir| glob_walk(root, dir),
        || std::time::Instant::now() >= deadline,
    );
    Ok(result.paths)
}

/// Lists a directory for the glob walk: names, and whether each is a
/// directory (a symlink is not, so it is never followed).
fn glob_walk<'a>(root: &'a Dir, dir: &SandboxPath) -> Option<impl Iterator<Item = (String, bool)> + use<'a>> {
    let entries = root.read_dir(dir.relative()).ok()?;
    Some(entries.flatten().map(|item| {
        let name = item.file_name().to_string_lossy().into_owned();
        let is_dir = item.file_type().map(|t| t.is_dir()).unwrap_or(false);
        (name, is_dir)
    }))
}
