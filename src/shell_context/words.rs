//! Words of command text that change the context: `case` and `esac`, and the keywords and assignments after
//! which a command may still start.

use super::frame::Frame;
use super::Scanner;

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "in",
];

impl Scanner {
    /// A word ended: `case` and `esac` at a command position open and close a case; keywords and assignments
    /// keep the command position.
    pub(super) fn end_word(&mut self) {
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
