//! The shell's builtins: the shell's own commands (`cd`, `export`, `exit`)
//! and the small set of utilities a sandbox command line needs (`echo`,
//! `cat`, `ls`...). They run in-process on the sandbox directory through
//! cap-std, and write errors in the words of sh and coreutils.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cap_std::fs::{MetadataExt, OpenOptions};

use super::exec::{Flow, Shell, Stop};
use super::io::{CmdIo, errno_text};
use crate::sandbox::path::SandboxPath;

pub type Builtin = fn(&mut Shell, &[String], &CmdIo) -> Flow<i32>;

/// Commands of the shell itself, found only by their bare name.
const SHELL_COMMANDS: &[(&str, Builtin)] = &[
    ("cd", cd),
    ("export", export),
    ("unset", unset),
    ("exit", exit),
    (":", true_),
];

/// Utilities, also found as `/bin/NAME` and `/usr/bin/NAME`.
const UTILITIES: &[(&str, Builtin)] = &[
    ("echo", echo),
    ("printf", printf),
    ("cat", cat),
    ("ls", ls),
    ("mkdir", mkdir),
    ("rm", rm),
    ("mv", mv),
    ("cp", cp),
    ("touch", touch),
    ("pwd", pwd),
    ("env", env),
    ("true", true_),
    ("false", false_),
    ("test", test),
    ("[", test),
    ("head", head),
    ("tail", tail),
    ("wc", wc),
    ("sleep", sleep),
    ("which", which),
];

/// The longest a `sleep` goes without checking the deadline and the client,
/// as for sleeping guests.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

/// Entries a recursive `cp` copies before it gives up, so that one command
/// cannot walk a huge tree forever (the same bound as globbing).
const COPY_BUDGET: usize = 100_000;

pub fn find(name: &str) -> Option<Builtin> {
    if let Some((_, f)) = SHELL_COMMANDS.iter().find(|(n, _)| *n == name) {
        return Some(*f);
    }
    let base = base_name(name);
    if base != name
        && !["/bin/", "/usr/bin/", "/usr/local/bin/"]
            .iter()
            .any(|d| name == format!("{d}{base}"))
    {
        return None;
    }
    UTILITIES.iter().find(|(n, _)| *n == base).map(|(_, f)| *f)
}

/// `cat` for `/bin/cat`.
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn err(sh: &mut Shell, io: &CmdIo, message: String) {
    sh.write_stderr(io, format!("{message}\n").as_bytes());
}

/// Splits leading `-xyz` flags from operands; `--` ends the flags.
fn flags<'a>(args: &'a [String], allowed: &str) -> Result<(Vec<char>, Vec<&'a str>), char> {
    let mut found = vec![];
    let mut operands = vec![];
    let mut done = false;
    for a in args {
        if !done && a == "--" {
            done = true;
        } else if !done && a.len() > 1 && a.starts_with('-') {
            for c in a[1..].chars() {
                if !allowed.contains(c) {
                    return Err(c);
                }
                found.push(c);
            }
        } else {
            operands.push(a.as_str());
        }
    }
    Ok((found, operands))
}

/// Reads a file operand (or stdin for `-`); the error is the errno text.
fn read_operand(sh: &mut Shell, io: &CmdIo, arg: &str) -> Flow<Result<Vec<u8>, String>> {
    if arg == "-" {
        return Ok(Ok(sh.read_stdin(&io.stdin)?));
    }
    let path = match sh.resolve_path(arg) {
        Ok(p) => p,
        Err(why) => return Ok(Err(why.into())),
    };
    Ok(match sh.root.metadata(path.relative()) {
        Ok(m) if m.is_dir() => Err("Is a directory".into()),
        Ok(_) => sh.root.read(path.relative()).map_err(|e| errno_text(&e)),
        Err(e) => Err(errno_text(&e)),
    })
}

fn true_(_: &mut Shell, _: &[String], _: &CmdIo) -> Flow<i32> {
    Ok(0)
}

fn false_(_: &mut Shell, _: &[String], _: &CmdIo) -> Flow<i32> {
    Ok(1)
}

fn exit(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let status = match args.get(1) {
        None => sh.status,
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n >= 0 => (n & 0xff) as i32,
            _ => {
                err(sh, io, format!("sh: 1: exit: Illegal number: {n}"));
                2
            }
        },
    };
    Err(Stop::Exit(status))
}

fn cd(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (target, print) = match args.get(1).map(String::as_str) {
        None => (sh.vars.get("HOME").cloned().unwrap_or_else(|| "/".into()), false),
        Some("-") => (
            sh.vars.get("OLDPWD").cloned().unwrap_or_else(|| sh.cwd.to_string()),
            true,
        ),
        Some(dir) => (dir.to_string(), false),
    };
    let path = match sh.resolve_path(&target) {
        Ok(p) if sh.root.metadata(p.relative()).is_ok_and(|m| m.is_dir()) => p,
        _ => {
            err(sh, io, format!("sh: 1: cd: can't cd to {target}"));
            return Ok(2);
        }
    };
    let old = sh.cwd.to_string();
    sh.cwd = path;
    let now = sh.cwd.to_string();
    sh.set_var("OLDPWD", old);
    sh.set_var("PWD", now.clone());
    if print {
        sh.write(&io.stdout, format!("{now}\n").as_bytes());
    }
    Ok(0)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `'it'\''s'`: a value as sh would read it back.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn export(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        let mut text = String::new();
        for k in &sh.exported {
            match sh.vars.get(k) {
                Some(v) => text.push_str(&format!("export {k}={}\n", sh_quote(v))),
                None => text.push_str(&format!("export {k}\n")),
            }
        }
        sh.write(&io.stdout, text.as_bytes());
        return Ok(0);
    }
    let mut status = 0;
    for arg in &args[1..] {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg.as_str(), None),
        };
        if !is_name(name) {
            err(sh, io, format!("sh: 1: export: {arg}: bad variable name"));
            status = 2;
            continue;
        }
        if let Some(v) = value {
            sh.set_var(name, v.to_string());
        }
        sh.exported.insert(name.to_string());
    }
    Ok(status)
}

fn unset(sh: &mut Shell, args: &[String], _: &CmdIo) -> Flow<i32> {
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        sh.vars.remove(name);
        sh.exported.remove(name);
        sh.user_set.insert(name.clone());
    }
    Ok(0)
}

fn pwd(sh: &mut Shell, _: &[String], io: &CmdIo) -> Flow<i32> {
    let text = format!("{}\n", sh.cwd);
    sh.write(&io.stdout, text.as_bytes());
    Ok(0)
}

fn env(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut assignments = vec![];
    let mut rest = &args[1..];
    while let Some((first, tail)) = rest.split_first() {
        match first.split_once('=') {
            Some((k, v)) if is_name(k) => assignments.push((k.to_string(), v.to_string())),
            _ => break,
        }
        rest = tail;
    }
    if rest.is_empty() {
        let mut vars = sh.environment(&Default::default());
        vars.extend(assignments);
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        sh.write(&io.stdout, text.as_bytes());
        return Ok(0);
    }
    sh.command(rest, &assignments, io)
}

/// Backslash escapes of `echo -e`, `printf`'s format and `%b`. Returns the
/// bytes and whether `\c` asked for output to stop.
fn unescape(s: &str, octal_needs_zero: bool) -> (Vec<u8>, bool) {
    let mut out = vec![];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('r') => out.push(b'\r'),
            Some('a') => out.push(7),
            Some('b') => out.push(8),
            Some('e') => out.push(27),
            Some('f') => out.push(12),
            Some('v') => out.push(11),
            Some('\\') => out.push(b'\\'),
            Some('c') => return (out, true),
            Some(d @ '0'..='7') => {
                let mut value = if octal_needs_zero && d == '0' {
                    0
                } else {
                    d as u32 - '0' as u32
                };
                let max = if octal_needs_zero && d == '0' { 3 } else { 2 };
                for _ in 0..max {
                    match chars.peek() {
                        Some(o @ '0'..='7') => {
                            value = value * 8 + (*o as u32 - '0' as u32);
                            chars.next();
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            Some('x') => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match chars.peek().and_then(|c| c.to_digit(16)) {
                        Some(v) => {
                            value = value * 16 + v;
                            chars.next();
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.extend_from_slice(b"\\x");
                } else {
                    out.push(value as u8);
                }
            }
            Some(other) => {
                out.push(b'\\');
                let mut buf = [0; 4];
                out.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
            }
            None => out.push(b'\\'),
        }
    }
    (out, false)
}

fn echo(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (mut newline, mut escapes) = (true, false);
    let mut start = 1;
    for a in &args[1..] {
        if a.len() > 1 && a.starts_with('-') && a[1..].chars().all(|c| matches!(c, 'n' | 'e' | 'E')) {
            for c in a[1..].chars() {
                match c {
                    'n' => newline = false,
                    'e' => escapes = true,
                    _ => escapes = false,
                }
            }
            start += 1;
        } else {
            break;
        }
    }
    let text = args[start..].join(" ");
    let mut out = if escapes {
        let (bytes, stop) = unescape(&text, true);
        if stop {
            newline = false;
        }
        bytes
    } else {
        text.into_bytes()
    };
    if newline {
        out.push(b'\n');
    }
    sh.write(&io.stdout, &out);
    Ok(0)
}

/// One `%` conversion of a printf format.
struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    fn pad(&self, body: String, numeric: bool) -> String {
        let len = body.chars().count();
        if len >= self.width {
            return body;
        }
        let fill = self.width - len;
        if self.left {
            format!("{body}{}", " ".repeat(fill))
        } else if self.zero && numeric {
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            format!("{sign}{}{digits}", "0".repeat(fill))
        } else {
            format!("{}{body}", " ".repeat(fill))
        }
    }
}

fn printf_number(arg: &str) -> Result<i64, String> {
    let t = arg.trim();
    if let Some(c) = t.strip_prefix(['\'', '"']) {
        return Ok(c.chars().next().map(|c| c as i64).unwrap_or(0));
    }
    if t.is_empty() {
        return Ok(0);
    }
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let parsed = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse()
    };
    parsed
        .map(|n| if neg { -n } else { n })
        .map_err(|_| format!("printf: {arg}: invalid number"))
}

fn printf(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let Some(format) = args.get(1) else {
        err(sh, io, "printf: usage: printf format [arguments]".into());
        return Ok(2);
    };
    let mut operands = args[2..].iter().map(String::as_str);
    let mut remaining = args.len() - 2;
    let mut out: Vec<u8> = vec![];
    let mut status = 0;
    let mut errors = vec![];
    'outer: loop {
        let mut used = 0;
        let mut chars = format.chars().peekable();
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let (bytes, stop) = unescape(&std::mem::take(&mut literal), false);
            out.extend(bytes);
            if stop {
                break 'outer;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                out.push(b'%');
                continue;
            }
            let mut spec = Spec {
                left: false,
                zero: false,
                plus: false,
                width: 0,
                precision: None,
            };
            while let Some(f) = chars.peek().copied().filter(|c| "-0+ #".contains(*c)) {
                match f {
                    '-' => spec.left = true,
                    '0' => spec.zero = true,
                    '+' => spec.plus = true,
                    _ => {}
                }
                chars.next();
            }
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                spec.width = spec.width * 10 + d as usize;
                chars.next();
            }
            if chars.peek() == Some(&'.') {
                chars.next();
                let mut p = 0;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    p = p * 10 + d as usize;
                    chars.next();
                }
                spec.precision = Some(p);
            }
            let Some(conversion) = chars.next() else {
                out.push(b'%');
                break;
            };
            let mut next_arg = || {
                let a = operands.next();
                if a.is_some() {
                    used += 1;
                    remaining -= 1;
                }
                a.unwrap_or("")
            };
            let text = match conversion {
                's' => {
                    let a = next_arg();
                    let a: String = match spec.precision {
                        Some(p) => a.chars().take(p).collect(),
                        None => a.to_string(),
                    };
                    spec.pad(a, false)
                }
                'b' => {
                    let (bytes, stop) = unescape(next_arg(), true);
                    out.extend(spec.pad(String::from_utf8_lossy(&bytes).into_owned(), false).as_bytes());
                    if stop {
                        break 'outer;
                    }
                    continue;
                }
                'c' => spec.pad(next_arg().chars().next().map(String::from).unwrap_or_default(), false),
                'd' | 'i' | 'u' | 'x' | 'X' | 'o' => {
                    let a = next_arg();
                    let n = printf_number(a).unwrap_or_else(|e| {
                        errors.push(e);
                        0
                    });
                    let body = match conversion {
                        'x' => format!("{n:x}"),
                        'X' => format!("{n:X}"),
                        'o' => format!("{n:o}"),
                        _ if spec.plus && n >= 0 => format!("+{n}"),
                        _ => n.to_string(),
                    };
                    spec.pad(body, true)
                }
                'f' | 'e' | 'g' => {
                    let a = next_arg();
                    let n: f64 = if a.trim().is_empty() {
                        0.0
                    } else {
                        a.trim().parse().unwrap_or_else(|_| {
                            errors.push(format!("printf: {a}: invalid number"));
                            0.0
                        })
                    };
                    let p = spec.precision.unwrap_or(6);
                    let body = match conversion {
                        'e' => format!("{n:.p$e}"),
                        'g' => format!("{n}"),
                        _ => format!("{n:.p$}"),
                    };
                    spec.pad(body, true)
                }
                other => {
                    errors.push(format!("printf: %{other}: invalid directive"));
                    status = 1;
                    break 'outer;
                }
            };
            out.extend(text.as_bytes());
        }
        let (bytes, stop) = unescape(&literal, false);
        out.extend(bytes);
        // The format is reused while operands remain, as POSIX says.
        if stop || remaining == 0 || used == 0 {
            break;
        }
    }
    sh.write(&io.stdout, &out);
    for e in errors {
        err(sh, io, e);
        status = 1;
    }
    Ok(status)
}

fn cat(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let operands: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| *a == "-" || !a.starts_with('-'))
        .collect();
    let operands = if operands.is_empty() { vec!["-"] } else { operands };
    let mut status = 0;
    for arg in operands {
        match read_operand(sh, io, arg)? {
            Ok(data) => sh.write(&io.stdout, &data),
            Err(why) => {
                err(sh, io, format!("cat: {arg}: {why}"));
                status = 1;
            }
        }
    }
    Ok(status)
}

fn mode_string(meta: &cap_std::fs::Metadata) -> String {
    let kind = if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'l'
    } else {
        '-'
    };
    let mode = meta.mode();
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn long_line(meta: &cap_std::fs::Metadata, name: &str, size_width: usize) -> String {
    let modified = meta
        .modified()
        .map(|t| t.into_std())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    // "2026-11-29T16:33:48Z" -> "2026-11-29 16:33", as --time-style=long-iso.
    let stamp = humantime::format_rfc3339_seconds(modified).to_string();
    let when = format!("{} {}", &stamp[..10], &stamp[11..16]);
    let size = if meta.is_dir() { 4096 } else { meta.len() };
    format!("{} 1 root root {size:>size_width$} {when} {name}\n", mode_string(meta))
}

fn ls(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (opts, operands) = match flags(&args[1..], "laA1dh") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("ls: invalid option -- '{c}'"));
            return Ok(2);
        }
    };
    let long = opts.contains(&'l');
    let all = opts.contains(&'a');
    let almost_all = opts.contains(&'A') || all;
    let list_dirs_themselves = opts.contains(&'d');
    let operands = if operands.is_empty() { vec!["."] } else { operands };
    let mut status = 0;
    let mut files: Vec<(String, cap_std::fs::Metadata)> = vec![];
    let mut dirs: Vec<(&str, SandboxPath)> = vec![];
    for arg in &operands {
        let found = sh
            .resolve_path(arg)
            .map_err(String::from)
            .and_then(|p| match sh.root.metadata(p.relative()) {
                Ok(m) => Ok((p, m)),
                Err(e) => Err(errno_text(&e)),
            });
        match found {
            Ok((p, m)) if m.is_dir() && !list_dirs_themselves => dirs.push((arg, p)),
            Ok((_, m)) => files.push((arg.to_string(), m)),
            Err(why) => {
                err(sh, io, format!("ls: cannot access '{arg}': {why}"));
                status = 2;
            }
        }
    }
    let mut text = String::new();
    let render = |entries: &[(String, cap_std::fs::Metadata)], text: &mut String| {
        let width = entries
            .iter()
            .map(|(_, m)| if m.is_dir() { 4 } else { m.len().to_string().len() })
            .max()
            .unwrap_or(1);
        for (name, meta) in entries {
            if long {
                text.push_str(&long_line(meta, name, width));
            } else {
                text.push_str(name);
                text.push('\n');
            }
        }
    };
    files.sort_by(|a, b| a.0.cmp(&b.0));
    render(&files, &mut text);
    let headers = operands.len() > 1;
    for (i, (arg, path)) in dirs.iter().enumerate() {
        if headers {
            if i > 0 || !files.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("{arg}:\n"));
        }
        let mut entries = vec![];
        if all {
            for dot in [".", ".."] {
                if let Ok(m) = sh.root.metadata(path.relative()) {
                    entries.push((dot.to_string(), m));
                }
            }
        }
        match sh.root.read_dir(path.relative()) {
            Ok(items) => {
                for item in items.flatten() {
                    let name = item.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && !almost_all {
                        continue;
                    }
                    if let Ok(m) = item.metadata() {
                        entries.push((name, m));
                    }
                }
            }
            Err(e) => {
                err(sh, io, format!("ls: cannot open directory '{arg}': {}", errno_text(&e)));
                status = 2;
                continue;
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if long {
            text.push_str(&format!("total {}\n", entries.len()));
        }
        render(&entries, &mut text);
    }
    sh.write(&io.stdout, text.as_bytes());
    Ok(status)
}

fn mkdir(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (opts, operands) = match flags(&args[1..], "pv") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("mkdir: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    if operands.is_empty() {
        err(sh, io, "mkdir: missing operand".into());
        return Ok(1);
    }
    let parents = opts.contains(&'p');
    let mut status = 0;
    for arg in operands {
        let result = sh.resolve_path(arg).map_err(String::from).and_then(|p| {
            if parents {
                if p.is_root() {
                    return Ok(());
                }
                sh.root.create_dir_all(p.relative()).map_err(|e| errno_text(&e))
            } else {
                sh.root.create_dir(p.relative()).map_err(|e| errno_text(&e))
            }
        });
        if let Err(why) = result {
            err(sh, io, format!("mkdir: cannot create directory '{arg}': {why}"));
            status = 1;
        }
    }
    Ok(status)
}

fn rm(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (opts, operands) = match flags(&args[1..], "rRfv") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("rm: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    let recursive = opts.iter().any(|c| matches!(c, 'r' | 'R'));
    let force = opts.contains(&'f');
    if operands.is_empty() && !force {
        err(sh, io, "rm: missing operand".into());
        return Ok(1);
    }
    let mut status = 0;
    for arg in operands {
        if matches!(base_name(arg.trim_end_matches('/')), "." | "..") {
            err(
                sh,
                io,
                format!("rm: refusing to remove '.' or '..' directory: skipping '{arg}'"),
            );
            status = 1;
            continue;
        }
        let path = match sh.resolve_path(arg) {
            Ok(p) if p.is_root() => {
                err(sh, io, "rm: it is dangerous to operate recursively on '/'".into());
                status = 1;
                continue;
            }
            Ok(p) => p,
            Err(why) => {
                err(sh, io, format!("rm: cannot remove '{arg}': {why}"));
                status = 1;
                continue;
            }
        };
        let result = match sh.root.symlink_metadata(path.relative()) {
            Err(e) if force && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(errno_text(&e)),
            Ok(m) if m.is_dir() && !recursive => Err("Is a directory".into()),
            Ok(m) if m.is_dir() => sh.root.remove_dir_all(path.relative()).map_err(|e| errno_text(&e)),
            Ok(_) => sh.root.remove_file(path.relative()).map_err(|e| errno_text(&e)),
        };
        if let Err(why) = result {
            err(sh, io, format!("rm: cannot remove '{arg}': {why}"));
            status = 1;
        }
    }
    sh.disk.forget();
    Ok(status)
}

/// The destinations of `mv`/`cp`: into a directory, or onto one name.
fn destinations(sh: &mut Shell, name: &str, operands: &[&str], io: &CmdIo) -> Option<Vec<(String, SandboxPath)>> {
    let (last, sources) = operands.split_last()?;
    if sources.is_empty() {
        err(
            sh,
            io,
            format!("{name}: missing destination file operand after '{last}'"),
        );
        return None;
    }
    let dest = match sh.resolve_path(last) {
        Ok(p) => p,
        Err(why) => {
            err(sh, io, format!("{name}: cannot access '{last}': {why}"));
            return None;
        }
    };
    let into_dir = sh.root.metadata(dest.relative()).is_ok_and(|m| m.is_dir());
    if !into_dir && sources.len() > 1 {
        err(sh, io, format!("{name}: target '{last}' is not a directory"));
        return None;
    }
    let mut out = vec![];
    for src in sources {
        let target = if into_dir {
            match dest.join(base_name(src.trim_end_matches('/'))) {
                Ok(p) => p,
                Err(_) => continue,
            }
        } else {
            dest.clone()
        };
        out.push((src.to_string(), target));
    }
    Some(out)
}

fn mv(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (_, operands) = match flags(&args[1..], "fvn") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("mv: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    if operands.is_empty() {
        err(sh, io, "mv: missing file operand".into());
        return Ok(1);
    }
    let Some(moves) = destinations(sh, "mv", &operands, io) else {
        return Ok(1);
    };
    let mut status = 0;
    for (src, to) in moves {
        let from = match sh.resolve_path(&src) {
            Ok(p) if !p.is_root() && sh.root.symlink_metadata(p.relative()).is_ok() => p,
            _ => {
                err(sh, io, format!("mv: cannot stat '{src}': No such file or directory"));
                status = 1;
                continue;
            }
        };
        if to.components().starts_with(from.components()) && to != from {
            err(
                sh,
                io,
                format!("mv: cannot move '{src}' to a subdirectory of itself, '{to}'"),
            );
            status = 1;
            continue;
        }
        if let Err(e) = sh.root.rename(from.relative(), &sh.root, to.relative()) {
            err(sh, io, format!("mv: cannot move '{src}' to '{to}': {}", errno_text(&e)));
            status = 1;
        }
    }
    Ok(status)
}

fn cp(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (opts, operands) = match flags(&args[1..], "rRafpv") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("cp: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    if operands.is_empty() {
        err(sh, io, "cp: missing file operand".into());
        return Ok(1);
    }
    let recursive = opts.iter().any(|c| matches!(c, 'r' | 'R' | 'a'));
    let Some(copies) = destinations(sh, "cp", &operands, io) else {
        return Ok(1);
    };
    let mut status = 0;
    for (src, to) in copies {
        let from = match sh.resolve_path(&src) {
            Ok(p) if sh.root.metadata(p.relative()).is_ok() => p,
            _ => {
                err(sh, io, format!("cp: cannot stat '{src}': No such file or directory"));
                status = 1;
                continue;
            }
        };
        let is_dir = sh.root.metadata(from.relative()).is_ok_and(|m| m.is_dir());
        if is_dir && !recursive {
            err(sh, io, format!("cp: -r not specified; omitting directory '{src}'"));
            status = 1;
            continue;
        }
        if is_dir && to.components().starts_with(from.components()) {
            err(
                sh,
                io,
                format!("cp: cannot copy a directory, '{src}', into itself, '{to}'"),
            );
            status = 1;
            continue;
        }
        let mut budget = COPY_BUDGET;
        if let Err(why) = copy_tree(sh, &from, &to, &mut budget) {
            err(sh, io, format!("cp: {why}"));
            status = 1;
        }
    }
    Ok(status)
}

fn copy_tree(sh: &mut Shell, from: &SandboxPath, to: &SandboxPath, budget: &mut usize) -> Result<(), String> {
    if *budget == 0 {
        return Err(format!("too many files to copy; stopped at '{from}'"));
    }
    *budget -= 1;
    let meta = sh
        .root
        .metadata(from.relative())
        .map_err(|e| format!("cannot stat '{from}': {}", errno_text(&e)))?;
    if meta.is_dir() {
        if !sh.root.metadata(to.relative()).is_ok_and(|m| m.is_dir()) {
            sh.root
                .create_dir(to.relative())
                .map_err(|e| format!("cannot create directory '{to}': {}", errno_text(&e)))?;
        }
        let mut names: Vec<String> = sh
            .root
            .read_dir(from.relative())
            .map_err(|e| format!("cannot open '{from}': {}", errno_text(&e)))?
            .flatten()
            .map(|i| i.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let (Ok(f), Ok(t)) = (from.join(&name), to.join(&name)) else {
                continue;
            };
            copy_tree(sh, &f, &t, budget)?;
        }
        return Ok(());
    }
    let data = sh
        .root
        .read(from.relative())
        .map_err(|e| format!("cannot open '{from}' for reading: {}", errno_text(&e)))?;
    sh.disk
        .charge(data.len() as u64)
        .map_err(|e| format!("error writing '{to}': {}", errno_text(&e)))?;
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    let mut file = sh
        .root
        .open_with(to.relative(), &opts)
        .map_err(|e| format!("cannot create regular file '{to}': {}", errno_text(&e)))?;
    file.write_all(&data)
        .map_err(|e| format!("error writing '{to}': {}", errno_text(&e)))?;
    file.set_permissions(cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(
        meta.mode() & 0o777,
    )))
    .ok();
    Ok(())
}

fn touch(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (_, operands) = match flags(&args[1..], "ac") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("touch: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    if operands.is_empty() {
        err(sh, io, "touch: missing file operand".into());
        return Ok(1);
    }
    let mut status = 0;
    for arg in operands {
        let result = sh.resolve_path(arg).map_err(String::from).and_then(|p| {
            if p.is_root() || sh.root.metadata(p.relative()).is_ok_and(|m| m.is_dir()) {
                return Ok(());
            }
            let mut opts = OpenOptions::new();
            opts.write(true).create(true);
            let file = sh.root.open_with(p.relative(), &opts).map_err(|e| errno_text(&e))?;
            file.into_std()
                .set_modified(std::time::SystemTime::now())
                .map_err(|e| errno_text(&e))
        });
        if let Err(why) = result {
            err(sh, io, format!("touch: cannot touch '{arg}': {why}"));
            status = 1;
        }
    }
    Ok(status)
}

/// `test` and `[`: POSIX expressions with `!`, `-a`, `-o` and parentheses.
fn test(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let name = base_name(&args[0]);
    let mut operands: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    if name == "[" {
        if operands.last() != Some(&"]") {
            err(sh, io, "sh: 1: [: missing ]".into());
            return Ok(2);
        }
        operands.pop();
    }
    let mut eval = TestEval {
        sh,
        args: &operands,
        pos: 0,
    };
    let result = eval.or().and_then(|value| {
        if eval.pos < operands.len() {
            Err(format!("{}: unexpected operator", operands[eval.pos]))
        } else {
            Ok(value)
        }
    });
    match result {
        Ok(true) => Ok(0),
        Ok(false) => Ok(1),
        Err(why) => {
            err(sh, io, format!("sh: 1: {name}: {why}"));
            Ok(2)
        }
    }
}

struct TestEval<'a, 's> {
    sh: &'s Shell,
    args: &'a [&'a str],
    pos: usize,
}

const UNARY: &[&str] = &["-e", "-f", "-d", "-s", "-r", "-w", "-x", "-L", "-h", "-z", "-n"];
const BINARY: &[&str] = &["=", "==", "!=", "-eq", "-ne", "-lt", "-gt", "-le", "-ge"];

impl<'a> TestEval<'a, '_> {
    fn peek(&self, offset: usize) -> Option<&'a str> {
        self.args.get(self.pos + offset).copied()
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut value = self.and()?;
        while self.peek(0) == Some("-o") {
            self.pos += 1;
            value |= self.and()?;
        }
        Ok(value)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut value = self.not()?;
        while self.peek(0) == Some("-a") {
            self.pos += 1;
            value &= self.not()?;
        }
        Ok(value)
    }

    fn not(&mut self) -> Result<bool, String> {
        let binary_next = self.peek(1).is_some_and(|op| BINARY.contains(&op)) && self.peek(2).is_some();
        if self.peek(0) == Some("!") && !binary_next {
            self.pos += 1;
            return Ok(!self.not()?);
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<bool, String> {
        let Some(first) = self.peek(0) else {
            return Ok(false);
        };
        if let (Some(op), Some(right)) = (self.peek(1), self.peek(2))
            && BINARY.contains(&op)
        {
            self.pos += 3;
            return binary(first, op, right);
        }
        if first == "(" && self.peek(1).is_some() {
            self.pos += 1;
            let value = self.or()?;
            if self.peek(0) != Some(")") {
                return Err("missing )".into());
            }
            self.pos += 1;
            return Ok(value);
        }
        if UNARY.contains(&first)
            && let Some(operand) = self.peek(1)
        {
            self.pos += 2;
            return Ok(self.unary(first, operand));
        }
        self.pos += 1;
        Ok(!first.is_empty())
    }

    fn unary(&self, op: &str, operand: &str) -> bool {
        match op {
            "-z" => return operand.is_empty(),
            "-n" => return !operand.is_empty(),
            _ => {}
        }
        let Ok(path) = self.sh.resolve_path(operand) else {
            return false;
        };
        let root = &self.sh.root;
        if matches!(op, "-L" | "-h") {
            return root
                .symlink_metadata(path.relative())
                .is_ok_and(|m| m.file_type().is_symlink());
        }
        let Ok(meta) = root.metadata(path.relative()) else {
            return false;
        };
        match op {
            "-f" => meta.is_file(),
            "-d" => meta.is_dir(),
            "-s" => meta.len() > 0,
            "-x" => meta.mode() & 0o111 != 0,
            _ => true,
        }
    }
}

fn binary(left: &str, op: &str, right: &str) -> Result<bool, String> {
    let int = |s: &str| s.trim().parse::<i64>().map_err(|_| format!("Illegal number: {s}"));
    Ok(match op {
        "=" | "==" => left == right,
        "!=" => left != right,
        "-eq" => int(left)? == int(right)?,
        "-ne" => int(left)? != int(right)?,
        "-lt" => int(left)? < int(right)?,
        "-gt" => int(left)? > int(right)?,
        "-le" => int(left)? <= int(right)?,
        _ => int(left)? >= int(right)?,
    })
}

/// How `head` and `tail` count, from `-n N`, `-c N`, `-N` and `+N`.
struct Count {
    bytes: bool,
    n: usize,
    /// `tail -n +N`: from the Nth on.
    from_start: bool,
}

fn count_options<'a>(name: &str, args: &'a [String]) -> Result<(Count, Vec<&'a str>), String> {
    let mut count = Count {
        bytes: false,
        n: 10,
        from_start: false,
    };
    let mut files = vec![];
    let mut i = 0;
    let mut set = |value: &str, bytes: bool| -> Result<(), String> {
        let (from_start, digits) = match value.strip_prefix('+') {
            Some(d) => (true, d),
            None => (false, value.strip_prefix('-').unwrap_or(value)),
        };
        count.n = digits.parse().map_err(|_| {
            let what = if bytes { "bytes" } else { "lines" };
            format!("{name}: invalid number of {what}: '{value}'")
        })?;
        count.bytes = bytes;
        count.from_start = from_start;
        Ok(())
    };
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-n" | "-c" => {
                let value = args
                    .get(i + 1)
                    .ok_or_else(|| format!("{name}: option requires an argument -- '{}'", &a[1..]))?;
                set(value, a == "-c")?;
                i += 1;
            }
            _ if a.starts_with("-n") => set(&a[2..], false)?,
            _ if a.starts_with("-c") => set(&a[2..], true)?,
            _ if a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b.is_ascii_digit()) => {
                set(&a[1..], false)?
            }
            "-" => files.push(a),
            _ if a.starts_with('-') && a.len() > 1 => {
                return Err(format!("{name}: invalid option -- '{}'", &a[1..2]));
            }
            _ => files.push(a),
        }
        i += 1;
    }
    Ok((count, files))
}

fn head(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    head_or_tail(sh, args, io, "head")
}

fn tail(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    head_or_tail(sh, args, io, "tail")
}

fn head_or_tail(sh: &mut Shell, args: &[String], io: &CmdIo, name: &str) -> Flow<i32> {
    let (count, files) = match count_options(name, &args[1..]) {
        Ok(x) => x,
        Err(why) => {
            err(sh, io, why);
            return Ok(1);
        }
    };
    let files = if files.is_empty() { vec!["-"] } else { files };
    let headers = files.len() > 1;
    let mut status = 0;
    let mut out = vec![];
    for (i, arg) in files.iter().enumerate() {
        let data = match read_operand(sh, io, arg)? {
            Ok(d) => d,
            Err(why) => {
                let verb = if why == "Is a directory" {
                    "error reading"
                } else {
                    "cannot open"
                };
                err(sh, io, format!("{name}: {verb} '{arg}': {why}"));
                status = 1;
                continue;
            }
        };
        if headers {
            if i > 0 {
                out.push(b'\n');
            }
            let shown = if *arg == "-" { "standard input" } else { arg };
            out.extend(format!("==> {shown} <==\n").as_bytes());
        }
        // Where each unit (byte or line) starts.
        let starts: Vec<usize> = if count.bytes {
            (0..data.len()).collect()
        } else {
            std::iter::once(0)
                .chain(
                    data.iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b'\n')
                        .map(|(i, _)| i + 1),
                )
                .filter(|&s| s < data.len())
                .collect()
        };
        let at = |k: usize| starts.get(k).copied().unwrap_or(data.len());
        let slice = if name == "head" {
            &data[..at(count.n)]
        } else if count.from_start {
            &data[at(count.n.saturating_sub(1))..]
        } else {
            &data[at(starts.len().saturating_sub(count.n))..]
        };
        out.extend_from_slice(slice);
    }
    sh.write(&io.stdout, &out);
    Ok(status)
}

fn wc(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (opts, operands) = match flags(&args[1..], "lwcm") {
        Ok(x) => x,
        Err(c) => {
            err(sh, io, format!("wc: invalid option -- '{c}'"));
            return Ok(1);
        }
    };
    // GNU order: lines, words, characters, bytes.
    let mut show = [
        opts.contains(&'l'),
        opts.contains(&'w'),
        opts.contains(&'m'),
        opts.contains(&'c'),
    ];
    if !show.iter().any(|s| *s) {
        show = [true, true, false, true];
    }
    let operands = if operands.is_empty() { vec!["-"] } else { operands };
    let mut rows: Vec<([u64; 4], Option<&str>)> = vec![];
    let mut status = 0;
    for arg in &operands {
        match read_operand(sh, io, arg)? {
            Ok(data) => {
                let counts = [
                    data.iter().filter(|b| **b == b'\n').count() as u64,
                    data.split(|b| b.is_ascii_whitespace())
                        .filter(|w| !w.is_empty())
                        .count() as u64,
                    String::from_utf8_lossy(&data).chars().count() as u64,
                    data.len() as u64,
                ];
                rows.push((counts, (*arg != "-").then_some(*arg)));
            }
            Err(why) => {
                err(sh, io, format!("wc: {arg}: {why}"));
                status = 1;
            }
        }
    }
    if rows.len() > 1 {
        let mut total = [0; 4];
        for (c, _) in &rows {
            for k in 0..4 {
                total[k] += c[k];
            }
        }
        rows.push((total, Some("total")));
    }
    let single = show.iter().filter(|s| **s).count() == 1 && operands.len() == 1;
    // GNU pads to the width of the largest count, and to 7 when reading a
    // pipe, whose size it cannot know beforehand.
    let width = if single {
        1
    } else if operands.contains(&"-") {
        7
    } else {
        rows.iter()
            .flat_map(|(c, _)| c.iter())
            .map(|n| n.to_string().len())
            .max()
            .unwrap_or(1)
    };
    let mut text = String::new();
    for (counts, label) in rows {
        let cells: Vec<String> = (0..4)
            .filter(|k| show[*k])
            .map(|k| format!("{:>width$}", counts[k]))
            .collect();
        text.push_str(&cells.join(" "));
        if let Some(label) = label {
            text.push(' ');
            text.push_str(label);
        }
        text.push('\n');
    }
    sh.write(&io.stdout, text.as_bytes());
    Ok(status)
}

fn parse_interval(arg: &str) -> Option<f64> {
    let (number, unit) = match arg.char_indices().last() {
        Some((i, c @ ('s' | 'm' | 'h' | 'd'))) => (&arg[..i], c),
        _ => (arg, 's'),
    };
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    Some(
        n * match unit {
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => 1.0,
        },
    )
}

fn sleep(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() < 2 {
        err(sh, io, "sleep: missing operand".into());
        return Ok(1);
    }
    let mut seconds = 0.0;
    for arg in &args[1..] {
        match parse_interval(arg) {
            Some(s) => seconds += s,
            None => {
                err(sh, io, format!("sleep: invalid time interval '{arg}'"));
                return Ok(1);
            }
        }
    }
    let started = Instant::now();
    // A sleep too long to represent lasts until the deadline.
    let until = Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| started.checked_add(d));
    loop {
        sh.check_limits()?;
        let now = Instant::now();
        if until.is_some_and(|u| now >= u) {
            return Ok(0);
        }
        let mut nap = SLEEP_SLICE.min(sh.deadline.saturating_duration_since(now));
        if let Some(u) = until {
            nap = nap.min(u - now);
        }
        std::thread::sleep(nap);
    }
}

fn which(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut status = 0;
    let mut text = String::new();
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        if (sh.resolve)(name).is_some() {
            if name.starts_with('/') {
                text.push_str(&format!("{name}\n"));
            } else {
                text.push_str(&format!("/usr/bin/{name}\n"));
            }
        } else if SHELL_COMMANDS.iter().any(|(n, _)| n == name) {
            text.push_str(&format!("{name}: shell builtin\n"));
        } else if find(name).is_some() {
            let base = base_name(name);
            text.push_str(&format!("/bin/{base}\n"));
        } else {
            status = 1;
        }
    }
    sh.write(&io.stdout, text.as_bytes());
    Ok(status)
}
