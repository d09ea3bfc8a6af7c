//! What runs "inside" a simulated container: a tiny shell and a handful of commands over the
//! container's in-memory filesystem ([`super::vfs`]). No real process is ever started.
//!
//! `kubectl exec POD -- ARGV` runs `ARGV` here; `kubectl attach` talks to the container's main
//! process ([`main_process`]); `kubectl cp` runs `tar` (and `test -d`).
//!
//! # Commands
//!
//! A command is found by its name, or by a path in `/bin`, `/usr/bin`, `/sbin`, `/usr/sbin` or
//! `/usr/local/bin` ending in its name (`/bin/sh`).
//!
//! | command | what it does |
//! | --- | --- |
//! | `sh`, `bash`, `ash`, `dash` | `-c SCRIPT [NAME [ARGS…]]`, `sh FILE`, or a script read from stdin line by line; with a TTY an interactive shell (prompt `# `, `exit` or Ctrl-D ends it, Ctrl-C interrupts the running command) |
//! | `echo [-n] [-e]`, `printf FORMAT [ARGS…]` | print (`%s %d %%`, `\n \t \\` escapes) |
//! | `cat [FILE…]` | files (`-` or none: stdin); `/dev/zero` is endless |
//! | `head [-c N] [-n N] [FILE…]` | the first bytes or lines; `head -c 104857600 /dev/zero` streams 100 MiB |
//! | `yes [WORD]`, `seq [FIRST [STEP]] LAST` | generators (`yes` until its reader goes away) |
//! | `wc [-c] [-l] [-w]`, `grep [-v] [-c] [-q] [-i] WORD [FILE…]` | counts; fixed-string matching |
//! | `ls [-l] [-a] [-1] [PATH…]`, `mkdir [-p]`, `rm [-r] [-f]`, `touch`, `pwd`, `cd` | files |
//! | `tar` | `c`, `x`, `t` with `f FILE` (`-`: stdin/stdout), `-C DIR`, `v`, `m`; old-style (`cf -`) and dashed (`-xmf -`) flags; what `kubectl cp` runs both ways |
//! | `test`, `[` | `-e -f -d -s -z -n`, `= !=`, `-eq -ne -lt -le -gt -ge`, `!` |
//! | `env [NAME=VALUE…] [COMMAND…]`, `printenv [NAME]`, `export`, `unset` | the container's environment (its spec's `env` plus `PATH`, `HOSTNAME`, `HOME`, `KUBERNETES_SERVICE_*`) |
//! | `hostname`, `uname [-a -n -r -m -s]`, `id`, `whoami` | identity (`root`) |
//! | `sleep N` (`s`/`m`/`h` suffixes, fractions, `infinity`), `true`, `false`, `:`, `exit [N]` | |
//!
//! # The shell language
//!
//! `;` and newlines, `&&`, `||`, pipelines `|` (stages run concurrently over bounded pipes),
//! `!`, single and double quotes, backslash escapes, `#` comments, `$NAME`, `${NAME}`, `$?`,
//! `$#`, `$@`, `$0`–`$9`, `NAME=VALUE` assignments (alone, or before a command), and
//! redirections `>`, `>>`, `<`, `2>`, `2>>`, `2>&1`, `>&2`. Not supported: control flow
//! (`if`, `for`, `while`, `case`), functions, subshells `( )`, command substitution, globbing,
//! field splitting of expansions, background jobs (`&` acts as `;`).
//!
//! # Exit codes and errors
//!
//! As a shell reports them: `sh: NAME: not found` and 127 for an unknown command inside a shell;
//! for an unknown command exec'ed directly (`kubectl exec POD -- nosuch`) stderr says what a
//! container runtime says (`OCI runtime exec failed: … executable file not found in $PATH`) and
//! the exit code is 127 (kubectl prints `command terminated with exit code 127`). A syntax error
//! is 2; a command killed by Ctrl-C is 130; a write to a reader that went away ends the writer
//! (`yes | head -n 3` terminates). Exit codes are reduced to 0–255.
//!
//! Everything is bounded: pipes hold a few chunks of at most [`CHUNK`] bytes, a redirection to
//! a file and `tar x` hold at most the filesystem quota ([`super::vfs::QUOTA`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, watch};

use super::vfs::{self, Device, FsError, Node, Vfs};

/// The largest chunk a command writes at once.
pub const CHUNK: usize = 64 * 1024;

/// Chunks buffered in a pipe between two pipeline stages.
const PIPE_DEPTH: usize = 4;

/// The longest line the shell reads (script lines, interactive input).
const MAX_LINE: usize = 64 * 1024;

/// The most a command that must hold its input (`tail`, an unfinished multi-line command)
/// keeps.
const MAX_HELD: usize = 16 * 1024 * 1024;

/// How deeply shells may be nested.
const MAX_DEPTH: u8 = 32;

static ZEROS: [u8; CHUNK] = [0; CHUNK];

fn zeros(n: usize) -> Bytes {
    Bytes::from_static(&ZEROS[..n.min(CHUNK)])
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A simulated container: who it is and its filesystem.
#[derive(Debug)]
pub struct Container {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name (also the hostname).
    pub pod: String,
    /// The container's name.
    pub name: String,
    /// The pod's IP.
    pub pod_ip: String,
    /// The environment of its processes.
    pub env: Vec<(String, String)>,
    /// Its files.
    pub fs: Arc<Mutex<Vfs>>,
}

impl Container {
    fn fs(&self) -> std::sync::MutexGuard<'_, Vfs> {
        self.fs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a terminal delivers to its reader.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes.
    Data(Bytes),
    /// Ctrl-D: end of input for the current reader (the terminal stays open).
    Eof,
}

enum Source {
    Closed,
    Raw(mpsc::Receiver<Bytes>),
    Tty(mpsc::Receiver<Chunk>),
    Zero,
}

/// A process's stdin.
pub struct Input {
    src: Source,
    pending: Bytes,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Input {
    /// Nothing to read.
    pub fn closed() -> Input {
        Input::bytes(Bytes::new())
    }

    /// These bytes, then EOF.
    pub fn bytes(b: Bytes) -> Input {
        Input {
            src: Source::Closed,
            pending: b,
        }
    }

    /// Bytes from a channel; EOF when it closes.
    pub fn channel(rx: mpsc::Receiver<Bytes>) -> Input {
        Input {
            src: Source::Raw(rx),
            pending: Bytes::new(),
        }
    }

    /// A terminal's cooked input.
    pub fn terminal(rx: mpsc::Receiver<Chunk>) -> Input {
        Input {
            src: Source::Tty(rx),
            pending: Bytes::new(),
        }
    }

    fn zero() -> Input {
        Input {
            src: Source::Zero,
            pending: Bytes::new(),
        }
    }

    async fn fill(&mut self) -> Option<Bytes> {
        loop {
            let b = match &mut self.src {
                Source::Closed => return None,
                Source::Zero => return Some(zeros(CHUNK)),
                Source::Raw(rx) => rx.recv().await?,
                Source::Tty(rx) => match rx.recv().await {
                    Some(Chunk::Data(b)) => b,
                    Some(Chunk::Eof) | None => return None,
                },
            };
            if !b.is_empty() {
                return Some(b);
            }
        }
    }

    /// The next bytes; `None` at end of input.
    pub async fn read(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        self.fill().await
    }

    /// The next line with its `\n` (the last one may lack it; a line longer than `max` comes in
    /// pieces); `None` at end of input.
    pub async fn read_line(&mut self, max: usize) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            if self.pending.is_empty() {
                match self.fill().await {
                    Some(b) => self.pending = b,
                    None => return (!line.is_empty()).then_some(line),
                }
            }
            if let Some(i) = self.pending.iter().position(|&c| c == b'\n') {
                line.extend_from_slice(&self.pending[..=i]);
                self.pending.advance(i + 1);
                return Some(line);
            }
            line.extend_from_slice(&self.pending);
            self.pending.clear();
            if line.len() >= max {
                return Some(line);
            }
        }
    }

    /// Everything up to end of input; `Err` (having read `limit` bytes) if there is more.
    pub async fn read_all(&mut self, limit: usize) -> Result<Vec<u8>, Vec<u8>> {
        let mut all = Vec::new();
        while let Some(b) = self.read().await {
            if all.len() + b.len() > limit {
                return Err(all);
            }
            all.extend_from_slice(&b);
        }
        Ok(all)
    }
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The reader went away (EPIPE).
    #[error("Broken pipe")]
    Closed,
    /// A redirection to a file outgrew the filesystem.
    #[error("No space left on device")]
    NoSpace,
}

/// What a redirection to a file has collected so far (bounded).
#[derive(Debug, Default)]
pub struct Captured {
    data: Vec<u8>,
    limit: usize,
}

/// A process's stdout or stderr.
#[derive(Debug, Clone)]
pub enum Output {
    /// Discards everything.
    Null,
    /// To a channel (a pipe, or the session's stream); with `crlf` a terminal's output
    /// processing turns `\n` into `\r\n`.
    Chan {
        /// Where the bytes go.
        tx: mpsc::Sender<Bytes>,
        /// Terminal output processing (ONLCR).
        crlf: bool,
    },
    /// Into memory, for a redirection to a file.
    Capture(Arc<Mutex<Captured>>),
}

fn onlcr(b: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(b.len() + b.len() / 16 + 1);
    let mut prev = 0u8;
    for &c in b {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    Bytes::from(out)
}

impl Output {
    /// Writes `b` (in chunks of at most [`CHUNK`]), waiting while the reader is behind.
    pub async fn write(&self, b: impl Into<Bytes>) -> Result<(), WriteError> {
        let mut b: Bytes = b.into();
        while !b.is_empty() {
            let piece = b.split_to(b.len().min(CHUNK));
            match self {
                Output::Null => {}
                Output::Chan { tx, crlf } => {
                    let piece = if *crlf && piece.contains(&b'\n') {
                        onlcr(&piece)
                    } else {
                        piece
                    };
                    tx.send(piece).await.map_err(|_| WriteError::Closed)?;
                }
                Output::Capture(c) => {
                    let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
                    if c.data.len() + piece.len() > c.limit {
                        return Err(WriteError::NoSpace);
                    }
                    c.data.extend_from_slice(&piece);
                }
            }
        }
        Ok(())
    }

    fn capture(limit: usize) -> (Output, Arc<Mutex<Captured>>) {
        let c = Arc::new(Mutex::new(Captured {
            data: Vec::new(),
            limit,
        }));
        (Output::Capture(c.clone()), c)
    }
}

/// A process's standard streams.
#[derive(Debug)]
pub struct Io<'a> {
    /// stdin
    pub stdin: &'a mut Input,
    /// stdout
    pub stdout: Output,
    /// stderr
    pub stderr: Output,
}

impl Io<'_> {
    fn reborrow(&mut self) -> Io<'_> {
        Io {
            stdin: self.stdin,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
    }

    async fn out(&self, s: impl Into<Bytes>) -> Result<(), WriteError> {
        self.stdout.write(s).await
    }

    /// Writes an error line to stderr (a failure to do so is ignored, as a process would).
    async fn err(&self, s: impl Into<String>) {
        let mut s = s.into();
        s.push('\n');
        let _ = self.stderr.write(s).await;
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    code: i32,
    /// `exit` ran: the shell ends.
    exit: bool,
}

impl Flow {
    fn code(code: i32) -> Flow {
        Flow { code, exit: false }
    }
}

// ------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Word(Vec<Seg>);

impl Word {
    fn literal(&self) -> Option<String> {
        let mut s = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Lit(l) => s.push_str(l),
                Seg::Var(_) => return None,
            }
        }
        Some(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Semi,
    And,
    Or,
    Pipe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RedirOp {
    Out { fd: u8, append: bool },
    In,
    Dup { fd: u8, to: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word, bool),
    Op(Op),
    Redir(RedirOp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Redir {
    Out { fd: u8, append: bool, target: Word },
    In(Word),
    Dup { fd: u8, to: u8 },
}

#[derive(Debug, Clone, Default)]
struct Command {
    assigns: Vec<(String, Word)>,
    words: Vec<Word>,
    redirs: Vec<Redir>,
}

#[derive(Debug, Clone, Default)]
struct Pipeline {
    bang: bool,
    cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
struct AndOr {
    first: Pipeline,
    rest: Vec<(Op, Pipeline)>,
}

#[derive(Debug, PartialEq, Eq)]
enum SyntaxError {
    /// An unterminated quote (more input may complete it).
    Incomplete,
    Unexpected(String),
    Unsupported(&'static str),
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyntaxError::Incomplete => write!(f, "syntax error: unterminated quoted string"),
            SyntaxError::Unexpected(t) => write!(f, "syntax error: unexpected {t}"),
            SyntaxError::Unsupported(what) => {
                write!(f, "syntax error: {what} is not supported by the simulator")
            }
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    tokens: Vec<Token>,
    word: Word,
    lit: String,
    started: bool,
    /// The current word starts with quoting (so it is neither an assignment nor `!`).
    quoted: bool,
}

impl Lexer<'_> {
    fn push_lit(&mut self) {
        if !self.lit.is_empty() {
            self.word.0.push(Seg::Lit(std::mem::take(&mut self.lit)));
        }
    }

    fn end_word(&mut self) {
        self.push_lit();
        if self.started {
            let w = std::mem::take(&mut self.word);
            self.tokens.push(Token::Word(w, self.quoted));
        }
        self.started = false;
        self.quoted = false;
    }

    /// `$...` after the `$` was consumed.
    fn dollar(&mut self) -> Result<(), SyntaxError> {
        match self.chars.peek().copied() {
            Some('{') => {
                self.chars.next();
                let mut name = String::new();
                loop {
                    match self.chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(SyntaxError::Incomplete),
                    }
                }
                self.push_lit();
                self.word.0.push(Seg::Var(name));
            }
            Some('(') => return Err(SyntaxError::Unsupported("command substitution")),
            Some(c) if "?#@*$!-".contains(c) || c.is_ascii_digit() => {
                self.chars.next();
                self.push_lit();
                self.word.0.push(Seg::Var(c.to_string()));
            }
            Some(c) if is_name_start(c) => {
                let mut name = String::new();
                while let Some(&c) = self.chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    name.push(c);
                    self.chars.next();
                }
                self.push_lit();
                self.word.0.push(Seg::Var(name));
            }
            _ => self.lit.push('$'),
        }
        Ok(())
    }

    fn redirection(&mut self, c: char) {
        // A word made of one digit right before the operator names the descriptor.
        let fd = if !self.quoted && self.word.0.is_empty() && self.lit.len() == 1 {
            self.lit.chars().next().and_then(|d| d.to_digit(10))
        } else {
            None
        };
        if fd.is_some() {
            self.lit.clear();
            self.started = false;
        } else {
            self.end_word();
        }
        if c == '<' {
            self.tokens.push(Token::Redir(RedirOp::In));
            return;
        }
        let fd = fd.unwrap_or(1) as u8;
        if self.chars.peek() == Some(&'>') {
            self.chars.next();
            self.tokens
                .push(Token::Redir(RedirOp::Out { fd, append: true }));
        } else if self.chars.peek() == Some(&'&') {
            self.chars.next();
            match self.chars.peek().and_then(|d| d.to_digit(10)) {
                Some(to) => {
                    self.chars.next();
                    self.tokens
                        .push(Token::Redir(RedirOp::Dup { fd, to: to as u8 }));
                }
                None => self
                    .tokens
                    .push(Token::Redir(RedirOp::Out { fd, append: false })),
            }
        } else {
            self.tokens
                .push(Token::Redir(RedirOp::Out { fd, append: false }));
        }
    }
}

fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let mut lx = Lexer {
        chars: src.chars().peekable(),
        tokens: Vec::new(),
        word: Word::default(),
        lit: String::new(),
        started: false,
        quoted: false,
    };
    while let Some(c) = lx.chars.next() {
        match c {
            ' ' | '\t' | '\r' => lx.end_word(),
            '\n' => {
                lx.end_word();
                lx.tokens.push(Token::Op(Op::Semi));
            }
            '#' if !lx.started => {
                for c in lx.chars.by_ref() {
                    if c == '\n' {
                        lx.tokens.push(Token::Op(Op::Semi));
                        break;
                    }
                }
            }
            ';' => {
                lx.end_word();
                lx.tokens.push(Token::Op(Op::Semi));
            }
            '&' => {
                lx.end_word();
                if lx.chars.peek() == Some(&'&') {
                    lx.chars.next();
                    lx.tokens.push(Token::Op(Op::And));
                } else {
                    lx.tokens.push(Token::Op(Op::Semi));
                }
            }
            '|' => {
                lx.end_word();
                if lx.chars.peek() == Some(&'|') {
                    lx.chars.next();
                    lx.tokens.push(Token::Op(Op::Or));
                } else {
                    lx.tokens.push(Token::Op(Op::Pipe));
                }
            }
            '>' | '<' => lx.redirection(c),
            '(' | ')' => return Err(SyntaxError::Unsupported("a subshell")),
            '`' => return Err(SyntaxError::Unsupported("command substitution")),
            '\'' => {
                lx.quoted |= !lx.started;
                lx.started = true;
                loop {
                    match lx.chars.next() {
                        Some('\'') => break,
                        Some(c) => lx.lit.push(c),
                        None => return Err(SyntaxError::Incomplete),
                    }
                }
            }
            '"' => {
                lx.quoted |= !lx.started;
                lx.started = true;
                loop {
                    match lx.chars.next() {
                        Some('"') => break,
                        Some('\\') => match lx.chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => lx.lit.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                lx.lit.push('\\');
                                lx.lit.push(c);
                            }
                            None => return Err(SyntaxError::Incomplete),
                        },
                        Some('$') => lx.dollar()?,
                        Some('`') => return Err(SyntaxError::Unsupported("command substitution")),
                        Some(c) => lx.lit.push(c),
                        None => return Err(SyntaxError::Incomplete),
                    }
                }
            }
            '\\' => match lx.chars.next() {
                Some('\n') => {}
                Some(c) => {
                    lx.quoted |= !lx.started;
                    lx.started = true;
                    lx.lit.push(c);
                }
                None => {
                    lx.started = true;
                    lx.lit.push('\\');
                }
            },
            '$' => {
                lx.started = true;
                lx.dollar()?;
            }
            c => {
                lx.started = true;
                lx.lit.push(c);
            }
        }
    }
    lx.end_word();
    Ok(lx.tokens)
}

fn describe(t: Option<&Token>) -> String {
    match t {
        None => "end of file".into(),
        Some(Token::Op(Op::Semi)) => "\";\"".into(),
        Some(Token::Op(Op::And)) => "\"&&\"".into(),
        Some(Token::Op(Op::Or)) => "\"||\"".into(),
        Some(Token::Op(Op::Pipe)) => "\"|\"".into(),
        Some(Token::Redir(_)) => "redirection".into(),
        Some(Token::Word(w, _)) => format!("\"{}\"", w.literal().unwrap_or_default()),
    }
}

fn parse(src: &str) -> Result<Vec<AndOr>, SyntaxError> {
    let tokens = lex(src)?;
    let mut it = tokens.into_iter().peekable();
    let mut script = Vec::new();
    loop {
        while it.peek() == Some(&Token::Op(Op::Semi)) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(script);
        }
        let first = parse_pipeline(&mut it)?;
        let mut rest = Vec::new();
        while let Some(Token::Op(op @ (Op::And | Op::Or))) = it.peek().cloned() {
            it.next();
            while it.peek() == Some(&Token::Op(Op::Semi)) {
                it.next();
            }
            rest.push((op, parse_pipeline(&mut it)?));
        }
        script.push(AndOr { first, rest });
        match it.peek() {
            None | Some(Token::Op(Op::Semi)) => {}
            other => return Err(SyntaxError::Unexpected(describe(other))),
        }
    }
}

fn parse_pipeline(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> Result<Pipeline, SyntaxError> {
    let mut p = Pipeline::default();
    if let Some(Token::Word(w, false)) = it.peek() {
        if w.literal().as_deref() == Some("!") {
            p.bang = true;
            it.next();
        }
    }
    loop {
        p.cmds.push(parse_command(it)?);
        if it.peek() == Some(&Token::Op(Op::Pipe)) {
            it.next();
            while it.peek() == Some(&Token::Op(Op::Semi)) {
                it.next();
            }
        } else {
            return Ok(p);
        }
    }
}

fn parse_command(
    it: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> Result<Command, SyntaxError> {
    let mut c = Command::default();
    loop {
        match it.peek() {
            Some(Token::Word(..)) => {
                let Some(Token::Word(w, quoted)) = it.next() else {
                    continue;
                };
                if c.words.is_empty() && !quoted {
                    if let Some(assign) = assignment(&w) {
                        c.assigns.push(assign);
                        continue;
                    }
                }
                c.words.push(w);
            }
            Some(Token::Redir(_)) => {
                let Some(Token::Redir(op)) = it.next() else {
                    continue;
                };
                match op {
                    RedirOp::Dup { fd, to } => c.redirs.push(Redir::Dup { fd, to }),
                    op => {
                        let target = match it.next() {
                            Some(Token::Word(w, _)) => w,
                            other => return Err(SyntaxError::Unexpected(describe(other.as_ref()))),
                        };
                        c.redirs.push(match op {
                            RedirOp::In => Redir::In(target),
                            RedirOp::Out { fd, append } => Redir::Out { fd, append, target },
                            RedirOp::Dup { fd, to } => Redir::Dup { fd, to },
                        });
                    }
                }
            }
            other => {
                if c.words.is_empty() && c.assigns.is_empty() && c.redirs.is_empty() {
                    return Err(SyntaxError::Unexpected(describe(other)));
                }
                return Ok(c);
            }
        }
    }
}

/// `NAME=value` (the first segment holds the `=`).
fn assignment(w: &Word) -> Option<(String, Word)> {
    let Some(Seg::Lit(first)) = w.0.first() else {
        return None;
    };
    let (name, value) = first.split_once('=')?;
    if name.is_empty() || !name.starts_with(is_name_start) || !name.chars().all(is_name_char) {
        return None;
    }
    let mut rest = vec![Seg::Lit(value.to_owned())];
    rest.extend(w.0[1..].iter().cloned());
    Some((name.to_owned(), Word(rest)))
}

// ------------------------------------------------------------------------------------------
// Execution

/// A shell: variables, the working directory, the last status.
#[derive(Debug, Clone)]
pub struct Shell {
    ctr: Arc<Container>,
    vars: BTreeMap<String, String>,
    args: Vec<String>,
    status: i32,
    cwd: String,
    /// Ctrl-C presses (a terminal's interrupt key), for interactive shells.
    interrupt: Option<watch::Receiver<u64>>,
    /// Whether stdin is a terminal.
    tty: bool,
    /// Whether this is the runtime exec'ing a command directly (not a shell).
    runtime: bool,
    /// Shells started within shells (bounded: a script running itself must not recurse
    /// without end).
    depth: u8,
}

const COMMANDS: &[&str] = &[
    "sh", "bash", "ash", "dash", "echo", "printf", "cat", "head", "yes", "seq", "wc", "grep", "ls",
    "mkdir", "rm", "touch", "pwd", "cd", "tar", "test", "[", "env", "printenv", "export", "unset",
    "hostname", "uname", "id", "whoami", "sleep", "true", "false", ":", "exit", "tail", "basename",
    "dirname", "date", "nproc", "clear", "stty", "tty",
];

const BIN_DIRS: [&str; 5] = ["/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin"];

/// The command a name (or path) runs, if there is one.
fn lookup(name: &str) -> Option<&'static str> {
    let base = if name.contains('/') {
        let dir = vfs::parent(name);
        if !BIN_DIRS.contains(&dir) {
            return None;
        }
        vfs::base(name)
    } else {
        name
    };
    COMMANDS.iter().copied().find(|c| *c == base)
}

fn exit_code(status: i32) -> i32 {
    status & 0xff
}

impl Shell {
    /// The runtime about to exec a command in `ctr` (no shell yet). `tty`: stdin is a
    /// terminal; `interrupt` counts its Ctrl-C presses.
    pub fn runtime(
        ctr: Arc<Container>,
        tty: bool,
        interrupt: Option<watch::Receiver<u64>>,
    ) -> Shell {
        let mut vars = BTreeMap::new();
        vars.insert(
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        );
        vars.insert("HOSTNAME".to_owned(), ctr.pod.clone());
        vars.insert("HOME".to_owned(), "/root".to_owned());
        vars.insert("KUBERNETES_SERVICE_HOST".to_owned(), "10.96.0.1".to_owned());
        vars.insert("KUBERNETES_SERVICE_PORT".to_owned(), "443".to_owned());
        vars.insert(
            "KUBERNETES_PORT".to_owned(),
            "tcp://10.96.0.1:443".to_owned(),
        );
        if tty {
            vars.insert("TERM".to_owned(), "xterm".to_owned());
        }
        for (k, v) in &ctr.env {
            vars.insert(k.clone(), v.clone());
        }
        Shell {
            ctr,
            vars,
            args: vec!["sh".to_owned()],
            status: 0,
            cwd: "/".to_owned(),
            interrupt,
            tty,
            runtime: true,
            depth: 0,
        }
    }

    /// Runs `argv` as the runtime would exec it; returns the exit code (0–255).
    pub async fn exec(&mut self, argv: Vec<String>, io: Io<'_>) -> i32 {
        exit_code(self.run(argv, io).await.code)
    }

    fn var(&self, name: &str) -> String {
        match name {
            "?" => self.status.to_string(),
            "#" => self.args.len().saturating_sub(1).to_string(),
            "@" | "*" => self.args.get(1..).unwrap_or_default().join(" "),
            "$" => "1".to_owned(),
            "!" | "-" => String::new(),
            n if n.chars().all(|c| c.is_ascii_digit()) => n
                .parse::<usize>()
                .ok()
                .and_then(|i| self.args.get(i).cloned())
                .unwrap_or_default(),
            n => self.vars.get(n).cloned().unwrap_or_default(),
        }
    }

    fn expand(&self, w: &Word) -> String {
        let mut s = String::new();
        for seg in &w.0 {
            match seg {
                Seg::Lit(l) => s.push_str(l),
                Seg::Var(v) => s.push_str(&self.var(v)),
            }
        }
        s
    }

    fn path(&self, p: &str) -> String {
        vfs::resolve(&self.cwd, p)
    }

    /// Runs a script; `exit` inside ends it.
    fn script<'a>(&'a mut self, src: &'a str, mut io: Io<'a>) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let script = match parse(src) {
                Ok(s) => s,
                Err(e) => {
                    io.err(format!("sh: {e}")).await;
                    self.status = 2;
                    return Flow::code(2);
                }
            };
            for ao in &script {
                let f = self.and_or(ao, io.reborrow()).await;
                if f.exit {
                    return f;
                }
            }
            Flow::code(self.status)
        })
    }

    async fn and_or(&mut self, ao: &AndOr, mut io: Io<'_>) -> Flow {
        let f = self.pipeline(&ao.first, io.reborrow()).await;
        if f.exit {
            return f;
        }
        for (op, p) in &ao.rest {
            let run = match op {
                Op::And => self.status == 0,
                _ => self.status != 0,
            };
            if run {
                let f = self.pipeline(p, io.reborrow()).await;
                if f.exit {
                    return f;
                }
            }
        }
        Flow::code(self.status)
    }

    async fn pipeline(&mut self, p: &Pipeline, io: Io<'_>) -> Flow {
        let f = if p.cmds.len() == 1 {
            self.command(&p.cmds[0], io).await
        } else {
            Flow::code(self.stages(&p.cmds, io).await)
        };
        if f.exit {
            return f;
        }
        self.status = if p.bang {
            i32::from(f.code == 0)
        } else {
            f.code
        };
        Flow::code(self.status)
    }

    /// A pipeline of several commands: each stage in a subshell, all running at once, joined
    /// by bounded pipes. A stage that ends drops its end of the pipes, so its writer sees a
    /// broken pipe and its reader the end of input.
    async fn stages(&mut self, cmds: &[Command], io: Io<'_>) -> i32 {
        let n = cmds.len();
        let mut futures: Vec<BoxFuture<'_, i32>> = Vec::with_capacity(n);
        let mut next_in: Option<Input> = None;
        let Io {
            stdin,
            stdout,
            stderr,
        } = io;
        let mut first_stdin = Some(stdin);
        for (i, cmd) in cmds.iter().enumerate() {
            let (out, rx) = if i + 1 < n {
                let (tx, rx) = mpsc::channel(PIPE_DEPTH);
                (Output::Chan { tx, crlf: false }, Some(rx))
            } else {
                (stdout.clone(), None)
            };
            let mut sub = self.clone();
            let err = stderr.clone();
            match first_stdin.take() {
                Some(stdin) => futures.push(Box::pin(async move {
                    let f = sub
                        .command(
                            cmd,
                            Io {
                                stdin,
                                stdout: out,
                                stderr: err,
                            },
                        )
                        .await;
                    f.code
                })),
                None => {
                    let mut input = next_in.take().unwrap_or_else(Input::closed);
                    futures.push(Box::pin(async move {
                        let f = sub
                            .command(
                                cmd,
                                Io {
                                    stdin: &mut input,
                                    stdout: out,
                                    stderr: err,
                                },
                            )
                            .await;
                        drop(input);
                        f.code
                    }));
                }
            }
            next_in = rx.map(Input::channel);
        }
        let codes = futures_util::future::join_all(futures).await;
        codes.last().copied().unwrap_or(0)
    }

    async fn command(&mut self, c: &Command, io: Io<'_>) -> Flow {
        let argv: Vec<String> = c.words.iter().map(|w| self.expand(w)).collect();
        let assigns: Vec<(String, String)> = c
            .assigns
            .iter()
            .map(|(k, v)| (k.clone(), self.expand(v)))
            .collect();
        let Io {
            stdin,
            mut stdout,
            mut stderr,
        } = io;
        let mut redirected_in: Option<Input> = None;
        let mut captures: Vec<(String, bool, Arc<Mutex<Captured>>)> = Vec::new();
        for r in &c.redirs {
            match r {
                Redir::Dup { fd, to } => match (fd, to) {
                    (2, 1) => stderr = stdout.clone(),
                    (1, 2) => stdout = stderr.clone(),
                    _ => {}
                },
                Redir::In(target) => {
                    let path = self.path(&self.expand(target));
                    let read = {
                        let fs = self.ctr.fs();
                        match fs.stat(&path) {
                            Some(Node::Dev(Device::Zero)) => Ok(Input::zero()),
                            _ => fs.read(&path).map(Input::bytes),
                        }
                    };
                    match read {
                        Ok(input) => redirected_in = Some(input),
                        Err(_) => {
                            let _ = stderr
                                .write(format!(
                                    "sh: can't open {}: no such file\n",
                                    self.expand(target)
                                ))
                                .await;
                            self.status = 1;
                            return Flow::code(1);
                        }
                    }
                }
                Redir::Out { fd, append, target } => {
                    let name = self.expand(target);
                    let path = self.path(&name);
                    let out = {
                        let mut fs = self.ctr.fs();
                        match fs.stat(&path) {
                            Some(Node::Dev(_)) => Ok(Output::Null),
                            Some(Node::Dir { .. }) => Err(FsError::IsDir),
                            _ => match fs.stat(vfs::parent(&path)) {
                                Some(Node::Dir { .. }) => {
                                    // The file exists (or is truncated) as soon as the
                                    // redirection is set up, whatever the command does.
                                    let created = if *append {
                                        fs.write(&path, Bytes::new(), true)
                                    } else {
                                        fs.write(&path, Bytes::new(), false)
                                    };
                                    created.map(|()| {
                                        let room = vfs::QUOTA.saturating_sub(fs.used());
                                        let (o, c) = Output::capture(room);
                                        captures.push((path.clone(), *append, c));
                                        o
                                    })
                                }
                                _ => Err(FsError::NotFound),
                            },
                        }
                    };
                    match out {
                        Ok(o) if *fd == 2 => stderr = o,
                        Ok(o) => stdout = o,
                        Err(e) => {
                            let why = match e {
                                FsError::NotFound => "nonexistent directory".to_owned(),
                                e => e.to_string(),
                            };
                            let _ = stderr
                                .write(format!("sh: can't create {name}: {why}\n"))
                                .await;
                            self.status = 1;
                            return Flow::code(1);
                        }
                    }
                }
            }
        }
        let flow = if argv.is_empty() {
            for (k, v) in assigns {
                self.vars.insert(k, v);
            }
            Flow::code(0)
        } else {
            let stdin: &mut Input = match redirected_in.as_mut() {
                Some(i) => i,
                None => stdin,
            };
            let io = Io {
                stdin,
                stdout,
                stderr: stderr.clone(),
            };
            if assigns.is_empty() {
                self.run(argv, io).await
            } else {
                // Assignments before a command are its environment only.
                let saved = self.vars.clone();
                self.vars.extend(assigns);
                let f = self.run(argv, io).await;
                self.vars = saved;
                f
            }
        };
        let mut code = flow.code;
        for (path, append, c) in captures {
            let data = std::mem::take(&mut c.lock().unwrap_or_else(|e| e.into_inner()).data);
            let written = self.ctr.fs().write(&path, Bytes::from(data), append);
            if let Err(e) = written {
                let _ = stderr.write(format!("sh: write error: {e}\n")).await;
                code = 1;
            }
        }
        self.status = code;
        Flow {
            code,
            exit: flow.exit,
        }
    }

    /// Runs one command with its arguments.
    fn run<'a>(&'a mut self, argv: Vec<String>, io: Io<'a>) -> BoxFuture<'a, Flow> {
        Box::pin(async move {
            let Some(name) = argv.first().cloned() else {
                return Flow::code(0);
            };
            let Some(cmd) = lookup(&name) else {
                if self.runtime {
                    io.err(format!(
                        "OCI runtime exec failed: exec failed: unable to start container process: exec: \"{name}\": executable file not found in $PATH: unknown"
                    ))
                    .await;
                } else {
                    io.err(format!("sh: {name}: not found")).await;
                }
                return Flow::code(127);
            };
            let args = &argv[1..];
            let code = match cmd {
                "sh" | "bash" | "ash" | "dash" => return self.sh(args, io).await,
                "exit" => {
                    let code = match args.first() {
                        None => self.status,
                        Some(a) => match a.parse::<i64>() {
                            Ok(n) => (n & 0xff) as i32,
                            Err(_) => {
                                io.err(format!("sh: exit: Illegal number: {a}")).await;
                                2
                            }
                        },
                    };
                    return Flow { code, exit: true };
                }
                "cd" => self.cd(args, &io).await,
                "export" => {
                    for a in args {
                        if let Some((k, v)) = a.split_once('=') {
                            self.vars.insert(k.to_owned(), v.to_owned());
                        }
                    }
                    0
                }
                "unset" => {
                    for a in args {
                        self.vars.remove(a);
                    }
                    0
                }
                "env" => return self.env(args, io).await,
                other => match self.utility(other, args, io).await {
                    Ok(code) => code,
                    // The reader went away: the writer dies of SIGPIPE.
                    Err(WriteError::Closed) => 141,
                    Err(WriteError::NoSpace) => 1,
                },
            };
            Flow::code(code)
        })
    }

    async fn sh(&mut self, args: &[String], mut io: Io<'_>) -> Flow {
        if self.depth >= MAX_DEPTH {
            io.err("sh: shells nested too deeply").await;
            return Flow::code(2);
        }
        let mut sub = self.clone();
        sub.runtime = false;
        sub.depth += 1;
        let mut i = 0;
        while let Some(a) = args.get(i) {
            match a.as_str() {
                "-c" => {
                    let Some(script) = args.get(i + 1) else {
                        io.err("sh: -c requires an argument").await;
                        return Flow::code(2);
                    };
                    let rest = &args[i + 2..];
                    sub.args = if rest.is_empty() {
                        vec!["sh".to_owned()]
                    } else {
                        rest.to_vec()
                    };
                    let f = sub.script(script, io).await;
                    return Flow::code(exit_code(f.code));
                }
                "-e" | "-x" | "-i" | "-l" | "-s" | "-u" | "--login" | "-" => i += 1,
                _ => break,
            }
        }
        if let Some(file) = args.get(i) {
            let path = sub.path(file);
            let text = sub.ctr.fs().read(&path);
            let Ok(text) = text else {
                io.err(format!("sh: 0: cannot open {file}: No such file"))
                    .await;
                return Flow::code(2);
            };
            sub.args = args[i..].to_vec();
            let src = String::from_utf8_lossy(&text).into_owned();
            let f = sub.script(&src, io).await;
            return Flow::code(exit_code(f.code));
        }
        Flow::code(exit_code(sub.repl(io.reborrow()).await))
    }

    /// A shell reading its commands from stdin: with a terminal, interactively (a prompt,
    /// Ctrl-C interrupting the command, Ctrl-D on an empty line ending it).
    async fn repl(&mut self, mut io: Io<'_>) -> i32 {
        let interactive = self.tty;
        let mut pending = String::new();
        loop {
            if interactive {
                let prompt = if pending.is_empty() { "# " } else { "> " };
                if io.out(prompt).await.is_err() {
                    return self.status;
                }
            }
            let Some(line) = io.stdin.read_line(MAX_LINE).await else {
                return self.status;
            };
            pending.push_str(&String::from_utf8_lossy(&line));
            if matches!(parse(&pending), Err(SyntaxError::Incomplete)) {
                if pending.len() <= MAX_HELD {
                    continue;
                }
                io.err("sh: syntax error: unterminated quoted string").await;
                pending.clear();
                self.status = 2;
                continue;
            }
            let src = std::mem::take(&mut pending);
            let flow = match (interactive, self.interrupt.clone()) {
                (true, Some(mut intr)) => {
                    intr.borrow_and_update();
                    let run = self.script(&src, io.reborrow());
                    tokio::select! {
                        f = run => Some(f),
                        _ = intr.changed() => None,
                    }
                }
                _ => Some(self.script(&src, io.reborrow()).await),
            };
            match flow {
                Some(f) if f.exit => return f.code,
                Some(_) => {}
                None => self.status = 130,
            }
        }
    }

    async fn cd(&mut self, args: &[String], io: &Io<'_>) -> i32 {
        let target = args.first().cloned().unwrap_or_else(|| self.var("HOME"));
        let path = self.path(&target);
        let is_dir = self.ctr.fs().stat(&path).map(Node::is_dir);
        match is_dir {
            Some(true) => {
                self.cwd = path;
                0
            }
            Some(false) => {
                io.err(format!("sh: cd: can't cd to {target}: Not a directory"))
                    .await;
                2
            }
            None => {
                io.err(format!(
                    "sh: cd: can't cd to {target}: No such file or directory"
                ))
                .await;
                2
            }
        }
    }

    async fn env(&mut self, args: &[String], io: Io<'_>) -> Flow {
        let mut i = 0;
        let mut extra = Vec::new();
        while let Some((k, v)) = args.get(i).and_then(|a| a.split_once('=')) {
            extra.push((k.to_owned(), v.to_owned()));
            i += 1;
        }
        if i < args.len() {
            let saved = self.vars.clone();
            self.vars.extend(extra);
            let f = self.run(args[i..].to_vec(), io).await;
            self.vars = saved;
            return f;
        }
        let mut vars = self.vars.clone();
        vars.extend(extra);
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        Flow::code(if io.out(text).await.is_ok() { 0 } else { 141 })
    }

    /// The commands that are programs (not shell built-ins).
    async fn utility(&mut self, cmd: &str, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        match cmd {
            "echo" => {
                let (mut newline, mut escapes, mut i) = (true, false, 0);
                while let Some(a) = args.get(i) {
                    match a.as_str() {
                        "-n" => newline = false,
                        "-e" => escapes = true,
                        "-E" => escapes = false,
                        "-ne" | "-en" => {
                            newline = false;
                            escapes = true;
                        }
                        _ => break,
                    }
                    i += 1;
                }
                let mut s = args[i..].join(" ");
                if escapes {
                    s = unescape(&s);
                }
                if newline {
                    s.push('\n');
                }
                io.out(s).await?;
                Ok(0)
            }
            "printf" => {
                let Some(format) = args.first() else {
                    io.err("printf: usage: printf FORMAT [ARGUMENT]...").await;
                    return Ok(2);
                };
                io.out(printf(format, &args[1..])).await?;
                Ok(0)
            }
            "cat" => self.cat(args, io).await,
            "head" => self.head(args, io).await,
            "tail" => self.tail(args, io).await,
            "yes" => {
                let word = if args.is_empty() {
                    "y".to_owned()
                } else {
                    args.join(" ")
                };
                let line = format!("{word}\n");
                let block = Bytes::from(line.repeat((CHUNK / line.len()).max(1)));
                loop {
                    io.out(block.clone()).await?;
                }
            }
            "seq" => {
                let nums: Result<Vec<i64>, _> = args.iter().map(|a| a.parse::<i64>()).collect();
                let (first, step, last) = match nums.as_deref() {
                    Ok([last]) => (1, 1, *last),
                    Ok([first, last]) => (*first, 1, *last),
                    Ok([first, step, last]) if *step != 0 => (*first, *step, *last),
                    _ => {
                        io.err("seq: invalid arguments").await;
                        return Ok(1);
                    }
                };
                let mut buf = String::new();
                let mut i = first;
                while (step > 0 && i <= last) || (step < 0 && i >= last) {
                    buf.push_str(&format!("{i}\n"));
                    if buf.len() >= CHUNK {
                        io.out(std::mem::take(&mut buf)).await?;
                    }
                    i += step;
                }
                io.out(buf).await?;
                Ok(0)
            }
            "wc" => self.wc(args, io).await,
            "grep" => self.grep(args, io).await,
            "ls" => self.ls(args, io).await,
            "mkdir" => {
                let parents = args.iter().any(|a| a == "-p");
                let mut code = 0;
                for a in args.iter().filter(|a| !a.starts_with('-')) {
                    let r = self.ctr.fs().mkdir(&self.path(a), parents);
                    if let Err(e) = r {
                        io.err(format!("mkdir: cannot create directory '{a}': {e}"))
                            .await;
                        code = 1;
                    }
                }
                Ok(code)
            }
            "rm" => {
                let flags: String = args
                    .iter()
                    .filter(|a| a.starts_with('-'))
                    .flat_map(|a| a.chars())
                    .collect();
                let (recursive, force) = (
                    flags.contains('r') || flags.contains('R'),
                    flags.contains('f'),
                );
                let mut code = 0;
                for a in args.iter().filter(|a| !a.starts_with('-')) {
                    let r = self.ctr.fs().remove(&self.path(a), recursive);
                    match r {
                        Ok(()) => {}
                        Err(FsError::NotFound) if force => {}
                        Err(e) => {
                            io.err(format!("rm: cannot remove '{a}': {e}")).await;
                            code = 1;
                        }
                    }
                }
                Ok(code)
            }
            "touch" => {
                let mut code = 0;
                for a in args.iter().filter(|a| !a.starts_with('-')) {
                    let path = self.path(a);
                    let r = {
                        let mut fs = self.ctr.fs();
                        match fs.stat(&path) {
                            Some(_) => Ok(()),
                            None => fs.write(&path, Bytes::new(), false),
                        }
                    };
                    if let Err(e) = r {
                        io.err(format!("touch: cannot touch '{a}': {e}")).await;
                        code = 1;
                    }
                }
                Ok(code)
            }
            "pwd" => {
                io.out(format!("{}\n", self.cwd)).await?;
                Ok(0)
            }
            "tar" => self.tar(args, io).await,
            "test" => Ok(self.test(args, &io).await),
            "[" => {
                if args.last().map(String::as_str) != Some("]") {
                    io.err("sh: [: missing ]").await;
                    return Ok(2);
                }
                Ok(self.test(&args[..args.len() - 1], &io).await)
            }
            "printenv" => match args.first() {
                Some(name) => match self.vars.get(name) {
                    Some(v) => {
                        io.out(format!("{v}\n")).await?;
                        Ok(0)
                    }
                    None => Ok(1),
                },
                None => {
                    let text: String = self
                        .vars
                        .iter()
                        .map(|(k, v)| format!("{k}={v}\n"))
                        .collect();
                    io.out(text).await?;
                    Ok(0)
                }
            },
            "hostname" => {
                io.out(format!("{}\n", self.ctr.pod)).await?;
                Ok(0)
            }
            "uname" => {
                let pod = &self.ctr.pod;
                let text = match args.first().map(String::as_str) {
                    Some("-a") => format!("Linux {pod} 6.1.0-sim #1 SMP x86_64 GNU/Linux"),
                    Some("-n") => pod.clone(),
                    Some("-r") => "6.1.0-sim".to_owned(),
                    Some("-m") => "x86_64".to_owned(),
                    _ => "Linux".to_owned(),
                };
                io.out(format!("{text}\n")).await?;
                Ok(0)
            }
            "id" => {
                io.out("uid=0(root) gid=0(root) groups=0(root)\n").await?;
                Ok(0)
            }
            "whoami" => {
                io.out("root\n").await?;
                Ok(0)
            }
            "basename" => {
                let p = args.first().map(String::as_str).unwrap_or("");
                io.out(format!("{}\n", vfs::base(p.trim_end_matches('/'))))
                    .await?;
                Ok(0)
            }
            "dirname" => {
                let p = args.first().map(String::as_str).unwrap_or(".");
                let d = match p.trim_end_matches('/').rfind('/') {
                    Some(0) => "/",
                    Some(i) => &p[..i],
                    None => ".",
                };
                io.out(format!("{d}\n")).await?;
                Ok(0)
            }
            "date" => {
                let now = kubehub_kapi::time::rfc3339(std::time::SystemTime::now());
                io.out(format!("{now}\n")).await?;
                Ok(0)
            }
            "nproc" => {
                io.out("8\n").await?;
                Ok(0)
            }
            "clear" => {
                io.out("\x1b[H\x1b[2J").await?;
                Ok(0)
            }
            "stty" => Ok(0),
            "tty" => {
                if self.tty {
                    io.out("/dev/pts/0\n").await?;
                    Ok(0)
                } else {
                    io.out("not a tty\n").await?;
                    Ok(1)
                }
            }
            "sleep" => {
                let Some(d) = args.first().and_then(|a| parse_duration(a)) else {
                    io.err("sleep: invalid time interval").await;
                    return Ok(1);
                };
                match d {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
                Ok(0)
            }
            "true" | ":" => Ok(0),
            "false" => Ok(1),
            _ => {
                io.err(format!("sh: {cmd}: not found")).await;
                Ok(127)
            }
        }
    }

    /// Streams one file (or stdin for `-`) to stdout, or says why it cannot.
    async fn cat_one(&self, name: &str, io: &mut Io<'_>) -> Result<bool, WriteError> {
        if name == "-" {
            while let Some(b) = io.stdin.read().await {
                io.out(b).await?;
            }
            return Ok(true);
        }
        let path = self.path(name);
        let node = self.ctr.fs().stat(&path).cloned();
        match node {
            Some(Node::File { data, .. }) => {
                io.out(data).await?;
                Ok(true)
            }
            Some(Node::Dev(Device::Zero)) => loop {
                io.out(zeros(CHUNK)).await?;
            },
            Some(Node::Dev(Device::Null)) => Ok(true),
            Some(Node::Dir { .. }) => {
                io.err(format!("cat: {name}: Is a directory")).await;
                Ok(false)
            }
            None => {
                io.err(format!("cat: {name}: No such file or directory"))
                    .await;
                Ok(false)
            }
        }
    }

    async fn cat(&self, args: &[String], mut io: Io<'_>) -> Result<i32, WriteError> {
        let files: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a == "-" || !a.starts_with('-'))
            .collect();
        let files = if files.is_empty() { vec!["-"] } else { files };
        let mut code = 0;
        for f in files {
            if !self.cat_one(f, &mut io).await? {
                code = 1;
            }
        }
        Ok(code)
    }

    /// The input of a filter: a file's bytes (whole), `/dev/zero` (endless), or stdin.
    fn source(&self, name: Option<&str>) -> Result<Option<Input>, (String, FsError)> {
        let Some(name) = name.filter(|n| *n != "-") else {
            return Ok(None);
        };
        let path = self.path(name);
        let fs = self.ctr.fs();
        match fs.stat(&path) {
            Some(Node::Dev(Device::Zero)) => Ok(Some(Input::zero())),
            _ => fs
                .read(&path)
                .map(|b| Some(Input::bytes(b)))
                .map_err(|e| (name.to_owned(), e)),
        }
    }

    async fn head(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        let mut bytes: Option<u64> = None;
        let mut lines: u64 = 10;
        let mut files = Vec::new();
        let mut i = 0;
        while let Some(a) = args.get(i) {
            let value = |i: usize, inline: &str| -> Option<String> {
                if inline.is_empty() {
                    args.get(i + 1).cloned()
                } else {
                    Some(inline.to_owned())
                }
            };
            if let Some(v) = a.strip_prefix("-c") {
                let Some(n) = value(i, v).and_then(|n| parse_size(&n)) else {
                    io.err(format!("head: invalid number of bytes: '{a}'"))
                        .await;
                    return Ok(1);
                };
                bytes = Some(n);
                i += if v.is_empty() { 2 } else { 1 };
            } else if let Some(v) = a.strip_prefix("-n") {
                let Some(n) = value(i, v).and_then(|n| parse_size(&n)) else {
                    io.err(format!("head: invalid number of lines: '{a}'"))
                        .await;
                    return Ok(1);
                };
                lines = n;
                i += if v.is_empty() { 2 } else { 1 };
            } else if let Some(n) = a.strip_prefix('-').and_then(|n| n.parse::<u64>().ok()) {
                lines = n;
                i += 1;
            } else {
                files.push(a.clone());
                i += 1;
            }
        }
        if files.is_empty() {
            files.push("-".to_owned());
        }
        let mut code = 0;
        for f in &files {
            let mut src = match self.source(Some(f)) {
                Ok(s) => s,
                Err((name, e)) => {
                    io.err(format!("head: cannot open '{name}' for reading: {e}"))
                        .await;
                    code = 1;
                    continue;
                }
            };
            let input: &mut Input = match src.as_mut() {
                Some(i) => i,
                None => io.stdin,
            };
            match bytes {
                Some(mut left) => {
                    while left > 0 {
                        let Some(mut b) = input.read().await else {
                            break;
                        };
                        if b.len() as u64 > left {
                            let rest = b.split_off(left as usize);
                            input.pending = rest;
                        }
                        left -= b.len() as u64;
                        io.stdout.write(b).await?;
                    }
                }
                None => {
                    let mut left = lines;
                    while left > 0 {
                        let Some(line) = input.read_line(CHUNK).await else {
                            break;
                        };
                        if line.ends_with(b"\n") {
                            left -= 1;
                        }
                        io.stdout.write(line).await?;
                    }
                }
            }
        }
        Ok(code)
    }

    async fn tail(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        // `tail -n N` / `tail -c +N` (what `kubectl cp --retries` pipes through).
        let mut lines: Option<usize> = Some(10);
        let mut from_byte: Option<u64> = None;
        let mut file = None;
        let mut i = 0;
        while let Some(a) = args.get(i) {
            if let Some(v) = a.strip_prefix("-c") {
                let v = if v.is_empty() {
                    i += 1;
                    args.get(i).cloned().unwrap_or_default()
                } else {
                    v.to_owned()
                };
                from_byte = v.strip_prefix('+').and_then(|n| n.parse().ok());
                lines = None;
            } else if let Some(v) = a.strip_prefix("-n") {
                let v = if v.is_empty() {
                    i += 1;
                    args.get(i).cloned().unwrap_or_default()
                } else {
                    v.to_owned()
                };
                lines = v.parse().ok();
            } else {
                file = Some(a.clone());
            }
            i += 1;
        }
        let mut src = match self.source(file.as_deref()) {
            Ok(s) => s,
            Err((name, e)) => {
                io.err(format!("tail: cannot open '{name}' for reading: {e}"))
                    .await;
                return Ok(1);
            }
        };
        let input: &mut Input = match src.as_mut() {
            Some(i) => i,
            None => io.stdin,
        };
        if let Some(start) = from_byte {
            let mut skip = start.saturating_sub(1);
            while let Some(mut b) = input.read().await {
                if skip >= b.len() as u64 {
                    skip -= b.len() as u64;
                    continue;
                }
                b.advance(skip as usize);
                skip = 0;
                io.stdout.write(b).await?;
            }
            return Ok(0);
        }
        // The last lines, up to MAX_HELD bytes of them.
        let keep = lines.unwrap_or(10);
        let mut last: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
        let mut held = 0usize;
        while let Some(line) = input.read_line(MAX_LINE).await {
            held += line.len();
            last.push_back(line);
            while last.len() > keep || held > MAX_HELD {
                held -= last.pop_front().map_or(0, |l| l.len());
            }
        }
        io.stdout
            .write(last.into_iter().flatten().collect::<Vec<u8>>())
            .await?;
        Ok(0)
    }

    async fn wc(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        let flags: String = args
            .iter()
            .filter(|a| a.starts_with('-') && a.len() > 1)
            .flat_map(|a| a.chars().skip(1))
            .collect();
        let file = args.iter().find(|a| !a.starts_with('-') || *a == "-");
        let mut src = match self.source(file.map(String::as_str)) {
            Ok(s) => s,
            Err((name, e)) => {
                io.err(format!("wc: {name}: {e}")).await;
                return Ok(1);
            }
        };
        let input: &mut Input = match src.as_mut() {
            Some(i) => i,
            None => io.stdin,
        };
        let (mut l, mut w, mut c) = (0u64, 0u64, 0u64);
        let mut in_word = false;
        while let Some(b) = input.read().await {
            c += b.len() as u64;
            for &x in b.iter() {
                if x == b'\n' {
                    l += 1;
                }
                if x.is_ascii_whitespace() {
                    in_word = false;
                } else if !in_word {
                    in_word = true;
                    w += 1;
                }
            }
        }
        let mut cols = Vec::new();
        let all = flags.is_empty();
        if all || flags.contains('l') {
            cols.push(l);
        }
        if all || flags.contains('w') {
            cols.push(w);
        }
        if all || flags.contains('c') {
            cols.push(c);
        }
        let mut text = if cols.len() == 1 {
            cols[0].to_string()
        } else {
            cols.iter()
                .map(|n| format!("{n:>7}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if let Some(f) = file.filter(|f| *f != "-") {
            text.push(' ');
            text.push_str(f);
        }
        text.push('\n');
        io.stdout.write(text).await?;
        Ok(0)
    }

    async fn grep(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        let mut invert = false;
        let mut count = false;
        let mut quiet = false;
        let mut nocase = false;
        let mut rest = Vec::new();
        for a in args {
            match a.as_str() {
                "-v" => invert = true,
                "-c" => count = true,
                "-q" => quiet = true,
                "-i" => nocase = true,
                "-F" | "-e" => {}
                _ => rest.push(a.clone()),
            }
        }
        let Some(pattern) = rest.first().cloned() else {
            io.err("Usage: grep [-vcqi] PATTERN [FILE]").await;
            return Ok(2);
        };
        let pattern = if nocase {
            pattern.to_lowercase()
        } else {
            pattern
        };
        let mut src = match self.source(rest.get(1).map(String::as_str)) {
            Ok(s) => s,
            Err((name, e)) => {
                io.err(format!("grep: {name}: {e}")).await;
                return Ok(2);
            }
        };
        let input: &mut Input = match src.as_mut() {
            Some(i) => i,
            None => io.stdin,
        };
        let mut n = 0u64;
        while let Some(line) = input.read_line(MAX_LINE).await {
            let text = String::from_utf8_lossy(&line);
            let hay = if nocase {
                text.to_lowercase()
            } else {
                text.clone().into_owned()
            };
            if hay.contains(&pattern) != invert {
                n += 1;
                if !count && !quiet {
                    io.stdout.write(line).await?;
                }
            }
        }
        if count {
            io.stdout.write(format!("{n}\n")).await?;
        }
        Ok(if n > 0 { 0 } else { 1 })
    }

    async fn ls(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        let flags: String = args
            .iter()
            .filter(|a| a.starts_with('-'))
            .flat_map(|a| a.chars().skip(1))
            .collect();
        let (long, all) = (flags.contains('l'), flags.contains('a'));
        let mut paths: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        let dot = ".".to_owned();
        if paths.is_empty() {
            paths.push(&dot);
        }
        let entry = |name: &str, node: &Node| -> String {
            if !long {
                return format!("{name}\n");
            }
            let (kind, mode, mtime) = match node {
                Node::Dir { mode, mtime } => ('d', *mode, *mtime),
                Node::File { mode, mtime, .. } => ('-', *mode, *mtime),
                Node::Dev(_) => ('c', 0o666, 0),
            };
            let time =
                kubehub_kapi::time::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(mtime));
            let when = format!(
                "{} {}",
                &time[..10.min(time.len())],
                time.get(11..16).unwrap_or("")
            );
            format!(
                "{kind}{} 1 root root {:>8} {when} {name}\n",
                perms(mode),
                node.size()
            )
        };
        let mut code = 0;
        let mut text = String::new();
        let mut errors = Vec::new();
        let many = paths.len() > 1;
        {
            let fs = self.ctr.fs();
            for p in paths {
                let path = self.path(p);
                match fs.stat(&path) {
                    None => {
                        errors.push(format!(
                            "ls: cannot access '{p}': No such file or directory"
                        ));
                        code = 2;
                    }
                    Some(Node::Dir { .. }) => {
                        if many {
                            text.push_str(&format!("{p}:\n"));
                        }
                        for (name, node) in fs.list(&path).unwrap_or_default() {
                            if all || !name.starts_with('.') {
                                text.push_str(&entry(&name, node));
                            }
                        }
                    }
                    Some(node) => text.push_str(&entry(p, node)),
                }
            }
        }
        for e in errors {
            io.err(e).await;
        }
        io.out(text).await?;
        Ok(code)
    }

    async fn test(&self, args: &[String], io: &Io<'_>) -> i32 {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = match a.as_slice() {
            [] => Some(false),
            ["!", rest @ ..] => {
                let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
                return match Box::pin(self.test(&rest, io)).await {
                    0 => 1,
                    1 => 0,
                    e => e,
                };
            }
            [s] => Some(!s.is_empty()),
            [op, operand] => {
                let path = self.path(operand);
                let fs = self.ctr.fs();
                let node = fs.stat(&path);
                match *op {
                    "-e" | "-r" | "-w" => Some(node.is_some()),
                    "-f" => Some(matches!(node, Some(Node::File { .. }))),
                    "-d" => Some(matches!(node, Some(Node::Dir { .. }))),
                    "-s" => Some(node.is_some_and(|n| n.size() > 0)),
                    "-x" => Some(node.is_some_and(Node::is_dir)),
                    "-z" => Some(operand.is_empty()),
                    "-n" => Some(!operand.is_empty()),
                    _ => None,
                }
            }
            [l, op, r] => {
                let num = |s: &str| s.trim().parse::<i64>().ok();
                match *op {
                    "=" | "==" => Some(l == r),
                    "!=" => Some(l != r),
                    "-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge" => match (num(l), num(r)) {
                        (Some(x), Some(y)) => Some(match *op {
                            "-eq" => x == y,
                            "-ne" => x != y,
                            "-lt" => x < y,
                            "-le" => x <= y,
                            "-gt" => x > y,
                            _ => x >= y,
                        }),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        match r {
            Some(true) => 0,
            Some(false) => 1,
            None => {
                io.err(format!("sh: test: syntax error: {}", a.join(" ")))
                    .await;
                2
            }
        }
    }

    async fn tar(&self, args: &[String], io: Io<'_>) -> Result<i32, WriteError> {
        let opts = match TarOpts::parse(args) {
            Ok(o) => o,
            Err(msg) => {
                io.err(format!("tar: {msg}")).await;
                io.err("Try 'tar --help' or 'tar --usage' for more information.")
                    .await;
                return Ok(2);
            }
        };
        let dir = self.path(opts.dir.as_deref().unwrap_or("."));
        match opts.mode {
            'c' => self.tar_create(&opts, &dir, io).await,
            _ => self.tar_read(&opts, &dir, io).await,
        }
    }

    async fn tar_create(&self, opts: &TarOpts, dir: &str, io: Io<'_>) -> Result<i32, WriteError> {
        if opts.members.is_empty() {
            io.err("tar: Cowardly refusing to create an empty archive")
                .await;
            return Ok(2);
        }
        let mut code = 0;
        let mut warned = false;
        let mut builder = tar::Builder::new(Vec::new());
        let mut listing = String::new();
        for m in &opts.members {
            if m.starts_with('/') && !warned {
                io.err("tar: Removing leading `/' from member names").await;
                warned = true;
            }
            let path = vfs::resolve(dir, m);
            let walked: Result<Vec<(String, Node)>, FsError> = self
                .ctr
                .fs()
                .walk(&path)
                .map(|v| v.into_iter().map(|(p, n)| (p, n.clone())).collect());
            let entries = match walked {
                Ok(e) => e,
                Err(e) => {
                    io.err(format!("tar: {m}: Cannot stat: {e}")).await;
                    code = 2;
                    continue;
                }
            };
            // Member names as given (leading slashes dropped), children below them.
            let shown = m.trim_start_matches('/').trim_end_matches('/');
            let shown = if shown.is_empty() { "." } else { shown };
            for (p, node) in entries {
                let name = if p == path {
                    shown.to_owned()
                } else {
                    let rel = p[path.len()..].trim_start_matches('/');
                    if shown == "." {
                        format!("./{rel}")
                    } else {
                        format!("{shown}/{rel}")
                    }
                };
                let mut h = tar::Header::new_gnu();
                h.set_uid(0);
                h.set_gid(0);
                let _ = h.set_username("root");
                let _ = h.set_groupname("root");
                let appended = match &node {
                    Node::Dir { mode, mtime } => {
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(*mode);
                        h.set_mtime(*mtime);
                        h.set_size(0);
                        builder.append_data(&mut h, &name, std::io::empty())
                    }
                    Node::File { data, mode, mtime } => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_mode(*mode);
                        h.set_mtime(*mtime);
                        h.set_size(data.len() as u64);
                        builder.append_data(&mut h, &name, &data[..])
                    }
                    Node::Dev(_) => continue,
                };
                if let Err(e) = appended {
                    io.err(format!("tar: {name}: {e}")).await;
                    code = 2;
                    continue;
                }
                if opts.verbose {
                    listing.push_str(&name);
                    if node.is_dir() {
                        listing.push('/');
                    }
                    listing.push('\n');
                }
            }
        }
        let archive = match builder.into_inner() {
            Ok(a) => a,
            Err(e) => {
                io.err(format!("tar: {e}")).await;
                return Ok(2);
            }
        };
        // With the archive on stdout, the verbose listing goes to stderr (as GNU tar does).
        let to_stdout = opts.file.as_deref().is_none_or(|f| f == "-");
        if !listing.is_empty() {
            if to_stdout {
                let _ = io.stderr.write(listing).await;
            } else {
                io.out(listing).await?;
            }
        }
        if to_stdout {
            io.out(archive).await?;
        } else if let Some(f) = &opts.file {
            let r = self
                .ctr
                .fs()
                .write(&self.path(f), Bytes::from(archive), false);
            if let Err(e) = r {
                io.err(format!("tar: {f}: Cannot write: {e}")).await;
                return Ok(2);
            }
        }
        if code != 0 {
            io.err("tar: Exiting with failure status due to previous errors")
                .await;
        }
        Ok(code)
    }

    async fn tar_read(&self, opts: &TarOpts, dir: &str, io: Io<'_>) -> Result<i32, WriteError> {
        let from_file = match opts.file.as_deref() {
            None | Some("-") => None,
            Some(f) => Some((f, self.ctr.fs().read(&self.path(f)))),
        };
        let archive: Vec<u8> = match from_file {
            None => match io.stdin.read_all(vfs::QUOTA + 1024 * 1024).await {
                Ok(a) => a,
                Err(_) => {
                    io.err("tar: write error: No space left on device").await;
                    return Ok(2);
                }
            },
            Some((f, read)) => match read {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    io.err(format!("tar: {f}: Cannot open: {e}")).await;
                    io.err("tar: Error is not recoverable: exiting now").await;
                    return Ok(2);
                }
            },
        };
        if opts.mode == 'x' && !matches!(self.ctr.fs().stat(dir), Some(Node::Dir { .. })) {
            io.err(format!(
                "tar: {}: Cannot open: No such file or directory",
                opts.dir.as_deref().unwrap_or(".")
            ))
            .await;
            io.err("tar: Error is not recoverable: exiting now").await;
            return Ok(2);
        }
        let (listing, errors) = self.extract(opts, dir, archive);
        if !listing.is_empty() {
            io.out(listing).await?;
        }
        for e in &errors {
            io.err(e.clone()).await;
        }
        if errors.is_empty() {
            Ok(0)
        } else {
            io.err("tar: Exiting with failure status due to previous errors")
                .await;
            Ok(2)
        }
    }

    /// Reads an archive: lists it (`t`, or `x` with `v`) and extracts it under `dir` (`x`).
    /// Returns the listing and the errors.
    fn extract(&self, opts: &TarOpts, dir: &str, archive: Vec<u8>) -> (String, Vec<String>) {
        let mut errors: Vec<String> = Vec::new();
        let mut listing = String::new();
        let mut ar = tar::Archive::new(std::io::Cursor::new(archive));
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("tar: {e}"));
                return (listing, errors);
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("tar: {e}"));
                    break;
                }
            };
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if opts.verbose || opts.mode == 't' {
                listing.push_str(&name);
                listing.push('\n');
            }
            if opts.mode != 'x' {
                continue;
            }
            let path = vfs::resolve(dir, &name);
            let header = entry.header();
            let mode = header.mode().unwrap_or(0o644) & 0o7777;
            let mtime = if opts.touch {
                now
            } else {
                header.mtime().unwrap_or(now)
            };
            let kind = header.entry_type();
            let result = if kind.is_dir() {
                self.ctr.fs().mkdir(&path, true)
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let mut data = Vec::new();
                match std::io::Read::read_to_end(&mut entry, &mut data) {
                    Err(e) => {
                        errors.push(format!("tar: {name}: {e}"));
                        break;
                    }
                    Ok(_) => {
                        let mut fs = self.ctr.fs();
                        // GNU tar creates the directories a member needs.
                        let _ = fs.mkdir(vfs::parent(&path), true);
                        fs.write_with(&path, Bytes::from(data), false, mode, mtime)
                    }
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                errors.push(format!(
                    "tar: {name}: Cannot create symlink: Operation not supported"
                ));
                continue;
            } else {
                continue;
            };
            if let Err(e) = result {
                errors.push(format!("tar: {name}: Cannot open: {e}"));
            }
        }
        (listing, errors)
    }
}

#[derive(Debug, Default)]
struct TarOpts {
    mode: char,
    file: Option<String>,
    dir: Option<String>,
    verbose: bool,
    touch: bool,
    members: Vec<String>,
}

impl TarOpts {
    fn parse(args: &[String]) -> Result<TarOpts, String> {
        let mut o = TarOpts::default();
        let mut want_value: Vec<char> = Vec::new();
        let mut i = 0;
        let flags = |o: &mut TarOpts, letters: &str, want: &mut Vec<char>| -> Result<(), String> {
            for c in letters.chars() {
                match c {
                    'c' | 'x' | 't' => {
                        if o.mode != '\0' && o.mode != c {
                            return Err("You may not specify more than one '-Acdtrux', '--delete' or  '--test-label' option".into());
                        }
                        o.mode = c;
                    }
                    'f' | 'C' => want.push(c),
                    'v' => o.verbose = true,
                    'm' => o.touch = true,
                    'p' | 'o' | 'h' | 'P' => {}
                    'z' | 'j' | 'J' => {
                        return Err("compression is not supported by the simulator".into())
                    }
                    other => return Err(format!("invalid option -- '{other}'")),
                }
            }
            Ok(())
        };
        while let Some(a) = args.get(i) {
            i += 1;
            if let Some(c) = want_value.first().copied() {
                want_value.remove(0);
                match c {
                    'f' => o.file = Some(a.clone()),
                    _ => o.dir = Some(a.clone()),
                }
                continue;
            }
            if let Some(long) = a.strip_prefix("--") {
                match long.split_once('=') {
                    Some(("directory", d)) => o.dir = Some(d.to_owned()),
                    Some(("file", f)) => o.file = Some(f.to_owned()),
                    _ => match long {
                        "extract" | "get" => o.mode = 'x',
                        "create" => o.mode = 'c',
                        "list" => o.mode = 't',
                        "verbose" => o.verbose = true,
                        "touch" => o.touch = true,
                        "directory" => want_value.push('C'),
                        "file" => want_value.push('f'),
                        _ => {} // --no-same-permissions, --no-same-owner, …
                    },
                }
            } else if let Some(letters) = a.strip_prefix('-').filter(|l| !l.is_empty()) {
                flags(&mut o, letters, &mut want_value)?;
            } else if i == 1 {
                // Old style: the first argument is the flags without a dash.
                flags(&mut o, a, &mut want_value)?;
            } else {
                o.members.push(a.clone());
            }
        }
        if let Some(c) = want_value.first() {
            return Err(format!("option requires an argument -- '{c}'"));
        }
        if o.mode == '\0' {
            return Err(
                "You must specify one of the '-Acdtrux', '--delete' or '--test-label' options"
                    .into(),
            );
        }
        Ok(o)
    }
}

fn perms(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let m = (mode >> shift) & 7;
        s.push(if m & 4 != 0 { 'r' } else { '-' });
        s.push(if m & 2 != 0 { 'w' } else { '-' });
        s.push(if m & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('0') => out.push('\0'),
            Some('e') => out.push('\x1b'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn printf(format: &str, args: &[String]) -> String {
    let format = unescape(format);
    let mut out = String::new();
    let mut args = args.iter();
    // The format is reused while arguments remain, as printf(1) does.
    loop {
        let mut used = false;
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('s') => {
                    used = true;
                    out.push_str(args.next().map(String::as_str).unwrap_or(""));
                }
                Some('d') | Some('i') => {
                    used = true;
                    let n = args.next().and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
                    out.push_str(&n.to_string());
                }
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        if !used || args.len() == 0 {
            return out;
        }
    }
}

/// `sleep`'s argument: `None` inside for `infinity`.
fn parse_duration(s: &str) -> Option<Option<Duration>> {
    if s == "infinity" || s == "inf" {
        return Some(None);
    }
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1.0),
        'm' => (&s[..s.len() - 1], 60.0),
        'h' => (&s[..s.len() - 1], 3600.0),
        'd' => (&s[..s.len() - 1], 86400.0),
        _ => (s, 1.0),
    };
    let secs: f64 = num.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs * mult).ok())
}

/// A byte or line count with an optional multiplier suffix (`K`, `M`, `G`, `KiB`, `MB`, …).
fn parse_size(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match &s[digits.len()..] {
        "" => 1,
        "b" => 512,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

// ------------------------------------------------------------------------------------------
// Terminal and sessions

/// The line discipline of a terminal in canonical mode with echo: raw keystrokes from the
/// client in, lines out to the reader; echo (and the `\r\n` of Enter) to `echo`. Backspace
/// erases, Ctrl-C discards the line and bumps `interrupt`, Ctrl-D ends input for the current
/// reader (or hands over a partial line). Ends when the client's input ends.
pub async fn line_discipline(
    mut raw: mpsc::Receiver<Bytes>,
    cooked: mpsc::Sender<Chunk>,
    echo: Output,
    interrupt: watch::Sender<u64>,
) {
    let mut line: Vec<u8> = Vec::new();
    while let Some(bytes) = raw.recv().await {
        let mut shown: Vec<u8> = Vec::new();
        let mut deliver: Vec<Chunk> = Vec::new();
        for &b in bytes.iter() {
            match b {
                b'\r' | b'\n' => {
                    shown.extend_from_slice(b"\r\n");
                    line.push(b'\n');
                    deliver.push(Chunk::Data(Bytes::from(std::mem::take(&mut line))));
                }
                0x7f | 0x08 => {
                    if !line.is_empty() {
                        // Erase one character (UTF-8 continuation bytes with it).
                        while let Some(c) = line.pop() {
                            if c & 0xC0 != 0x80 {
                                break;
                            }
                        }
                        shown.extend_from_slice(b"\x08 \x08");
                    }
                }
                0x03 => {
                    shown.extend_from_slice(b"^C\r\n");
                    line.clear();
                    interrupt.send_modify(|n| *n += 1);
                }
                0x04 => {
                    if line.is_empty() {
                        deliver.push(Chunk::Eof);
                    } else {
                        deliver.push(Chunk::Data(Bytes::from(std::mem::take(&mut line))));
                    }
                }
                0x15 => {
                    for _ in 0..line.len() {
                        shown.extend_from_slice(b"\x08 \x08");
                    }
                    line.clear();
                }
                b => {
                    if line.len() < MAX_LINE {
                        line.push(b);
                        shown.push(b);
                    }
                }
            }
        }
        if !shown.is_empty() && echo.write(shown).await.is_err() {
            return;
        }
        for c in deliver {
            if cooked.send(c).await.is_err() {
                return;
            }
        }
    }
    let _ = cooked.send(Chunk::Eof).await;
}

/// What a session runs.
#[derive(Debug, Clone)]
pub enum Program {
    /// `exec`: this command line.
    Exec(Vec<String>),
    /// `attach`: the container's main process.
    Attach,
}

/// A session's streams, as the transport provides them: raw stdin from the client, stdout and
/// stderr towards it (`None`: not requested).
#[derive(Debug)]
pub struct SessionIo {
    /// Client to process.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Process to client.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Process to client (ignored with a TTY: everything goes to stdout).
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Whether the client asked for a terminal.
    pub tty: bool,
}

/// Runs a session to its end; returns the exit code. Every clone of the session's outputs is
/// dropped when this returns, so the transport sees stdout and stderr end.
pub async fn run_session(ctr: Arc<Container>, program: Program, io: SessionIo) -> i32 {
    let SessionIo {
        stdin,
        stdout,
        stderr,
        tty,
    } = io;
    let out = |tx: Option<mpsc::Sender<Bytes>>| match tx {
        Some(tx) => Output::Chan { tx, crlf: tty },
        None => Output::Null,
    };
    let stdout = out(stdout);
    let stderr = if tty { stdout.clone() } else { out(stderr) };
    let (intr_tx, intr_rx) = watch::channel(0u64);
    let mut discipline = None;
    let mut input = match (stdin, tty) {
        (None, _) => Input::closed(),
        (Some(rx), false) => Input::channel(rx),
        (Some(raw), true) => {
            let (tx, cooked) = mpsc::channel(8);
            let echo = match &stdout {
                Output::Chan { tx, .. } => Output::Chan {
                    tx: tx.clone(),
                    crlf: false,
                },
                other => other.clone(),
            };
            discipline = Some(tokio::spawn(line_discipline(raw, tx, echo, intr_tx)));
            Input::terminal(cooked)
        }
    };
    let mut shell = Shell::runtime(ctr, tty, tty.then_some(intr_rx.clone()));
    let io = Io {
        stdin: &mut input,
        stdout,
        stderr,
    };
    let code = match program {
        Program::Exec(argv) => {
            // An interactive shell handles Ctrl-C itself; anything else dies of it.
            let interactive_shell = tty
                && argv.first().and_then(|a| lookup(a)).is_some_and(|c| {
                    matches!(c, "sh" | "bash" | "ash" | "dash") && !argv.iter().any(|a| a == "-c")
                });
            if tty && !interactive_shell {
                let mut intr = intr_rx;
                tokio::select! {
                    code = shell.exec(argv, io) => code,
                    _ = intr.changed() => 130,
                }
            } else {
                shell.exec(argv, io).await
            }
        }
        Program::Attach => main_process(io).await,
    };
    if let Some(d) = discipline {
        d.abort();
        let _ = d.await;
    }
    code
}

/// The main process every simulated container runs (what `kubectl attach` reaches): it echoes
/// each line it reads on stdin back to stdout. When an attached client closes stdin, the attach
/// ends (exit 0); without stdin it waits until the client goes away.
pub async fn main_process(io: Io<'_>) -> i32 {
    let Io { stdin, stdout, .. } = io;
    if matches!(stdin.src, Source::Closed) && stdin.pending.is_empty() {
        std::future::pending::<()>().await;
    }
    while let Some(line) = stdin.read_line(MAX_LINE).await {
        if stdout.write(line).await.is_err() {
            return 141;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Arc<Container> {
        Arc::new(Container {
            namespace: "shop".into(),
            pod: "web-0".into(),
            name: "web".into(),
            pod_ip: "10.244.0.5".into(),
            env: vec![("GREETING".into(), "hello world".into())],
            fs: Arc::new(Mutex::new(Vfs::for_container(
                "web-0",
                "shop",
                "10.244.0.5",
            ))),
        })
    }

    struct Ran {
        code: i32,
        out: Vec<u8>,
        err: String,
    }

    async fn run_with(ctr: &Arc<Container>, argv: &[&str], stdin: &[u8]) -> Ran {
        let (otx, orx) = mpsc::channel(4);
        let (etx, erx) = mpsc::channel(4);
        let collect = |mut rx: mpsc::Receiver<Bytes>| {
            tokio::spawn(async move {
                let mut v = Vec::new();
                while let Some(b) = rx.recv().await {
                    v.extend_from_slice(&b);
                }
                v
            })
        };
        let (itx, irx) = mpsc::channel(4);
        let feed = {
            let data = Bytes::copy_from_slice(stdin);
            tokio::spawn(async move {
                for c in data.chunks(7) {
                    if itx.send(Bytes::copy_from_slice(c)).await.is_err() {
                        return;
                    }
                }
            })
        };
        let out_task = collect(orx);
        let err_task = collect(erx);
        let code = run_session(
            ctr.clone(),
            Program::Exec(argv.iter().map(|s| (*s).to_owned()).collect()),
            SessionIo {
                stdin: Some(irx),
                stdout: Some(otx),
                stderr: Some(etx),
                tty: false,
            },
        )
        .await;
        feed.abort();
        Ran {
            code,
            out: out_task.await.unwrap(),
            err: String::from_utf8(err_task.await.unwrap()).unwrap(),
        }
    }

    async fn sh(ctr: &Arc<Container>, script: &str) -> Ran {
        run_with(ctr, &["sh", "-c", script], b"").await
    }

    fn text(r: &Ran) -> &str {
        std::str::from_utf8(&r.out).unwrap()
    }

    /// A session running on its own task, its stdin and stdout channels held by the test (no
    /// stderr: on a terminal everything goes to stdout).
    struct Session {
        stdin: mpsc::Sender<Bytes>,
        stdout: mpsc::Receiver<Bytes>,
        /// What [`Session::read_until`] has read.
        seen: Vec<u8>,
        /// The exit code.
        ended: tokio::task::JoinHandle<i32>,
    }

    impl Session {
        /// `program` in `ctr`, stdout a channel of `out_capacity` chunks.
        fn start(ctr: Arc<Container>, program: Program, tty: bool, out_capacity: usize) -> Self {
            let (itx, irx) = mpsc::channel(4);
            let (otx, orx) = mpsc::channel(out_capacity);
            let ended = tokio::spawn(run_session(
                ctr,
                program,
                SessionIo {
                    stdin: Some(irx),
                    stdout: Some(otx),
                    stderr: None,
                    tty,
                },
            ));
            Session {
                stdin: itx,
                stdout: orx,
                seen: Vec::new(),
                ended,
            }
        }

        /// An interactive `sh` on a terminal.
        fn shell(ctr: Arc<Container>) -> Self {
            Session::start(ctr, Program::Exec(vec!["sh".into()]), true, 64)
        }

        /// Writes `keys` to stdin.
        async fn send(&self, keys: &'static [u8]) {
            self.stdin.send(Bytes::from_static(keys)).await.unwrap();
        }

        /// Reads stdout until all it has read contains `want`.
        async fn read_until(&mut self, want: &str) {
            while !String::from_utf8_lossy(&self.seen).contains(want) {
                self.seen
                    .extend_from_slice(&self.stdout.recv().await.unwrap());
            }
        }

        /// Waits for the session to end (its stdin still open): the exit code.
        async fn code(&mut self) -> i32 {
            (&mut self.ended).await.unwrap()
        }
    }

    #[tokio::test]
    async fn echo_exit_and_lists() {
        let c = container();
        let r = run_with(&c, &["echo", "hi"], b"").await;
        assert_eq!((r.code, text(&r)), (0, "hi\n"));
        assert_eq!(sh(&c, "exit 3").await.code, 3);
        assert_eq!(sh(&c, "exit 300").await.code, 44);
        let r = sh(
            &c,
            "echo a; false; echo $?; true && echo yes || echo no; false || echo alt",
        )
        .await;
        assert_eq!(text(&r), "a\n1\nyes\nalt\n");
        let r = sh(&c, "echo one; exit 4; echo never").await;
        assert_eq!((r.code, text(&r)), (4, "one\n"));
        let r = sh(&c, "! false && echo negated").await;
        assert_eq!(text(&r), "negated\n");
    }

    #[tokio::test]
    async fn quoting_variables_and_assignments() {
        let c = container();
        let r = sh(
            &c,
            r#"X=1; echo "$X ${X}2" '$X' "a\"b" a\ b; echo "$GREETING""#,
        )
        .await;
        assert_eq!(text(&r), "1 12 $X a\"b a b\nhello world\n");
        let r = run_with(&c, &["sh", "-c", "echo $0 $1 $#", "name", "arg"], b"").await;
        assert_eq!(text(&r), "name arg 1\n");
        let r = sh(&c, "FOO=bar env | grep FOO; echo [$FOO]").await;
        assert_eq!(text(&r), "FOO=bar\n[]\n");
        let r = sh(&c, "printf '%s-%d\\n' a 1 b 2").await;
        assert_eq!(text(&r), "a-1\nb-2\n");
    }

    #[tokio::test]
    async fn unknown_commands_and_syntax_errors() {
        let c = container();
        let r = run_with(&c, &["nosuch", "x"], b"").await;
        assert_eq!(r.code, 127);
        assert!(
            r.err.contains("executable file not found in $PATH"),
            "{}",
            r.err
        );
        let r = sh(&c, "nosuch").await;
        assert_eq!((r.code, r.err.as_str()), (127, "sh: nosuch: not found\n"));
        let r = sh(&c, "echo 'unterminated").await;
        assert_eq!(r.code, 2);
        assert!(r.err.contains("syntax error"), "{}", r.err);
        assert_eq!(sh(&c, "| echo").await.code, 2);
        assert_eq!(sh(&c, "echo $(hostname)").await.code, 2);
        let r = run_with(&c, &["/bin/echo", "via path"], b"").await;
        assert_eq!(text(&r), "via path\n");
        assert_eq!(run_with(&c, &["/opt/echo"], b"").await.code, 127);
    }

    #[tokio::test]
    async fn stdin_cat_and_pipelines() {
        let c = container();
        let r = run_with(&c, &["cat"], b"line one\nline two\n").await;
        assert_eq!(text(&r), "line one\nline two\n");
        let r = run_with(&c, &["sh", "-c", "cat | wc -l"], b"a\nb\nc\n").await;
        assert_eq!(text(&r), "3\n");
        // `yes` stops when `head` goes away.
        let r = sh(&c, "yes | head -n 3").await;
        assert_eq!((r.code, text(&r)), (0, "y\ny\ny\n"));
        let r = sh(&c, "seq 5 | grep -v 3 | wc -l").await;
        assert_eq!(text(&r), "4\n");
        let r = run_with(&c, &["head", "-c", "1000000", "/dev/zero"], b"").await;
        assert_eq!(r.out.len(), 1_000_000);
        assert!(r.out.iter().all(|&b| b == 0));
        let r = sh(&c, "cat /dev/zero | head -c 200000 | wc -c").await;
        assert_eq!(text(&r), "200000\n");
    }

    #[tokio::test]
    async fn a_script_that_runs_itself_stops() {
        let c = container();
        let r = sh(&c, "echo 'sh /tmp/self.sh' > /tmp/self.sh; sh /tmp/self.sh").await;
        assert_eq!(r.code, 2);
        assert!(r.err.contains("nested too deeply"), "{}", r.err);
    }

    #[tokio::test]
    async fn a_script_on_stdin() {
        let c = container();
        let r = run_with(
            &c,
            &["sh"],
            b"echo first\necho 'multi\nline'\nexit 5\necho never\n",
        )
        .await;
        assert_eq!((r.code, text(&r)), (5, "first\nmulti\nline\n"));
    }

    #[tokio::test]
    async fn files_and_redirections() {
        let c = container();
        let r = sh(
            &c,
            "echo hello > /tmp/f; echo more >> /tmp/f; cat /tmp/f; cat < /tmp/f | wc -c",
        )
        .await;
        assert_eq!(text(&r), "hello\nmore\n11\n");
        let r = sh(&c, "cat /nope 2>/dev/null; echo $?; cat /nope 2>&1").await;
        assert_eq!(text(&r), "1\ncat: /nope: No such file or directory\n");
        let r = sh(&c, "echo x > /no/dir/f").await;
        assert_eq!(r.code, 1);
        assert_eq!(r.err, "sh: can't create /no/dir/f: nonexistent directory\n");
        let r = sh(&c, "mkdir -p /tmp/a/b && touch /tmp/a/b/c && ls /tmp/a/b; test -d /tmp/a && echo dir; [ -f /tmp/a ] || echo notfile").await;
        assert_eq!(text(&r), "c\ndir\nnotfile\n");
        assert_eq!(run_with(&c, &["test", "-d", "/tmp/f"], b"").await.code, 1);
        assert_eq!(run_with(&c, &["test", "-d", "/tmp"], b"").await.code, 0);
        let r = sh(&c, "cd /tmp/a; pwd; ls").await;
        assert_eq!(text(&r), "/tmp/a\nb\n");
        assert_eq!(
            text(&sh(&c, "cat /etc/hostname; hostname").await),
            "web-0\nweb-0\n"
        );
        let r = sh(&c, "rm /tmp/a; echo $?; rm -r /tmp/a; ls /tmp/a").await;
        assert_eq!(r.code, 2);
        assert!(
            r.err.contains("rm: cannot remove '/tmp/a': Is a directory"),
            "{}",
            r.err
        );
    }

    #[tokio::test]
    async fn tar_round_trips_through_the_filesystem() {
        let c = container();
        sh(
            &c,
            "mkdir -p /data/sub; echo alpha > /data/a.txt; echo beta > /data/sub/b.txt",
        )
        .await;
        let created = run_with(&c, &["tar", "cf", "-", "/data"], b"").await;
        assert_eq!(created.code, 0, "{}", created.err);
        assert_eq!(created.err, "tar: Removing leading `/' from member names\n");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&created.out[..]);
        for e in ar.entries().unwrap() {
            names.push(String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned());
        }
        assert_eq!(names, ["data", "data/a.txt", "data/sub", "data/sub/b.txt"]);
        // Extract it elsewhere, as `kubectl cp` does (`tar -xmf - -C DIR`).
        let r = run_with(&c, &["mkdir", "/restore"], b"").await;
        assert_eq!(r.code, 0);
        let r = run_with(&c, &["tar", "-xmf", "-", "-C", "/restore"], &created.out).await;
        assert_eq!(r.code, 0, "{}", r.err);
        let r = sh(&c, "cat /restore/data/a.txt /restore/data/sub/b.txt").await;
        assert_eq!(text(&r), "alpha\nbeta\n");
        let r = run_with(&c, &["tar", "tf", "-"], &created.out).await;
        assert_eq!(text(&r), "data\ndata/a.txt\ndata/sub\ndata/sub/b.txt\n");
        let r = run_with(&c, &["tar", "cf", "-", "/missing"], b"").await;
        assert_eq!(r.code, 2);
        assert!(r.err.contains("Cannot stat"), "{}", r.err);
        assert_eq!(
            run_with(&c, &["tar", "-xf", "-", "-C", "/nope"], &created.out)
                .await
                .code,
            2
        );
        assert_eq!(run_with(&c, &["tar"], b"").await.code, 2);
    }

    #[tokio::test]
    async fn env_and_identity() {
        let c = container();
        let r = run_with(&c, &["env"], b"").await;
        let t = text(&r);
        assert!(t.contains("GREETING=hello world\n"), "{t}");
        assert!(t.contains("HOSTNAME=web-0\n"), "{t}");
        assert_eq!(
            text(&run_with(&c, &["printenv", "GREETING"], b"").await),
            "hello world\n"
        );
        assert_eq!(text(&run_with(&c, &["whoami"], b"").await), "root\n");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_sleeps() {
        let c = container();
        let start = tokio::time::Instant::now();
        assert_eq!(sh(&c, "sleep 1.5; sleep 1s").await.code, 0);
        assert!(start.elapsed() >= Duration::from_millis(2500));
        assert_eq!(sh(&c, "sleep nonsense").await.code, 1);
    }

    #[tokio::test]
    async fn an_interactive_shell_on_a_terminal() {
        let mut sh = Session::shell(container());
        sh.read_until("# ").await;
        sh.send(b"echo hi\r").await;
        sh.read_until("hi\r\n# ").await;
        sh.send(b"nosuch\r").await;
        sh.read_until("not found\r\n# ").await;
        sh.send(b"exit 7\r").await;
        assert_eq!(sh.code().await, 7);
        let text = String::from_utf8_lossy(&sh.seen);
        assert!(text.starts_with("# echo hi\r\nhi\r\n# "), "{text:?}");
        assert!(text.contains("sh: nosuch: not found\r\n"), "{text:?}");
    }

    #[tokio::test]
    async fn ctrl_c_interrupts_the_command_not_the_shell() {
        let mut sh = Session::shell(container());
        sh.read_until("# ").await;
        sh.send(b"sleep 1000\r").await;
        sh.read_until("sleep 1000\r\n").await;
        sh.send(b"\x03").await;
        sh.read_until("^C\r\n# ").await;
        sh.send(b"echo $?\r").await;
        sh.read_until("130\r\n# ").await;
        // Ctrl-D on an empty line ends the shell, with the last command's status.
        sh.send(b"false\r").await;
        sh.read_until("false\r\n# ").await;
        sh.send(b"\x04").await;
        assert_eq!(sh.code().await, 1);
    }

    #[tokio::test]
    async fn the_main_process_echoes_lines() {
        let mut attached = Session::start(container(), Program::Attach, false, 4);
        attached.send(b"ping\npo").await;
        assert_eq!(&attached.stdout.recv().await.unwrap()[..], b"ping\n");
        attached.send(b"ng\n").await;
        assert_eq!(&attached.stdout.recv().await.unwrap()[..], b"pong\n");
        let Session { stdin, ended, .. } = attached;
        drop(stdin);
        assert_eq!(ended.await.unwrap(), 0);
    }

    #[test]
    fn parsing() {
        assert!(matches!(parse("a && b || c; d | e"), Ok(s) if s.len() == 2));
        assert_eq!(parse("echo 'x").unwrap_err(), SyntaxError::Incomplete);
        assert!(matches!(parse("a &&"), Err(SyntaxError::Unexpected(_))));
        assert!(matches!(parse("(a)"), Err(SyntaxError::Unsupported(_))));
        let s = parse("echo 2>&1 >/tmp/x 2>>/tmp/y <in").unwrap();
        assert_eq!(
            s[0].first.cmds[0].redirs,
            [
                Redir::Dup { fd: 2, to: 1 },
                Redir::Out {
                    fd: 1,
                    append: false,
                    target: Word(vec![Seg::Lit("/tmp/x".into())])
                },
                Redir::Out {
                    fd: 2,
                    append: true,
                    target: Word(vec![Seg::Lit("/tmp/y".into())])
                },
                Redir::In(Word(vec![Seg::Lit("in".into())])),
            ]
        );
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("104857600"), Some(104_857_600));
        assert_eq!(
            parse_duration("0.5"),
            Some(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse_duration("infinity"), Some(None));
        assert_eq!(parse_duration("-1"), None);
    }
}
