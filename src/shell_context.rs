//! A lexical model of POSIX sh (and bash's extra quoting) that tells, for each `{{ … }}` of a script template,
//! which shell context it lands in, so that `shell_escape` can escape the value for exactly that context, as Go's
//! html/template does for HTML. It is fed the template's literal text and its expressions in order; control flow
//! (`{% if %}`, `{% for %}`) is handled by the caller through `snapshot`/`merge`. Whatever it cannot be sure of
//! makes the expression refused, never guessed.

use crate::shell_escape::{Escape, Heredoc};

/// Why an expression cannot be escaped where it stands, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub help: String,
}

impl Refusal {
    fn new(message: impl Into<String>, help: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
            help: help.into(),
        }
    }
}

/// What opened a stretch of command text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nest {
    Top,
    Dollar,
    Paren,
    Backtick,
}

/// A heredoc body being read line by line.
#[derive(Debug, Clone)]
struct Body {
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
    /// The current line's literal text, `None` once an expression is in it.
    line: Option<String>,
    /// Slots on the current line whose suffix is still being collected, with the text seen since.
    open: Vec<(usize, Option<String>)>,
}

impl PartialEq for Body {
    // Line contents are merged, not compared (see `Scanner::merge`).
    fn eq(&self, other: &Body) -> bool {
        self.delimiter == other.delimiter
            && self.quoted == other.quoted
            && self.strip_tabs == other.strip_tabs
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Command(Nest),
    /// Between `case` and `esac`, where `)` ends a pattern rather than a subshell.
    Case,
    Double,
    Single,
    /// bash's `$'…'`.
    AnsiC,
    /// `${…}`, with the depth of nested braces.
    Param(u32),
    /// `$((…))` or `((…))`, with the depth of nested parentheses.
    Arith(u32),
    /// After the first `)` of the closing `))`.
    ArithEnd,
    Comment,
    /// A line whose context could not be determined (a `#` that may or may not start a comment).
    Unknown,
    Heredoc(Body),
}

/// A multi-character token being recognised.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    None,
    Backslash,
    Dollar,
    DollarParen,
    /// `(` at a command position: a subshell, or `((` arithmetic.
    Paren,
    Lt,
    LtLt,
    /// Reading a heredoc's delimiter word.
    Delimiter(Word),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Word {
    strip_tabs: bool,
    started: bool,
    text: String,
    quoted: bool,
    quote: Option<char>,
    escaped: bool,
}

/// The current word in command text, for keywords and `#`: one candidate, or one per template branch that
/// left a different word here.
type Candidates = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    stack: Vec<Frame>,
    pending: Pending,
    word: Candidates,
    command_position: bool,
    /// Heredocs announced on the current command line, read after its newline.
    queued: Vec<Body>,
    /// Set when the structure could not be followed; every later expression is refused with this reason.
    lost: Option<String>,
}

pub struct Scanner {
    state: State,
    slots: Vec<Escape>,
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "in",
];

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner::new()
    }
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner {
            state: State {
                stack: vec![Frame::Command(Nest::Top)],
                pending: Pending::None,
                word: vec![String::new()],
                command_position: true,
                queued: Vec::new(),
                lost: None,
            },
            slots: Vec::new(),
        }
    }

    pub fn snapshot(&self) -> State {
        self.state.clone()
    }

    pub fn restore(&mut self, state: State) {
        self.state = state;
    }

    /// Joins the states at the end of the branches of an `if` (or a loop's start and end): they must agree on
    /// the shell context, else the context after them cannot be known.
    pub fn merge(&mut self, states: Vec<State>) -> Result<(), Refusal> {
        let mut states = states.into_iter();
        let Some(mut merged) = states.next() else {
            return Ok(());
        };
        for s in states {
            if s.stack != merged.stack || s.pending != merged.pending || s.queued != merged.queued {
                return Err(Refusal::new(
                    "the branches of this block leave the script in different shell contexts",
                    "close every quote, `$(…)` and heredoc inside the branch that opens it",
                ));
            }
            for w in s.word {
                if !merged.word.contains(&w) {
                    merged.word.push(w);
                }
            }
            merged.command_position &= s.command_position;
            merged.lost = merged.lost.or(s.lost);
            close_lines(&mut merged.stack, &mut self.slots);
            let mut other = s.stack;
            close_lines(&mut other, &mut self.slots);
        }
        close_lines(&mut merged.stack, &mut self.slots);
        self.state = merged;
        Ok(())
    }

    /// The literal text of the template, in order.
    pub fn text(&mut self, text: &str) {
        for c in text.chars() {
            if !self.track_heredoc_line(c) {
                self.char(c);
            }
        }
    }

    /// An expression at the current point: its escape is registered and its slot number returned.
    pub fn expression(&mut self) -> Result<usize, Refusal> {
        if let Some(why) = &self.state.lost {
            return Err(Refusal::new(
                format!("the shell context here cannot be determined: {why}"),
                "simplify the script around this point, or move the value into a variable first",
            ));
        }
        self.resolve_pending_for_expression()?;
        let escape = self.escape_here()?;
        let slot = self.slots.len();
        self.slots.push(escape);
        self.after_expression(slot);
        Ok(slot)
    }

    /// The escapes of every slot, once the whole template has been seen.
    pub fn finish(mut self) -> Vec<Escape> {
        if let Some(i) = self.innermost_heredoc() {
            let _ = self.end_line(i);
        }
        close_lines(&mut self.state.stack, &mut self.slots);
        self.slots
    }

    fn top(&self) -> &Frame {
        self.state
            .stack
            .last()
            .unwrap_or(&Frame::Command(Nest::Top))
    }

    fn innermost_heredoc(&self) -> Option<usize> {
        self.state
            .stack
            .iter()
            .rposition(|f| matches!(f, Frame::Heredoc(_)))
    }

    fn escape_here(&self) -> Result<Escape, Refusal> {
        let stack = &self.state.stack;
        let in_doc = self.innermost_heredoc();
        let top_index = stack.len() - 1;
        if in_doc.is_some_and(|i| i != top_index) {
            return Err(Refusal::new(
                "a value inside an expansion within a heredoc cannot be escaped safely",
                "set a shell variable before the heredoc (`V={{ … }}`) and use `$V` in it",
            ));
        }
        let backticks = stack
            .iter()
            .filter(|f| **f == Frame::Command(Nest::Backtick))
            .count();
        let inner =
            match self.top() {
                Frame::Command(_) | Frame::Case => Escape::Bare,
                Frame::Double => Escape::Double,
                Frame::Single => Escape::Single,
                Frame::Arith(_) | Frame::ArithEnd => Escape::Arith,
                Frame::Comment => Escape::Comment,
                Frame::Heredoc(b) => Escape::Heredoc(Heredoc {
                    delimiter: b.delimiter.clone(),
                    quoted: b.quoted,
                    strip_tabs: b.strip_tabs,
                    prefix: b.line.clone(),
                    suffix: None,
                }),
                Frame::AnsiC => return Err(refuse_in("`$'…'`", "use '…' or \"…\" around it")),
                Frame::Param(_) => {
                    return Err(refuse_in(
                        "`${…}`",
                        "set a shell variable first (`V={{ … }}`) and use `${V…}`",
                    ))
                }
                Frame::Unknown => return Err(Refusal::new(
                    "this `#` may or may not start a comment, depending on the template's branches",
                    "make the text before `#` the same in every branch",
                )),
            };
        match backticks {
            0 => Ok(inner),
            1 if !self.double_below_backtick()
                && matches!(inner, Escape::Bare | Escape::Single) =>
            {
                Ok(Escape::Backtick(Box::new(inner)))
            }
            _ => Err(refuse_in(
                "backquotes nested with other quoting",
                "use `$(…)` instead of backquotes",
            )),
        }
    }

    fn double_below_backtick(&self) -> bool {
        let stack = &self.state.stack;
        let bt = stack
            .iter()
            .position(|f| *f == Frame::Command(Nest::Backtick))
            .unwrap_or(0);
        stack[..bt]
            .iter()
            .any(|f| matches!(f, Frame::Double | Frame::Heredoc(_)))
    }

    fn resolve_pending_for_expression(&mut self) -> Result<(), Refusal> {
        match std::mem::replace(&mut self.state.pending, Pending::None) {
            Pending::None => Ok(()),
            Pending::Backslash => Err(Refusal::new(
                "a backslash right before `{{` would escape the quoting of the value",
                "remove the backslash, or double it (`\\\\`) if you want a literal one",
            )),
            Pending::Dollar => Err(Refusal::new(
                "a `$` right before `{{` would turn the value into an expansion",
                "write `\\$` for a literal dollar sign, or put the value in a variable and write `$V`",
            )),
            Pending::DollarParen => {
                self.state.stack.push(Frame::Command(Nest::Dollar));
                self.state.command_position = true;
                Ok(())
            }
            Pending::Paren => {
                self.state.stack.push(Frame::Command(Nest::Paren));
                self.state.command_position = true;
                Ok(())
            }
            Pending::Lt => Ok(()),
            Pending::LtLt | Pending::Delimiter(_) => Err(Refusal::new(
                "a heredoc delimiter cannot come from a value",
                "write the delimiter literally, e.g. `<<EOF`",
            )),
        }
    }

    fn after_expression(&mut self, slot: usize) {
        let state = &mut self.state;
        if let Some(Frame::Heredoc(body)) = state.stack.last_mut() {
            for (_, suffix) in &mut body.open {
                *suffix = None;
            }
            body.line = None;
            body.open.push((slot, Some(String::new())));
        } else if matches!(state.stack.last(), Some(Frame::Command(_) | Frame::Case)) {
            // The value is (part of) a word that is no keyword.
            for w in &mut state.word {
                w.push('\u{0}');
            }
            state.command_position = false;
        }
    }

    /// Heredoc bodies end at a raw line equal to the delimiter, whatever nesting the text inside them has.
    /// True when `c` was the newline that ended a body (it is consumed).
    fn track_heredoc_line(&mut self, c: char) -> bool {
        let Some(i) = self.innermost_heredoc() else {
            return false;
        };
        if c == '\n' {
            return self.end_line(i);
        } else if let Frame::Heredoc(body) = &mut self.state.stack[i] {
            if let Some(line) = &mut body.line {
                line.push(c);
            }
            for (_, suffix) in body.open.iter_mut() {
                if let Some(s) = suffix {
                    s.push(c);
                }
            }
        }
        false
    }

    /// Ends the current line of the heredoc at `i`; true when that line was its delimiter.
    fn end_line(&mut self, i: usize) -> bool {
        let Frame::Heredoc(body) = &mut self.state.stack[i] else {
            return false;
        };
        for (slot, suffix) in body.open.drain(..) {
            if let Some(Escape::Heredoc(h)) = self.slots.get_mut(slot) {
                h.suffix = suffix;
            }
        }
        let ends = body.line.as_deref().is_some_and(|l| {
            let l = if body.strip_tabs {
                l.trim_start_matches('\t')
            } else {
                l
            };
            l == body.delimiter
        });
        body.line = Some(String::new());
        if ends {
            self.state.stack.truncate(i);
            self.state.pending = Pending::None;
            self.next_heredoc();
            self.state.command_position = true;
        }
        ends
    }

    fn next_heredoc(&mut self) {
        if !self.state.queued.is_empty() {
            let body = self.state.queued.remove(0);
            self.state.stack.push(Frame::Heredoc(body));
        }
    }
}

/// The character-level state machine.
impl Scanner {
    fn char(&mut self, c: char) {
        if !self.resolve_pending(c) {
            return;
        }
        if matches!(self.state.pending, Pending::Delimiter(_)) {
            self.delimiter_char(c);
            return;
        }
        match self.top() {
            Frame::Command(nest) => {
                let nest = Some(*nest);
                self.command_char(c, nest)
            }
            Frame::Case => self.command_char(c, None),
            Frame::Double => match c {
                '"' => self.pop(),
                _ => self.expansion_char(c),
            },
            Frame::Single => {
                if c == '\'' {
                    self.pop()
                }
            }
            Frame::AnsiC => match c {
                '\\' => self.state.pending = Pending::Backslash,
                '\'' => self.pop(),
                _ => {}
            },
            Frame::Param(depth) => {
                let depth = *depth;
                match c {
                    '{' => self.replace_top(Frame::Param(depth + 1)),
                    '}' if depth == 0 => self.pop(),
                    '}' => self.replace_top(Frame::Param(depth - 1)),
                    '"' => self.push(Frame::Double),
                    '\'' => self.push(Frame::Single),
                    _ => self.expansion_char(c),
                }
            }
            Frame::Arith(depth) => {
                let depth = *depth;
                match c {
                    '(' => self.replace_top(Frame::Arith(depth + 1)),
                    ')' if depth == 0 => self.replace_top(Frame::ArithEnd),
                    ')' => self.replace_top(Frame::Arith(depth - 1)),
                    _ => self.expansion_char(c),
                }
            }
            Frame::ArithEnd => {
                self.pop();
                if c != ')' {
                    self.state.lost = Some("an arithmetic expansion is not closed by `))`".into());
                }
            }
            Frame::Comment | Frame::Unknown => {
                if c == '\n' {
                    self.pop();
                    self.char(c);
                }
            }
            Frame::Heredoc(body) => {
                if !body.quoted {
                    self.expansion_char(c)
                }
            }
        }
    }

    /// `\`, `$` and `` ` ``: what double quotes, heredoc bodies and expansions have in common.
    fn expansion_char(&mut self, c: char) {
        match c {
            '\\' => self.state.pending = Pending::Backslash,
            '$' => self.state.pending = Pending::Dollar,
            '`' => {
                self.push(Frame::Command(Nest::Backtick));
                self.state.command_position = true;
                self.state.word = vec![String::new()];
            }
            _ => {}
        }
    }

    /// Finishes a pending multi-character token with `c`. False when `c` was consumed by it.
    fn resolve_pending(&mut self, c: char) -> bool {
        let in_command = matches!(self.top(), Frame::Command(_) | Frame::Case);
        match std::mem::replace(&mut self.state.pending, Pending::None) {
            Pending::None => true,
            Pending::Backslash => {
                self.word_push(c);
                false
            }
            Pending::Dollar => match c {
                '(' => {
                    self.state.pending = Pending::DollarParen;
                    false
                }
                '{' => {
                    self.push(Frame::Param(0));
                    false
                }
                '\'' if in_command => {
                    self.push(Frame::AnsiC);
                    false
                }
                _ => true,
            },
            Pending::DollarParen | Pending::Paren if c == '(' => {
                self.push(Frame::Arith(0));
                false
            }
            Pending::DollarParen => {
                self.open_command(Nest::Dollar);
                true
            }
            Pending::Paren => {
                self.open_command(Nest::Paren);
                true
            }
            Pending::Lt if c == '<' => {
                self.state.pending = Pending::LtLt;
                false
            }
            Pending::Lt => true,
            Pending::LtLt => match c {
                '<' => false,
                '-' => {
                    self.state.pending = Pending::Delimiter(Word {
                        strip_tabs: true,
                        ..Word::default()
                    });
                    false
                }
                _ => {
                    self.state.pending = Pending::Delimiter(Word::default());
                    true
                }
            },
            Pending::Delimiter(w) => {
                self.state.pending = Pending::Delimiter(w);
                true
            }
        }
    }

    fn command_char(&mut self, c: char, nest: Option<Nest>) {
        match c {
            '\\' => {
                self.word_push(c);
                self.state.pending = Pending::Backslash;
            }
            '\'' => {
                self.word_push(c);
                self.push(Frame::Single);
            }
            '"' => {
                self.word_push(c);
                self.push(Frame::Double);
            }
            '`' if nest == Some(Nest::Backtick) => {
                self.end_word();
                self.pop();
            }
            '`' => {
                self.word_push(c);
                self.expansion_char(c);
            }
            '$' => {
                self.word_push(c);
                self.state.pending = Pending::Dollar;
            }
            '#' => self.hash(),
            '(' => self.open_paren(nest),
            ')' => {
                // `esac)` closes the case first, then the `$(`: look at the frame again after the word.
                self.end_word();
                match self.top() {
                    Frame::Command(Nest::Dollar | Nest::Paren) => self.pop(),
                    Frame::Case => self.state.command_position = true,
                    _ => {}
                }
            }
            '<' => {
                self.end_word();
                self.state.pending = Pending::Lt;
            }
            ' ' | '\t' | '>' => self.end_word(),
            '\n' | ';' | '&' | '|' => {
                self.end_word();
                self.state.command_position = true;
                if c == '\n' {
                    self.next_heredoc();
                }
            }
            _ => self.word_push(c),
        }
    }

    /// `#` starts a comment only at the start of a word.
    fn hash(&mut self) {
        let empty = self.state.word.iter().filter(|w| w.is_empty()).count();
        if empty == self.state.word.len() {
            self.push(Frame::Comment);
        } else if empty == 0 {
            self.word_push('#');
        } else {
            self.push(Frame::Unknown);
        }
    }

    fn open_paren(&mut self, nest: Option<Nest>) {
        let at_start = self.state.word.iter().all(String::is_empty);
        if nest.is_none() {
            // A case pattern may start with `(`.
            self.end_word();
        } else if self.state.command_position && at_start {
            self.state.pending = Pending::Paren;
        } else {
            self.end_word();
            self.open_command(Nest::Paren);
        }
    }

    fn open_command(&mut self, nest: Nest) {
        self.push(Frame::Command(nest));
        self.state.command_position = true;
        self.state.word = vec![String::new()];
    }

    fn delimiter_char(&mut self, c: char) {
        let Pending::Delimiter(w) = &mut self.state.pending else {
            return;
        };
        if w.escaped {
            w.text.push(c);
            w.escaped = false;
            return;
        }
        if let Some(q) = w.quote {
            if c == q {
                w.quote = None;
            } else {
                w.text.push(c);
            }
            return;
        }
        match c {
            '\\' => (w.escaped, w.quoted, w.started) = (true, true, true),
            '\'' | '"' => (w.quote, w.quoted, w.started) = (Some(c), true, true),
            ' ' | '\t' if !w.started => {}
            ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                let w = std::mem::take(w);
                self.state.pending = Pending::None;
                if w.text.is_empty() {
                    self.state.lost = Some("a heredoc has no delimiter".into());
                } else {
                    self.state.queued.push(Body {
                        delimiter: w.text,
                        quoted: w.quoted,
                        strip_tabs: w.strip_tabs,
                        line: Some(String::new()),
                        open: Vec::new(),
                    });
                }
                self.char(c);
            }
            _ => {
                w.text.push(c);
                w.started = true;
            }
        }
    }

    fn word_push(&mut self, c: char) {
        if matches!(self.top(), Frame::Command(_) | Frame::Case) {
            for w in &mut self.state.word {
                w.push(c);
            }
        }
    }

    /// A word ended: `case` and `esac` at a command position open and close a case; keywords and assignments
    /// keep the command position.
    fn end_word(&mut self) {
        let words = std::mem::replace(&mut self.state.word, vec![String::new()]);
        if words.iter().all(String::is_empty) {
            return;
        }
        if !self.state.command_position {
            return;
        }
        let effects: Vec<u8> = words.iter().map(|w| word_effect(w)).collect();
        if effects.iter().any(|e| *e != effects[0]) {
            self.state.lost = Some("a shell keyword depends on the template's branches".into());
            return;
        }
        match effects[0] {
            CASE => {
                self.push(Frame::Case);
                self.state.command_position = false;
            }
            ESAC if *self.top() == Frame::Case => {
                self.pop();
                self.state.command_position = false;
            }
            KEEP => {}
            _ => self.state.command_position = false,
        }
    }

    fn push(&mut self, frame: Frame) {
        self.state.stack.push(frame);
    }

    fn pop(&mut self) {
        if self.state.stack.len() > 1 {
            self.state.stack.pop();
        }
    }

    fn replace_top(&mut self, frame: Frame) {
        if let Some(top) = self.state.stack.last_mut() {
            *top = frame;
        }
    }
}

const CASE: u8 = 1;
const ESAC: u8 = 2;
const KEEP: u8 = 3;
const OTHER: u8 = 0;

fn word_effect(word: &str) -> u8 {
    let assignment = word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
    });
    match word {
        "case" => CASE,
        "esac" => ESAC,
        w if KEYWORDS.contains(&w) || assignment => KEEP,
        _ => OTHER,
    }
}

fn refuse_in(what: &str, help: &str) -> Refusal {
    Refusal::new(
        format!("a value inside {what} has no safe escape"),
        help.to_string(),
    )
}

/// Finishes the heredoc lines that were open at a merge point: what follows them is not known.
fn close_lines(stack: &mut [Frame], slots: &mut [Escape]) {
    for frame in stack.iter_mut() {
        if let Frame::Heredoc(body) = frame {
            for (slot, _) in body.open.drain(..) {
                if let Some(Escape::Heredoc(h)) = slots.get_mut(slot) {
                    h.suffix = None;
                }
            }
            body.line = None;
        }
    }
}
