//! A lexical model of POSIX sh (and bash's extra quoting) that tells, for each `{{ … }}` of a script template,
//! which shell context it lands in, so that `shell_escape` can escape the value for exactly that context, as Go's
//! html/template does for HTML. It is fed the template's literal text and its expressions in order; control flow
//! (`{% if %}`, `{% for %}`) is handled by the caller through `snapshot`/`merge`. Whatever it cannot be sure of
//! makes the expression refused, never guessed.

mod chars;
mod expression;
mod frame;
mod heredoc;
mod token;
mod words;

use crate::shell_escape::Escape;
use frame::{Body, Frame, Nest};
use heredoc::close_lines;
use token::{Candidates, Pending};

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
