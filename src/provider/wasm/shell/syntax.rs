//! The shell's syntax tree, and its construction from brush-parser's.
//!
//! brush-parser reads the whole of bash; this module keeps the POSIX subset
//! the stacyvm shell runs and turns everything else into
//! [`ParseError::Unsupported`] naming the construct, so nothing is ever
//! silently misread.

use brush_parser::ast;
use brush_parser::word::{self as bword, Parameter, ParameterExpr, SpecialParameter, TildeExpr, WordPiece};

/// A whole command line: and-or lists run one after another.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub lists: Vec<AndOrList>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AndOrList {
    pub first: Pipeline,
    pub rest: Vec<(Connector, Pipeline)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// `! pipeline` inverts the status.
    pub bang: bool,
    pub commands: Vec<SimpleCommand>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimpleCommand {
    pub assignments: Vec<(String, Word)>,
    pub words: Vec<Word>,
    /// In source order, which is the order they apply in.
    pub redirects: Vec<Redirect>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// 0, 1 or 2.
    pub fd: i32,
    pub target: RedirectTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedirectTarget {
    Read(Word),
    Write(Word),
    Append(Word),
    /// `fd>&n`: fd becomes a copy of n.
    Duplicate(i32),
}

/// A word before expansion: literal text (quoted or not) and parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Word(pub Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Text after quote removal; `quoted` text is never split or globbed.
    Literal {
        text: String,
        quoted: bool,
    },
    Param {
        param: Param,
        quoted: bool,
    },
    /// A leading `~`: `$HOME`.
    Home,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Named(String),
    /// `$?`
    Status,
    /// `$0`
    ShellName,
    /// `$1`...: always empty, `sh -c` gets no arguments here.
    Positional,
    /// `$#`
    Count,
    /// `$@` and `$*`
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Valid shell that the stacyvm shell does not run.
    #[error("syntax not supported by the stacyvm shell: {0}")]
    Unsupported(&'static str),
    /// Not valid shell at all.
    #[error("Syntax error: {0}")]
    Syntax(String),
}

type Parsed<T> = Result<T, ParseError>;

fn options() -> brush_parser::ParserOptions {
    brush_parser::ParserOptions {
        enable_extended_globbing: false,
        posix_mode: true,
        sh_mode: true,
        tilde_expansion_at_word_start: true,
        tilde_expansion_after_colon: false,
        ..Default::default()
    }
}

pub fn parse(script: &str) -> Parsed<Script> {
    let opts = options();
    let mut parser = brush_parser::Parser::new(std::io::BufReader::new(script.as_bytes()), &opts);
    let program = parser.parse_program().map_err(|e| syntax_error(&e))?;
    let mut lists = vec![];
    for complete in program.complete_commands {
        for ast::CompoundListItem(list, separator) in complete.0 {
            if matches!(separator, ast::SeparatorOperator::Async) {
                return Err(ParseError::Unsupported("background jobs (&)"));
            }
            lists.push(and_or(list)?);
        }
    }
    Ok(Script { lists })
}

/// brush's messages, reworded as dash words them.
fn syntax_error(e: &brush_parser::ParseError) -> ParseError {
    let text = e.to_string();
    if text.contains("here document") {
        // An unterminated here-document (or bash's <<<) is still one.
        return ParseError::Unsupported("here-documents (<<)");
    }
    let message = if text.contains("unterminated single quote") {
        "Unterminated quoted string (')".to_string()
    } else if text.contains("unterminated double quote") {
        "Unterminated quoted string (\")".to_string()
    } else if text.contains("end of input") {
        "end of file unexpected".to_string()
    } else if let Some(at) = text.strip_prefix("syntax error ") {
        format!("unexpected token {at}")
    } else {
        text
    };
    ParseError::Syntax(message)
}

fn and_or(list: ast::AndOrList) -> Parsed<AndOrList> {
    let first = pipeline(list.first)?;
    let rest = list
        .additional
        .into_iter()
        .map(|next| match next {
            ast::AndOr::And(p) => Ok((Connector::And, pipeline(p)?)),
            ast::AndOr::Or(p) => Ok((Connector::Or, pipeline(p)?)),
        })
        .collect::<Parsed<_>>()?;
    Ok(AndOrList { first, rest })
}

fn pipeline(p: ast::Pipeline) -> Parsed<Pipeline> {
    if p.timed.is_some() {
        return Err(ParseError::Unsupported("the time keyword"));
    }
    let commands = p.seq.into_iter().map(command).collect::<Parsed<_>>()?;
    Ok(Pipeline { bang: p.bang, commands })
}

fn command(c: ast::Command) -> Parsed<SimpleCommand> {
    use ast::CompoundCommand as C;
    match c {
        ast::Command::Simple(s) => simple(s),
        ast::Command::Function(_) => Err(ParseError::Unsupported("functions")),
        ast::Command::ExtendedTest(..) => Err(ParseError::Unsupported("[[ ]] tests (use [ ])")),
        ast::Command::Compound(compound, _) => Err(ParseError::Unsupported(match compound {
            C::ForClause(_) | C::ArithmeticForClause(_) => "for loops",
            C::WhileClause(_) => "while loops",
            C::UntilClause(_) => "until loops",
            C::IfClause(_) => "if statements",
            C::CaseClause(_) => "case statements",
            C::Subshell(_) => "subshells ( )",
            C::BraceGroup(_) => "command groups { }",
            C::Arithmetic(_) => "arithmetic commands (( ))",
            #[allow(unreachable_patterns)]
            _ => "compound commands",
        })),
    }
}

fn simple(s: ast::SimpleCommand) -> Parsed<SimpleCommand> {
    use ast::CommandPrefixOrSuffixItem as Item;
    let mut out = SimpleCommand::default();
    for item in s.prefix.map(|p| p.0).unwrap_or_default() {
        match item {
            Item::AssignmentWord(a, _) => out.assignments.push(assignment(a)?),
            Item::IoRedirect(r) => out.redirects.push(redirect(r)?),
            Item::Word(w) => out.words.push(word(&w.value)?),
            Item::ProcessSubstitution(..) => return Err(ParseError::Unsupported("process substitution")),
        }
    }
    if let Some(w) = s.word_or_name {
        out.words.push(word(&w.value)?);
    }
    for item in s.suffix.map(|p| p.0).unwrap_or_default() {
        match item {
            Item::Word(w) | Item::AssignmentWord(_, w) => out.words.push(word(&w.value)?),
            Item::IoRedirect(r) => out.redirects.push(redirect(r)?),
            Item::ProcessSubstitution(..) => return Err(ParseError::Unsupported("process substitution")),
        }
    }
    Ok(out)
}

fn assignment(a: ast::Assignment) -> Parsed<(String, Word)> {
    if a.append {
        return Err(ParseError::Unsupported("+= assignments"));
    }
    let ast::AssignmentName::VariableName(name) = a.name else {
        return Err(ParseError::Unsupported("arrays"));
    };
    let ast::AssignmentValue::Scalar(value) = a.value else {
        return Err(ParseError::Unsupported("arrays"));
    };
    Ok((name, word(&value.value)?))
}

fn redirect(r: ast::IoRedirect) -> Parsed<Redirect> {
    use ast::IoFileRedirectKind as K;
    use ast::IoFileRedirectTarget as T;
    let (fd, kind, target) = match r {
        ast::IoRedirect::File(fd, kind, target) => (fd, kind, target),
        ast::IoRedirect::HereDocument(..) => return Err(ParseError::Unsupported("here-documents (<<)")),
        ast::IoRedirect::HereString(..) => return Err(ParseError::Unsupported("here-strings (<<<)")),
        ast::IoRedirect::OutputAndError(..) => return Err(ParseError::Unsupported("&> redirections (use > f 2>&1)")),
    };
    let fd = fd.unwrap_or(match kind {
        K::Read | K::DuplicateInput | K::ReadAndWrite => 0,
        _ => 1,
    });
    if !(0..=2).contains(&fd) {
        return Err(ParseError::Unsupported("file descriptors above 2"));
    }
    let target = match (kind, target) {
        (_, T::ProcessSubstitution(..)) => return Err(ParseError::Unsupported("process substitution")),
        (K::Read, T::Filename(w)) => RedirectTarget::Read(word(&w.value)?),
        (K::Write | K::Clobber, T::Filename(w)) => RedirectTarget::Write(word(&w.value)?),
        (K::Append, T::Filename(w)) => RedirectTarget::Append(word(&w.value)?),
        (K::DuplicateOutput, T::Fd(n)) => RedirectTarget::Duplicate(duplicate_fd(&n.to_string())?),
        (K::DuplicateOutput, T::Duplicate(w)) => RedirectTarget::Duplicate(duplicate_fd(&w.value)?),
        (K::DuplicateInput, _) => return Err(ParseError::Unsupported("input duplication (<&)")),
        (K::ReadAndWrite, _) => return Err(ParseError::Unsupported("read-write redirections (<>)")),
        _ => return Err(ParseError::Unsupported("this form of redirection")),
    };
    Ok(Redirect { fd, target })
}

fn duplicate_fd(target: &str) -> Parsed<i32> {
    match target {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        "-" => Err(ParseError::Unsupported("closing file descriptors (>&-)")),
        t if t.bytes().all(|b| b.is_ascii_digit()) => Err(ParseError::Unsupported("file descriptors above 2")),
        _ => Err(ParseError::Unsupported(">&file redirections (use > f 2>&1)")),
    }
}

/// Splits one raw word into quoted and unquoted parts and parameters.
pub fn word(raw: &str) -> Parsed<Word> {
    let pieces = bword::parse(raw, &options()).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let mut parts = vec![];
    for p in pieces {
        piece(p.piece, false, &mut parts)?;
    }
    Ok(Word(parts))
}

fn piece(p: WordPiece, quoted: bool, out: &mut Vec<Part>) -> Parsed<()> {
    match p {
        WordPiece::Text(text) => out.push(Part::Literal { text, quoted }),
        WordPiece::SingleQuotedText(text) => out.push(Part::Literal { text, quoted: true }),
        WordPiece::EscapeSequence(seq) => {
            let escaped = seq.strip_prefix('\\').unwrap_or(&seq);
            let text = if !quoted || escaped.starts_with(['$', '`', '"', '\\']) {
                escaped.to_string()
            } else if escaped == "\n" {
                String::new()
            } else {
                seq.clone()
            };
            out.push(Part::Literal { text, quoted: true });
        }
        WordPiece::DoubleQuotedSequence(inner) => {
            // An empty "" still makes a (empty) word.
            out.push(Part::Literal {
                text: String::new(),
                quoted: true,
            });
            for p in inner {
                piece(p.piece, true, out)?;
            }
        }
        WordPiece::GettextDoubleQuotedSequence(_) => return Err(ParseError::Unsupported("$\"...\" quoting")),
        WordPiece::AnsiCQuotedText(_) => return Err(ParseError::Unsupported("$'...' quoting")),
        WordPiece::TildeExpansion(TildeExpr::Home) if !quoted => out.push(Part::Home),
        WordPiece::TildeExpansion(_) => return Err(ParseError::Unsupported("~user, ~+ and ~- tilde expansion")),
        WordPiece::ParameterExpansion(expr) => out.push(Part::Param {
            param: parameter(expr)?,
            quoted,
        }),
        WordPiece::CommandSubstitution(_) => return Err(ParseError::Unsupported("command substitution $(...)")),
        WordPiece::BackquotedCommandSubstitution(_) => {
            return Err(ParseError::Unsupported("command substitution `...`"));
        }
        WordPiece::ArithmeticExpression(_) => return Err(ParseError::Unsupported("arithmetic expansion $((...))")),
    }
    Ok(())
}

fn parameter(expr: ParameterExpr) -> Parsed<Param> {
    let ParameterExpr::Parameter { parameter, indirect } = expr else {
        return Err(ParseError::Unsupported(
            "parameter expansion operators such as ${VAR:-default}",
        ));
    };
    if indirect {
        return Err(ParseError::Unsupported("indirect expansion ${!VAR}"));
    }
    match parameter {
        Parameter::Named(name) => Ok(Param::Named(name)),
        Parameter::Positional(0) => Ok(Param::ShellName),
        Parameter::Positional(_) => Ok(Param::Positional),
        Parameter::Special(SpecialParameter::LastExitStatus) => Ok(Param::Status),
        Parameter::Special(SpecialParameter::ShellName) => Ok(Param::ShellName),
        Parameter::Special(SpecialParameter::PositionalParameterCount) => Ok(Param::Count),
        Parameter::Special(SpecialParameter::AllPositionalParameters { .. }) => Ok(Param::All),
        Parameter::Special(SpecialParameter::ProcessId) => Err(ParseError::Unsupported("$$")),
        Parameter::Special(SpecialParameter::LastBackgroundProcessId) => Err(ParseError::Unsupported("$!")),
        Parameter::Special(SpecialParameter::CurrentOptionFlags) => Err(ParseError::Unsupported("$-")),
        Parameter::NamedWithIndex { .. } | Parameter::NamedWithAllIndices { .. } => {
            Err(ParseError::Unsupported("arrays"))
        }
    }
}
