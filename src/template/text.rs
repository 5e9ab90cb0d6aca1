//! Plain text from HTML, for emails whose template has no `.txt.j2` part.
//!
//! Mail clients that show text (and spam filters that compare parts) want readable text, not
//! stripped markup: paragraphs become blank lines, list items get dashes, links keep their URL.

/// Converts an email's HTML body to readable plain text.
pub fn html_to_text(html: &str) -> String {
    let mut reader = Reader::default();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        reader.out.push_text(&decode_entities(&rest[..lt]));
        rest = &rest[lt..];
        let Some(gt) = rest.find('>') else {
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(comment) = tag.strip_prefix("!--") {
            // Comments may contain `>`: skip to the real end.
            if !comment.ends_with("--") {
                rest = rest.find("-->").map_or("", |i| &rest[i + 3..]);
            }
            continue;
        }
        rest = reader.tag(tag, rest);
    }
    reader.out.push_text(&decode_entities(rest));
    reader.out.finish()
}

/// The text so far, and the link being read.
#[derive(Default)]
struct Reader {
    out: Text,
    /// The href of the link being read, printed after its text.
    link: Option<String>,
    link_text_start: usize,
}

impl Reader {
    /// Lays out `tag` (the text between `<` and `>`); `rest` follows it, and what is returned
    /// is read next (past the end of an element whose content is not text).
    fn tag<'a>(&mut self, tag: &str, rest: &'a str) -> &'a str {
        let name = tag_name(tag);
        let out = &mut self.out;
        match (name.as_str(), tag.starts_with('/')) {
            ("style" | "script" | "head" | "title", false) => {
                let end = format!("</{name}");
                return find_ci(rest, &end).map_or("", |i| &rest[i..]);
            }
            ("br", _) => out.newline(),
            (
                "p" | "div" | "table" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul"
                | "ol" | "section" | "header" | "footer" | "blockquote",
                _,
            ) => out.paragraph(),
            ("li", false) => out.item(),
            ("td" | "th", true) => out.push_text(" "),
            ("hr", _) => out.rule(),
            ("img", false) => {
                if let Some(alt) = attr(tag, "alt").filter(|a| !a.is_empty()) {
                    out.push_text(&alt);
                }
            }
            ("a", false) => {
                self.link = attr(tag, "href");
                self.link_text_start = out.buf.len();
            }
            ("a", true) => self.close_link(),
            _ => {}
        }
        rest
    }

    /// At `</a>`: the link's URL after its text, unless the text is the URL or it is an anchor.
    fn close_link(&mut self) {
        if let Some(href) = self.link.take() {
            let text = self.out.buf[self.link_text_start..].trim().to_string();
            if !href.is_empty() && text != href && !href.starts_with('#') {
                self.out.push_text(&format!(" ({href})"));
            }
        }
    }
}

/// A tag's element name, lowercased (`p` for `/P class=x`).
fn tag_name(tag: &str) -> String {
    tag.trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

#[derive(Default)]
struct Text {
    buf: String,
    /// A space is owed before the next word.
    space: bool,
}

impl Text {
    fn push_text(&mut self, s: &str) {
        for (i, word) in s.split_whitespace().enumerate() {
            let gap = i > 0 || s.starts_with(char::is_whitespace) || self.space;
            if gap && !self.buf.is_empty() && !self.buf.ends_with(['\n', ' ']) {
                self.buf.push(' ');
            }
            self.buf.push_str(word);
            self.space = false;
        }
        if s.ends_with(char::is_whitespace) && !s.trim().is_empty() {
            self.space = true;
        }
    }

    fn newline(&mut self) {
        while self.buf.ends_with(' ') {
            self.buf.pop();
        }
        self.buf.push('\n');
        self.space = false;
    }

    fn paragraph(&mut self) {
        while self.buf.ends_with(' ') {
            self.buf.pop();
        }
        if !self.buf.is_empty() && !self.buf.ends_with("\n\n") {
            self.buf.push_str(if self.buf.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            });
        }
        self.space = false;
    }

    /// A list item: a line of its own, after a dash.
    fn item(&mut self) {
        self.newline();
        self.buf.push_str("- ");
        self.space = false;
    }

    /// A horizontal rule: `---` as a paragraph of its own.
    fn rule(&mut self) {
        self.paragraph();
        self.buf.push_str("---");
        self.paragraph();
    }

    fn finish(self) -> String {
        let lines: Vec<&str> = self.buf.lines().map(str::trim_end).collect();
        let mut out = String::with_capacity(self.buf.len());
        let mut blank = 0;
        for line in lines {
            if line.trim().is_empty() {
                blank += 1;
                continue;
            }
            if !out.is_empty() {
                out.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            out.push_str(line.trim_start());
        }
        out.push('\n');
        out
    }
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.to_ascii_lowercase().find(needle)
}

/// The value of attribute `name` in a tag's inner text (`a href="x" class=y`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let after = lower[from..].trim_start();
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let value_start = tag.len() - after.len() + 1;
        let v = tag[value_start..].trim_start();
        let value = match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].split(q).next().unwrap_or(""),
            _ => v
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or(""),
        };
        return Some(decode_entities(value));
    }
    None
}

/// Decodes the HTML entities that templates and auto-escaping produce.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match entity_at(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character of the entity `rest` starts with (`&amp;`, `&#8212;`, `&#x2014;`) and its
/// length, or `None` when the `&` is text.
fn entity_at(rest: &str) -> Option<(char, usize)> {
    // By bytes: 12 bytes in may fall inside a character; `;` itself is ASCII.
    let semi = rest.as_bytes()[..rest.len().min(12)]
        .iter()
        .position(|b| *b == b';')?;
    let entity = &rest[1..semi];
    let ch = match entity {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => entity
            .strip_prefix("#x")
            .or_else(|| entity.strip_prefix("#X"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
            .and_then(char::from_u32),
    };
    ch.map(|c| (c, semi + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_links_and_lists() {
        let html = r#"<html><head><style>p{color:red}</style></head><body>
            <h1>Hello   Ana</h1>
            <p>Your order <b>#42</b> has shipped.<br>Track it <a href="https://t.example/42">here</a>.</p>
            <ul><li>Tripod</li><li>Lens &amp; cap</li></ul>
            <!-- hidden > comment --><p>Bye &#8212; team</p></body></html>"#;
        assert_eq!(
            html_to_text(html),
            "Hello Ana\n\nYour order #42 has shipped.\nTrack it here (https://t.example/42).\n\n- Tripod\n- Lens & cap\n\nBye \u{2014} team\n"
        );
    }

    #[test]
    fn link_whose_text_is_the_url_is_not_repeated() {
        let html = r#"<p><a href="https://x.example">https://x.example</a></p>"#;
        assert_eq!(html_to_text(html), "https://x.example\n");
    }

    #[test]
    fn escaped_markup_stays_text() {
        assert_eq!(html_to_text("<p>&lt;script&gt;</p>"), "<script>\n");
    }

    #[test]
    fn an_ampersand_before_wide_characters_is_text() {
        // Found by the fuzzer: 12 bytes on from the `&` fell inside `가`.
        assert_eq!(html_to_text("<p>& 빛 활4가지</p>"), "& 빛 활4가지\n");
    }
}
