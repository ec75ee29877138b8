//! Heredocs: their delimiter word, their bodies read line by line, and the end of the line an expression stands
//! on (a heredoc body's escape depends on the text around it).

use super::frame::{Body, Frame};
use super::token::Pending;
use super::Scanner;
use crate::shell_escape::Escape;

impl Scanner {
    pub(super) fn innermost_heredoc(&self) -> Option<usize> {
        self.state
            .stack
            .iter()
            .rposition(|f| matches!(f, Frame::Heredoc(_)))
    }

    /// Heredoc bodies end at a raw line equal to the delimiter, whatever nesting the text inside them has.
    /// True when `c` was the newline that ended a body (it is consumed).
    pub(super) fn track_heredoc_line(&mut self, c: char) -> bool {
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
    pub(super) fn end_line(&mut self, i: usize) -> bool {
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

    pub(super) fn next_heredoc(&mut self) {
        if !self.state.queued.is_empty() {
            let body = self.state.queued.remove(0);
            self.state.stack.push(Frame::Heredoc(body));
        }
    }

    pub(super) fn delimiter_char(&mut self, c: char) {
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
}

/// Finishes the heredoc lines that were open at a merge point: what follows them is not known.
pub(super) fn close_lines(stack: &mut [Frame], slots: &mut [Escape]) {
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
