//! The frames of the shell model: the nested contexts (command text, quotes, expansions, heredoc bodies) the
//! scanner is inside, innermost last.

/// What opened a stretch of command text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nest {
    Top,
    Dollar,
    Paren,
    Backtick,
}

/// A heredoc body being read line by line.
#[derive(Debug, Clone)]
pub(super) struct Body {
    pub(super) delimiter: String,
    pub(super) quoted: bool,
    pub(super) strip_tabs: bool,
    /// The current line's literal text, `None` once an expression is in it.
    pub(super) line: Option<String>,
    /// Slots on the current line whose suffix is still being collected, with the text seen since.
    pub(super) open: Vec<(usize, Option<String>)>,
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
pub(super) enum Frame {
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
