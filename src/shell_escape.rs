//! Escaping a value for the shell context it lands in (`shell_context` finds the context).
//!
//! Each function returns text that the shell turns back into exactly the value's bytes, or an error saying why no
//! such text exists (a NUL byte, a non-integer in arithmetic, a line that would end a heredoc).

/// Where an interpolated value lands, in shell terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escape {
    /// An unquoted word: the value becomes one single-quoted word.
    Bare,
    /// Inside `"…"`: `\`, `"`, `$` and `` ` `` are backslash-escaped.
    Double,
    /// Inside `'…'`: a `'` closes, emits an escaped quote and reopens.
    Single,
    /// A heredoc body. Unquoted (`<<EOF`) bodies expand `$`, `` ` `` and `\`; quoted (`<<'EOF'`) ones do not.
    Heredoc(Heredoc),
    /// Inside `$((…))` or `((…))`: only an integer literal is safe.
    Arith,
    /// Inside a `# comment`: anything but a line break.
    Comment,
    /// Inside `` `…` `` (not within double quotes): the inner escape, then a backslash before `\`, `` ` `` and `$`,
    /// which the backquote's own pass removes again.
    Backtick(Box<Escape>),
}

/// What the renderer knows about the heredoc line an expression sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub delimiter: String,
    pub quoted: bool,
    /// `<<-`: leading tabs are stripped before comparing a line with the delimiter.
    pub strip_tabs: bool,
    /// Literal text between the start of the line and the expression; `None` when another expression is in it.
    pub prefix: Option<String>,
    /// Literal text between the expression and the end of the line; `None` when another expression is in it.
    pub suffix: Option<String>,
}

/// Why a value cannot be placed in its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe(pub String);

impl Escape {
    /// The text to put in the script for `value`.
    pub fn apply(&self, value: &str) -> Result<String, Unsafe> {
        if value.contains('\0') {
            return Err(Unsafe(
                "the value contains a NUL byte, which no shell script can hold".into(),
            ));
        }
        match self {
            Escape::Bare => Ok(bare(value)),
            Escape::Double => Ok(backslash(value, &['\\', '"', '$', '`'])),
            Escape::Single => Ok(value.replace('\'', r"'\''")),
            Escape::Heredoc(h) => heredoc(h, value),
            Escape::Arith => arith(value),
            Escape::Comment => comment(value),
            Escape::Backtick(inner) => Ok(backslash(&inner.apply(value)?, &['\\', '`', '$'])),
        }
    }

    /// A short name for messages and tests.
    pub fn name(&self) -> &'static str {
        match self {
            Escape::Bare => "an unquoted word",
            Escape::Double => "double quotes",
            Escape::Single => "single quotes",
            Escape::Heredoc(h) if h.quoted => "a quoted heredoc",
            Escape::Heredoc(_) => "a heredoc",
            Escape::Arith => "arithmetic",
            Escape::Comment => "a comment",
            Escape::Backtick(_) => "backquotes",
        }
    }
}

/// One single-quoted word; `''` for the empty string.
fn bare(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn backslash(value: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A decimal integer, written so that the shell reads the number it means: without leading zeros (`010` would be
/// octal 8, `08` an error), within 64 bits (dash saturates a larger constant, bash wraps it), and a negative one in
/// parentheses (after a `-` in the template, `-5` would make `--`, the decrement operator).
fn arith(value: &str) -> Result<String, Unsafe> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Unsafe(format!(
            "`{}` is not an integer, and shell arithmetic evaluates anything else as code",
            value.escape_debug()
        )));
    }
    let digits = match digits.trim_start_matches('0') {
        "" => "0",
        d => d,
    };
    if digits.parse::<i64>().is_err() {
        return Err(Unsafe(format!(
            "`{value}` is beyond the shell's 64-bit integers"
        )));
    }
    Ok(if negative && digits != "0" {
        format!("(-{digits})")
    } else {
        digits.to_string()
    })
}

fn comment(value: &str) -> Result<String, Unsafe> {
    if value.contains(['\n', '\r']) {
        Err(Unsafe(
            "the value has a line break, which would end the comment and run the rest".into(),
        ))
    } else {
        Ok(value.to_string())
    }
}

fn heredoc(h: &Heredoc, value: &str) -> Result<String, Unsafe> {
    let segments: Vec<&str> = value.split('\n').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        let prefix = if i == 0 {
            h.prefix.as_deref()
        } else {
            Some("")
        };
        let suffix = if i == last {
            h.suffix.as_deref()
        } else {
            Some("")
        };
        if could_end(h, prefix, segment, suffix) {
            return Err(Unsafe(format!(
                "the value could form the line `{}`, which would end the heredoc early",
                h.delimiter
            )));
        }
        // `<<-` strips the leading tabs of every body line, the value's included: no escape keeps them.
        let at_line_start = prefix.is_none_or(|p| p.chars().all(|c| c == '\t'));
        if h.strip_tabs && at_line_start && segment.starts_with('\t') {
            return Err(Unsafe(
                "a line of the value starts with a tab, which `<<-` strips".into(),
            ));
        }
    }
    let hazards: Vec<Option<usize>> = segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            let prefix = if i == 0 { h.prefix.as_deref()? } else { "" };
            let prefix = if h.strip_tabs {
                prefix.trim_start_matches('\t')
            } else {
                prefix
            };
            dash_heredoc_hazard(&h.delimiter, prefix, segment)
        })
        .collect();
    if h.quoted {
        return match hazards.iter().any(Option::is_some) {
            true => Err(Unsafe(format!(
                "a line of the value starts like `{}` and goes on with a non-ASCII character, which dash (sh on \
                 Debian and Ubuntu) corrupts in a heredoc; use an unquoted heredoc or double quotes",
                h.delimiter
            ))),
            false => Ok(value.to_string()),
        };
    }
    let escaped: Vec<String> = segments
        .iter()
        .zip(&hazards)
        .map(|(segment, hazard)| match hazard {
            // An empty expansion between the delimiter-like start and the character: dash then compares an
            // ASCII `$`, and the line reads the same.
            Some(at) => format!(
                "{}${{SORTIE_NONE:+}}{}",
                backslash(&segment[..*at], &['\\', '$', '`']),
                backslash(&segment[*at..], &['\\', '$', '`'])
            ),
            None => backslash(segment, &['\\', '$', '`']),
        })
        .collect();
    Ok(escaped.join("\n"))
}

/// dash (sh on Debian and Ubuntu) loses the first byte of a non-ASCII character that follows the start of the
/// delimiter at the start of a heredoc body line: before `EOF`, the line `Eé` reads as `E\xa9`. Where the
/// value makes such a line after `prefix` (the literal start of its line), the byte index in `segment` of that
/// character.
fn dash_heredoc_hazard(delimiter: &str, prefix: &str, segment: &str) -> Option<usize> {
    let line = format!("{prefix}{segment}");
    let common = line
        .bytes()
        .zip(delimiter.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let non_ascii = line.as_bytes().get(common).is_some_and(|b| *b >= 0x80);
    let at = common.checked_sub(prefix.len())?;
    (common >= 1 && non_ascii && segment.is_char_boundary(at)).then_some(at)
}

/// Whether a line made of `prefix`, `segment` and `suffix` (unknown parts being anything) could equal the
/// delimiter. Conservative: when a part is unknown it answers yes whenever it cannot rule the match out.
fn could_end(h: &Heredoc, prefix: Option<&str>, segment: &str, suffix: Option<&str>) -> bool {
    let strip = |s: &str| -> String {
        if h.strip_tabs {
            s.trim_start_matches('\t').to_string()
        } else {
            s.to_string()
        }
    };
    let delim = h.delimiter.as_str();
    match (prefix, suffix) {
        (Some(p), Some(s)) => strip(&format!("{p}{segment}{s}")) == delim,
        (Some(p), None) => delim.starts_with(&strip(&format!("{p}{segment}"))),
        (None, Some(s)) => {
            let tail = format!("{segment}{s}");
            delim.ends_with(&tail) || delim.ends_with(&strip(&tail))
        }
        (None, None) => delim.contains(segment) || delim.contains(&strip(segment)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(prefix: Option<&str>, suffix: Option<&str>) -> Escape {
        Escape::Heredoc(Heredoc {
            delimiter: "EOF".into(),
            quoted: false,
            strip_tabs: true,
            prefix: prefix.map(str::to_string),
            suffix: suffix.map(str::to_string),
        })
    }

    #[test]
    fn bare_and_quoted_forms() {
        assert_eq!(Escape::Bare.apply("a'b").expect("escape"), r"'a'\''b'");
        assert_eq!(Escape::Bare.apply("").expect("escape"), "''");
        assert_eq!(
            Escape::Double.apply(r#"$(x) `y` "z" \"#).expect("escape"),
            r#"\$(x) \`y\` \"z\" \\"#
        );
        assert_eq!(Escape::Single.apply("it's").expect("escape"), r"it'\''s");
    }

    #[test]
    fn arithmetic_takes_integers_only() {
        assert_eq!(Escape::Arith.apply("42").expect("escape"), "42");
        assert_eq!(Escape::Arith.apply("-42").expect("escape"), "(-42)");
        assert!(Escape::Arith.apply("a[$(touch x)]").is_err());
        assert!(Escape::Arith.apply("").is_err());
        assert!(Escape::Arith.apply("-").is_err());
    }

    #[test]
    fn arithmetic_reads_the_number_meant() {
        // Leading zeros would make octal (or an error); `--` would be a decrement; 64 bits is all there is.
        assert_eq!(Escape::Arith.apply("010").expect("escape"), "10");
        assert_eq!(Escape::Arith.apply("-007").expect("escape"), "(-7)");
        assert_eq!(Escape::Arith.apply("000").expect("escape"), "0");
        assert_eq!(Escape::Arith.apply("-0").expect("escape"), "0");
        assert_eq!(
            Escape::Arith.apply("9223372036854775807").expect("escape"),
            "9223372036854775807"
        );
        assert!(Escape::Arith.apply("9223372036854775808").is_err());
        assert!(Escape::Arith.apply("-9223372036854775808").is_err());
        assert!(Escape::Arith.apply("99999999999999999999").is_err());
    }

    #[test]
    fn heredoc_keeps_a_non_ascii_character_after_a_delimiter_like_start_under_dash() {
        let doc = |quoted| {
            Escape::Heredoc(Heredoc {
                delimiter: "EOF".into(),
                quoted,
                strip_tabs: false,
                prefix: Some(String::new()),
                suffix: Some(String::new()),
            })
        };
        assert_eq!(
            doc(false).apply("Eé\nEOé x\nxé\nEOFé").as_deref(),
            Ok("E${SORTIE_NONE:+}é\nEO${SORTIE_NONE:+}é x\nxé\nEOF${SORTIE_NONE:+}é")
        );
        assert!(doc(true).apply("a\nEé").is_err());
        assert_eq!(doc(true).apply("xé\néE").as_deref(), Ok("xé\néE"));
    }

    #[test]
    fn heredoc_refuses_values_that_end_it() {
        let e = doc(Some(""), Some(""));
        assert!(e.apply("x\nEOF\ntouch PWNED").is_err());
        assert!(e.apply("EOF").is_err());
        assert!(e.apply("\t\tEOF").is_err());
        assert_eq!(e.apply("EOFX $HOME").expect("escape"), r"EOFX \$HOME");
        assert!(doc(Some("E"), Some("F")).apply("O").is_err());
        assert!(doc(None, Some("F")).apply("EO").is_err());
        assert!(doc(Some("E"), None).apply("O").is_err());
        assert!(doc(Some("x"), Some("")).apply("EOF").is_ok());
    }

    #[test]
    fn strip_tabs_heredoc_refuses_lines_starting_with_a_tab() {
        assert!(doc(Some(""), Some("")).apply("\tx").is_err());
        assert!(doc(Some("\t"), Some("")).apply("\tx").is_err());
        assert!(doc(Some("x"), Some("")).apply("a\n\tb").is_err());
        assert!(doc(None, Some("")).apply("\tx").is_err());
        assert_eq!(
            doc(Some("x"), Some("")).apply("\ty").expect("escape"),
            "\ty"
        );
        assert_eq!(
            doc(Some(""), Some("")).apply("a\tb").expect("escape"),
            "a\tb"
        );
    }

    #[test]
    fn backquotes_add_their_own_layer() {
        let e = Escape::Backtick(Box::new(Escape::Bare));
        assert_eq!(e.apply(r"a`b$c\d").expect("escape"), r"'a\`b\$c\\d'");
    }

    #[test]
    fn nul_is_refused_everywhere() {
        assert!(Escape::Single.apply("a\0b").is_err());
    }
}
