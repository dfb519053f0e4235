//! The part of the `onig` crate's API that uutils findutils uses (`Regex`,
//! `RegexOptions`, `Syntax`, `Error`), on the `regex` crate: findutils
//! compiles `-name`/`-path` globs to POSIX basic expressions and `-regex` to
//! one of four syntaxes, which `posix-regex` translates. Patched in for the
//! real `onig` (which wraps the Oniguruma C library) so that the utilities
//! build for wasm32-wasip1 from Rust alone.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use posix_regex::Flavor;

/// Compile options, with the values of Oniguruma's `ONIG_OPTION_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegexOptions(u32);

impl RegexOptions {
    pub const REGEX_OPTION_NONE: RegexOptions = RegexOptions(0);
    pub const REGEX_OPTION_IGNORECASE: RegexOptions = RegexOptions(1);
    pub const REGEX_OPTION_EXTEND: RegexOptions = RegexOptions(2);
    pub const REGEX_OPTION_MULTILINE: RegexOptions = RegexOptions(4);
    pub const REGEX_OPTION_SINGLELINE: RegexOptions = RegexOptions(8);
    pub const REGEX_OPTION_FIND_LONGEST: RegexOptions = RegexOptions(16);
    pub const REGEX_OPTION_FIND_NOT_EMPTY: RegexOptions = RegexOptions(32);
    pub const REGEX_OPTION_NEGATE_SINGLELINE: RegexOptions = RegexOptions(64);
    pub const REGEX_OPTION_DONT_CAPTURE_GROUP: RegexOptions = RegexOptions(128);
    pub const REGEX_OPTION_CAPTURE_GROUP: RegexOptions = RegexOptions(256);

    pub const fn empty() -> RegexOptions {
        RegexOptions(0)
    }

    pub const fn bits(&self) -> u32 {
        self.0
    }

    pub const fn contains(&self, other: RegexOptions) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for RegexOptions {
    type Output = RegexOptions;
    fn bitor(self, rhs: RegexOptions) -> RegexOptions {
        RegexOptions(self.0 | rhs.0)
    }
}

impl BitOrAssign for RegexOptions {
    fn bitor_assign(&mut self, rhs: RegexOptions) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for RegexOptions {
    type Output = RegexOptions;
    fn bitand(self, rhs: RegexOptions) -> RegexOptions {
        RegexOptions(self.0 & rhs.0)
    }
}

/// A regular expression syntax.
#[derive(Debug)]
pub struct Syntax {
    flavor: Flavor,
}

static POSIX_BASIC: Syntax = Syntax { flavor: Flavor::Basic };
static POSIX_EXTENDED: Syntax = Syntax {
    flavor: Flavor::Extended,
};
static EMACS: Syntax = Syntax { flavor: Flavor::Emacs };

impl Syntax {
    pub fn posix_basic() -> &'static Syntax {
        &POSIX_BASIC
    }

    pub fn posix_extended() -> &'static Syntax {
        &POSIX_EXTENDED
    }

    pub fn emacs() -> &'static Syntax {
        &EMACS
    }

    /// GNU grep's syntax: basic expressions with GNU's extensions.
    pub fn grep() -> &'static Syntax {
        &POSIX_BASIC
    }

    /// The syntax's own options: none of them change how a pattern reads here.
    pub fn options(&self) -> RegexOptions {
        RegexOptions::REGEX_OPTION_NONE
    }
}

/// Why a pattern does not compile.
#[derive(Clone)]
pub struct Error {
    message: String,
}

impl Error {
    pub fn code(&self) -> i32 {
        -1
    }

    pub fn description(&self) -> &str {
        &self.message
    }
}

impl std::error::Error for Error {}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({})", self.message)
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Regex {
    search: regex::Regex,
    whole: regex::Regex,
}

impl Regex {
    /// Compiles `pattern` written in `syntax`.
    pub fn with_options(pattern: &str, option: RegexOptions, syntax: &Syntax) -> Result<Regex, Error> {
        let translated = posix_regex::translate(pattern, syntax.flavor).map_err(|message| Error { message })?;
        let build = |p: &str| {
            regex::RegexBuilder::new(p)
                .case_insensitive(option.contains(RegexOptions::REGEX_OPTION_IGNORECASE))
                .dot_matches_new_line(true)
                .build()
                .map_err(|e| Error {
                    message: match e {
                        regex::Error::CompiledTooBig(_) => "Regular expression too big".to_string(),
                        other => other.to_string(),
                    },
                })
        };
        Ok(Regex {
            search: build(&translated)?,
            whole: build(&format!("\\A(?:{translated})\\z"))?,
        })
    }

    /// Whether the pattern matches the whole of `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.whole.is_match(text)
    }

    /// The start and end of the first match in `text`.
    pub fn find(&self, text: &str) -> Option<(usize, usize)> {
        self.search.find(text).map(|m| (m.start(), m.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_match_needs_the_whole_text() {
        let r = Regex::with_options("a.c", RegexOptions::REGEX_OPTION_NONE, Syntax::posix_basic()).unwrap();
        assert!(r.is_match("abc"));
        assert!(!r.is_match("abcd"));
        assert_eq!(r.find("xxabcx"), Some((2, 5)));
    }

    #[test]
    fn ignorecase_and_errors() {
        let r = Regex::with_options("A+", RegexOptions::REGEX_OPTION_IGNORECASE, Syntax::emacs()).unwrap();
        assert!(r.is_match("aaA"));
        let e = Regex::with_options("[a", RegexOptions::REGEX_OPTION_NONE, Syntax::posix_extended()).unwrap_err();
        assert_eq!(e.to_string(), "Unmatched [, [^, [:, [., or [=");
    }
}
