//! `grep` (and `egrep`, `fgrep`), written here on the regex crate: GNU
//! grep's options, output and exit status (0 a line was selected, 1 none,
//! 2 an error). Patterns are POSIX basic (default), extended (`-E`), fixed
//! strings (`-F`) or the regex crate's Perl-like syntax (`-P`); basic and
//! extended ones are translated by `posix-regex`. Back-references are not
//! supported. A file is binary if a NUL byte is in its first 32 KiB or in a
//! line about to be printed; its matches are then reported as
//! `grep: FILE: binary file matches`, as GNU grep does in the C locale.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use posix_regex::Flavor;
use regex::bytes::{Regex, RegexBuilder};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Basic,
    Extended,
    Fixed,
    Perl,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Binary {
    Binary,
    Text,
    WithoutMatch,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Listing {
    Lines,
    Count,
    FilesWith,
    FilesWithout,
    Quiet,
}

struct Options {
    syntax: Syntax,
    patterns: Vec<String>,
    pattern_given: bool,
    ignore_case: bool,
    invert: bool,
    word: bool,
    line: bool,
    listing: Listing,
    no_messages: bool,
    only_matching: bool,
    line_number: bool,
    byte_offset: bool,
    with_filename: Option<bool>,
    null: bool,
    null_data: bool,
    max_count: Option<u64>,
    before: usize,
    after: usize,
    group_separator: Option<String>,
    recursive: bool,
    dereference: bool,
    skip_directories: bool,
    includes: Vec<glob::Pattern>,
    excludes: Vec<glob::Pattern>,
    exclude_dirs: Vec<glob::Pattern>,
    binary: Binary,
    label: String,
    line_buffered: bool,
    operands: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            syntax: Syntax::Basic,
            patterns: Vec::new(),
            pattern_given: false,
            ignore_case: false,
            invert: false,
            word: false,
            line: false,
            listing: Listing::Lines,
            no_messages: false,
            only_matching: false,
            line_number: false,
            byte_offset: false,
            with_filename: None,
            null: false,
            null_data: false,
            max_count: None,
            before: 0,
            after: 0,
            group_separator: Some("--".into()),
            recursive: false,
            dereference: false,
            skip_directories: false,
            includes: Vec::new(),
            excludes: Vec::new(),
            exclude_dirs: Vec::new(),
            binary: Binary::Binary,
            label: "(standard input)".into(),
            line_buffered: false,
            operands: Vec::new(),
        }
    }
}

const TRY: &str = "Usage: grep [OPTION]... PATTERNS [FILE]...\nTry 'grep --help' for more information.";

pub fn grep(args: Vec<OsString>) -> i32 {
    main(args, Syntax::Basic)
}

pub fn egrep(args: Vec<OsString>) -> i32 {
    main(args, Syntax::Extended)
}

pub fn fgrep(args: Vec<OsString>) -> i32 {
    main(args, Syntax::Fixed)
}

fn main(args: Vec<OsString>, syntax: Syntax) -> i32 {
    let args: Vec<String> = match args.into_iter().skip(1).map(OsString::into_string).collect() {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("grep: invalid (non-UTF-8) argument: {}", bad.to_string_lossy());
            return 2;
        }
    };
    let mut o = Options {
        syntax,
        ..Options::default()
    };
    if let Err(message) = parse(&mut o, args) {
        if !message.is_empty() {
            eprintln!("grep: {message}");
        }
        eprintln!("{TRY}");
        return 2;
    }
    let regex = match compile(&o) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("grep: {message}");
            return 2;
        }
    };
    let stdout = io::stdout();
    let mut g = Grep {
        o: &o,
        regex,
        out: io::BufWriter::with_capacity(64 * 1024, stdout.lock()),
        selected_any: false,
        error: false,
        printed_any: false,
        with_filename: false,
    };
    let code = match g.run() {
        Ok(()) => {
            if g.selected_any && o.listing == Listing::Quiet {
                0
            } else if g.error {
                2
            } else if g.selected_any {
                0
            } else {
                1
            }
        }
        Err(Stop::Quit) => 0,
        Err(Stop::Pipe) => return 141,
        Err(Stop::Write(e)) => {
            eprintln!("grep: write error: {}", crate::io_message(&e));
            return 2;
        }
    };
    match g.out.flush() {
        Ok(()) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 141,
        Err(e) => {
            eprintln!("grep: write error: {}", crate::io_message(&e));
            2
        }
    }
}

/// Long options: name, whether it takes a value (2: optionally, after `=`).
const LONG: &[(&str, u8)] = &[
    ("after-context", 1),
    ("basic-regexp", 0),
    ("before-context", 1),
    ("binary-files", 1),
    ("byte-offset", 0),
    ("color", 2),
    ("colour", 2),
    ("context", 1),
    ("count", 0),
    ("dereference-recursive", 0),
    ("devices", 1),
    ("directories", 1),
    ("exclude", 1),
    ("exclude-dir", 1),
    ("extended-regexp", 0),
    ("file", 1),
    ("files-with-matches", 0),
    ("files-without-match", 0),
    ("fixed-strings", 0),
    ("group-separator", 1),
    ("help", 0),
    ("ignore-case", 0),
    ("include", 1),
    ("invert-match", 0),
    ("label", 1),
    ("line-buffered", 0),
    ("line-number", 0),
    ("line-regexp", 0),
    ("max-count", 1),
    ("no-filename", 0),
    ("no-group-separator", 0),
    ("no-ignore-case", 0),
    ("no-messages", 0),
    ("null", 0),
    ("null-data", 0),
    ("only-matching", 0),
    ("perl-regexp", 0),
    ("quiet", 0),
    ("recursive", 0),
    ("regexp", 1),
    ("silent", 0),
    ("text", 0),
    ("version", 0),
    ("with-filename", 0),
    ("word-regexp", 0),
];

fn number(option: &str, value: &str) -> Result<u64, String> {
    value.trim().parse::<u64>().map_err(|_| match option {
        "m" | "max-count" => format!("invalid max count"),
        _ => format!("{value}: invalid context length argument"),
    })
}

fn context(value: &str) -> Result<usize, String> {
    // A larger context than any file has lines is the same as "all of it".
    number("C", value).map(|n| usize::try_from(n).unwrap_or(usize::MAX).min(1 << 30))
}

fn glob_pattern(p: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(p).map_err(|e| format!("invalid glob pattern '{p}': {e}"))
}

fn read_patterns(path: &str) -> Result<Vec<String>, String> {
    let data = if path == "-" {
        let mut d = Vec::new();
        io::stdin().read_to_end(&mut d).map(|_| d)
    } else {
        std::fs::read(path)
    }
    .map_err(|e| format!("{path}: {}", crate::io_message(&e)))?;
    let text = String::from_utf8_lossy(&data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if data.is_empty() {
        return Ok(Vec::new());
    }
    Ok(text.split('\n').map(str::to_string).collect())
}

fn apply_short(o: &mut Options, c: char, value: Option<String>) -> Result<(), String> {
    let v = || value.clone().unwrap_or_default();
    match c {
        'E' => o.syntax = Syntax::Extended,
        'F' => o.syntax = Syntax::Fixed,
        'G' => o.syntax = Syntax::Basic,
        'P' => o.syntax = Syntax::Perl,
        'e' => {
            o.patterns.extend(v().split('\n').map(str::to_string));
            o.pattern_given = true;
        }
        'f' => {
            o.patterns.extend(read_patterns(&v())?);
            o.pattern_given = true;
        }
        'i' | 'y' => o.ignore_case = true,
        'v' => o.invert = true,
        'w' => o.word = true,
        'x' => o.line = true,
        'c' => o.listing = Listing::Count,
        'l' => o.listing = Listing::FilesWith,
        'L' => o.listing = Listing::FilesWithout,
        'q' => o.listing = Listing::Quiet,
        's' => o.no_messages = true,
        'o' => o.only_matching = true,
        'n' => o.line_number = true,
        'b' => o.byte_offset = true,
        'H' => o.with_filename = Some(true),
        'h' => o.with_filename = Some(false),
        'Z' => o.null = true,
        'z' => o.null_data = true,
        'a' => o.binary = Binary::Text,
        'I' => o.binary = Binary::WithoutMatch,
        'r' => o.recursive = true,
        'R' => {
            o.recursive = true;
            o.dereference = true;
        }
        'm' => o.max_count = Some(number("m", &v())?),
        'A' => o.after = context(&v())?,
        'B' => o.before = context(&v())?,
        'C' => {
            let n = context(&v())?;
            o.after = n;
            o.before = n;
        }
        'd' => match v().as_str() {
            "read" => o.skip_directories = false,
            "skip" => o.skip_directories = true,
            "recurse" => o.recursive = true,
            other => return Err(format!("invalid argument '{other}' for '--directories'")),
        },
        'D' => {}
        'U' | 'u' | 'T' => {}
        'V' => {
            println!("grep (stacyvm utilities, on the regex crate)");
            std::process::exit(0);
        }
        other => return Err(format!("invalid option -- '{other}'")),
    }
    Ok(())
}

fn parse(o: &mut Options, args: Vec<String>) -> Result<(), String> {
    let mut i = 0;
    let mut operands = Vec::new();
    let mut context_digits: Option<String> = None;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (key, inline) = match long.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (long, None),
            };
            let candidates: Vec<&(&str, u8)> = LONG.iter().filter(|(n, _)| n.starts_with(key)).collect();
            let (name, takes) = match candidates.iter().find(|(n, _)| *n == key) {
                Some(exact) => **exact,
                None if candidates.len() == 1 => *candidates[0],
                None if candidates.is_empty() => return Err(format!("unrecognized option '{arg}'")),
                None => return Err(format!("option '{arg}' is ambiguous")),
            };
            let value = match takes {
                1 => match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| format!("option '--{name}' requires an argument"))?;
                        i += 1;
                        Some(v)
                    }
                },
                2 => inline,
                _ => {
                    if inline.is_some() {
                        return Err(format!("option '--{name}' doesn't allow an argument"));
                    }
                    None
                }
            };
            let v = value.clone().unwrap_or_default();
            match name {
                "after-context" => apply_short(o, 'A', value)?,
                "basic-regexp" => apply_short(o, 'G', None)?,
                "before-context" => apply_short(o, 'B', value)?,
                "binary-files" => {
                    o.binary = match v.as_str() {
                        "binary" => Binary::Binary,
                        "text" => Binary::Text,
                        "without-match" => Binary::WithoutMatch,
                        _ => return Err("invalid argument for --binary-files".into()),
                    }
                }
                "byte-offset" => apply_short(o, 'b', None)?,
                "color" | "colour" => {}
                "line-buffered" => o.line_buffered = true,
                "context" => apply_short(o, 'C', value)?,
                "count" => apply_short(o, 'c', None)?,
                "dereference-recursive" => apply_short(o, 'R', None)?,
                "devices" => {}
                "directories" => apply_short(o, 'd', value)?,
                "exclude" => o.excludes.push(glob_pattern(&v)?),
                "exclude-dir" => o.exclude_dirs.push(glob_pattern(v.trim_end_matches('/'))?),
                "extended-regexp" => apply_short(o, 'E', None)?,
                "file" => apply_short(o, 'f', value)?,
                "files-with-matches" => apply_short(o, 'l', None)?,
                "files-without-match" => apply_short(o, 'L', None)?,
                "fixed-strings" => apply_short(o, 'F', None)?,
                "group-separator" => o.group_separator = Some(v),
                "help" => {
                    print_help();
                    std::process::exit(0);
                }
                "ignore-case" => apply_short(o, 'i', None)?,
                "include" => o.includes.push(glob_pattern(&v)?),
                "invert-match" => apply_short(o, 'v', None)?,
                "label" => o.label = v,
                "line-number" => apply_short(o, 'n', None)?,
                "line-regexp" => apply_short(o, 'x', None)?,
                "max-count" => apply_short(o, 'm', value)?,
                "no-filename" => apply_short(o, 'h', None)?,
                "no-group-separator" => o.group_separator = None,
                "no-ignore-case" => o.ignore_case = false,
                "no-messages" => apply_short(o, 's', None)?,
                "null" => apply_short(o, 'Z', None)?,
                "null-data" => apply_short(o, 'z', None)?,
                "only-matching" => apply_short(o, 'o', None)?,
                "perl-regexp" => apply_short(o, 'P', None)?,
                "quiet" | "silent" => apply_short(o, 'q', None)?,
                "recursive" => apply_short(o, 'r', None)?,
                "regexp" => apply_short(o, 'e', value)?,
                "text" => apply_short(o, 'a', None)?,
                "version" => apply_short(o, 'V', None)?,
                "with-filename" => apply_short(o, 'H', None)?,
                "word-regexp" => apply_short(o, 'w', None)?,
                _ => {}
            }
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            let chars: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                if c.is_ascii_digit() {
                    // -NUM is --context=NUM.
                    context_digits.get_or_insert_with(String::new).push(c);
                    j += 1;
                    continue;
                }
                if let Some(digits) = context_digits.take() {
                    apply_short(o, 'C', Some(digits))?;
                }
                if matches!(c, 'e' | 'f' | 'm' | 'A' | 'B' | 'C' | 'd' | 'D') {
                    let rest: String = chars[j + 1..].iter().collect();
                    let value = if rest.is_empty() {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| format!("option requires an argument -- '{c}'"))?;
                        i += 1;
                        v
                    } else {
                        rest
                    };
                    apply_short(o, c, Some(value))?;
                    break;
                }
                apply_short(o, c, None)?;
                j += 1;
            }
            if let Some(digits) = context_digits.take() {
                apply_short(o, 'C', Some(digits))?;
            }
            continue;
        }
        operands.push(arg.clone());
    }
    if !o.pattern_given {
        if operands.is_empty() {
            return Err(String::new());
        }
        let p = operands.remove(0);
        o.patterns.extend(p.split('\n').map(str::to_string));
    }
    o.operands = operands;
    Ok(())
}

fn print_help() {
    println!(
        "Usage: grep [OPTION]... PATTERNS [FILE]...
Search for PATTERNS in each FILE.

  -E, --extended-regexp     PATTERNS are extended regular expressions
  -F, --fixed-strings       PATTERNS are strings
  -G, --basic-regexp        PATTERNS are basic regular expressions
  -P, --perl-regexp         PATTERNS are Perl-like regular expressions (the regex crate's syntax)
  -e, --regexp=PATTERNS     use PATTERNS for matching
  -f, --file=FILE           take PATTERNS from FILE
  -i, --ignore-case         ignore case distinctions in patterns and data
  -w, --word-regexp         match only whole words
  -x, --line-regexp         match only whole lines
  -s, --no-messages         suppress error messages
  -v, --invert-match        select non-matching lines
  -m, --max-count=NUM       stop after NUM selected lines
  -b, --byte-offset         print the byte offset with output lines
  -n, --line-number         print line number with output lines
  -H, --with-filename       print file name with output lines
  -h, --no-filename         suppress the file name prefix on output
      --label=LABEL         use LABEL as the standard input file name prefix
  -o, --only-matching       show only nonempty parts of lines that match
  -q, --quiet, --silent     suppress all normal output
      --binary-files=TYPE   assume that binary files are TYPE;
                            TYPE is 'binary', 'text', or 'without-match'
  -a, --text                equivalent to --binary-files=text
  -I                        equivalent to --binary-files=without-match
  -r, --recursive           search directories recursively
  -R, --dereference-recursive  likewise, but follow all symlinks
      --include=GLOB        search only files that match GLOB
      --exclude=GLOB        skip files that match GLOB
      --exclude-dir=GLOB    skip directories that match GLOB
  -L, --files-without-match  print only names of FILEs with no selected lines
  -l, --files-with-matches  print only names of FILEs with selected lines
  -c, --count               print only a count of selected lines per FILE
  -Z, --null                print 0 byte after FILE name
  -z, --null-data           a data line ends in 0 byte, not newline
  -B, --before-context=NUM  print NUM lines of leading context
  -A, --after-context=NUM   print NUM lines of trailing context
  -C, --context=NUM         print NUM lines of output context
  -NUM                      same as --context=NUM

Exit status is 0 if any line is selected, 1 otherwise;
if any error occurs and -q is not given, the exit status is 2."
    );
}

fn compile(o: &Options) -> Result<Regex, String> {
    let mut parts = Vec::with_capacity(o.patterns.len());
    for p in &o.patterns {
        let translated = match o.syntax {
            Syntax::Fixed => regex::escape(p),
            Syntax::Perl => p.clone(),
            Syntax::Basic => posix_regex::translate(p, Flavor::Basic)?,
            Syntax::Extended => posix_regex::translate(p, Flavor::Extended)?,
        };
        parts.push(translated);
    }
    let mut pattern = if parts.len() == 1 {
        parts.pop().unwrap_or_default()
    } else {
        parts.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|")
    };
    if o.line {
        pattern = format!("^(?:{pattern})$");
    } else if o.word {
        pattern = format!("\\b{{start-half}}(?:{pattern})\\b{{end-half}}");
    }
    RegexBuilder::new(&pattern)
        .case_insensitive(o.ignore_case)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => "regular expression is too big".to_string(),
            regex::Error::Syntax(s) => {
                // The regex crate's message spans several lines; its last
                // one names the problem.
                let last = s
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("error:"))
                    .unwrap_or("invalid pattern");
                format!("invalid regular expression: {}", last.trim_start_matches("error: "))
            }
            other => other.to_string(),
        })
}

enum Stop {
    /// `-q` found a line: nothing more to do.
    Quit,
    /// The reader of the output left.
    Pipe,
    Write(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Stop::Pipe
        } else {
            Stop::Write(e)
        }
    }
}

struct Grep<'a, W: Write> {
    o: &'a Options,
    regex: Regex,
    out: io::BufWriter<W>,
    selected_any: bool,
    error: bool,
    /// Whether a line was printed, for the group separator between files.
    printed_any: bool,
    with_filename: bool,
}

/// A line kept for leading context.
struct Held {
    number: u64,
    offset: u64,
    text: Vec<u8>,
}

impl<W: Write> Grep<'_, W> {
    fn warn(&mut self, message: impl std::fmt::Display) {
        self.error = true;
        if !self.o.no_messages {
            let _ = self.out.flush();
            eprintln!("grep: {message}");
        }
    }

    fn run(&mut self) -> Result<(), Stop> {
        let o = self.o;
        let operands: Vec<String> = if o.operands.is_empty() {
            vec![if o.recursive { ".".into() } else { "-".into() }]
        } else {
            o.operands.clone()
        };
        let implicit_dot = o.operands.is_empty() && o.recursive;
        self.with_filename = o.with_filename.unwrap_or_else(|| {
            operands.len() > 1 || (o.recursive && operands.iter().any(|p| p != "-" && Path::new(p).is_dir()))
        });
        for operand in &operands {
            if operand == "-" {
                let label = o.label.clone();
                self.search(io::stdin().lock(), &label)?;
                continue;
            }
            let path = Path::new(operand);
            let meta = std::fs::metadata(path);
            // --include and --exclude apply to file operands, never to directories.
            if !meta.as_ref().is_ok_and(|m| m.is_dir()) && self.skipped_by_name(operand) {
                continue;
            }
            match meta {
                Ok(m) if m.is_dir() => {
                    if o.recursive {
                        self.walk(operand, implicit_dot)?;
                    } else if !o.skip_directories {
                        self.warn(format!("{operand}: Is a directory"));
                    }
                }
                Ok(_) => self.file(operand, operand)?,
                Err(e) => self.warn(format!("{operand}: {}", crate::io_message(&e))),
            }
        }
        Ok(())
    }

    /// Whether `--include`/`--exclude` leave out a file by its base name.
    fn skipped_by_name(&self, name: &str) -> bool {
        let base = name.rsplit('/').next().unwrap_or(name);
        let o = self.o;
        o.excludes.iter().any(|p| p.matches(base) || p.matches(name))
            || (!o.includes.is_empty() && !o.includes.iter().any(|p| p.matches(base)))
    }

    fn walk(&mut self, root: &str, implicit_dot: bool) -> Result<(), Stop> {
        let o = self.o;
        let walker = walkdir::WalkDir::new(root)
            .follow_links(o.dereference)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                e.depth() == 0
                    || !e.file_type().is_dir()
                    || !o
                        .exclude_dirs
                        .iter()
                        .any(|p| p.matches(&e.file_name().to_string_lossy()))
            });
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                    let why = e.io_error().map_or_else(|| e.to_string(), crate::io_message);
                    self.warn(format!("{path}: {why}"));
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            let full = entry.path().display().to_string();
            let shown = if implicit_dot {
                full.strip_prefix("./").unwrap_or(&full).to_string()
            } else {
                full.clone()
            };
            if self.skipped_by_name(&shown) {
                continue;
            }
            self.file(&full, &shown)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, shown: &str) -> Result<(), Stop> {
        match File::open(path) {
            Ok(f) => self.search(f, shown),
            Err(e) => {
                self.warn(format!("{shown}: {}", crate::io_message(&e)));
                Ok(())
            }
        }
    }

    fn prefix(&mut self, name: &str, number: u64, offset: u64, sep: u8) -> io::Result<()> {
        let o = self.o;
        if self.with_filename {
            self.out.write_all(name.as_bytes())?;
            self.out
                .write_all(if o.null { b"\0" } else { std::slice::from_ref(&sep) })?;
        }
        if o.line_number {
            write!(self.out, "{number}")?;
            self.out.write_all(&[sep])?;
        }
        if o.byte_offset {
            write!(self.out, "{offset}")?;
            self.out.write_all(&[sep])?;
        }
        Ok(())
    }

    fn print_line(
        &mut self,
        name: &str,
        number: u64,
        offset: u64,
        text: &[u8],
        sep: u8,
        last: &mut Option<u64>,
    ) -> io::Result<()> {
        let o = self.o;
        if (o.before > 0 || o.after > 0)
            && let Some(sep_text) = &o.group_separator
            && self.printed_any
            && last.is_none_or(|l| number > l + 1)
        {
            self.out.write_all(sep_text.as_bytes())?;
            self.out.write_all(b"\n")?;
        }
        let eol = if o.null_data { b'\0' } else { b'\n' };
        if o.only_matching {
            if sep == b':' {
                let found: Vec<(usize, usize)> = self
                    .regex
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| (m.start(), m.end()))
                    .collect();
                for (start, end) in found {
                    self.prefix(name, number, offset + start as u64, sep)?;
                    self.out.write_all(&text[start..end])?;
                    self.out.write_all(&[eol])?;
                }
            }
        } else {
            self.prefix(name, number, offset, sep)?;
            self.out.write_all(text)?;
            self.out.write_all(&[eol])?;
        }
        if o.line_buffered {
            self.out.flush()?;
        }
        self.printed_any = true;
        *last = Some(number);
        Ok(())
    }

    fn search(&mut self, input: impl Read, name: &str) -> Result<(), Stop> {
        let o = self.o;
        let eol = if o.null_data { b'\0' } else { b'\n' };
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        let mut binary = false;
        if o.binary != Binary::Text && !o.null_data {
            match reader.fill_buf() {
                Ok(head) => binary = head[..head.len().min(32 * 1024)].contains(&0),
                Err(e) => {
                    let why = if e.raw_os_error() == Some(crate::EISDIR) {
                        "Is a directory".to_string()
                    } else {
                        crate::io_message(&e)
                    };
                    self.warn(format!("{name}: {why}"));
                    return Ok(());
                }
            }
        }
        if binary && o.binary == Binary::WithoutMatch {
            return self.finish(name, 0);
        }
        let mut line = Vec::new();
        let mut number: u64 = 0;
        let mut offset: u64 = 0;
        let mut selected: u64 = 0;
        let mut held: VecDeque<Held> = VecDeque::new();
        let mut after_left = 0usize;
        let mut last: Option<u64> = None;
        loop {
            line.clear();
            let n = match reader.read_until(eol, &mut line) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let why = if e.raw_os_error() == Some(crate::EISDIR) {
                        "Is a directory".to_string()
                    } else {
                        crate::io_message(&e)
                    };
                    self.warn(format!("{name}: {why}"));
                    break;
                }
            };
            number += 1;
            let start = offset;
            offset += n as u64;
            if line.last() == Some(&eol) {
                line.pop();
            }
            if o.max_count.is_some_and(|m| selected >= m) {
                // Trailing context of the last selected line, then stop.
                let hit = self.regex.is_match(&line) != o.invert;
                if after_left > 0 && o.listing == Listing::Lines && !binary && !hit {
                    after_left -= 1;
                    let text = std::mem::take(&mut line);
                    self.print_line(name, number, start, &text, b'-', &mut last)?;
                    line = text;
                    continue;
                }
                break;
            }
            let hit = self.regex.is_match(&line) != o.invert;
            if !binary && o.binary != Binary::Text && !o.null_data && line.contains(&0) {
                binary = true;
                if o.binary == Binary::WithoutMatch {
                    break;
                }
            }
            if !hit {
                if o.listing == Listing::Lines && !binary {
                    if after_left > 0 {
                        after_left -= 1;
                        let text = std::mem::take(&mut line);
                        self.print_line(name, number, start, &text, b'-', &mut last)?;
                        line = text;
                    } else if o.before > 0 {
                        if held.len() == o.before {
                            held.pop_front();
                        }
                        held.push_back(Held {
                            number,
                            offset: start,
                            text: line.clone(),
                        });
                    }
                }
                continue;
            }
            selected += 1;
            self.selected_any = true;
            match o.listing {
                Listing::Quiet => return Err(Stop::Quit),
                Listing::FilesWith => {
                    self.list_name(name)?;
                    return Ok(());
                }
                Listing::FilesWithout => return Ok(()),
                Listing::Count => continue,
                Listing::Lines => {}
            }
            if binary {
                self.out.flush()?;
                eprintln!("grep: {name}: binary file matches");
                return Ok(());
            }
            while let Some(h) = held.pop_front() {
                self.print_line(name, h.number, h.offset, &h.text, b'-', &mut last)?;
            }
            let text = std::mem::take(&mut line);
            self.print_line(name, number, start, &text, b':', &mut last)?;
            line = text;
            after_left = o.after;
        }
        self.finish(name, selected)
    }

    /// What -c and -L print once a file is read.
    fn finish(&mut self, name: &str, selected: u64) -> Result<(), Stop> {
        match self.o.listing {
            Listing::Count => {
                if self.with_filename {
                    self.out.write_all(name.as_bytes())?;
                    self.out.write_all(if self.o.null { b"\0" } else { b":" })?;
                }
                writeln!(self.out, "{selected}")?;
            }
            Listing::FilesWithout if selected == 0 => self.list_name(name)?,
            _ => {}
        }
        Ok(())
    }

    fn list_name(&mut self, name: &str) -> io::Result<()> {
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(if self.o.null { b"\0" } else { b"\n" })?;
        if self.o.line_buffered {
            self.out.flush()?;
        }
        Ok(())
    }
}
