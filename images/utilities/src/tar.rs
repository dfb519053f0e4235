//! `tar`, written here on the tar crate (the archive format) and flate2
//! (gzip), with GNU tar's options and messages: `-c -x -t`, `-f ARCHIVE`
//! (`-` is standard input or output), `-z` (and gzip found by its magic
//! number on `-x`/`-t`), `-v`, `-C DIR`, `-O`, `-k`, `-m`, `-h`,
//! `--strip-components=N`, `--exclude=PATTERN`, `-T FILE`, old-style bundles
//! (`tar czf out.tgz dir`). Files, directories, symlinks and hard links;
//! members whose names contain `..` are refused. The file operations are
//! std's, so every write goes through the sandbox's disk ledger.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use tar::{Builder, EntryType, Header};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Create,
    Extract,
    List,
}

/// An operand of `-c`, in order: a path, or a `-C DIR` before the next ones.
enum Item {
    Dir(String),
    Path(String),
}

#[derive(Default)]
struct Options {
    mode: Option<Mode>,
    archive: Option<String>,
    gzip: bool,
    auto_compress: bool,
    verbose: bool,
    items: Vec<Item>,
    directory: Option<String>,
    strip: usize,
    excludes: Vec<glob::Pattern>,
    to_stdout: bool,
    keep_old: bool,
    touch: bool,
    dereference: bool,
    files_from: Vec<String>,
}

/// Fails the whole run at once (GNU's "Error is not recoverable").
struct Fatal(String);

const TRY: &str = "Try 'tar --help' or 'tar --usage' for more information.";

pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = match args.into_iter().skip(1).map(OsString::into_string).collect() {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("tar: invalid (non-UTF-8) argument: {}", bad.to_string_lossy());
            return 2;
        }
    };
    let mut o = match parse(args) {
        Ok(o) => o,
        Err(Fatal(message)) => {
            eprintln!("tar: {message}\n{TRY}");
            return 2;
        }
    };
    let mut tar = Tar {
        failed: false,
        warned_absolute: false,
    };
    for list in std::mem::take(&mut o.files_from) {
        match read_list(&list) {
            Ok(names) => o.items.extend(names.into_iter().map(Item::Path)),
            Err(e) => {
                eprintln!("tar: {list}: Cannot open: {}", crate::io_message(&e));
                eprintln!("tar: Error is not recoverable: exiting now");
                return 2;
            }
        }
    }
    let result = match o.mode {
        Some(Mode::Create) => tar.create(&o),
        Some(Mode::Extract | Mode::List) => tar.read(&o),
        None => Err(Fatal(format!(
            "You must specify one of the '-Acdtrux', '--delete' or '--test-label' options\n{TRY}"
        ))),
    };
    let _ = io::stdout().flush();
    match result {
        Err(Fatal(message)) => {
            eprintln!("tar: {message}");
            2
        }
        Ok(()) if tar.failed => {
            eprintln!("tar: Exiting with failure status due to previous errors");
            2
        }
        Ok(()) => 0,
    }
}

fn read_list(path: &str) -> io::Result<Vec<String>> {
    let text = if path == "-" {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s)?;
        s
    } else {
        fs::read_to_string(path)?
    };
    Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Options that take a value, by their short letter.
fn takes_value(c: char) -> bool {
    matches!(c, 'f' | 'C' | 'T' | 'X' | 'b' | 'N' | 'H')
}

fn parse(args: Vec<String>) -> Result<Options, Fatal> {
    let mut o = Options::default();
    let mut queue: std::collections::VecDeque<String> = args.into();
    // An old-style first argument: letters without a dash, whose values
    // follow in order (`tar czf out.tgz dir`).
    if let Some(first) = queue.front().cloned()
        && !first.starts_with('-')
        && !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphabetic())
    {
        queue.pop_front();
        let mut expanded = Vec::new();
        let mut values = Vec::new();
        for c in first.chars() {
            expanded.push(format!("-{c}"));
            if takes_value(c) {
                values.push(expanded.len());
            }
        }
        let mut out: Vec<String> = Vec::new();
        for (i, flag) in expanded.into_iter().enumerate() {
            out.push(flag);
            if values.contains(&(i + 1)) {
                match queue.pop_front() {
                    Some(v) => out.push(v),
                    None => {
                        return Err(Fatal(format!(
                            "option requires an argument -- '{}'",
                            out.last().unwrap().trim_start_matches('-')
                        )));
                    }
                }
            }
        }
        for a in out.into_iter().rev() {
            queue.push_front(a);
        }
    }
    let mut operands_only = false;
    while let Some(arg) = queue.pop_front() {
        if operands_only || arg == "-" || !arg.starts_with('-') {
            o.items.push(Item::Path(arg));
            continue;
        }
        if arg == "--" {
            operands_only = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (key, inline) = match long.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (long, None),
            };
            let value = |queue: &mut std::collections::VecDeque<String>| {
                inline
                    .clone()
                    .or_else(|| queue.pop_front())
                    .ok_or_else(|| Fatal(format!("option '--{key}' requires an argument")))
            };
            match key {
                "create" => set_mode(&mut o, Mode::Create)?,
                "extract" | "get" => set_mode(&mut o, Mode::Extract)?,
                "list" => set_mode(&mut o, Mode::List)?,
                "file" => o.archive = Some(value(&mut queue)?),
                "directory" => {
                    let d = value(&mut queue)?;
                    o.items.push(Item::Dir(d.clone()));
                    o.directory = Some(d);
                }
                "gzip" | "gunzip" | "ungzip" => o.gzip = true,
                "auto-compress" => o.auto_compress = true,
                "verbose" => o.verbose = true,
                "to-stdout" => o.to_stdout = true,
                "keep-old-files" => o.keep_old = true,
                "touch" => o.touch = true,
                "dereference" => o.dereference = true,
                "files-from" => o.files_from.push(value(&mut queue)?),
                "strip-components" => {
                    let v = value(&mut queue)?;
                    o.strip = v
                        .parse()
                        .map_err(|_| Fatal(format!("Invalid number of elements: '{v}'")))?;
                }
                "exclude" => {
                    let v = value(&mut queue)?;
                    o.excludes.push(pattern(&v)?);
                }
                "bzip2" | "xz" | "lzma" | "zstd" | "lzip" | "lzop" | "compress" | "uncompress" => {
                    return Err(Fatal(format!("{key} compression is not available here; use -z (gzip)")));
                }
                "overwrite"
                | "no-same-owner"
                | "same-owner"
                | "no-same-permissions"
                | "same-permissions"
                | "preserve-permissions"
                | "numeric-owner"
                | "absolute-names"
                | "wildcards"
                | "no-wildcards"
                | "recursion"
                | "totals"
                | "no-overwrite-dir"
                | "warning" => {}
                "help" => {
                    println!(
                        "Usage: tar [OPTION...] [FILE]...\n  -c, --create     create a new archive\n  -x, --extract    extract files from an archive\n  -t, --list       list the contents of an archive\n  -f, --file=ARCHIVE  use archive file ARCHIVE (- is standard input or output)\n  -z, --gzip       filter the archive through gzip\n  -v, --verbose    list the files processed\n  -C, --directory=DIR  change to directory DIR\n  -O, --to-stdout  extract files to standard output\n  -k, --keep-old-files  don't replace existing files\n  -m, --touch      don't extract file modified time\n  -h, --dereference  archive the files symlinks point to\n  -T, --files-from=FILE  get names to archive from FILE\n      --strip-components=N  strip N leading components from names on extraction\n      --exclude=PATTERN  exclude files matching PATTERN"
                    );
                    std::process::exit(0);
                }
                "version" => {
                    println!("tar (stacyvm utilities, on the tar crate)");
                    std::process::exit(0);
                }
                _ => return Err(Fatal(format!("unrecognized option '{arg}'"))),
            }
            continue;
        }
        let flags: Vec<char> = arg[1..].chars().collect();
        for (i, &c) in flags.iter().enumerate() {
            if takes_value(c) {
                let rest: String = flags[i + 1..].iter().collect();
                let v = if rest.is_empty() {
                    queue
                        .pop_front()
                        .ok_or_else(|| Fatal(format!("option requires an argument -- '{c}'")))?
                } else {
                    rest
                };
                match c {
                    'f' => o.archive = Some(v),
                    'C' => {
                        o.items.push(Item::Dir(v.clone()));
                        o.directory = Some(v);
                    }
                    'T' => o.files_from.push(v),
                    'X' => {
                        for line in
                            read_list(&v).map_err(|e| Fatal(format!("{v}: Cannot open: {}", crate::io_message(&e))))?
                        {
                            o.excludes.push(pattern(&line)?);
                        }
                    }
                    _ => {}
                }
                break;
            }
            match c {
                'c' => set_mode(&mut o, Mode::Create)?,
                'x' => set_mode(&mut o, Mode::Extract)?,
                't' => set_mode(&mut o, Mode::List)?,
                'z' => o.gzip = true,
                'a' => o.auto_compress = true,
                'v' => o.verbose = true,
                'O' => o.to_stdout = true,
                'k' => o.keep_old = true,
                'm' => o.touch = true,
                'h' => o.dereference = true,
                'p' | 'P' | 's' | 'o' | 'B' | 'S' => {}
                'j' | 'J' | 'Z' => {
                    let name = match c {
                        'j' => "bzip2",
                        'J' => "xz",
                        _ => "compress",
                    };
                    return Err(Fatal(format!(
                        "{name} compression is not available here; use -z (gzip)"
                    )));
                }
                'r' | 'u' | 'A' | 'd' => {
                    return Err(Fatal(format!(
                        "option -{c} is not available here; create a new archive with -c"
                    )));
                }
                other => return Err(Fatal(format!("invalid option -- '{other}'"))),
            }
        }
    }
    Ok(o)
}

fn set_mode(o: &mut Options, mode: Mode) -> Result<(), Fatal> {
    if o.mode.is_some_and(|m| m != mode) {
        return Err(Fatal(
            "You may not specify more than one '-Acdtrux', '--delete' or  '--test-label' option".into(),
        ));
    }
    o.mode = Some(mode);
    Ok(())
}

fn pattern(p: &str) -> Result<glob::Pattern, Fatal> {
    glob::Pattern::new(p.trim_end_matches('/')).map_err(|e| Fatal(format!("invalid pattern '{p}': {e}")))
}

fn excluded(o: &Options, name: &str) -> bool {
    let name = name.trim_end_matches('/');
    let base = name.rsplit('/').next().unwrap_or(name);
    o.excludes.iter().any(|p| p.matches(name) || p.matches(base))
}

/// A path written lexically without `.` and `..`, relative to the current
/// directory, to tell whether a member is the archive itself.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

struct Tar {
    failed: bool,
    warned_absolute: bool,
}

impl Tar {
    fn error(&mut self, message: impl std::fmt::Display) {
        let _ = io::stdout().flush();
        eprintln!("tar: {message}");
        self.failed = true;
    }

    fn create(&mut self, o: &Options) -> Result<(), Fatal> {
        if !o.items.iter().any(|i| matches!(i, Item::Path(_))) {
            return Err(Fatal("Cowardly refusing to create an empty archive".into()));
        }
        let archive = o.archive.clone().unwrap_or_else(|| "-".into());
        let gzip = o.gzip || (o.auto_compress && (archive.ends_with(".gz") || archive.ends_with(".tgz")));
        let (out, archive_path): (Box<dyn Write>, Option<PathBuf>) = if archive == "-" {
            (Box::new(io::stdout()), None)
        } else {
            let f = File::create(&archive).map_err(|e| {
                Fatal(format!(
                    "{archive}: Cannot open: {}\ntar: Error is not recoverable: exiting now",
                    crate::io_message(&e)
                ))
            })?;
            (Box::new(f), Some(lexical(Path::new(&archive))))
        };
        // A failed write is the archive's fault, not the member's.
        let write_failed = std::rc::Rc::new(std::cell::Cell::new(false));
        let out = Tracked {
            inner: out,
            failed: write_failed.clone(),
        };
        let out = io::BufWriter::with_capacity(64 * 1024, out);
        let out: Box<dyn Write> = if gzip {
            Box::new(GzEncoder::new(out, Compression::default()))
        } else {
            Box::new(out)
        };
        let mut builder = Builder::new(out);
        // Verbose names go to standard error when the archive is standard output.
        let to_stderr = archive == "-";
        let mut base = PathBuf::new();
        for item in &o.items {
            match item {
                Item::Dir(d) => base = base.join(d),
                Item::Path(p) => {
                    let name = self.member_name(p);
                    let ctx = Create {
                        o,
                        archive: archive_path.as_deref(),
                        to_stderr,
                    };
                    if let Err(Fatal(message)) = self.add(&mut builder, &ctx, &base.join(p), &name) {
                        if !write_failed.get() {
                            return Err(Fatal(message));
                        }
                        let why = message.rsplit(": ").next().unwrap_or_default();
                        return Err(Fatal(format!(
                            "{archive}: Cannot write: {why}\ntar: Error is not recoverable: exiting now"
                        )));
                    }
                }
            }
        }
        let finished = builder.into_inner().and_then(|mut out| out.flush());
        if let Err(e) = finished {
            return Err(Fatal(format!("{archive}: Cannot write: {}", crate::io_message(&e))));
        }
        Ok(())
    }

    /// The stored name of a path operand: leading `/` removed (once said).
    fn member_name(&mut self, p: &str) -> String {
        let trimmed = p.trim_start_matches('/');
        if trimmed.len() != p.len() && !self.warned_absolute {
            eprintln!("tar: Removing leading `/' from member names");
            self.warned_absolute = true;
        }
        if trimmed.is_empty() { "/".into() } else { trimmed.into() }
    }

    fn add(
        &mut self,
        builder: &mut Builder<Box<dyn Write>>,
        ctx: &Create,
        path: &Path,
        name: &str,
    ) -> Result<(), Fatal> {
        if excluded(ctx.o, name) {
            return Ok(());
        }
        let meta = if ctx.o.dereference {
            fs::metadata(path)
        } else {
            fs::symlink_metadata(path)
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                self.error(format!("{name}: Cannot stat: {}", crate::io_message(&e)));
                return Ok(());
            }
        };
        if ctx.archive.is_some_and(|a| lexical(path) == a) {
            eprintln!("tar: {name}: file is the archive; not dumped");
            return Ok(());
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        let _ = header.set_username("root");
        let _ = header.set_groupname("root");
        let write_err = |e: io::Error| Fatal(format!("Cannot write: {}", crate::io_message(&e)));
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = match fs::read_link(path) {
                Ok(t) => t,
                Err(e) => {
                    self.error(format!("{name}: Cannot readlink: {}", crate::io_message(&e)));
                    return Ok(());
                }
            };
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            self.verbose(ctx, name);
            builder.append_link(&mut header, name, &target).map_err(write_err)?;
        } else if ft.is_dir() {
            let dir_name = if name.ends_with('/') {
                name.to_string()
            } else {
                format!("{name}/")
            };
            header.set_entry_type(EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            self.verbose(ctx, &dir_name);
            builder
                .append_data(&mut header, &dir_name, io::empty())
                .map_err(write_err)?;
            let mut children: Vec<OsString> = match fs::read_dir(path) {
                Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
                Err(e) => {
                    self.error(format!("{name}: Cannot open: {}", crate::io_message(&e)));
                    return Ok(());
                }
            };
            children.sort();
            for child in children {
                let child_name = format!("{dir_name}{}", child.to_string_lossy());
                self.add(builder, ctx, &path.join(&child), &child_name)?;
            }
        } else if ft.is_file() {
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    self.error(format!("{name}: Cannot open: {}", crate::io_message(&e)));
                    return Ok(());
                }
            };
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(meta.len());
            self.verbose(ctx, name);
            // A file that shrinks while it is read cannot fill its entry.
            builder
                .append_data(&mut header, name, file.take(meta.len()))
                .map_err(|e| Fatal(format!("{name}: {}", crate::io_message(&e))))?;
        } else {
            eprintln!("tar: {name}: file type not archived; ignored");
        }
        Ok(())
    }

    fn verbose(&self, ctx: &Create, name: &str) {
        if ctx.o.verbose {
            if ctx.to_stderr {
                eprintln!("{name}");
            } else {
                println!("{name}");
            }
        }
    }

    fn read(&mut self, o: &Options) -> Result<(), Fatal> {
        let archive = o.archive.clone().unwrap_or_else(|| "-".into());
        let input: Box<dyn Read> = if archive == "-" {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(&archive).map_err(|e| {
                Fatal(format!(
                    "{archive}: Cannot open: {}\ntar: Error is not recoverable: exiting now",
                    crate::io_message(&e)
                ))
            })?)
        };
        let mut input = BufReader::with_capacity(64 * 1024, input);
        let head = input
            .fill_buf()
            .map_err(|e| Fatal(format!("{archive}: Cannot read: {}", crate::io_message(&e))))?
            .to_vec();
        if head.starts_with(b"BZh")
            || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z'])
            || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        {
            return Err(Fatal(
                "the archive is compressed with bzip2, xz or zstd, which is not available here".into(),
            ));
        }
        let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(MultiGzDecoder::new(input))
        } else if o.gzip {
            return Err(Fatal("This does not look like a gzip archive\ntar: Child returned status 1\ntar: Error is not recoverable: exiting now".into()));
        } else {
            Box::new(input)
        };
        let mut tar = tar::Archive::new(reader);
        let entries = tar
            .entries()
            .map_err(|e| Fatal(format!("{archive}: Cannot read: {}", crate::io_message(&e))))?;
        let dest = PathBuf::from(o.directory.clone().unwrap_or_else(|| ".".into()));
        let wanted: Vec<String> = o
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Path(p) => Some(p.trim_end_matches('/').to_string()),
                Item::Dir(_) => None,
            })
            .collect();
        let mut found = vec![false; wanted.len()];
        let mut any = false;
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    if any {
                        self.error(format!("{archive}: {}", crate::io_message(&e)));
                    } else {
                        self.error("This does not look like a tar archive");
                    }
                    break;
                }
            };
            any = true;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if !wanted.is_empty() {
                let trimmed = name.trim_end_matches('/');
                let hit = wanted
                    .iter()
                    .position(|w| trimmed == w || trimmed.starts_with(&format!("{w}/")));
                match hit {
                    Some(i) => found[i] = true,
                    None => continue,
                }
            }
            if excluded(o, &name) {
                continue;
            }
            if o.mode == Some(Mode::List) {
                self.list(o, &entry, &name);
                continue;
            }
            self.extract(o, &dest, &mut entry, &name)?;
        }
        if !any && !self.failed && head.is_empty() {
            // An empty file: GNU tar says the same.
            self.error("This does not look like a tar archive");
        }
        for (w, f) in wanted.iter().zip(found) {
            if !f {
                self.error(format!("{w}: Not found in archive"));
            }
        }
        Ok(())
    }

    fn list<R: Read>(&mut self, o: &Options, entry: &tar::Entry<R>, name: &str) {
        let mut out = io::stdout().lock();
        if !o.verbose {
            let _ = writeln!(out, "{name}");
            return;
        }
        let h = entry.header();
        let kind = match h.entry_type() {
            EntryType::Directory => 'd',
            EntryType::Symlink => 'l',
            EntryType::Link => 'h',
            EntryType::Char => 'c',
            EntryType::Block => 'b',
            EntryType::Fifo => 'p',
            _ => '-',
        };
        let mode = h.mode().unwrap_or(0o644);
        let mut perms = String::with_capacity(10);
        perms.push(kind);
        for (bit, ch) in [
            (0o400, 'r'),
            (0o200, 'w'),
            (0o100, 'x'),
            (0o040, 'r'),
            (0o020, 'w'),
            (0o010, 'x'),
            (0o004, 'r'),
            (0o002, 'w'),
            (0o001, 'x'),
        ] {
            perms.push(if mode & bit != 0 { ch } else { '-' });
        }
        let user = h
            .username()
            .ok()
            .flatten()
            .filter(|u| !u.is_empty())
            .map_or_else(|| h.uid().unwrap_or(0).to_string(), str::to_string);
        let group = h
            .groupname()
            .ok()
            .flatten()
            .filter(|g| !g.is_empty())
            .map_or_else(|| h.gid().unwrap_or(0).to_string(), str::to_string);
        let size = entry.size().to_string();
        // GNU tar's layout: user/group and size share a column at least 19 wide.
        let pad = user.len() + 1 + group.len() + 1 + size.len();
        let width = 19usize.max(pad) - pad + size.len();
        let when = civil(h.mtime().unwrap_or(0));
        let mut line = format!("{perms} {user}/{group} {size:>width$} {when} {name}");
        if let Ok(Some(target)) = entry.link_name() {
            let arrow = if kind == 'l' { "->" } else { "link to" };
            line.push_str(&format!(" {arrow} {}", target.display()));
        }
        let _ = writeln!(out, "{line}");
    }

    fn extract<R: Read>(
        &mut self,
        o: &Options,
        dest: &Path,
        entry: &mut tar::Entry<R>,
        name: &str,
    ) -> Result<(), Fatal> {
        let kind = entry.header().entry_type();
        if o.to_stdout {
            if kind.is_file() {
                let mut out = io::stdout().lock();
                if let Err(e) = io::copy(entry, &mut out) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        return Err(Fatal("write error: Broken pipe".into()));
                    }
                    self.error(format!("{name}: Read error: {}", crate::io_message(&e)));
                }
            }
            return Ok(());
        }
        let trimmed = name.trim_start_matches('/');
        if trimmed.len() != name.len() && !self.warned_absolute {
            eprintln!("tar: Removing leading `/' from member names");
            self.warned_absolute = true;
        }
        let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        if parts.contains(&"..") {
            self.error(format!("{name}: Member name contains '..'"));
            return Ok(());
        }
        if parts.len() <= o.strip {
            return Ok(());
        }
        let rel: PathBuf = parts[o.strip..].iter().collect();
        let path = dest.join(&rel);
        if o.verbose {
            println!("{name}");
        }
        if let Some(parent) = path.parent()
            && let Err(e) = fs::create_dir_all(parent)
        {
            self.error(format!("{}: Cannot mkdir: {}", rel.display(), crate::io_message(&e)));
            return Ok(());
        }
        let exists = fs::symlink_metadata(&path);
        if kind != EntryType::Directory && exists.is_ok() {
            if o.keep_old {
                self.error(format!("{}: Cannot open: File exists", rel.display()));
                return Ok(());
            }
            if exists.as_ref().is_ok_and(|m| m.is_dir()) {
                let _ = fs::remove_dir(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        let mtime = entry.header().mtime().unwrap_or(0);
        let result: io::Result<()> = match kind {
            EntryType::Directory => fs::create_dir_all(&path),
            EntryType::Symlink => match entry.link_name() {
                Ok(Some(target)) => symlink(&target, &path),
                Ok(None) => Err(io::Error::new(io::ErrorKind::InvalidData, "symlink without a target")),
                Err(e) => Err(e),
            },
            EntryType::Link => match entry.link_name() {
                Ok(Some(target)) => {
                    let target: PathBuf = target
                        .to_string_lossy()
                        .split('/')
                        .filter(|p| !p.is_empty() && *p != ".")
                        .skip(o.strip)
                        .collect();
                    if target.components().any(|c| c == Component::ParentDir) {
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "hard link target contains '..'",
                        ))
                    } else {
                        fs::hard_link(dest.join(target), &path)
                    }
                }
                Ok(None) => Err(io::Error::new(io::ErrorKind::InvalidData, "hard link without a target")),
                Err(e) => Err(e),
            },
            k if k.is_file() => File::create(&path).and_then(|mut f| {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    let n = entry.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n])?;
                }
                if !o.touch {
                    let _ = f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
                }
                Ok(())
            }),
            _ => {
                eprintln!("tar: {name}: file type not extracted; ignored");
                Ok(())
            }
        };
        if let Err(e) = result {
            let verb = if kind.is_file() {
                "Cannot write"
            } else {
                "Cannot create"
            };
            self.error(format!("{}: {verb}: {}", rel.display(), crate::io_message(&e)));
        }
        Ok(())
    }
}

/// A writer that remembers whether a write failed.
struct Tracked {
    inner: Box<dyn Write>,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Write for Tracked {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed.set(true))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed.set(true))
    }
}

/// Creates the symlink `path` pointing at `target`, with wasi-libc's
/// `symlink` (std's WASI `symlink_path` is not stable).
fn symlink(target: &Path, path: &Path) -> io::Result<()> {
    use std::ffi::{CString, c_char, c_int};
    unsafe extern "C" {
        fn symlink(target: *const c_char, path: *const c_char) -> c_int;
    }
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte");
    let target = CString::new(target.to_string_lossy().into_owned()).map_err(invalid)?;
    let path = CString::new(path.to_string_lossy().into_owned()).map_err(invalid)?;
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    if unsafe { symlink(target.as_ptr(), path.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct Create<'a> {
    o: &'a Options,
    archive: Option<&'a Path>,
    to_stderr: bool,
}

/// `YYYY-MM-DD HH:MM` in UTC, as `tar -tv` shows a time.
fn civil(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let mut y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    if m <= 2 {
        y += 1;
    }
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil(0), "1970-01-01 00:00");
        assert_eq!(super::civil(1_700_000_000), "2023-11-14 22:13");
    }
}
