//! stacyvm's coreutils: the uutils coreutils utilities as one WASI
//! multicall program. `argv[0]` names the utility (`ls`, `/bin/ls`), as in
//! a busybox-style install; `coreutils UTIL ARGS...` works too.
//!
//! WASI has no process working directory: wasi-libc starts every program
//! at `/`. stacyvm passes the exec's working directory in `PWD`, so the
//! program moves there first, and relative paths mean what the shell meant.

use std::ffi::OsString;
use std::io::Write;
use std::process::exit;

macro_rules! utilities {
    ($($name:literal => $krate:ident,)*) => {
        /// Every utility this program runs, sorted.
        const UTILITIES: &[&str] = &[$($name),*];

        /// Runs `util` with `args` (whose first item is the name it was
        /// called by); None if there is no such utility.
        fn run(util: &str, args: Vec<OsString>) -> Option<i32> {
            match util {
                $($name => Some($krate::uumain(args.into_iter())),)*
                _ => None,
            }
        }
    };
}

include!("utilities.rs");

/// The name uutils keeps a utility's messages under.
fn canonical(util: &str) -> &str {
    match util {
        "[" => "test",
        "dir" | "vdir" => "ls",
        other => other,
    }
}

fn main() {
    if let Some(pwd) = std::env::var_os("PWD") {
        // A missing directory leaves the program at `/`, as a shell would
        // report; the utility then says what it cannot find.
        let _ = std::env::set_current_dir(pwd);
    }
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .map(|a| a.to_string_lossy().rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    if called == "coreutils" {
        args.remove(0);
        match args.first().map(|a| a.to_string_lossy().into_owned()).as_deref() {
            None | Some("--list") => {
                let mut out = std::io::stdout().lock();
                for util in UTILITIES {
                    let _ = writeln!(out, "{util}");
                }
                exit(0);
            }
            Some(_) => {}
        }
    }
    let util = args
        .first()
        .map(|a| a.to_string_lossy().rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    if let Err(e) = uucore::locale::setup_localization(canonical(&util)) {
        let _ = writeln!(std::io::stderr(), "{util}: cannot load messages: {e}");
        exit(1);
    }
    match run(&util, args) {
        Some(code) => exit(code),
        None => {
            let _ = writeln!(std::io::stderr(), "{util}: command not found");
            exit(127);
        }
    }
}
