//! `gzip`, `gunzip` and `zcat`, written here on the flate2 crate, with GNU
//! gzip's options and messages: `-c -d -f -k -l -n -N -q -r -t -v -1..-9
//! -S SUF`, `--fast`, `--best` and their long forms. Status 0, 1 on an
//! error, 2 on a warning (an existing output, an unknown suffix).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::GzBuilder;
use flate2::read::MultiGzDecoder;

#[derive(Default)]
struct Options {
    decompress: bool,
    stdout: bool,
    force: bool,
    keep: bool,
    list: bool,
    no_name: bool,
    quiet: bool,
    recursive: bool,
    test: bool,
    verbose: bool,
    level: Option<u32>,
    suffix: Option<String>,
}

pub fn gzip(args: Vec<OsString>) -> i32 {
    run("gzip", Options::default(), args)
}

pub fn gunzip(args: Vec<OsString>) -> i32 {
    let options = Options {
        decompress: true,
        ..Options::default()
    };
    run("gunzip", options, args)
}

pub fn zcat(args: Vec<OsString>) -> i32 {
    let options = Options {
        decompress: true,
        stdout: true,
        ..Options::default()
    };
    run("zcat", options, args)
}

/// The outcome of the whole run: 0, then 2 after a warning, 1 after an
/// error (an error wins).
struct Status {
    name: &'static str,
    code: i32,
    quiet: bool,
}

impl Status {
    fn error(&mut self, message: impl std::fmt::Display) {
        eprintln!("{}: {message}", self.name);
        self.code = 1;
    }

    fn warning(&mut self, message: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}: {message}", self.name);
        }
        if self.code == 0 {
            self.code = 2;
        }
    }
}

fn usage(name: &str) -> String {
    format!("Usage: {name} [OPTION]... [FILE]...\nTry '{name} --help' for more information.")
}

fn run(name: &'static str, mut o: Options, args: Vec<OsString>) -> i32 {
    let mut files: Vec<OsString> = Vec::new();
    let mut args = args.into_iter().skip(1);
    let mut only_files = false;
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str().map(str::to_string) else {
            files.push(arg);
            continue;
        };
        if only_files || text == "-" || !text.starts_with('-') {
            files.push(arg);
            continue;
        }
        if text == "--" {
            only_files = true;
            continue;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (key, value) = match long.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (long, None),
            };
            match key {
                "stdout" | "to-stdout" => o.stdout = true,
                "decompress" | "uncompress" => o.decompress = true,
                "force" => o.force = true,
                "keep" => o.keep = true,
                "list" => o.list = true,
                "no-name" => o.no_name = true,
                "name" => o.no_name = false,
                "quiet" | "silent" => o.quiet = true,
                "recursive" => o.recursive = true,
                "test" => o.test = true,
                "verbose" => o.verbose = true,
                "fast" => o.level = Some(1),
                "best" => o.level = Some(9),
                "suffix" => match value.or_else(|| args.next().and_then(|a| a.into_string().ok())) {
                    Some(s) => o.suffix = Some(s),
                    None => {
                        eprintln!("{name}: option '--suffix' requires an argument\n{}", usage(name));
                        return 1;
                    }
                },
                "help" => {
                    println!(
                        "Usage: {name} [OPTION]... [FILE]...\nCompress or uncompress FILEs (by default, compress FILES in-place).\n\n  -c, --stdout      write on standard output, keep original files unchanged\n  -d, --decompress  decompress\n  -f, --force       force overwrite of output file\n  -k, --keep        keep (don't delete) input files\n  -l, --list        list compressed file contents\n  -n, --no-name     do not save or restore the original name and timestamp\n  -N, --name        save or restore the original name and timestamp\n  -q, --quiet       suppress all warnings\n  -r, --recursive   operate recursively on directories\n  -S, --suffix=SUF  use suffix SUF on compressed files\n  -t, --test        test compressed file integrity\n  -v, --verbose     verbose mode\n  -1, --fast        compress faster\n  -9, --best        compress better\n\nWith no FILE, or when FILE is -, read standard input."
                    );
                    return 0;
                }
                "version" => {
                    println!("{name} (stacyvm utilities, on flate2)");
                    return 0;
                }
                _ => {
                    eprintln!("{name}: unrecognized option '{text}'\n{}", usage(name));
                    return 1;
                }
            }
            continue;
        }
        let flags: Vec<char> = text[1..].chars().collect();
        let mut i = 0;
        while i < flags.len() {
            match flags[i] {
                'c' => o.stdout = true,
                'd' => o.decompress = true,
                'f' => o.force = true,
                'k' => o.keep = true,
                'l' => o.list = true,
                'n' => o.no_name = true,
                'N' => o.no_name = false,
                'q' => o.quiet = true,
                'r' => o.recursive = true,
                't' => o.test = true,
                'v' => o.verbose = true,
                d @ '1'..='9' => o.level = d.to_digit(10),
                'S' => {
                    let rest: String = flags[i + 1..].iter().collect();
                    let value = if rest.is_empty() {
                        args.next().and_then(|a| a.into_string().ok())
                    } else {
                        Some(rest)
                    };
                    match value {
                        Some(s) => o.suffix = Some(s),
                        None => {
                            eprintln!("{name}: option requires an argument -- 'S'\n{}", usage(name));
                            return 1;
                        }
                    }
                    break;
                }
                other => {
                    eprintln!("{name}: invalid option -- '{other}'\n{}", usage(name));
                    return 1;
                }
            }
            i += 1;
        }
    }
    if o.suffix.as_deref() == Some("") {
        eprintln!("{name}: invalid suffix ''");
        return 1;
    }
    if o.test || o.list {
        o.decompress = true;
    }
    let mut status = Status {
        name,
        code: 0,
        quiet: o.quiet,
    };
    if files.is_empty() {
        files.push("-".into());
    }
    if o.list {
        println!("         compressed        uncompressed  ratio uncompressed_name");
    }
    for file in files {
        if file == "-" {
            stdin(&o, &mut status);
        } else {
            path(&o, &mut status, Path::new(&file), true);
        }
    }
    status.code
}

/// Standard input to standard output.
fn stdin(o: &Options, status: &mut Status) {
    let mut out = io::stdout().lock();
    if o.list {
        let mut data = Vec::new();
        match io::stdin().lock().read_to_end(&mut data) {
            Ok(_) => list_line(&data, "stdout"),
            Err(e) => report(status, "stdin", &e),
        }
        return;
    }
    let input = io::stdin().lock();
    let result = if o.test {
        decompress(input, &mut io::sink())
    } else if o.decompress {
        decompress(input, &mut out)
    } else {
        compress(o, input, &mut out, None, None)
    };
    if let Err(e) = result.and_then(|_| out.flush()) {
        report(status, "stdin", &e);
    }
}

fn report(status: &mut Status, what: &str, e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        status.code = 1;
        return;
    }
    status.error(format!("{what}: {}", message(e)));
}

fn message(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "unexpected end of file".to_string(),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
            let text = e.to_string();
            if text.contains("invalid gzip header") {
                "not in gzip format".to_string()
            } else if text.contains("checksum") || text.contains("crc") {
                "invalid compressed data--crc error".to_string()
            } else {
                "invalid compressed data--format violated".to_string()
            }
        }
        _ => crate::io_message(e),
    }
}

fn suffix(o: &Options) -> &str {
    o.suffix.as_deref().unwrap_or(".gz")
}

/// One operand: a file, or a directory with `-r`.
fn path(o: &Options, status: &mut Status, path: &Path, named: bool) {
    let shown = path.display().to_string();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return status.error(format!("{shown}: {}", crate::io_message(&e))),
    };
    if meta.is_dir() {
        if !o.recursive {
            return status.warning(format!("{shown} is a directory -- ignored"));
        }
        let mut entries: Vec<PathBuf> = match fs::read_dir(path) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return status.error(format!("{shown}: {}", crate::io_message(&e))),
        };
        entries.sort();
        for entry in entries {
            self::path(o, status, &entry, false);
        }
        return;
    }
    if !meta.is_file() {
        return status.warning(format!("{shown} is not a directory or a regular file - ignored"));
    }
    let input = match File::open(path) {
        Ok(f) => BufReader::new(f),
        Err(e) => return status.error(format!("{shown}: {}", crate::io_message(&e))),
    };
    if o.list {
        let mut data = Vec::new();
        let mut input = input;
        if let Err(e) = input.read_to_end(&mut data) {
            return status.error(format!("{shown}: {}", crate::io_message(&e)));
        }
        if data.len() < 18 || data[..2] != [0x1f, 0x8b] {
            return status.error(format!("{shown}: not in gzip format"));
        }
        let name = strip_suffix(o, &shown).unwrap_or_else(|| shown.clone());
        list_line(&data, &name);
        return;
    }
    if o.test {
        if let Err(e) = decompress(input, &mut io::sink()) {
            return status.error(format!("{shown}: {}", message(&e)));
        }
        if o.verbose {
            eprintln!("{shown}:\t OK");
        }
        return;
    }
    if o.stdout {
        let mut out = io::stdout().lock();
        let result = if o.decompress {
            decompress(input, &mut out)
        } else {
            compress(o, input, &mut out, Some(path), meta.modified().ok())
        };
        if let Err(e) = result.and_then(|_| out.flush()) {
            report(status, &shown, &e);
        }
        return;
    }
    let target = if o.decompress {
        match strip_suffix(o, &shown) {
            Some(t) => t,
            None => {
                if named {
                    status.warning(format!("{shown}: unknown suffix -- ignored"));
                }
                return;
            }
        }
    } else {
        if shown.ends_with(suffix(o)) {
            if named {
                status.warning(format!("{shown} already has {} suffix -- unchanged", suffix(o)));
            }
            return;
        }
        format!("{shown}{}", suffix(o))
    };
    let target = PathBuf::from(target);
    if !o.force && fs::symlink_metadata(&target).is_ok() {
        return status.warning(format!("{} already exists; not overwritten", target.display()));
    }
    let mut out = match File::create(&target) {
        Ok(f) => io::BufWriter::with_capacity(64 * 1024, f),
        Err(e) => return status.error(format!("{}: {}", target.display(), crate::io_message(&e))),
    };
    let result = if o.decompress {
        decompress(input, &mut out)
    } else {
        compress(o, input, &mut out, Some(path), meta.modified().ok())
    };
    let result = result.and_then(|_| out.flush());
    drop(out);
    if let Err(e) = result {
        // A failed output is removed, and the input kept.
        let _ = fs::remove_file(&target);
        let what = if o.decompress || matches!(e.kind(), io::ErrorKind::InvalidData) {
            shown.clone()
        } else {
            target.display().to_string()
        };
        return report(status, &what, &e);
    }
    if let Ok(mtime) = meta.modified()
        && let Ok(f) = File::options().write(true).open(&target)
    {
        let _ = f.set_modified(mtime);
    }
    if o.verbose {
        let (from, to) = (meta.len(), fs::metadata(&target).map(|m| m.len()).unwrap_or(0));
        let (big, small) = if o.decompress { (to, from) } else { (from, to) };
        let ratio = if big == 0 {
            0.0
        } else {
            100.0 * (big as f64 - small as f64) / big as f64
        };
        eprintln!("{shown}:\t{ratio:5.1}% -- replaced with {}", target.display());
    }
    if !o.keep
        && let Err(e) = fs::remove_file(path)
    {
        status.error(format!("{shown}: {}", crate::io_message(&e)));
    }
}

/// The name of a compressed file's output, None if it has no known suffix.
fn strip_suffix(o: &Options, name: &str) -> Option<String> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let candidates: Vec<(&str, &str)> = match &o.suffix {
        Some(s) => vec![(s.as_str(), "")],
        None => vec![
            (".gz", ""),
            ("-gz", ""),
            (".z", ""),
            ("-z", ""),
            ("_z", ""),
            (".tgz", ".tar"),
            (".taz", ".tar"),
        ],
    };
    candidates.into_iter().find_map(|(suffix, replacement)| {
        let lower = name.to_ascii_lowercase();
        (lower.ends_with(&suffix.to_ascii_lowercase()) && name.len() - suffix.len() > base_start)
            .then(|| format!("{}{replacement}", &name[..name.len() - suffix.len()]))
    })
}

fn compress(
    o: &Options,
    input: impl Read,
    out: &mut dyn Write,
    name: Option<&Path>,
    mtime: Option<SystemTime>,
) -> io::Result<()> {
    let mut builder = GzBuilder::new();
    if !o.no_name {
        if let Some(base) = name.and_then(Path::file_name) {
            builder = builder.filename(base.to_string_lossy().as_bytes());
        }
        let secs = mtime
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO)
            .as_secs();
        builder = builder.mtime(u32::try_from(secs).unwrap_or(0));
    }
    let mut encoder = builder.write(out, Compression::new(o.level.unwrap_or(6)));
    copy(input, &mut encoder)?;
    encoder.try_finish()
}

fn decompress(input: impl Read, out: &mut dyn Write) -> io::Result<()> {
    let mut decoder = MultiGzDecoder::new(input);
    copy(&mut decoder, out).map(|_| ())
}

/// `io::copy` with a 64 KiB buffer.
fn copy(mut input: impl Read, out: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// One line of `gzip -l`: sizes from the file and its trailer.
fn list_line(data: &[u8], name: &str) {
    let compressed = data.len() as u64;
    let uncompressed = if data.len() >= 4 {
        let t = &data[data.len() - 4..];
        u64::from(u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
    } else {
        0
    };
    let ratio = if uncompressed == 0 {
        0.0
    } else {
        100.0 * (uncompressed as f64 - compressed as f64) / uncompressed as f64
    };
    println!("{compressed:>19} {uncompressed:>19} {ratio:5.1}% {name}");
}
