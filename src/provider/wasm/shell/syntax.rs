//! The shell's syntax tree, built from brush-parser's.
//!
//! brush-parser reads the whole of bash; this module keeps the POSIX `sh`
//! language (plus `[[ ]]`, `(( ))` and `local`, which scripts written for
//! bash use most) and turns everything else into
//! [`ParseError::Unsupported`] naming the construct, so nothing is ever
//! silently misread. Words are parsed here too, down to command
//! substitutions, which become scripts of their own.

use std::sync::Arc;

use brush_parser::ast;
use brush_parser::word::{
    self as bword, Parameter, ParameterExpr, ParameterTestType, SpecialParameter, SubstringMatchKind, TildeExpr,
    WordPiece,
};

/// A list of commands, run one after another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script(pub Vec<Item>);

/// An and-or list, and whether it runs in the background (`&`).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub list: AndOrList,
    pub background: bool,
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
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Simple(SimpleCommand),
    Compound(Compound, Vec<Redirect>),
    /// `name() body`.
    Function(Arc<Function>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub body: Compound,
    pub redirects: Vec<Redirect>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Compound {
    /// `{ list; }`
    Group(Script),
    /// `( list )`
    Subshell(Script),
    /// `if c1; then b1; elif c2; then b2; else b3; fi`
    If {
        branches: Vec<(Script, Script)>,
        otherwise: Option<Script>,
    },
    /// `for name [in words]; do body; done`
    For {
        var: String,
        words: Option<Vec<Word>>,
        body: Script,
    },
    /// `for ((init; cond; step)); do body; done`
    ArithFor {
        init: Option<Word>,
        cond: Option<Word>,
        step: Option<Word>,
        body: Script,
    },
    /// `while cond; do body; done`, or `until`.
    Loop {
        until: bool,
        cond: Script,
        body: Script,
    },
    Case {
        word: Word,
        arms: Vec<CaseArm>,
    },
    /// `(( expr ))`
    Arith(Word),
    /// `[[ expr ]]`
    Test(TestExpr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CaseArm {
    pub patterns: Vec<Word>,
    pub body: Script,
    /// `;&` runs the next arm's body too; `;;&` tests the next arms.
    pub then: CaseNext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseNext {
    Stop,
    FallThrough,
    TestNext,
}

/// A `[[ ]]` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum TestExpr {
    And(Box<TestExpr>, Box<TestExpr>),
    Or(Box<TestExpr>, Box<TestExpr>),
    Not(Box<TestExpr>),
    /// `[[ -f word ]]`: the operator as `test` spells it.
    Unary(&'static str, Word),
    /// `[[ a == pattern ]]`: `==`, `!=` and `=~` match, the rest compare.
    Binary(&'static str, Word, Word),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimpleCommand {
    pub assignments: Vec<Assignment>,
    pub words: Vec<Word>,
    /// In source order, which is the order they apply in.
    pub redirects: Vec<Redirect>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub name: String,
    pub value: Word,
    /// `name+=value`
    pub append: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub fd: i32,
    pub target: RedirectTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedirectTarget {
    Read(Word),
    Write(Word),
    Append(Word),
    ReadWrite(Word),
    /// `fd>&word` and `fd<&word`: a descriptor number or `-` (close).
    Duplicate(Word),
    /// A here-document's body, already a word (expanded unless the
    /// delimiter was quoted).
    HereDoc(Word),
    /// `<<< word`
    HereString(Word),
}

/// A word before expansion.
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
        op: ParamOp,
        quoted: bool,
    },
    /// `$(...)` and backquotes.
    Command {
        script: Arc<Script>,
        quoted: bool,
    },
    /// `$((...))`: the expression, expanded as a word, then evaluated.
    Arith {
        expr: Word,
        quoted: bool,
    },
    /// A leading `~`: `$HOME`.
    Home,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Named(String),
    /// `$1`...; `$0` is [`Param::ShellName`].
    Positional(u32),
    /// `$?`
    Status,
    /// `$0`
    ShellName,
    /// `$#`
    Count,
    /// `$@`
    All,
    /// `$*`
    Star,
    /// `$$`
    Pid,
    /// `$!`
    LastJob,
    /// `$-`
    Flags,
}

/// What a `${...}` expansion does with the parameter's value. `colon` is
/// whether an empty value counts as unset (`${v:-d}` against `${v-d}`).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamOp {
    Value,
    /// `${#v}`
    Length,
    /// `${v:-word}`
    Default {
        colon: bool,
        word: Word,
    },
    /// `${v:=word}`
    Assign {
        colon: bool,
        word: Word,
    },
    /// `${v:?word}`
    Error {
        colon: bool,
        word: Option<Word>,
    },
    /// `${v:+word}`
    Alternative {
        colon: bool,
        word: Word,
    },
    /// `${v#p}`, `${v##p}`
    RemovePrefix {
        longest: bool,
        pattern: Word,
    },
    /// `${v%p}`, `${v%%p}`
    RemoveSuffix {
        longest: bool,
        pattern: Word,
    },
    /// `${v/p/r}`, `${v//p/r}`, `${v/#p/r}`, `${v/%p/r}`
    Replace {
        kind: ReplaceKind,
        pattern: Word,
        replacement: Word,
    },
    /// `${v:offset:length}`
    Substring {
        offset: Word,
        length: Option<Word>,
    },
    /// `${v^^}`, `${v,,}` and their one-character forms.
    Case {
        upper: bool,
        all: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceKind {
    First,
    All,
    Prefix,
    Suffix,
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
        posix_mode: false,
        sh_mode: false,
        tilde_expansion_at_word_start: true,
        tilde_expansion_after_colon: false,
        ..Default::default()
    }
}

pub fn parse(script: &str) -> Parsed<Script> {
    let opts = options();
    let mut parser = brush_parser::Parser::new(std::io::BufReader::new(script.as_bytes()), &opts);
    let program = parser.parse_program().map_err(|e| syntax_error(&e))?;
    let mut items = vec![];
    for complete in program.complete_commands {
        items.extend(compound_list(complete)?.0);
    }
    Ok(Script(items))
}

/// brush's messages, reworded as dash words them.
fn syntax_error(e: &brush_parser::ParseError) -> ParseError {
    let text = e.to_string();
    let message = if text.contains("unterminated here document") || text.contains("here document") {
        "here-document not terminated".to_string()
    } else if text.contains("unterminated single quote") {
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

fn compound_list(list: ast::CompoundList) -> Parsed<Script> {
    let mut items = vec![];
    for ast::CompoundListItem(list, separator) in list.0 {
        items.push(Item {
            list: and_or(list)?,
            background: matches!(separator, ast::SeparatorOperator::Async),
        });
    }
    Ok(Script(items))
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

fn redirects(list: Option<ast::RedirectList>) -> Parsed<Vec<Redirect>> {
    list.map(|l| l.0)
        .unwrap_or_default()
        .into_iter()
        .map(redirect)
        .collect()
}

fn command(c: ast::Command) -> Parsed<Command> {
    match c {
        ast::Command::Simple(s) => Ok(Command::Simple(simple(s)?)),
        ast::Command::Function(f) => {
            let name = f.fname.value.clone();
            if !is_name(&name) && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                return Err(ParseError::Syntax(format!("Bad function name {name}")));
            }
            let ast::FunctionBody(body, redirect_list) = f.body;
            Ok(Command::Function(Arc::new(Function {
                name,
                body: compound(body)?,
                redirects: redirects(redirect_list)?,
            })))
        }
        ast::Command::ExtendedTest(test, redirect_list) => Ok(Command::Compound(
            Compound::Test(test_expr(test.expr)?),
            redirects(redirect_list)?,
        )),
        ast::Command::Compound(c, redirect_list) => Ok(Command::Compound(compound(c)?, redirects(redirect_list)?)),
    }
}

fn compound(c: ast::CompoundCommand) -> Parsed<Compound> {
    use ast::CompoundCommand as C;
    Ok(match c {
        C::BraceGroup(g) => Compound::Group(compound_list(g.list)?),
        C::Subshell(s) => Compound::Subshell(compound_list(s.list)?),
        C::IfClause(i) => {
            let mut branches = vec![(compound_list(i.condition)?, compound_list(i.then)?)];
            let mut otherwise = None;
            for clause in i.elses.unwrap_or_default() {
                match clause.condition {
                    Some(cond) => branches.push((compound_list(cond)?, compound_list(clause.body)?)),
                    None => otherwise = Some(compound_list(clause.body)?),
                }
            }
            Compound::If { branches, otherwise }
        }
        C::ForClause(f) => Compound::For {
            var: f.variable_name,
            words: f
                .values
                .map(|values| values.iter().map(|w| word(&w.value)).collect::<Parsed<_>>())
                .transpose()?,
            body: compound_list(f.body.list)?,
        },
        C::ArithmeticForClause(f) => Compound::ArithFor {
            init: f.initializer.map(|e| arith_word(&e.value)).transpose()?,
            cond: f.condition.map(|e| arith_word(&e.value)).transpose()?,
            step: f.updater.map(|e| arith_word(&e.value)).transpose()?,
            body: compound_list(f.body.list)?,
        },
        C::WhileClause(ast::WhileOrUntilClauseCommand(cond, body, _)) => Compound::Loop {
            until: false,
            cond: compound_list(cond)?,
            body: compound_list(body.list)?,
        },
        C::UntilClause(ast::WhileOrUntilClauseCommand(cond, body, _)) => Compound::Loop {
            until: true,
            cond: compound_list(cond)?,
            body: compound_list(body.list)?,
        },
        C::CaseClause(c) => Compound::Case {
            word: word(&c.value.value)?,
            arms: c
                .cases
                .into_iter()
                .map(|arm| {
                    Ok(CaseArm {
                        patterns: arm.patterns.iter().map(|p| word(&p.value)).collect::<Parsed<_>>()?,
                        body: arm.cmd.map(compound_list).transpose()?.unwrap_or_default(),
                        then: match arm.post_action {
                            ast::CaseItemPostAction::ExitCase => CaseNext::Stop,
                            ast::CaseItemPostAction::UnconditionallyExecuteNextCaseItem => CaseNext::FallThrough,
                            ast::CaseItemPostAction::ContinueEvaluatingCases => CaseNext::TestNext,
                        },
                    })
                })
                .collect::<Parsed<_>>()?,
        },
        C::Arithmetic(a) => Compound::Arith(arith_word(&a.expr.value)?),
        C::Coprocess(_) => return Err(ParseError::Unsupported("coprocesses")),
    })
}

fn test_expr(e: ast::ExtendedTestExpr) -> Parsed<TestExpr> {
    use ast::BinaryPredicate as B;
    use ast::ExtendedTestExpr as E;
    use ast::UnaryPredicate as U;
    Ok(match e {
        E::And(a, b) => TestExpr::And(Box::new(test_expr(*a)?), Box::new(test_expr(*b)?)),
        E::Or(a, b) => TestExpr::Or(Box::new(test_expr(*a)?), Box::new(test_expr(*b)?)),
        E::Not(a) => TestExpr::Not(Box::new(test_expr(*a)?)),
        E::Parenthesized(a) => test_expr(*a)?,
        E::UnaryTest(op, w) => {
            let op = match op {
                U::FileExists => "-e",
                U::FileExistsAndIsDir => "-d",
                U::FileExistsAndIsRegularFile => "-f",
                U::FileExistsAndIsSymlink => "-L",
                U::FileExistsAndIsReadable => "-r",
                U::FileExistsAndIsWritable => "-w",
                U::FileExistsAndIsExecutable => "-x",
                U::FileExistsAndIsNotZeroLength => "-s",
                U::StringHasZeroLength => "-z",
                U::StringHasNonZeroLength => "-n",
                U::ShellVariableIsSetAndAssigned => "-v",
                _ => return Err(ParseError::Unsupported("this [[ ]] test")),
            };
            TestExpr::Unary(op, word(&w.value)?)
        }
        E::BinaryTest(op, a, b) => {
            let op = match op {
                B::StringExactlyMatchesPattern => "==",
                B::StringDoesNotExactlyMatchPattern => "!=",
                B::StringMatchesRegex => "=~",
                B::StringExactlyMatchesString => "=",
                B::StringDoesNotExactlyMatchString => "!=s",
                B::LeftSortsBeforeRight => "<",
                B::LeftSortsAfterRight => ">",
                B::ArithmeticEqualTo => "-eq",
                B::ArithmeticNotEqualTo => "-ne",
                B::ArithmeticLessThan => "-lt",
                B::ArithmeticLessThanOrEqualTo => "-le",
                B::ArithmeticGreaterThan => "-gt",
                B::ArithmeticGreaterThanOrEqualTo => "-ge",
                B::LeftFileIsNewerOrExistsWhenRightDoesNot => "-nt",
                B::LeftFileIsOlderOrDoesNotExistWhenRightDoes => "-ot",
                _ => return Err(ParseError::Unsupported("this [[ ]] test")),
            };
            TestExpr::Binary(op, word(&a.value)?, word(&b.value)?)
        }
    })
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

fn assignment(a: ast::Assignment) -> Parsed<Assignment> {
    let ast::AssignmentName::VariableName(name) = a.name else {
        return Err(ParseError::Unsupported("arrays"));
    };
    let ast::AssignmentValue::Scalar(value) = a.value else {
        return Err(ParseError::Unsupported("arrays"));
    };
    Ok(Assignment {
        name,
        value: word(&value.value)?,
        append: a.append,
    })
}

fn redirect(r: ast::IoRedirect) -> Parsed<Redirect> {
    use ast::IoFileRedirectKind as K;
    use ast::IoFileRedirectTarget as T;
    let fd_of = |fd: Option<ast::IoFd>, default: i32| fd.map_or(Ok(default), fd_number);
    match r {
        ast::IoRedirect::HereDocument(fd, doc) => {
            let body = if doc.requires_expansion {
                heredoc_word(&doc.doc.value)?
            } else {
                literal(&doc.doc.value)
            };
            Ok(Redirect {
                fd: fd_of(fd, 0)?,
                target: RedirectTarget::HereDoc(body),
            })
        }
        ast::IoRedirect::HereString(fd, w) => Ok(Redirect {
            fd: fd_of(fd, 0)?,
            target: RedirectTarget::HereString(word(&w.value)?),
        }),
        ast::IoRedirect::OutputAndError(w, append) => {
            // `&> f` is `> f 2>&1`; the interpreter expands it so.
            let target = if append {
                RedirectTarget::Append(word(&w.value)?)
            } else {
                RedirectTarget::Write(word(&w.value)?)
            };
            Ok(Redirect { fd: -1, target })
        }
        ast::IoRedirect::File(fd, kind, target) => {
            let default = match kind {
                K::Read | K::DuplicateInput | K::ReadAndWrite => 0,
                _ => 1,
            };
            let fd = fd_of(fd, default)?;
            let target = match (kind, target) {
                (_, T::ProcessSubstitution(..)) => return Err(ParseError::Unsupported("process substitution")),
                (K::Read, T::Filename(w)) => RedirectTarget::Read(word(&w.value)?),
                (K::Write | K::Clobber, T::Filename(w)) => RedirectTarget::Write(word(&w.value)?),
                (K::Append, T::Filename(w)) => RedirectTarget::Append(word(&w.value)?),
                (K::ReadAndWrite, T::Filename(w)) => RedirectTarget::ReadWrite(word(&w.value)?),
                (K::DuplicateOutput | K::DuplicateInput, T::Fd(n)) => {
                    RedirectTarget::Duplicate(literal(&n.to_string()))
                }
                (K::DuplicateOutput | K::DuplicateInput, T::Duplicate(w)) => RedirectTarget::Duplicate(word(&w.value)?),
                (K::DuplicateOutput | K::DuplicateInput, T::Filename(w)) => RedirectTarget::Duplicate(word(&w.value)?),
                _ => return Err(ParseError::Unsupported("this form of redirection")),
            };
            Ok(Redirect { fd, target })
        }
    }
}

/// File descriptors 0 to 9, as in sh.
fn fd_number(fd: ast::IoFd) -> Parsed<i32> {
    let n = fd.to_string().parse::<i32>().unwrap_or(i32::MAX);
    if (0..=9).contains(&n) {
        Ok(n)
    } else {
        Err(ParseError::Unsupported("file descriptors above 9"))
    }
}

pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A word of literal, quoted text.
pub fn literal(text: &str) -> Word {
    Word(vec![Part::Literal {
        text: text.to_string(),
        quoted: true,
    }])
}

/// Splits one raw word into quoted and unquoted parts, parameters,
/// command substitutions and arithmetic.
pub fn word(raw: &str) -> Parsed<Word> {
    let pieces = bword::parse(raw, &options()).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let mut parts = vec![];
    for p in pieces {
        piece(p.piece, false, &mut parts)?;
    }
    Ok(Word(parts))
}

/// A here-document body that expands: parameters, command substitution
/// and arithmetic, with backslash quoting only `$`, `` ` `` and `\`.
fn heredoc_word(raw: &str) -> Parsed<Word> {
    let pieces = bword::parse_heredoc(raw, &options()).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let mut parts = vec![];
    for p in pieces {
        piece(p.piece, true, &mut parts)?;
    }
    Ok(Word(parts))
}

/// The text of `$((...))` or `(( ))`, to be expanded as a double-quoted
/// word before it is evaluated.
fn arith_word(raw: &str) -> Parsed<Word> {
    heredoc_word(raw)
}

/// A word inside a `${...}` operator (a default value, a pattern), parsed
/// with the quoting of its context.
fn inner_word(raw: &str, quoted: bool) -> Parsed<Word> {
    let mut w = word(raw)?;
    if quoted {
        for part in &mut w.0 {
            match part {
                Part::Literal { quoted, .. }
                | Part::Param { quoted, .. }
                | Part::Command { quoted, .. }
                | Part::Arith { quoted, .. } => *quoted = true,
                Part::Home => {}
            }
        }
    }
    Ok(w)
}

fn piece(p: WordPiece, quoted: bool, out: &mut Vec<Part>) -> Parsed<()> {
    match p {
        WordPiece::Text(text) => out.push(Part::Literal { text, quoted }),
        WordPiece::SingleQuotedText(text) => out.push(Part::Literal { text, quoted: true }),
        WordPiece::AnsiCQuotedText(text) => out.push(Part::Literal {
            text: ansi_c(&text),
            quoted: true,
        }),
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
        WordPiece::DoubleQuotedSequence(inner) | WordPiece::GettextDoubleQuotedSequence(inner) => {
            // An empty "" still makes a (empty) word.
            out.push(Part::Literal {
                text: String::new(),
                quoted: true,
            });
            for p in inner {
                piece(p.piece, true, out)?;
            }
        }
        WordPiece::TildeExpansion(TildeExpr::Home) if !quoted => out.push(Part::Home),
        WordPiece::TildeExpansion(TildeExpr::Home) => out.push(Part::Literal {
            text: "~".into(),
            quoted: true,
        }),
        WordPiece::TildeExpansion(_) => return Err(ParseError::Unsupported("~user, ~+ and ~- tilde expansion")),
        WordPiece::ParameterExpansion(expr) => {
            let (param, op) = parameter(expr, quoted)?;
            out.push(Part::Param { param, op, quoted });
        }
        WordPiece::CommandSubstitution(text) | WordPiece::BackquotedCommandSubstitution(text) => {
            out.push(Part::Command {
                script: Arc::new(parse(&text)?),
                quoted,
            })
        }
        WordPiece::ArithmeticExpression(expr) => out.push(Part::Arith {
            expr: arith_word(&expr.value)?,
            quoted,
        }),
    }
    Ok(())
}

/// `$'...'`: C escapes.
fn ansi_c(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('a') => out.push('\x07'),
            Some('b') => out.push('\x08'),
            Some('e' | 'E') => out.push('\x1b'),
            Some('f') => out.push('\x0c'),
            Some('v') => out.push('\x0b'),
            Some('0') => {
                let mut n = 0u32;
                for _ in 0..3 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            n = n * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.extend(char::from_u32(n));
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn parameter(expr: ParameterExpr, quoted: bool) -> Parsed<(Param, ParamOp)> {
    use ParameterExpr as E;
    let colon = |t: &ParameterTestType| matches!(t, ParameterTestType::UnsetOrNull);
    let w = |raw: Option<String>| inner_word(raw.as_deref().unwrap_or(""), quoted);
    // Patterns keep their own quoting: a quoted pattern is literal.
    let pat = |raw: Option<String>| word(raw.as_deref().unwrap_or(""));
    let (parameter, indirect, op) = match expr {
        E::Parameter { parameter, indirect } => (parameter, indirect, ParamOp::Value),
        E::ParameterLength { parameter, indirect } => (parameter, indirect, ParamOp::Length),
        E::UseDefaultValues {
            parameter,
            indirect,
            test_type,
            default_value,
        } => (
            parameter,
            indirect,
            ParamOp::Default {
                colon: colon(&test_type),
                word: w(default_value)?,
            },
        ),
        E::AssignDefaultValues {
            parameter,
            indirect,
            test_type,
            default_value,
        } => (
            parameter,
            indirect,
            ParamOp::Assign {
                colon: colon(&test_type),
                word: w(default_value)?,
            },
        ),
        E::IndicateErrorIfNullOrUnset {
            parameter,
            indirect,
            test_type,
            error_message,
        } => (
            parameter,
            indirect,
            ParamOp::Error {
                colon: colon(&test_type),
                word: error_message.map(|m| inner_word(&m, quoted)).transpose()?,
            },
        ),
        E::UseAlternativeValue {
            parameter,
            indirect,
            test_type,
            alternative_value,
        } => (
            parameter,
            indirect,
            ParamOp::Alternative {
                colon: colon(&test_type),
                word: w(alternative_value)?,
            },
        ),
        E::RemoveSmallestPrefixPattern {
            parameter,
            indirect,
            pattern,
        } => (
            parameter,
            indirect,
            ParamOp::RemovePrefix {
                longest: false,
                pattern: pat(pattern)?,
            },
        ),
        E::RemoveLargestPrefixPattern {
            parameter,
            indirect,
            pattern,
        } => (
            parameter,
            indirect,
            ParamOp::RemovePrefix {
                longest: true,
                pattern: pat(pattern)?,
            },
        ),
        E::RemoveSmallestSuffixPattern {
            parameter,
            indirect,
            pattern,
        } => (
            parameter,
            indirect,
            ParamOp::RemoveSuffix {
                longest: false,
                pattern: pat(pattern)?,
            },
        ),
        E::RemoveLargestSuffixPattern {
            parameter,
            indirect,
            pattern,
        } => (
            parameter,
            indirect,
            ParamOp::RemoveSuffix {
                longest: true,
                pattern: pat(pattern)?,
            },
        ),
        E::ReplaceSubstring {
            parameter,
            indirect,
            pattern,
            replacement,
            match_kind,
        } => {
            let kind = match match_kind {
                SubstringMatchKind::FirstOccurrence => ReplaceKind::First,
                SubstringMatchKind::Anywhere => ReplaceKind::All,
                SubstringMatchKind::Prefix => ReplaceKind::Prefix,
                SubstringMatchKind::Suffix => ReplaceKind::Suffix,
            };
            (
                parameter,
                indirect,
                ParamOp::Replace {
                    kind,
                    pattern: pat(Some(pattern))?,
                    replacement: w(replacement)?,
                },
            )
        }
        E::Substring {
            parameter,
            indirect,
            offset,
            length,
        } => (
            parameter,
            indirect,
            ParamOp::Substring {
                offset: arith_word(&offset.value)?,
                length: length.map(|l| arith_word(&l.value)).transpose()?,
            },
        ),
        E::UppercaseFirstChar {
            parameter, indirect, ..
        } => (
            parameter,
            indirect,
            ParamOp::Case {
                upper: true,
                all: false,
            },
        ),
        E::UppercasePattern {
            parameter, indirect, ..
        } => (parameter, indirect, ParamOp::Case { upper: true, all: true }),
        E::LowercaseFirstChar {
            parameter, indirect, ..
        } => (
            parameter,
            indirect,
            ParamOp::Case {
                upper: false,
                all: false,
            },
        ),
        E::LowercasePattern {
            parameter, indirect, ..
        } => (
            parameter,
            indirect,
            ParamOp::Case {
                upper: false,
                all: true,
            },
        ),
        _ => return Err(ParseError::Unsupported("this parameter expansion")),
    };
    if indirect {
        return Err(ParseError::Unsupported("indirect expansion ${!VAR}"));
    }
    let param = match parameter {
        Parameter::Named(name) => Param::Named(name),
        Parameter::Positional(0) => Param::ShellName,
        Parameter::Positional(n) => Param::Positional(n),
        Parameter::Special(SpecialParameter::LastExitStatus) => Param::Status,
        Parameter::Special(SpecialParameter::ShellName) => Param::ShellName,
        Parameter::Special(SpecialParameter::PositionalParameterCount) => Param::Count,
        Parameter::Special(SpecialParameter::AllPositionalParameters { concatenate }) => {
            if concatenate {
                Param::Star
            } else {
                Param::All
            }
        }
        Parameter::Special(SpecialParameter::ProcessId) => Param::Pid,
        Parameter::Special(SpecialParameter::LastBackgroundProcessId) => Param::LastJob,
        Parameter::Special(SpecialParameter::CurrentOptionFlags) => Param::Flags,
        Parameter::NamedWithIndex { .. } | Parameter::NamedWithAllIndices { .. } => {
            return Err(ParseError::Unsupported("arrays"));
        }
    };
    Ok((param, op))
}
