//! What the scanner is in the middle of: a multi-character token, a heredoc's delimiter word, and the word of
//! command text being read.

/// A multi-character token being recognised.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Pending {
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

/// A heredoc's delimiter word being read (any quoting in it makes the body literal).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Word {
    pub(super) strip_tabs: bool,
    pub(super) started: bool,
    pub(super) text: String,
    pub(super) quoted: bool,
    pub(super) quote: Option<char>,
    pub(super) escaped: bool,
}

/// The current word in command text, for keywords and `#`: one candidate, or one per template branch that
/// left a different word here.
pub(super) type Candidates = Vec<String>;
