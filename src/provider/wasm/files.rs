//! File operations on a wasm sandbox's directory, through cap-std, so that
//! no path or symlink can lead outside the sandbox root.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;

use cap_std::fs::MetadataExt;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::provider::glob::{GLOB_TIME, GlobPattern, WALK_BUDGET, walk};
use crate::provider::{FileEntry, ProviderError};
use crate::sandbox::path::SandboxPath;

pub fn open_root(dir: &Path) -> Result<Dir, ProviderError> {
    Dir::open_ambient_dir(dir, ambient_authority())
        .map_err(|e| ProviderError::Internal(anyhow::anyhow!("cannot open sandbox directory {}: {e}", dir.display())))
}

/// Maps an I/O error on `path` to what the client should hear.
pub fn io_error(path: &SandboxPath, e: io::Error) -> ProviderError {
    // cap-std reports an attempted escape (an absolute symlink, or `..`
    // through a symlink) as PermissionDenied with this text.
    if e.to_string().contains("outside of the filesystem") {
        return ProviderError::InvalidInput(format!("path {path} escapes the sandbox"));
    }
    match e.kind() {
        io::ErrorKind::NotFound => ProviderError::NotFound(format!("file {path} not found")),
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

/// Bytes of file data under `dir`, never following symlinks.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

pub fn write(
    root: &Dir,
    path: &SandboxPath,
    data: &[u8],
    mode: u32,
    quota: u64,
    usage: u64,
) -> Result<(), ProviderError> {
    if path.is_root() {
        return Err(ProviderError::InvalidInput("cannot write to the sandbox root".into()));
    }
    let rel = path.relative();
    let old_size = match root.symlink_metadata(&rel) {
        Ok(m) if m.is_dir() => return Err(ProviderError::InvalidInput(format!("{path} is a directory"))),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    };
    let new_usage = usage.saturating_sub(old_size) + data.len() as u64;
    if new_usage > quota {
        return Err(ProviderError::QuotaExceeded(format!(
            "writing {} bytes to {path} would exceed the sandbox disk quota of {quota} bytes",
            data.len()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.is_root()) {
        root.create_dir_all(parent.relative())
            .map_err(|e| io_error(&parent, e))?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    let mut f = root.open_with(&rel, &opts).map_err(|e| io_error(path, e))?;
    f.write_all(data).map_err(|e| io_error(path, e))?;
    f.set_permissions(cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(
        mode,
    )))
    .map_err(|e| io_error(path, e))?;
    Ok(())
}

pub fn read(root: &Dir, path: &SandboxPath, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let rel = path.relative();
    let meta = root.metadata(&rel).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(ProviderError::InvalidInput(format!("{path} is a directory")));
    }
    if meta.len() > limit as u64 {
        return Err(ProviderError::QuotaExceeded(format!(
            "{path} is {} bytes, above the download limit of {limit} bytes",
            meta.len()
        )));
    }
    root.read(&rel).map_err(|e| io_error(path, e))
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
            root.remove_dir_all(&rel)
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

pub fn rename(root: &Dir, from: &SandboxPath, to: &SandboxPath) -> Result<(), ProviderError> {
    if from.is_root() || to.is_root() {
        return Err(ProviderError::InvalidInput("cannot move the sandbox root".into()));
    }
    root.symlink_metadata(from.relative()).map_err(|e| io_error(from, e))?;
    if let Some(parent) = to.parent().filter(|p| !p.is_root()) {
        root.create_dir_all(parent.relative())
            .map_err(|e| io_error(&parent, e))?;
    }
    root.rename(from.relative(), root, to.relative())
        .map_err(|e| io_error(to, e))
}

pub fn chmod(root: &Dir, path: &SandboxPath, mode: u32) -> Result<(), ProviderError> {
    root.set_permissions(
        path.relative(),
        cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(mode)),
    )
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
