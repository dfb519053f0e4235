//! The shell's builtins: what must live in the shell because it changes
//! the shell itself (`cd`, `set`, `export`, `local`, `read`, `shift`,
//! `trap`...), because it runs other commands through the shell's resolver
//! (`command`, `env`, `eval`, `exec`, `sh`, `xargs`, `find -exec`), or
//! because it is too cheap to start a guest for (`:`, `true`, `false`,
//! `test`, `[`, `pwd`). Every other utility runs as a wasm guest.
//!
//! Each builtin's work is bounded by its arguments, which expansion caps,
//! or, for those that read input (`read`, `xargs`), by a limit of its own;
//! none recurses on its input.

use super::exec::{Flow, MAX_ARGS, MAX_ARGS_BYTES, MAX_SCRIPT_BYTES, MAX_WORD_BYTES, Shell, Stop};
use super::io::{Capture, CmdIo, Out, input, lock};
use super::syntax::is_name;
use crate::provider::wasm::Resolved;

pub type Builtin = fn(&mut Shell, &[String], &CmdIo) -> Flow<i32>;

/// sh's special builtins: their assignments stay, and they are found
/// before functions.
const SPECIAL: &[(&str, Builtin)] = &[
    (":", true_),
    (".", source),
    ("source", source),
    ("break", break_),
    ("continue", continue_),
    ("eval", eval),
    ("exec", exec),
    ("exit", exit),
    ("export", export),
    ("readonly", readonly),
    ("return", return_),
    ("set", set),
    ("shift", shift),
    ("trap", trap),
    ("unset", unset),
];

/// Regular builtins, found after functions.
const REGULAR: &[(&str, Builtin)] = &[
    ("cd", cd),
    ("local", local),
    ("read", read),
    ("wait", wait),
    ("command", command),
    ("type", type_),
    ("getopts", getopts),
    ("let", let_),
    ("umask", umask),
    ("hash", true_),
    ("sh", sh),
    ("bash", sh),
    ("true", true_),
    ("false", false_),
    ("test", test),
    ("[", test),
    ("pwd", pwd),
    ("env", env),
    ("which", which),
    ("xargs", xargs),
    ("find", find_exec),
];

/// Regular builtins that are programs too, found as `/bin/NAME`.
const ALSO_PROGRAMS: &[&str] = &[
    "true", "false", "test", "[", "pwd", "env", "which", "xargs", "find", "sh", "bash",
];

/// The most input `xargs` reads.
const XARGS_INPUT: usize = 16 << 20;
/// How deep `test`'s parentheses may nest.
const MAX_TEST_DEPTH: usize = 64;

pub fn is_special(name: &str) -> bool {
    SPECIAL.iter().any(|(n, _)| *n == name)
}

pub fn find(name: &str) -> Option<Builtin> {
    if let Some((_, f)) = SPECIAL.iter().chain(REGULAR).find(|(n, _)| *n == name) {
        return Some(*f);
    }
    let base = base_name(name);
    let in_bin = ["/bin/", "/usr/bin/", "/usr/local/bin/"]
        .iter()
        .any(|d| name.strip_prefix(d) == Some(base));
    if in_bin && ALSO_PROGRAMS.contains(&base) {
        return REGULAR.iter().find(|(n, _)| *n == base).map(|(_, f)| *f);
    }
    None
}

/// `cat` for `/bin/cat`.
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A word as `set -x` shows it: quoted when sh would need it.
pub fn trace_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn err(sh: &mut Shell, io: &CmdIo, message: String) {
    sh.write_stderr(io, format!("{message}\n").as_bytes());
}

fn out(sh: &mut Shell, io: &CmdIo, text: &str) {
    let stdout = io.stdout().clone();
    sh.write(&stdout, text.as_bytes());
}

/// A number argument of `exit`, `return`, `shift`...: the error is sh's.
fn number(arg: &str, name: &str) -> Result<i64, String> {
    match arg.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!("sh: 1: {name}: Illegal number: {arg}")),
    }
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
        Some(n) => match number(n, "exit") {
            Ok(n) => (n & 0xff) as i32,
            Err(message) => {
                err(sh, io, message);
                2
            }
        },
    };
    Err(Stop::Exit(status))
}

fn return_(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let status = match args.get(1) {
        None => sh.status,
        Some(n) => match number(n, "return") {
            Ok(n) => (n & 0xff) as i32,
            Err(message) => {
                err(sh, io, message);
                return Err(Stop::Exit(2));
            }
        },
    };
    Err(Stop::Return(status))
}

fn loop_control(sh: &mut Shell, args: &[String], io: &CmdIo) -> Result<usize, Stop> {
    let n = match args.get(1) {
        None => 1,
        Some(a) => match number(a, &args[0]) {
            Ok(n) if n > 0 => n as usize,
            Ok(_) => {
                err(sh, io, format!("sh: 1: {}: Illegal number: {a}", args[0]));
                return Err(Stop::Exit(2));
            }
            Err(message) => {
                err(sh, io, message);
                return Err(Stop::Exit(2));
            }
        },
    };
    Ok(n.min(sh.loops))
}

fn break_(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    match loop_control(sh, args, io)? {
        0 => Ok(0),
        n => Err(Stop::Break(n)),
    }
}

fn continue_(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    match loop_control(sh, args, io)? {
        0 => Ok(0),
        n => Err(Stop::Continue(n)),
    }
}

fn cd(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let operands: Vec<&String> = args[1..]
        .iter()
        .filter(|a| !matches!(a.as_str(), "-L" | "-P"))
        .collect();
    let (target, print) = match operands.first().map(|s| s.as_str()) {
        None => (sh.var("HOME").unwrap_or_else(|| "/".into()), false),
        Some("-") => (sh.var("OLDPWD").unwrap_or_else(|| sh.cwd.to_string()), true),
        Some(dir) => (dir.to_string(), false),
    };
    let path = match sh.resolve_path(&target) {
        Ok(p) if sh.ctx.root.metadata(p.relative()).is_ok_and(|m| m.is_dir()) => p,
        _ => {
            err(sh, io, format!("sh: 1: cd: can't cd to {target}"));
            return Ok(2);
        }
    };
    let old = sh.cwd.to_string();
    sh.cwd = path;
    let now = sh.cwd.to_string();
    sh.set_var("OLDPWD", old)?;
    sh.set_var("PWD", now.clone())?;
    if print {
        out(sh, io, &format!("{now}\n"));
    }
    Ok(0)
}

fn pwd(sh: &mut Shell, _: &[String], io: &CmdIo) -> Flow<i32> {
    let text = format!("{}\n", sh.cwd);
    out(sh, io, &text);
    Ok(0)
}

/// `'it'\''s'`: a value as sh would read it back.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn export(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let operands: Vec<&String> = args[1..].iter().filter(|a| a.as_str() != "-p").collect();
    if operands.is_empty() {
        let mut text = String::new();
        for (k, v) in sh.vars.iter().filter(|(_, v)| v.exported) {
            text.push_str(&format!("export {k}={}\n", sh_quote(&v.value)));
        }
        out(sh, io, &text);
        return Ok(0);
    }
    declare(sh, &operands, io, "export", |v| v.exported = true)
}

fn readonly(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let operands: Vec<&String> = args[1..].iter().filter(|a| a.as_str() != "-p").collect();
    if operands.is_empty() {
        let mut text = String::new();
        for (k, v) in sh.vars.iter().filter(|(_, v)| v.readonly) {
            text.push_str(&format!("readonly {k}={}\n", sh_quote(&v.value)));
        }
        out(sh, io, &text);
        return Ok(0);
    }
    declare(sh, &operands, io, "readonly", |v| v.readonly = true)
}

/// `name[=value]...` for `export` and `readonly`.
fn declare(sh: &mut Shell, operands: &[&String], io: &CmdIo, what: &str, mark: fn(&mut super::exec::Var)) -> Flow<i32> {
    let mut status = 0;
    for arg in operands {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg.as_str(), None),
        };
        if !is_name(name) {
            err(sh, io, format!("sh: 1: {what}: {arg}: bad variable name"));
            status = 2;
            continue;
        }
        if let Some(v) = value {
            sh.set_var(name, v.to_string())?;
        } else if sh.var(name).is_none() {
            sh.store_var(name, String::new())?;
            if what == "export" {
                // `export x` with x unset exports it once it is set.
                sh.vars.remove(name);
                sh.vars.entry(name.to_string()).or_default().exported = true;
                continue;
            }
        }
        if let Some(var) = sh.vars.get_mut(name) {
            mark(var);
        }
    }
    Ok(status)
}

fn unset(sh: &mut Shell, args: &[String], _: &CmdIo) -> Flow<i32> {
    let functions = args[1..].iter().any(|a| a == "-f");
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        if functions {
            sh.functions.remove(name);
        } else {
            sh.unset_var(name)?;
            if !args[1..].iter().any(|a| a == "-v") {
                // Like dash, `unset name` also removes a function of
                // that name when no variable has it.
            }
        }
    }
    Ok(0)
}

fn local(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if sh.locals.is_empty() {
        err(sh, io, "sh: 1: local: not in a function".into());
        return Ok(2);
    }
    for arg in &args[1..] {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if !is_name(name) {
            err(sh, io, format!("sh: 1: local: {arg}: bad variable name"));
            return Ok(2);
        }
        let frame = sh
            .locals
            .last()
            .map(|f| f.iter().any(|(n, _)| n == name))
            .unwrap_or(true);
        if !frame {
            let saved = sh.vars.get(name).cloned();
            if let Some(f) = sh.locals.last_mut() {
                f.push((name.to_string(), saved));
            }
        }
        if let Some(v) = value {
            sh.set_var(name, v)?;
        }
    }
    Ok(0)
}

fn set(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        let text: String = sh
            .vars
            .iter()
            .map(|(k, v)| format!("{k}={}\n", sh_quote(&v.value)))
            .collect();
        out(sh, io, &text);
        return Ok(0);
    }
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            sh.positional = args[i + 1..].to_vec();
            return Ok(0);
        }
        let (on, flags) = match arg.as_bytes().first() {
            Some(b'-') => (true, &arg[1..]),
            Some(b'+') => (false, &arg[1..]),
            _ => {
                sh.positional = args[i..].to_vec();
                return Ok(0);
            }
        };
        if flags.is_empty() {
            // A lone `-` ends the options.
            sh.positional = args[i + 1..].to_vec();
            return Ok(0);
        }
        if flags == "o" {
            let Some(name) = args.get(i + 1) else {
                let opts = sh.opts;
                let text: String = [
                    ("errexit", opts.errexit),
                    ("noglob", opts.noglob),
                    ("noclobber", opts.noclobber),
                    ("nounset", opts.nounset),
                    ("pipefail", opts.pipefail),
                    ("xtrace", opts.xtrace),
                ]
                .iter()
                .map(|(n, v)| format!("{n:<16}{}\n", if *v { "on" } else { "off" }))
                .collect();
                out(sh, io, &text);
                return Ok(0);
            };
            let opt = match name.as_str() {
                "errexit" => &mut sh.opts.errexit,
                "nounset" => &mut sh.opts.nounset,
                "xtrace" => &mut sh.opts.xtrace,
                "pipefail" => &mut sh.opts.pipefail,
                "noglob" => &mut sh.opts.noglob,
                "noclobber" => &mut sh.opts.noclobber,
                // Options that mean nothing here.
                "posix"
                | "braceexpand"
                | "hashall"
                | "interactive-comments"
                | "monitor"
                | "notify"
                | "ignoreeof"
                | "vi"
                | "emacs"
                | "allexport"
                | "noexec"
                | "verbose"
                | "nolog" => {
                    i += 2;
                    continue;
                }
                other => {
                    err(sh, io, format!("sh: 1: set: Illegal option -o {other}"));
                    return Err(Stop::Exit(2));
                }
            };
            *opt = on;
            i += 2;
            continue;
        }
        for f in flags.chars() {
            match f {
                'e' => sh.opts.errexit = on,
                'u' => sh.opts.nounset = on,
                'x' => sh.opts.xtrace = on,
                'f' => sh.opts.noglob = on,
                'C' => sh.opts.noclobber = on,
                'a' | 'b' | 'h' | 'm' | 'n' | 'v' | 'B' | 'H' | 'P' | 'T' | 'E' => {}
                other => {
                    err(sh, io, format!("sh: 1: set: Illegal option -{other}"));
                    return Err(Stop::Exit(2));
                }
            }
        }
        i += 1;
    }
    Ok(0)
}

fn shift(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let n = match args.get(1) {
        None => 1,
        Some(a) => match number(a, "shift") {
            Ok(n) => n as usize,
            Err(message) => {
                err(sh, io, message);
                return Err(Stop::Exit(2));
            }
        },
    };
    if n > sh.positional.len() {
        err(sh, io, "sh: 1: shift: can't shift that many".into());
        return Err(Stop::Exit(2));
    }
    sh.positional.drain(..n);
    Ok(0)
}

fn trap(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        if let Some(action) = sh.trap_action.clone() {
            out(sh, io, &format!("trap -- {} EXIT\n", sh_quote(&action)));
        }
        return Ok(0);
    }
    let (action, signals) = if args.len() == 2 {
        // `trap 0` or `trap EXIT` resets.
        ("-".to_string(), &args[1..])
    } else {
        (args[1].clone(), &args[2..])
    };
    for signal in signals {
        match signal.as_str() {
            "0" | "EXIT" => {
                sh.trap_action = if action == "-" { None } else { Some(action.clone()) };
            }
            // Signals never come to a script here: accepted, never run.
            "INT" | "TERM" | "HUP" | "QUIT" | "PIPE" | "USR1" | "USR2" | "ERR" | "2" | "15" | "1" | "3" | "13"
            | "SIGINT" | "SIGTERM" | "SIGHUP" | "SIGQUIT" | "SIGPIPE" => {}
            other => {
                err(sh, io, format!("sh: 1: trap: {other}: bad trap"));
                return Ok(1);
            }
        }
    }
    Ok(0)
}

fn eval(sh: &mut Shell, args: &[String], _: &CmdIo) -> Flow<i32> {
    let text = args[1..].join(" ");
    if text.trim().is_empty() {
        return Ok(0);
    }
    sh.eval_text(&text)
}

fn source(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let Some(file) = args.get(1) else {
        err(sh, io, format!("sh: 1: {}: filename argument required", args[0]));
        return Ok(2);
    };
    let text = match read_script(sh, file) {
        Ok(text) => text,
        Err(why) => {
            err(sh, io, format!("sh: 1: {}: cannot open {file}: {why}", args[0]));
            return Err(Stop::Exit(2));
        }
    };
    let saved = (args.len() > 2).then(|| std::mem::replace(&mut sh.positional, args[2..].to_vec()));
    let result = sh.eval_text(&text);
    if let Some(saved) = saved {
        sh.positional = saved;
    }
    result
}

/// A script file's text, at most [`MAX_SCRIPT_BYTES`] (one more is read to
/// tell a file that is too long).
fn read_script(sh: &Shell, file: &str) -> Result<String, String> {
    use std::io::Read;
    let path = sh.resolve_path(file).map_err(String::from)?;
    let f = sh
        .ctx
        .root
        .open(path.relative())
        .map_err(|e| super::io::errno_text(&e))?;
    let mut data = vec![];
    f.take(MAX_SCRIPT_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| super::io::errno_text(&e))?;
    if data.len() > MAX_SCRIPT_BYTES {
        return Err(format!("longer than {MAX_SCRIPT_BYTES} bytes"));
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

fn exec(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        return Ok(0);
    }
    let status = run_external(sh, &args[1..], &[], io)?;
    Err(Stop::Exit(status))
}

fn wait(sh: &mut Shell, _: &[String], _: &CmdIo) -> Flow<i32> {
    sh.wait_jobs()
}

/// Runs a command the way `env`, `xargs`, `exec` and `command` do: a
/// builtin that is also a program, or a program; never a function.
fn run_external(sh: &mut Shell, args: &[String], assignments: &[(String, String)], io: &CmdIo) -> Flow<i32> {
    let base = base_name(&args[0]);
    if find(&args[0]).is_some() && (ALSO_PROGRAMS.contains(&base) || is_special(&args[0]) || args[0] == base) {
        return sh.command_words(args, assignments, io);
    }
    sh.program(args, assignments, io)
}

/// How a command word resolves: a function, a builtin, or a program.
enum Kind {
    Function,
    Builtin,
    Program(String),
    NotFound,
}

fn kind_of(sh: &Shell, name: &str) -> Kind {
    if sh.functions.contains_key(name) {
        return Kind::Function;
    }
    if find(name).is_some() && !name.contains('/') {
        return Kind::Builtin;
    }
    match (sh.ctx.resolve)(name) {
        Resolved::Runtime(..) if name.starts_with('/') => Kind::Program(name.to_string()),
        Resolved::Runtime(..) => Kind::Program(format!("/usr/bin/{name}")),
        _ if find(name).is_some() => Kind::Program(name.to_string()),
        _ => Kind::NotFound,
    }
}

fn command(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut i = 1;
    let mut mode = None;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-v" | "-V" => mode = Some(a.clone()),
            "-p" => {}
            "--" => {
                i += 1;
                break;
            }
            _ => break,
        }
        i += 1;
    }
    let operands = &args[i.min(args.len())..];
    match mode.as_deref() {
        Some(flag) => {
            let mut status = 0;
            let mut text = String::new();
            for name in operands {
                match (kind_of(sh, name), flag) {
                    (Kind::Function | Kind::Builtin, "-v") => text.push_str(&format!("{name}\n")),
                    (Kind::Program(path), "-v") => text.push_str(&format!("{path}\n")),
                    (Kind::Function, _) => text.push_str(&format!("{name} is a shell function\n")),
                    (Kind::Builtin, _) => text.push_str(&format!("{name} is a shell builtin\n")),
                    (Kind::Program(path), _) => text.push_str(&format!("{name} is {path}\n")),
                    (Kind::NotFound, "-v") => status = 127,
                    (Kind::NotFound, _) => {
                        text.push_str(&format!("{name}: not found\n"));
                        status = 127;
                    }
                }
            }
            out(sh, io, &text);
            Ok(status)
        }
        None if operands.is_empty() => Ok(0),
        None => {
            if find(&operands[0]).is_some() {
                sh.command_words_no_functions(operands, io)
            } else {
                sh.program(operands, &[], io)
            }
        }
    }
}

fn type_(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut status = 0;
    let mut text = String::new();
    for name in &args[1..] {
        match kind_of(sh, name) {
            Kind::Function => text.push_str(&format!("{name} is a shell function\n")),
            Kind::Builtin if is_special(name) => text.push_str(&format!("{name} is a special shell builtin\n")),
            Kind::Builtin => text.push_str(&format!("{name} is a shell builtin\n")),
            Kind::Program(path) => text.push_str(&format!("{name} is {path}\n")),
            Kind::NotFound => {
                text.push_str(&format!("{name}: not found\n"));
                status = 1;
            }
        }
    }
    out(sh, io, &text);
    Ok(status)
}

/// `which`, as Debian's: the programs' paths; builtins of the shell only
/// (`cd`) are not programs.
fn which(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut status = 0;
    let mut text = String::new();
    for name in args[1..].iter().filter(|a| !a.starts_with('-')) {
        let program =
            matches!((sh.ctx.resolve)(name), Resolved::Runtime(..)) || ALSO_PROGRAMS.contains(&base_name(name));
        if program {
            if name.starts_with('/') {
                text.push_str(&format!("{name}\n"));
            } else {
                text.push_str(&format!("/usr/bin/{name}\n"));
            }
        } else {
            status = 1;
        }
    }
    out(sh, io, &text);
    Ok(status)
}

/// `env [-i] [-u name] [name=value]... [command [args]]`.
fn env(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut assignments: Vec<(String, String)> = vec![];
    let mut clear = false;
    let mut unset: Vec<String> = vec![];
    let mut rest = &args[1..];
    loop {
        match rest.split_first() {
            Some((first, tail)) if first == "-i" || first == "-" => {
                clear = true;
                rest = tail;
            }
            Some((first, tail)) if first == "-u" => {
                if let Some((name, tail)) = tail.split_first() {
                    unset.push(name.clone());
                    rest = tail;
                } else {
                    rest = tail;
                }
            }
            Some((first, tail)) if first.split_once('=').is_some_and(|(k, _)| is_name(k)) => {
                let (k, v) = first.split_once('=').expect("checked");
                assignments.push((k.to_string(), v.to_string()));
                rest = tail;
            }
            // Repeated `env` words are taken in this same loop.
            Some((first, tail)) if base_name(first) == "env" && find(first).is_some() => rest = tail,
            _ => break,
        }
    }
    if rest.is_empty() {
        let mut vars = if clear {
            Default::default()
        } else {
            sh.environment(&Default::default())
        };
        for name in &unset {
            vars.remove(name);
        }
        vars.extend(assignments);
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        out(sh, io, &text);
        return Ok(0);
    }
    if clear || !unset.is_empty() {
        let saved = sh.vars.clone();
        for (name, var) in sh.vars.iter_mut() {
            if clear || unset.contains(name) {
                var.exported = false;
            }
        }
        let result = run_external(sh, rest, &assignments, io);
        sh.vars = saved;
        return result;
    }
    run_external(sh, rest, &assignments, io)
}

/// `sh -c script [name [args...]]`, `sh file [args...]`, or `sh` reading
/// its script from stdin: a new shell that inherits the environment.
fn sh(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut opts = super::exec::Options::default();
    let mut command = None;
    let mut i = 1;
    while let Some(a) = args.get(i) {
        if a == "-c" {
            command = Some(());
            i += 1;
            continue;
        }
        if a == "--" {
            i += 1;
            break;
        }
        if a == "-o" || a == "+o" {
            if args.get(i + 1).map(String::as_str) == Some("pipefail") {
                opts.pipefail = a == "-o";
            }
            i += 2;
            continue;
        }
        if a.len() > 1 && (a.starts_with('-') || a.starts_with('+')) {
            let on = a.starts_with('-');
            for f in a[1..].chars() {
                match f {
                    'e' => opts.errexit = on,
                    'u' => opts.nounset = on,
                    'x' => opts.xtrace = on,
                    'f' => opts.noglob = on,
                    'c' => command = Some(()),
                    _ => {}
                }
            }
            i += 1;
            continue;
        }
        break;
    }
    let rest = &args[i.min(args.len())..];
    let (text, name, positional) = match command {
        Some(()) => {
            let Some(script) = rest.first() else {
                err(sh, io, "sh: 0: -c requires an argument".into());
                return Ok(2);
            };
            let name = rest.get(1).cloned().unwrap_or_else(|| "sh".into());
            (
                script.clone(),
                name,
                rest.get(2..).map(|r| r.to_vec()).unwrap_or_default(),
            )
        }
        None => match rest.first() {
            Some(file) => match read_script(sh, file) {
                Ok(text) => (text, file.clone(), rest[1..].to_vec()),
                Err(why) => {
                    err(sh, io, format!("sh: 0: cannot open {file}: {why}"));
                    return Ok(2);
                }
            },
            None => {
                let mut data = vec![];
                let mut buf = vec![0; 64 << 10];
                loop {
                    let n = lock(&io.stdin)
                        .read(&mut buf, &sh.stop)
                        .map_err(|e| Stop::Fail(crate::provider::ProviderError::Internal(e.into())))?;
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                    if data.len() > MAX_SCRIPT_BYTES {
                        err(
                            sh,
                            io,
                            format!("sh: 0: the script is longer than {MAX_SCRIPT_BYTES} bytes"),
                        );
                        return Ok(2);
                    }
                }
                (String::from_utf8_lossy(&data).into_owned(), "sh".into(), vec![])
            }
        },
    };
    sh.enter_call()?;
    let mut child = sh.clone();
    sh.depth -= 1;
    // A new shell: the environment, not the variables or functions.
    child.vars.retain(|_, v| v.exported);
    child.functions.clear();
    child.opts = opts;
    child.positional = positional;
    child.io = io.clone();
    let status = child.run_child(&text, &name).map_err(Stop::Fail)?;
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
        depth: 0,
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

/// A recursive-descent evaluator whose only recursion is through
/// parentheses, which [`MAX_TEST_DEPTH`] bounds; runs of `!` are counted
/// in a loop.
struct TestEval<'a, 's> {
    sh: &'s mut Shell,
    args: &'a [&'a str],
    pos: usize,
    depth: usize,
}

const UNARY: &[&str] = &[
    "-e", "-f", "-d", "-s", "-r", "-w", "-x", "-L", "-h", "-z", "-n", "-b", "-c", "-p", "-S", "-g", "-u", "-k", "-O",
    "-G", "-t",
];
const BINARY: &[&str] = &[
    "=", "==", "!=", "-eq", "-ne", "-lt", "-gt", "-le", "-ge", "<", ">", "-nt", "-ot", "-ef",
];

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
        let mut negate = false;
        loop {
            let binary_next = self.peek(1).is_some_and(|op| BINARY.contains(&op)) && self.peek(2).is_some();
            if self.peek(0) != Some("!") || binary_next {
                break;
            }
            self.pos += 1;
            negate = !negate;
        }
        Ok(self.primary()? != negate)
    }

    fn primary(&mut self) -> Result<bool, String> {
        let Some(first) = self.peek(0) else {
            return Ok(false);
        };
        if let (Some(op), Some(right)) = (self.peek(1), self.peek(2))
            && BINARY.contains(&op)
        {
            self.pos += 3;
            return binary_test(self.sh, first, op, right);
        }
        if first == "(" && self.peek(1).is_some() {
            if self.depth == MAX_TEST_DEPTH {
                return Err(format!("parentheses nest deeper than {MAX_TEST_DEPTH} levels"));
            }
            self.pos += 1;
            self.depth += 1;
            let value = self.or()?;
            self.depth -= 1;
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
            return Ok(unary_test(self.sh, first, operand));
        }
        self.pos += 1;
        Ok(!first.is_empty())
    }
}

/// A unary test of `test`, `[` and `[[`.
pub fn unary_test(sh: &Shell, op: &str, operand: &str) -> bool {
    use cap_std::fs::MetadataExt;
    match op {
        "-z" => return operand.is_empty(),
        "-n" => return !operand.is_empty(),
        "-t" => return false,
        _ => {}
    }
    let Ok(path) = sh.resolve_path(operand) else {
        return false;
    };
    let root = &sh.ctx.root;
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
        "-b" | "-c" | "-p" | "-S" => false,
        "-g" => meta.mode() & 0o2000 != 0,
        "-u" => meta.mode() & 0o4000 != 0,
        "-k" => meta.mode() & 0o1000 != 0,
        _ => true,
    }
}

/// A binary test of `test`, `[` and `[[`.
pub fn binary_test(sh: &Shell, left: &str, op: &str, right: &str) -> Result<bool, String> {
    let int = |s: &str| {
        super::arith::parse_number(s.trim())
            .filter(|_| !s.trim().is_empty())
            .ok_or_else(|| format!("Illegal number: {s}"))
    };
    let modified = |s: &str| {
        sh.resolve_path(s)
            .ok()
            .and_then(|p| sh.ctx.root.metadata(p.relative()).ok())
            .and_then(|m| m.modified().ok())
    };
    Ok(match op {
        "=" | "==" => left == right,
        "!=" => left != right,
        "<" => left < right,
        ">" => left > right,
        "-eq" => int(left)? == int(right)?,
        "-ne" => int(left)? != int(right)?,
        "-lt" => int(left)? < int(right)?,
        "-gt" => int(left)? > int(right)?,
        "-le" => int(left)? <= int(right)?,
        "-ge" => int(left)? >= int(right)?,
        "-nt" => match (modified(left), modified(right)) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            _ => false,
        },
        "-ot" => match (modified(left), modified(right)) {
            (Some(a), Some(b)) => a < b,
            (None, Some(_)) => true,
            _ => false,
        },
        _ => {
            use cap_std::fs::MetadataExt;
            let ino = |s: &str| {
                sh.resolve_path(s)
                    .ok()
                    .and_then(|p| sh.ctx.root.metadata(p.relative()).ok())
                    .map(|m| (m.dev(), m.ino()))
            };
            matches!((ino(left), ino(right)), (Some(a), Some(b)) if a == b)
        }
    })
}

/// `read [-r] [-p prompt] [name...]`: one line from stdin, split on IFS.
fn read(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut raw = false;
    let mut names = vec![];
    let mut i = 1;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-r" => raw = true,
            "-p" => {
                if let Some(prompt) = args.get(i + 1) {
                    let prompt = prompt.clone();
                    sh.write_stderr(io, prompt.as_bytes());
                }
                i += 1;
            }
            "-s" => {}
            "--" => {
                names.extend(args[i + 1..].iter().cloned());
                break;
            }
            name => names.push(name.to_string()),
        }
        i += 1;
    }
    if names.is_empty() {
        names.push("REPLY".into());
    }
    let mut line = vec![];
    let mut at_end = false;
    loop {
        let next = lock(&io.stdin).read_line(MAX_WORD_BYTES, &sh.stop);
        match next {
            Ok(Some(part)) => {
                line.extend_from_slice(&part);
                // Without -r, a backslash before the newline continues the
                // line.
                if !raw && line.last() == Some(&b'\\') {
                    line.pop();
                    continue;
                }
                break;
            }
            Ok(None) => {
                at_end = true;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                sh.check_limits()?;
                return Ok(1);
            }
            Err(_) => {
                err(
                    sh,
                    io,
                    format!("sh: 1: read: the line is longer than {MAX_WORD_BYTES} bytes"),
                );
                return Ok(2);
            }
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    let text = if raw { text } else { unescape_read(&text) };
    let ifs = sh.var("IFS").unwrap_or_else(|| " \t\n".into());
    let fields = split_read(&text, &ifs, names.len());
    for (i, name) in names.iter().enumerate() {
        if !is_name(name) {
            err(sh, io, format!("sh: 1: read: {name}: bad variable name"));
            return Ok(2);
        }
        sh.set_var(name, fields.get(i).cloned().unwrap_or_default())?;
    }
    Ok(i32::from(at_end))
}

/// Backslash removal of `read` without `-r`.
fn unescape_read(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a line for `read` into at most `n` fields; the last takes the
/// rest of the line.
fn split_read(text: &str, ifs: &str, n: usize) -> Vec<String> {
    let white = |c: char| ifs.contains(c) && c.is_whitespace();
    let mut fields = vec![];
    let mut rest = text.trim_matches(white);
    while fields.len() + 1 < n && !rest.is_empty() {
        match rest.find(|c: char| ifs.contains(c)) {
            Some(at) => {
                fields.push(rest[..at].to_string());
                let after = &rest[at..];
                let mut chars = after.chars();
                let sep = chars.next().unwrap_or(' ');
                rest = chars.as_str();
                rest = rest.trim_start_matches(white);
                if !sep.is_whitespace() {
                    // One non-white separator, with white around it.
                }
            }
            None => {
                fields.push(rest.to_string());
                rest = "";
            }
        }
    }
    if !rest.is_empty() {
        fields.push(rest.to_string());
    }
    fields
}

/// `getopts optstring name [args...]`.
fn getopts(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let (Some(spec), Some(name)) = (args.get(1), args.get(2)) else {
        err(sh, io, "sh: 1: getopts: usage: getopts optstring var [arg]".into());
        return Ok(2);
    };
    let operands: Vec<String> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        sh.positional.clone()
    };
    let optind: usize = sh.var("OPTIND").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let offset: usize = sh.var("_STACYVM_OPTPOS").and_then(|v| v.parse().ok()).unwrap_or(1);
    let finish = |sh: &mut Shell, optind: usize| -> Flow<i32> {
        sh.set_var("OPTIND", optind.to_string())?;
        sh.unset_var("_STACYVM_OPTPOS")?;
        sh.set_var(name, "?".into())?;
        Ok(1)
    };
    let Some(arg) = operands.get(optind - 1) else {
        return finish(sh, optind);
    };
    if arg == "--" {
        return finish(sh, optind + 1);
    }
    if !arg.starts_with('-') || arg == "-" {
        return finish(sh, optind);
    }
    let chars: Vec<char> = arg.chars().collect();
    let Some(&c) = chars.get(offset) else {
        return finish(sh, optind);
    };
    let known = spec.trim_start_matches(':').find(c).filter(|_| c != ':');
    let wants_arg = known.is_some_and(|at| spec.trim_start_matches(':')[at + 1..].starts_with(':'));
    let last_char = offset + 1 >= chars.len();
    let (mut next_ind, mut next_pos) = if last_char {
        (optind + 1, 1)
    } else {
        (optind, offset + 1)
    };
    if known.is_none() {
        err(sh, io, format!("sh: 1: Illegal option -{c}"));
        sh.set_var(name, "?".into())?;
    } else if wants_arg {
        let value = if !last_char {
            chars[offset + 1..].iter().collect::<String>()
        } else {
            match operands.get(optind) {
                Some(v) => {
                    next_ind = optind + 2;
                    v.clone()
                }
                None => {
                    err(sh, io, format!("sh: 1: No arg for -{c} option"));
                    sh.set_var(name, "?".into())?;
                    sh.set_var("OPTIND", (optind + 1).to_string())?;
                    return Ok(0);
                }
            }
        };
        if !last_char {
            next_ind = optind + 1;
        }
        next_pos = 1;
        sh.set_var("OPTARG", value)?;
        sh.set_var(name, c.to_string())?;
    } else {
        sh.set_var(name, c.to_string())?;
    }
    sh.set_var("OPTIND", next_ind.to_string())?;
    if next_pos > 1 {
        sh.set_var("_STACYVM_OPTPOS", next_pos.to_string())?;
    } else {
        sh.unset_var("_STACYVM_OPTPOS")?;
    }
    Ok(0)
}

fn let_(sh: &mut Shell, args: &[String], _: &CmdIo) -> Flow<i32> {
    let mut last = 0;
    for expr in &args[1..] {
        last = sh.arith(&super::syntax::literal(expr))?;
    }
    Ok(i32::from(last == 0))
}

fn umask(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    if args.len() == 1 {
        out(sh, io, "0022\n");
    }
    Ok(0)
}

/// `xargs [-0] [-d c] [-n max] [-L max] [-I repl] [-r] [-t] [cmd [args]]`:
/// items from stdin become arguments of commands run through the shell.
fn xargs(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let mut nul = false;
    let mut delim: Option<char> = None;
    let mut max_args: Option<usize> = None;
    let mut max_lines: Option<usize> = None;
    let mut replace: Option<String> = None;
    let mut no_run_if_empty = false;
    let mut trace = false;
    let mut i = 1;
    let usage = |sh: &mut Shell, message: String| -> Flow<i32> {
        err(sh, io, format!("xargs: {message}"));
        Ok(1)
    };
    while let Some(a) = args.get(i) {
        let value = |i: usize| args.get(i + 1).cloned();
        match a.as_str() {
            "-0" | "--null" => nul = true,
            "-r" | "--no-run-if-empty" => no_run_if_empty = true,
            "-t" | "--verbose" => trace = true,
            "-x" => {}
            "-d" => {
                delim = value(i).and_then(|v| v.chars().next());
                i += 1;
            }
            "-n" | "-L" | "-P" | "-s" => {
                let Some(v) = value(i)
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| *n > 0 || a == "-P")
                else {
                    return usage(sh, format!("invalid number for {a} option"));
                };
                match a.as_str() {
                    "-n" => max_args = Some(v),
                    "-L" => max_lines = Some(v),
                    _ => {}
                }
                i += 1;
            }
            "-I" | "-i" => {
                replace = Some(value(i).unwrap_or_else(|| "{}".into()));
                i += 1;
            }
            s if s.starts_with("-n") && s.len() > 2 => max_args = s[2..].parse().ok(),
            s if s.starts_with("-I") && s.len() > 2 => replace = Some(s[2..].to_string()),
            "--" => {
                i += 1;
                break;
            }
            s if s.starts_with('-') && s.len() > 1 => return usage(sh, format!("invalid option -- '{}'", &s[1..])),
            _ => break,
        }
        i += 1;
    }
    let command: Vec<String> = if i < args.len() {
        args[i..].to_vec()
    } else {
        vec!["echo".into()]
    };
    // The input, bounded.
    let mut data = vec![];
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = lock(&io.stdin)
            .read(&mut buf, &sh.stop)
            .map_err(|e| Stop::Fail(crate::provider::ProviderError::Internal(e.into())))?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > XARGS_INPUT {
            return usage(sh, format!("the input is longer than {XARGS_INPUT} bytes"));
        }
        sh.check_limits()?;
    }
    let text = String::from_utf8_lossy(&data);
    // Items, and the line each ends (for -L and -I).
    let items: Vec<(String, bool)> = if nul {
        text.split('\0')
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_string(), true))
            .collect()
    } else if let Some(d) = delim {
        text.split(d)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_string(), true))
            .collect()
    } else if replace.is_some() {
        text.lines()
            .map(|l| l.trim_start().to_string())
            .filter(|l| !l.is_empty())
            .map(|l| (l, true))
            .collect()
    } else {
        match split_xargs(&text) {
            Ok(items) => items,
            Err(message) => return usage(sh, message),
        }
    };
    if items.len() > MAX_ARGS * 16 {
        return usage(sh, "too many items".into());
    }
    let mut batches: Vec<Vec<String>> = vec![];
    let mut batch: Vec<String> = vec![];
    let mut bytes = 0usize;
    let mut lines = 0usize;
    for (item, ends_line) in items {
        bytes += item.len() + 1;
        batch.push(item);
        if ends_line {
            lines += 1;
        }
        let full = replace.is_some()
            || max_args.is_some_and(|n| batch.len() >= n)
            || max_lines.is_some_and(|n| ends_line && lines >= n)
            || bytes > MAX_ARGS_BYTES / 2
            || batch.len() >= MAX_ARGS / 2;
        if full {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
            lines = 0;
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    if batches.is_empty() && !no_run_if_empty && replace.is_none() {
        batches.push(vec![]);
    }
    let mut status = 0;
    for batch in batches {
        sh.check_limits()?;
        let argv: Vec<String> = match &replace {
            Some(r) => {
                let item = batch.first().cloned().unwrap_or_default();
                command.iter().map(|a| a.replace(r.as_str(), &item)).collect()
            }
            None => command.iter().cloned().chain(batch).collect(),
        };
        if trace {
            let line = argv.join(" ");
            err(sh, io, line);
        }
        let mut sub_io = io.clone();
        sub_io.stdin = input(super::io::Source::Empty);
        let s = run_external(sh, &argv, &[], &sub_io)?;
        match s {
            0 => {}
            127 => return Ok(127),
            126 => return Ok(126),
            255 => return Ok(124),
            1..=125 => status = 123,
            _ => return Ok(125),
        }
    }
    Ok(status)
}

/// xargs' default splitting: blanks and newlines, with quotes and
/// backslashes; each item says whether it ends a line.
fn split_xargs(text: &str) -> Result<Vec<(String, bool)>, String> {
    let mut items = vec![];
    let mut current = String::new();
    let mut has = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                has = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\n') | None => {
                            return Err(format!(
                                "unmatched {} quote",
                                if c == '"' { "double" } else { "single" }
                            ));
                        }
                        Some(x) => current.push(x),
                    }
                }
            }
            '\\' => {
                has = true;
                current.extend(chars.next());
            }
            ' ' | '\t' | '\n' => {
                if has {
                    items.push((std::mem::take(&mut current), c == '\n'));
                    has = false;
                } else if c == '\n'
                    && let Some(last) = items.last_mut()
                {
                    last.1 = true;
                }
            }
            c => {
                has = true;
                current.push(c);
            }
        }
    }
    if has {
        items.push((current, true));
    }
    Ok(items)
}

/// `find` runs as a wasm guest; its `-exec`, `-execdir` and `-ok`, which
/// start commands, are run here, through the shell, on the paths the guest
/// found.
fn find_exec(sh: &mut Shell, args: &[String], io: &CmdIo) -> Flow<i32> {
    let Some(at) = args
        .iter()
        .position(|a| matches!(a.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir"))
    else {
        return sh.program(args, &[], io);
    };
    // The command of each -exec up to `;` or `+`.
    let mut actions: Vec<(Vec<String>, bool)> = vec![];
    let mut i = at;
    let mut tail_ok = true;
    while i < args.len() {
        if !matches!(args[i].as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
            tail_ok = false;
            break;
        }
        let Some(end) = args[i + 1..].iter().position(|a| a == ";" || a == "+") else {
            err(sh, io, format!("find: missing argument to `{}'", args[i]));
            return Ok(1);
        };
        let command = args[i + 1..i + 1 + end].to_vec();
        let batch = args[i + 1 + end] == "+";
        if command.is_empty() {
            err(sh, io, format!("find: missing argument to `{}'", args[i]));
            return Ok(1);
        }
        actions.push((command, batch));
        i += end + 2;
    }
    if !tail_ok {
        err(
            sh,
            io,
            "find: -exec must end the expression in the stacyvm shell (it runs after find has listed the paths)".into(),
        );
        return Ok(1);
    }
    let mut listing: Vec<String> = args[..at].to_vec();
    listing.push("-print0".into());
    let capture = std::sync::Arc::new(std::sync::Mutex::new(Capture::default()));
    let mut list_io = io.clone();
    list_io.set_out(1, Out::Capture(capture.clone()));
    let status = sh.program(&listing, &[], &list_io)?;
    let capture = std::mem::take(&mut *lock(&capture));
    if capture.overflowed {
        err(
            sh,
            io,
            format!("find: more than {MAX_WORD_BYTES} bytes of paths for -exec"),
        );
        return Ok(1);
    }
    let paths: Vec<String> = String::from_utf8_lossy(&capture.data)
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let mut exec_status = status;
    for (command, batch) in actions {
        if batch {
            for chunk in paths.chunks(MAX_ARGS / 2) {
                let mut argv = vec![];
                for a in &command {
                    if a == "{}" {
                        argv.extend(chunk.iter().cloned());
                    } else {
                        argv.push(a.clone());
                    }
                }
                if run_external(sh, &argv, &[], io)? != 0 {
                    exec_status = 1;
                }
            }
        } else {
            for path in &paths {
                sh.check_limits()?;
                let argv: Vec<String> = command.iter().map(|a| a.replace("{}", path)).collect();
                run_external(sh, &argv, &[], io)?;
            }
        }
    }
    Ok(exec_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_found_by_bare_name_and_programs_in_the_bin_directories() {
        assert!(find("test").is_some());
        assert!(find("/usr/bin/[").is_some());
        assert!(find("/bin/true").is_some());
        assert!(find("/tmp/true").is_none());
        assert!(find("/bin/cd").is_none());
        assert!(find("ls").is_none());
        assert!(is_special("export"));
        assert!(!is_special("cd"));
    }

    #[test]
    fn read_splits_on_ifs_and_the_last_name_takes_the_rest() {
        assert_eq!(split_read("  a b  c d ", " \t\n", 2), ["a", "b  c d"]);
        assert_eq!(split_read("a:b:c", ":", 2), ["a", "b:c"]);
        assert_eq!(split_read("one", " ", 3), ["one"]);
        assert_eq!(unescape_read(r"a\ b\\c"), r"a b\c");
    }

    #[test]
    fn xargs_items_keep_quotes_and_lines() {
        let items = split_xargs("a 'b c'\n\"d\" e\\ f\n").unwrap();
        assert_eq!(
            items,
            [
                ("a".to_string(), false),
                ("b c".to_string(), true),
                ("d".to_string(), false),
                ("e f".to_string(), true)
            ]
        );
        assert!(split_xargs("'open").is_err());
    }

    #[test]
    fn traced_words_are_quoted_only_when_sh_needs_it() {
        assert_eq!(trace_quote("ls"), "ls");
        assert_eq!(trace_quote("a b"), "'a b'");
        assert_eq!(trace_quote(""), "''");
        assert_eq!(trace_quote("it's"), "'it'\\''s'");
    }
}
