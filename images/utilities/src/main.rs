//! stacyvm's utilities: one WASI multicall program for the shell's
//! commands. `argv[0]` names the utility (`ls`, `/bin/grep`), as in a
//! busybox-style install; `utilities --list` lists them.
//!
//! - uutils coreutils (`ls`, `cat`, `sort`...), listed in `utilities.rs`;
//! - uutils findutils (`find`), diffutils (`diff`, `cmp`) and sed (`sed`);
//! - jaq's command line (`jq`, in `jq/`) and awk-rs (`awk`);
//! - written here: `grep` (with `egrep` and `fgrep`), `tar`, and `gzip`
//!   (with `gunzip` and `zcat`), on the regex, tar and flate2 crates.
//!
//! WASI has no process working directory: wasi-libc starts every program
//! at `/`. stacyvm passes the exec's working directory in `PWD`, so the
//! program moves there first, and relative paths mean what the shell meant.

mod awk;
mod diff;
mod grep;
mod gzip;
mod jq;
mod tar;

use std::ffi::OsString;
use std::io::Write;
use std::process::exit;

macro_rules! utilities {
    ($($name:literal => $krate:ident,)*) => {
        /// The utilities of uutils coreutils, sorted.
        const COREUTILS: &[&str] = &[$($name),*];

        /// Runs `util` with `args` (whose first item is the name it was
        /// called by); None if there is no such utility.
        fn run_coreutil(util: &str, args: Vec<OsString>) -> Option<i32> {
            match util {
                $($name => Some($krate::uumain(args.into_iter())),)*
                _ => None,
            }
        }
    };
}

include!("utilities.rs");

/// A utility that is not part of uutils coreutils.
type Main = fn(Vec<OsString>) -> i32;

/// The other utilities, sorted.
const OTHERS: &[(&str, Main)] = &[
    ("awk", awk::main),
    ("cmp", diff::cmp),
    ("diff", diff::diff),
    ("egrep", grep::egrep),
    ("fgrep", grep::fgrep),
    ("find", find),
    ("grep", grep::grep),
    ("gunzip", gzip::gunzip),
    ("gzip", gzip::gzip),
    ("jq", jq_main),
    ("sed", sed),
    ("tar", tar::main),
    ("zcat", gzip::zcat),
];

/// The name uutils keeps a utility's messages under.
fn canonical(util: &str) -> &str {
    match util {
        "[" => "test",
        "dir" | "vdir" => "ls",
        other => other,
    }
}

/// WASI's errno for "is a directory".
pub const EISDIR: i32 = 31;

/// An I/O error as the C library words it, without Rust's "(os error N)".
pub fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// `find` of uutils findutils. `-exec`, `-execdir` and `-ok` cannot start a
/// process on WASI; they fail with a message naming the command.
fn find(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("find: invalid (non-UTF-8) argument: {}", bad.to_string_lossy());
            return 1;
        }
    };
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let deps = findutils::find::StandardDependencies::new();
    let code = findutils::find::find_main(&strs, &deps);
    let _ = std::io::stdout().flush();
    code
}

/// `sed` of uutils sed.
fn sed(args: Vec<OsString>) -> i32 {
    let _ = uucore::locale::setup_localization("sed");
    sed::sed::uumain(args.into_iter())
}

/// `jq`: jaq's command line, which reads the process's arguments itself.
fn jq_main(_args: Vec<OsString>) -> i32 {
    jq::main()
}

fn main() {
    if let Some(pwd) = std::env::var_os("PWD") {
        // A missing directory leaves the program at `/`, as a shell would
        // report; the utility then says what it cannot find.
        let _ = std::env::set_current_dir(pwd);
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    let util = args
        .first()
        .map(|a| a.to_string_lossy().rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    if util == "utilities" {
        let mut names: Vec<&str> = COREUTILS.iter().copied().chain(OTHERS.iter().map(|(n, _)| *n)).collect();
        names.sort_unstable();
        let mut out = std::io::stdout().lock();
        for name in names {
            let _ = writeln!(out, "{name}");
        }
        exit(0);
    }
    if let Some((_, main)) = OTHERS.iter().find(|(name, _)| *name == util) {
        let code = main(args);
        let _ = std::io::stdout().flush();
        exit(code);
    }
    if let Err(e) = uucore::locale::setup_localization(canonical(&util)) {
        let _ = writeln!(std::io::stderr(), "{util}: cannot load messages: {e}");
        exit(1);
    }
    match run_coreutil(&util, args) {
        Some(code) => exit(code),
        None => {
            let _ = writeln!(std::io::stderr(), "{util}: command not found");
            exit(127);
        }
    }
}
