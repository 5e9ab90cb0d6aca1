//! Validation diagnostics: `path:line:column: message` plus a hint a marketer can act on.

use std::fmt;

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }

    /// The position `offset` bytes into `text` when `text` starts at `self`.
    pub fn advance(self, text: &str, offset: usize) -> Pos {
        let mut pos = self;
        for ch in text[..offset.min(text.len())].chars() {
            if ch == '\n' {
                pos.line += 1;
                pos.col = 1;
            } else {
                pos.col += 1;
            }
        }
        pos
    }
}

/// One problem found in a sequence or template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (relative paths stay relative).
    pub path: String,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

/// The longest message or hint a diagnostic keeps, in bytes: many quote what the file says,
/// and a file may say a megabyte where a word was expected.
pub const MAX_TEXT: usize = 500;

/// `text` cut to [`MAX_TEXT`] bytes at a character boundary, marked with `…` when cut.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Diagnostic {
    pub fn new(path: impl Into<String>, pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            path: path.into(),
            pos,
            message: bounded(message.into()),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(bounded(hint.into()));
        self
    }

    /// Sort key: by file, then position, so reports read top to bottom.
    pub fn sort_key(&self) -> (&str, Pos) {
        (&self.path, self.pos)
    }
}

impl fmt::Display for Diagnostic {
    /// Control and formatting characters a file put in a message are escaped: what `validate`
    /// prints goes to a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            escaped(&self.path),
            self.pos.line,
            self.pos.col,
            escaped(&self.message)
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {}", escaped(hint))?;
        }
        Ok(())
    }
}

fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(crate::redact::hidden) {
        return s.into();
    }
    s.chars()
        .flat_map(|c| {
            let e: Vec<char> = if crate::redact::hidden(c) {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect::<String>()
        .into()
}

/// Collects diagnostics for one file so that checks never stop at the first problem.
#[derive(Debug)]
pub struct Diags<'a> {
    pub path: &'a str,
    pub list: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub fn new(path: &'a str) -> Diags<'a> {
        Diags {
            path,
            list: Vec::new(),
        }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) -> &mut Diagnostic {
        self.list.push(Diagnostic::new(self.path, pos, message));
        let last = self.list.len() - 1;
        &mut self.list[last]
    }

    pub fn error_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.list
            .push(Diagnostic::new(self.path, pos, message).hint(hint));
    }
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        let d = edit_distance(word, cand);
        // Allow roughly one edit per three characters: "wiat" → "wait", not "id" → "exit".
        let limit = (cand.len().max(word.len()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Damerau-Levenshtein distance (adjacent transpositions count as one edit).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["id", "wait", "wait_for", "email", "exit", "send_window"];
        assert_eq!(did_you_mean("wiat", keys), Some("wait"));
        assert_eq!(did_you_mean("send_windw", keys), Some("send_window"));
        assert_eq!(did_you_mean("emial", keys), Some("email"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn display_has_position_and_hint() {
        let d = Diagnostic::new("a.yaml", Pos::new(3, 5), "bad").hint("fix it");
        assert_eq!(d.to_string(), "a.yaml:3:5: bad\n  hint: fix it");
    }
}
