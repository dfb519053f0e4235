//! `awk`: the POSIX command line (`-F`, `-v`, `-f`, `--`, operands that are
//! files or `var=value` assignments) around the awk-rs interpreter.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use awk_rs::{BufferedStdout, Interpreter, Lexer, Parser};

const USAGE: &str = "usage: awk [-F fs][-v var=value][prog | -f progfile][file ...]";

/// Runs awk with `args` (`args[0]` is its name); returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let args: Vec<String> = match args.into_iter().skip(1).map(OsString::into_string).collect() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("awk: invalid (non-UTF-8) argument: {}", bad.to_string_lossy());
            return 2;
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            let _ = BufferedStdout.flush();
            eprintln!("awk: {message}");
            2
        }
    }
}

fn run(args: &[String]) -> Result<i32, String> {
    let mut fs = None;
    let mut program: Option<String> = None;
    let mut assignments = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let value = |i: &mut usize, inline: &str, flag: &str| -> Result<String, String> {
            if !inline.is_empty() {
                return Ok(inline.to_string());
            }
            *i += 1;
            args.get(*i)
                .cloned()
                .ok_or_else(|| format!("option requires an argument -- {flag}\n{USAGE}"))
        };
        if arg == "--" {
            i += 1;
            break;
        } else if arg == "--version" || arg == "-V" {
            println!("awk (awk-rs 0.2.0)");
            return Ok(0);
        } else if arg == "--help" {
            println!("{USAGE}");
            return Ok(0);
        } else if let Some(rest) = arg.strip_prefix("-F") {
            fs = Some(field_separator(&value(&mut i, rest, "F")?));
        } else if let Some(rest) = arg.strip_prefix("-v") {
            let assignment = value(&mut i, rest, "v")?;
            let (name, val) =
                split_assignment(&assignment).ok_or_else(|| format!("invalid -v argument: {assignment}"))?;
            assignments.push((name.to_string(), unescape(val)));
        } else if let Some(rest) = arg.strip_prefix("-f") {
            let path = value(&mut i, rest, "f")?;
            let text = read_program(&path)?;
            let p = program.get_or_insert_with(String::new);
            p.push_str(&text);
            p.push('\n');
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(format!("not an option: {arg}\n{USAGE}"));
        } else {
            break;
        }
        i += 1;
    }
    let mut operands = args[i..].iter();
    let program = match program {
        Some(p) => p,
        None => operands.next().cloned().ok_or_else(|| USAGE.to_string())?,
    };

    let tokens = Lexer::new(&program).tokenize().map_err(|e| e.to_string())?;
    let program = Parser::new(tokens).parse().map_err(|e| e.to_string())?;
    let mut interpreter = Interpreter::new(&program);
    if let Some(fs) = fs {
        interpreter.set_fs(&fs);
    }
    for (name, value) in &assignments {
        interpreter.set_variable(name, value);
    }

    // Operands: files, `-` (standard input) and `var=value`, which awk-rs
    // applies before the first record is read.
    let mut argv = vec!["awk".to_string()];
    let mut inputs: Vec<Box<dyn BufRead>> = Vec::new();
    let mut names = Vec::new();
    for operand in operands {
        argv.push(operand.clone());
        if let Some((name, value)) = split_assignment(operand) {
            interpreter.set_variable(name, &unescape(value));
        } else if operand == "-" || operand == "/dev/stdin" {
            inputs.push(Box::new(BufReader::new(io::stdin())));
            names.push(operand.clone());
        } else {
            inputs.push(Box::new(BufReader::new(LazyFile::new(operand.clone()))));
            names.push(operand.clone());
        }
    }
    if inputs.is_empty() {
        inputs.push(Box::new(BufReader::new(io::stdin())));
        names.push(String::new());
    }
    interpreter.set_args(argv);
    interpreter.set_filenames(names);

    let mut out = BufferedStdout;
    let code = interpreter.run(inputs, &mut out);
    let flushed = out.flush();
    let code = code.map_err(|e| e.to_string())?;
    if let Err(e) = flushed {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Ok(141);
        }
        return Err(format!("write error: {}", crate::io_message(&e)));
    }
    Ok(code)
}

/// `-F t` is a tab, as in every awk; anything else is the separator itself.
fn field_separator(fs: &str) -> String {
    match fs {
        "t" => "\t".to_string(),
        other => unescape(other),
    }
}

fn read_program(path: &str) -> Result<String, String> {
    let read = if path == "-" {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|e| format!("can't open file {path}: {}", crate::io_message(&e)))
}

/// `name=value` with a valid awk variable name.
fn split_assignment(s: &str) -> Option<(&str, &str)> {
    let (name, value) = s.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some((name, value))
}

/// The escapes of an awk string literal, which POSIX applies to `-v` and
/// command-line assignments.
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\x08'),
            Some('f') => out.push('\x0c'),
            Some('a') => out.push('\x07'),
            Some('v') => out.push('\x0b'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('/') => out.push('/'),
            Some(d @ '0'..='7') => {
                let mut n = d.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(v) => {
                            n = n * 8 + v;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// An input file opened when awk first reads it, so that the files before a
/// missing one are still processed, as in every awk.
struct LazyFile {
    path: String,
    file: Option<File>,
}

impl LazyFile {
    fn new(path: String) -> Self {
        LazyFile { path, file: None }
    }
}

impl Read for LazyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    // awk stops at a file it cannot open.
                    let _ = BufferedStdout.flush();
                    eprintln!("awk: cannot open \"{}\" ({})", self.path, crate::io_message(&e));
                    std::process::exit(2);
                }
            }
        }
        match self.file.as_mut().map(|f| f.read(buf)) {
            Some(Err(e)) if e.raw_os_error() == Some(crate::EISDIR) => {
                let _ = BufferedStdout.flush();
                eprintln!("awk: cannot read \"{}\" (Is a directory)", self.path);
                std::process::exit(2);
            }
            Some(r) => r,
            None => Ok(0),
        }
    }
}
