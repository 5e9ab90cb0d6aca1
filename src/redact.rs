//! Text from outside (a database's error message, a relay's reply, a value quoted in a
//! dead-letter reason) made safe to log: email addresses are replaced by a hash prefix,
//! control and formatting characters escaped, the length bounded.

use sha2::Digest;

/// Longest text kept; more is cut with `…`.
const MAX_CHARS: usize = 1000;

/// `text` with every email address written `address:` and the first 8 hex digits of the
/// SHA-256 of its lowercase form (one address reads the same in every line, so lines can be
/// matched up, but it is not in clear), control characters escaped and at most 1,000
/// characters. An address is a run of address characters around an `@`
/// (`postmaster@localhost` too); the check is deliberately loose: a false positive only hides a word.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_CHARS));
    let mut words = text
        .split_inclusive(|c: char| !is_address_char(c))
        .peekable();
    let mut shown = 0usize;
    while let Some(piece) = words.next() {
        let (word, sep) = match piece.char_indices().last() {
            Some((i, c)) if !is_address_char(c) => (&piece[..i], &piece[i..]),
            _ => (piece, ""),
        };
        let hidden_address;
        let word = if looks_like_address(word) {
            hidden_address = address_hash(word);
            hidden_address.as_str()
        } else {
            word
        };
        for c in word.chars().chain(sep.chars()) {
            if shown == MAX_CHARS {
                out.push('…');
                return out;
            }
            shown += 1;
            if hidden(c) {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        if words.peek().is_none() {
            break;
        }
    }
    out
}

/// Characters that change how the rest of a line reads without showing: control characters,
/// and the bidirectional and zero-width formatting ones (a U+202E turns the text after it
/// around).
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// How an address is written in a log: `address:` and a hash prefix of its lowercase form.
pub fn address_hash(address: &str) -> String {
    format!("address:{}", hash_prefix(&address.to_lowercase(), 4))
}

/// The first `bytes` bytes of the SHA-256 of `text`, in hex: how ids and addresses are named
/// in logs and traces without being given away.
pub fn hash_prefix(text: &str, bytes: usize) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_address_char(c: char) -> bool {
    c.is_alphanumeric() || "@.!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn looks_like_address(word: &str) -> bool {
    let Some((local, domain)) = word.rsplit_once('@') else {
        return false;
    };
    !local.is_empty() && !domain.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_hidden_and_the_rest_kept() {
        assert_eq!(
            text("550 5.1.1 <bounce.carol@example.org>: Recipient address rejected"),
            format!(
                "550 5.1.1 <{}>: Recipient address rejected",
                address_hash("bounce.carol@example.org")
            )
        );
        assert_eq!(
            text(r#"Key (id)=(ann@example.com) already exists."#),
            format!(
                "Key (id)=({}) already exists.",
                address_hash("ann@example.com")
            )
        );
        assert_eq!(
            text("user@localhost, a@b.c and @ alone"),
            format!(
                "{}, {} and @ alone",
                address_hash("user@localhost"),
                address_hash("A@b.C")
            )
        );
        assert_eq!(text("line\nbreak\0"), "line\\nbreak\\u{0}");
        assert_eq!(text("evil\u{202e}txt"), "evil\\u{202e}txt");
        let long = "x".repeat(5000);
        assert_eq!(text(&long).chars().count(), MAX_CHARS + 1);
    }
}
