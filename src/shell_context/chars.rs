//! The character-level state machine: quotes, expansions and the tokens of command text.

use super::frame::{Frame, Nest};
use super::token::{Pending, Word};
use super::Scanner;

impl Scanner {
    pub(super) fn char(&mut self, c: char) {
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

    fn word_push(&mut self, c: char) {
        if matches!(self.top(), Frame::Command(_) | Frame::Case) {
            for w in &mut self.state.word {
                w.push(c);
            }
        }
    }
}
