//! File operations on a container.
//!
//! Contents move through the Engine API's archive endpoints (tar), so they
//! are binary-safe and need nothing in the image; what they write belongs to
//! the sandbox user. Metadata operations run small `sh` scripts with
//! busybox-compatible commands as the sandbox user; paths always travel as
//! argv, never inside the script. Messages match the wasm provider's.
//!
//! Everything read back from the container (archive streams, `stat` and
//! `find` output) is capped before it is kept or parsed.

use std::io::Read;
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{ContainerArchiveInfoOptions, DownloadFromContainerOptions, UploadToContainerOptions};
use futures_util::StreamExt;

use super::ContainerUser;
use super::connection::{message, status_code};
use super::exec;
use super::glob;
use crate::provider::{FileEntry, ProviderError};
use crate::sandbox::path::SandboxPath;

/// Script exit codes, mapped to errors by [`script_error`].
const NOT_FOUND: i32 = 10;
const IS_DIR: i32 = 11;
const PARENT_NOT_DIR: i32 = 12;
const NOT_EMPTY: i32 = 13;

/// Go's `os.FileMode` bits, as the archive stat header reports them.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
/// Symlinks followed when reading a file, as the kernel's own limit.
const MAX_LINK_HOPS: usize = 40;
/// Room for tar headers and padding around one file in a download.
const TAR_OVERHEAD: usize = 64 << 10;
/// Output kept from a listing or a glob walk: about 100 000 paths, the
/// same walk budget as the wasm provider.
const WALK_OUTPUT_LIMIT: usize = 16 << 20;
/// Entries one listing may report; the output limit allows no more anyway.
const MAX_LIST_ENTRIES: usize = 1_000_000;
/// Missing parent directories one write may create. Each costs a round trip
/// to the daemon to find, so a 2000-level path must not mean 2000 of them.
const MAX_NEW_PARENTS: usize = 64;
/// The latest modification time reported (9999-12-31T23:59:59Z): RFC 3339
/// has four-digit years, and a container's `stat` may print anything.
const MAX_MTIME: i64 = 253_402_300_799;

/// An error the script reported for `path`, or an internal one.
fn script_error(path: &SandboxPath, code: i32, out: &exec::Collected) -> ProviderError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match code {
        NOT_FOUND => ProviderError::NotFound(format!("file {path} not found")),
        IS_DIR => ProviderError::InvalidInput(format!("{path} is a directory")),
        PARENT_NOT_DIR => ProviderError::InvalidInput(format!("a parent of {path} is not a directory")),
        NOT_EMPTY => ProviderError::Conflict(format!(
            "directory {path} is not empty; pass recursive=true to delete it"
        )),
        // The user's own files can make rm, mv or chmod fail (a mount point,
        // a read-only file system): that is for the client to hear.
        _ if !stderr.is_empty() => ProviderError::InvalidInput(format!("operation on {path} failed: {stderr}")),
        _ => ProviderError::Internal(anyhow::anyhow!("file script on {path} exited {code}")),
    }
}

pub struct Files<'a> {
    pub docker: &'a Docker,
    pub container: &'a str,
    pub file_limit: usize,
    /// Who owns what is written, and who runs the scripts.
    pub user: ContainerUser,
    /// The writable layer's size limit, when the driver enforces one.
    pub disk_quota_mb: Option<u64>,
}

/// A failure: the daemon's (to be mapped by the caller) or one already in
/// client terms.
pub enum FileError {
    Docker(DockerError),
    Provider(ProviderError),
}

impl From<DockerError> for FileError {
    fn from(e: DockerError) -> Self {
        FileError::Docker(e)
    }
}

impl From<ProviderError> for FileError {
    fn from(e: ProviderError) -> Self {
        FileError::Provider(e)
    }
}

type Result<T> = std::result::Result<T, FileError>;

impl Files<'_> {
    /// Runs a file script as the sandbox user; one that runs past its time
    /// is a limit the client hit (a huge tree), not a server fault.
    async fn script(
        &self,
        what: &str,
        body: &'static str,
        args: &[&str],
        limit: usize,
    ) -> Result<(i32, exec::Collected)> {
        match exec::script(self.docker, self.container, &self.user.spec(), body, args, limit).await? {
            Some(done) => Ok(done),
            None => Err(ProviderError::QuotaExceeded(format!(
                "{what} ran past its limit of {} and was stopped",
                crate::duration::format(exec::SCRIPT_TIMEOUT)
            ))
            .into()),
        }
    }

    /// A tar header owned by the sandbox user, stamped now.
    fn header(&self, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(u64::from(self.user.uid));
        header.set_gid(u64::from(self.user.gid));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        header.set_mtime(now.as_secs());
        header
    }

    /// Extracts `archive` at the container's `/`; the daemon resolves every
    /// component inside the container's own file system.
    async fn upload(&self, archive: Vec<u8>) -> std::result::Result<(), DockerError> {
        let options = UploadToContainerOptions {
            path: "/".into(),
            ..Default::default()
        };
        self.docker
            .upload_to_container(self.container, Some(options), bollard::body_full(archive.into()))
            .await
    }

    /// Makes `/workspace` a directory of the sandbox user, before the
    /// container starts. An existing one (from the image) is handed over;
    /// what it holds is not.
    pub async fn make_workspace(&self) -> Result<()> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = self.header(tar::EntryType::Directory, 0, 0o755);
        builder
            .append_data(&mut header, "workspace/", std::io::empty())
            .map_err(|e| ProviderError::Internal(e.into()))?;
        let archive = builder.into_inner().map_err(|e| ProviderError::Internal(e.into()))?;
        Ok(self.upload(archive).await?)
    }

    /// The parent directories of `path` that do not exist yet, outermost
    /// first. The daemon would make them root's; the archive makes them the
    /// user's.
    async fn missing_parents(&self, path: &SandboxPath) -> Result<Vec<SandboxPath>> {
        let mut missing = vec![];
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.is_root()) {
            if self.archive_stat(&d.to_string()).await?.is_some() {
                break;
            }
            if missing.len() == MAX_NEW_PARENTS {
                return Err(ProviderError::InvalidInput(format!(
                    "{path} needs more than {MAX_NEW_PARENTS} new parent directories; create some first"
                ))
                .into());
            }
            dir = d.parent();
            missing.push(d);
        }
        missing.reverse();
        Ok(missing)
    }

    /// The archive endpoint's stat: lstat of the last component. None when
    /// the path does not exist.
    async fn archive_stat(&self, path: &str) -> Result<Option<(u32, u64, String)>> {
        let options = ContainerArchiveInfoOptions { path: path.to_string() };
        match self
            .docker
            .get_container_archive_info(self.container, Some(options))
            .await
        {
            Ok(stat) => Ok(Some((stat.file_mode, stat.size.max(0) as u64, stat.link_target))),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn write(&self, path: &SandboxPath, data: Vec<u8>, mode: u32) -> Result<()> {
        if path.is_root() {
            return Err(ProviderError::InvalidInput("cannot write to the sandbox root".into()).into());
        }
        let parents = match self.archive_stat(&path.to_string()).await? {
            // Extracting a file over a directory would replace the directory.
            Some((go_mode, _, _)) if go_mode & GO_MODE_DIR != 0 => {
                return Err(ProviderError::InvalidInput(format!("{path} is a directory")).into());
            }
            Some(_) => vec![],
            None => self.missing_parents(path).await?,
        };
        let mut builder = tar::Builder::new(Vec::with_capacity(data.len() + 1024 * (parents.len() + 1)));
        let built = parents
            .iter()
            .try_for_each(|dir| {
                let mut header = self.header(tar::EntryType::Directory, 0, 0o755);
                builder.append_data(&mut header, format!("{}/", dir.relative()), std::io::empty())
            })
            .and_then(|()| {
                let mut header = self.header(tar::EntryType::Regular, data.len() as u64, mode);
                builder.append_data(&mut header, path.relative(), data.as_slice())
            });
        built.map_err(|e| ProviderError::Internal(e.into()))?;
        let archive = builder.into_inner().map_err(|e| ProviderError::Internal(e.into()))?;
        match self.upload(archive).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(400 | 403 | 500)) && message(&e).contains("not a directory") => {
                Err(ProviderError::InvalidInput(format!("a parent of {path} is not a directory")).into())
            }
            Err(e)
                if matches!(status_code(&e), Some(400 | 403 | 500))
                    && ["no space left", "quota exceeded"]
                        .iter()
                        .any(|m| message(&e).to_lowercase().contains(m)) =>
            {
                let quota = self
                    .disk_quota_mb
                    .map_or_else(String::new, |mb| format!(" of {mb} MiB"));
                Err(ProviderError::QuotaExceeded(format!(
                    "writing {path} would exceed the sandbox's disk quota{quota}"
                ))
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn read(&self, path: &SandboxPath) -> Result<Vec<u8>> {
        let mut target = path.clone();
        let mut hops = 0;
        let size = loop {
            let Some((go_mode, size, link)) = self.archive_stat(&target.to_string()).await? else {
                return Err(ProviderError::NotFound(format!("file {path} not found")).into());
            };
            if go_mode & GO_MODE_SYMLINK == 0 {
                if go_mode & GO_MODE_DIR != 0 {
                    return Err(ProviderError::InvalidInput(format!("{path} is a directory")).into());
                }
                break size;
            }
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(ProviderError::InvalidInput(format!("too many levels of symbolic links in {path}")).into());
            }
            let base = target.parent().unwrap_or_else(SandboxPath::root);
            target = SandboxPath::resolve(&base, &link)
                .map_err(|_| ProviderError::NotFound(format!("file {path} not found")))?;
        };
        let limit = self.file_limit;
        if size > limit as u64 {
            return Err(ProviderError::QuotaExceeded(format!(
                "{path} is {size} bytes, above the download limit of {limit} bytes"
            ))
            .into());
        }
        let options = DownloadFromContainerOptions {
            path: target.to_string(),
        };
        let mut stream = self.docker.download_from_container(self.container, Some(options));
        let mut archive = Vec::with_capacity(size as usize + TAR_OVERHEAD);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) if status_code(&e) == Some(404) => {
                    return Err(ProviderError::NotFound(format!("file {path} not found")).into());
                }
                Err(e) => return Err(e.into()),
            };
            archive.extend_from_slice(&chunk);
            // The file may have grown since the stat.
            if archive.len() > limit + TAR_OVERHEAD {
                return Err(ProviderError::QuotaExceeded(format!(
                    "{path} is above the download limit of {limit} bytes"
                ))
                .into());
            }
        }
        let mut tar = tar::Archive::new(archive.as_slice());
        let entries = tar.entries().map_err(|e| ProviderError::Internal(e.into()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ProviderError::Internal(e.into()))?;
            if entry.header().entry_type().is_file() {
                // The header's size is the daemon's word; the archive is
                // already known to be within the limit.
                let mut data = Vec::with_capacity((entry.size() as usize).min(limit));
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| ProviderError::Internal(e.into()))?;
                return Ok(data);
            }
        }
        Err(ProviderError::NotFound(format!("file {path} not found")).into())
    }

    pub async fn stat(&self, path: &SandboxPath) -> Result<FileEntry> {
        const STAT: &str = r#"[ -e "$1" ] || [ -L "$1" ] || exit 10
exec stat -c '%f %s %Y' -- "$1""#;
        let (code, out) = self.script("stat", STAT, &[&path.to_string()], 4096).await?;
        if code != 0 {
            return Err(script_error(path, code, &out).into());
        }
        let line = String::from_utf8_lossy(&out.stdout);
        Ok(parse_entry(path, line.trim()).ok_or_else(|| bad_output("stat", &out))?)
    }

    pub async fn list(&self, path: &SandboxPath) -> Result<Vec<FileEntry>> {
        // Prints `file` and the path's own stat line, or `dir N`, then N
        // NUL-terminated names, then their N stat lines in the same order.
        const LIST: &str = r#"if ! cd -- "$1" 2>/dev/null; then
  [ -e "$1" ] || exit 10
  [ -d "$1" ] && { echo "cannot open the directory: permission denied" >&2; exit 1; }
  echo file
  exec stat -L -c '%f %s %Y' -- "$1"
fi
set --
for f in * .*; do
  case $f in .|..) continue ;; esac
  [ -e "$f" ] || [ -L "$f" ] || continue
  set -- "$@" "$f"
done
echo "dir $#"
[ $# -eq 0 ] && exit 0
printf '%s\0' "$@"
exec stat -c '%f %s %Y' -- "$@""#;
        let (code, out) = self
            .script("listing", LIST, &[&path.to_string()], WALK_OUTPUT_LIMIT)
            .await?;
        if out.truncated {
            return Err(ProviderError::QuotaExceeded(format!(
                "{path} has too many entries to list: their names and details exceed {} MiB",
                WALK_OUTPUT_LIMIT >> 20
            ))
            .into());
        }
        if code != 0 {
            return Err(script_error(path, code, &out).into());
        }
        let text = &out.stdout;
        let newline = text
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| bad_output("list", &out))?;
        let head = String::from_utf8_lossy(&text[..newline]).to_string();
        let rest = &text[newline + 1..];
        if head == "file" {
            let line = String::from_utf8_lossy(rest);
            return Ok(vec![
                parse_entry(path, line.trim()).ok_or_else(|| bad_output("list", &out))?,
            ]);
        }
        let count: usize = head
            .strip_prefix("dir ")
            .and_then(|n| n.parse().ok())
            .filter(|n| *n <= MAX_LIST_ENTRIES)
            .ok_or_else(|| bad_output("list", &out))?;
        let mut parts = rest.splitn(count + 1, |b| *b == 0);
        let names: Vec<String> = parts
            .by_ref()
            .take(count)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        let stats = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let lines: Vec<&str> = stats.lines().collect();
        if names.len() != count || lines.len() != count {
            return Err(ProviderError::Conflict(format!("{path} changed while it was listed; try again")).into());
        }
        let mut entries = vec![];
        for (name, line) in names.iter().zip(lines) {
            let child = path
                .join(name)
                .map_err(|e| ProviderError::InvalidInput(e.to_string()))?;
            entries.push(parse_entry(&child, line).ok_or_else(|| bad_output("list", &out))?);
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub async fn delete(&self, path: &SandboxPath, recursive: bool) -> Result<()> {
        if path.is_root() {
            return Err(ProviderError::InvalidInput("refusing to delete the sandbox root".into()).into());
        }
        const DELETE: &str = r#"[ -e "$1" ] || [ -L "$1" ] || exit 10
if [ -d "$1" ] && [ ! -L "$1" ]; then
  if [ "$2" = 1 ]; then exec rm -rf -- "$1"; fi
  rmdir -- "$1" 2>/dev/null && exit 0
  [ -n "$(ls -A -- "$1")" ] && exit 13
  exec rmdir -- "$1"
fi
exec rm -f -- "$1""#;
        let flag = if recursive { "1" } else { "0" };
        let (code, out) = self.script("delete", DELETE, &[&path.to_string(), flag], 4096).await?;
        if code != 0 {
            return Err(script_error(path, code, &out).into());
        }
        Ok(())
    }

    pub async fn rename(&self, from: &SandboxPath, to: &SandboxPath) -> Result<()> {
        if from.is_root() || to.is_root() {
            return Err(ProviderError::InvalidInput("cannot move the sandbox root".into()).into());
        }
        // Like rename(2): onto a directory only a directory may go, and only
        // if that one is empty. `mv` alone would move into it instead.
        const MOVE: &str = r#"[ -e "$1" ] || [ -L "$1" ] || exit 10
[ -n "$3" ] && { mkdir -p -- "$3" 2>/dev/null || exit 12; }
if [ -d "$2" ] && [ ! -L "$2" ]; then
  [ -d "$1" ] && [ ! -L "$1" ] || exit 11
  rmdir -- "$2" 2>/dev/null || exit 13
fi
exec mv -f -- "$1" "$2""#;
        let parent = to
            .parent()
            .filter(|p| !p.is_root())
            .map(|p| p.to_string())
            .unwrap_or_default();
        let (code, out) = self
            .script("move", MOVE, &[&from.to_string(), &to.to_string(), &parent], 4096)
            .await?;
        match code {
            0 => Ok(()),
            NOT_FOUND => Err(script_error(from, code, &out).into()),
            _ => Err(script_error(to, code, &out).into()),
        }
    }

    pub async fn chmod(&self, path: &SandboxPath, mode: u32) -> Result<()> {
        const CHMOD: &str = r#"[ -e "$1" ] || exit 10
exec chmod -- "$2" "$1""#;
        let (code, out) = self
            .script("chmod", CHMOD, &[&path.to_string(), &format!("{mode:o}")], 4096)
            .await?;
        if code != 0 {
            return Err(script_error(path, code, &out).into());
        }
        Ok(())
    }

    pub async fn glob(&self, pattern: &str) -> Result<Vec<String>> {
        let plan = glob::Plan::new(pattern).map_err(ProviderError::InvalidInput)?;
        // Directories, an empty name, then everything else; all
        // NUL-terminated, and no more than `$1` bytes: `head` stops the walk
        // there. /proc, /sys and /dev are the kernel's, not files.
        const WALK: &str = r#"[ -d "$2" ] || exit 0
limit=$1 start=$2; shift 2
{
  find "$start" "$@" \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type d -print0
  printf '\0'
  find "$start" "$@" \( -path /proc -o -path /sys -o -path /dev \) -prune -o ! -type d -print0
} 2>/dev/null | head -c "$limit""#;
        let start = plan.start.to_string();
        let depth = plan.max_depth.map(|d| d.to_string());
        let limit = WALK_OUTPUT_LIMIT.to_string();
        let mut args = vec![limit.as_str(), start.as_str()];
        if let Some(depth) = &depth {
            args.extend(["-maxdepth", depth.as_str()]);
        }
        let (code, out) = self.script("glob", WALK, &args, WALK_OUTPUT_LIMIT).await?;
        if code != 0 && out.stdout.is_empty() {
            return Err(bad_output("glob", &out).into());
        }
        // Matching costs CPU in proportion to what the container listed: off
        // the async workers, and bounded by the plan's budgets.
        tokio::task::spawn_blocking(move || plan.select(&out.stdout))
            .await
            .map_err(|e| ProviderError::Internal(e.into()).into())
    }
}

/// Output of a file script that cannot be read: the container's own tools
/// printed it (an image without a usable `stat` or `find`, or one that lies),
/// so it is the client's to hear, with the detail in the log.
fn bad_output(what: &str, out: &exec::Collected) -> ProviderError {
    tracing::warn!(
        "unexpected output of the {what} script: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(512)]),
        String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(512)])
    );
    ProviderError::InvalidInput(format!(
        "the container answered the {what} with output stacyvm cannot read; the image needs a POSIX sh, stat and find"
    ))
}

/// Parses `stat -c '%f %s %Y'`: raw mode in hex, size, mtime in seconds.
fn parse_entry(path: &SandboxPath, line: &str) -> Option<FileEntry> {
    let mut fields = line.split_whitespace();
    let raw = u32::from_str_radix(fields.next()?, 16).ok()?;
    let size: u64 = fields.next()?.parse().ok()?;
    let mtime: i64 = fields.next()?.parse::<i64>().ok()?.clamp(0, MAX_MTIME);
    let is_dir = raw & 0o170000 == 0o040000;
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64);
    Some(FileEntry {
        name: path.file_name().unwrap_or("/").to_string(),
        path: path.to_string(),
        size: if is_dir { 0 } else { size },
        mode: format!("{:04o}", raw & 0o7777),
        is_dir,
        mod_time: humantime::format_rfc3339_seconds(modified).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_become_entries_like_wasm_ones() {
        let path = SandboxPath::parse("dir/a.txt").unwrap();
        let e = parse_entry(&path, "81a4 5 1700000000").unwrap();
        assert_eq!(
            e,
            FileEntry {
                name: "a.txt".into(),
                path: "/workspace/dir/a.txt".into(),
                size: 5,
                mode: "0644".into(),
                is_dir: false,
                mod_time: "2023-11-14T22:13:20Z".into(),
            }
        );
        let dir = parse_entry(&SandboxPath::parse("/tmp").unwrap(), "43ff 4096 0").unwrap();
        assert_eq!((dir.is_dir, dir.size, dir.mode.as_str()), (true, 0, "1777"));
        assert!(parse_entry(&path, "zz 1 2").is_none());
    }

    #[test]
    fn whatever_a_container_stat_prints_parses_or_is_refused_without_a_panic() {
        let path = SandboxPath::parse("a").unwrap();
        let mtime = |line: &str| parse_entry(&path, line).map(|e| e.mod_time);
        let table = [
            ("81a4 1 9223372036854775807", Some("9999-12-31T23:59:59Z")),
            ("81a4 1 253402300800", Some("9999-12-31T23:59:59Z")),
            ("81a4 1 -9223372036854775808", Some("1970-01-01T00:00:00Z")),
            ("81a4 18446744073709551615 0", Some("1970-01-01T00:00:00Z")),
            ("81a4 18446744073709551616 0", None),
            ("ffffffffff 1 0", None),
            ("81a4 1 99999999999999999999", None),
            ("", None),
        ];
        for (line, want) in table {
            assert_eq!(mtime(line).as_deref(), want, "{line:?}");
        }
    }
}
