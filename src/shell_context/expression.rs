//! An expression in the template: the escape it gets where it stands, or the reason it is refused.

use super::frame::{Frame, Nest};
use super::token::Pending;
use super::{Refusal, Scanner};
use crate::shell_escape::{Escape, Heredoc};

impl Scanner {
    pub(super) fn escape_here(&self) -> Result<Escape, Refusal> {
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

    pub(super) fn resolve_pending_for_expression(&mut self) -> Result<(), Refusal> {
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

    pub(super) fn after_expression(&mut self, slot: usize) {
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
}

fn refuse_in(what: &str, help: &str) -> Refusal {
    Refusal::new(
        format!("a value inside {what} has no safe escape"),
        help.to_string(),
    )
}
