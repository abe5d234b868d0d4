//! Keeping the access token out of messages and stored strings (docs/endpoint.md#token-scrubbing).

use reqwest::StatusCode;
use serde_json::Value;

use super::MAX_ERROR_BODY_CHARS;

const REDACTED: &str = "[redacted]";
/// A token prefix this long at the very end of a cut-off body counts as an echo of the token.
const MIN_PARTIAL_ECHO_CHARS: usize = 6;

/// An error body fit for a message (docs/endpoint.md#error-messages).
pub(super) fn error_body_text(raw: &[u8], access_token: &str, status: StatusCode) -> String {
    let body = scrub_message(&String::from_utf8_lossy(raw), access_token);
    if body.is_empty() {
        status.canonical_reason().unwrap_or("no body").to_owned()
    } else {
        body
    }
}

/// Text from outside fit for a stored message: redacted, trimmed, at most [`MAX_ERROR_BODY_CHARS`].
pub fn scrub_message(text: &str, access_token: &str) -> String {
    let text = redact_token(text, access_token);
    truncate_on_char_boundary(text.trim(), MAX_ERROR_BODY_CHARS).trim_end().to_owned()
}

/// `text` with every echo of `token` replaced by [`REDACTED`], escaped (`\/`, `\u002F`, `%2F`)
/// or cut off by the end of `text` too (docs/endpoint.md#token-scrubbing).
fn redact_token(text: &str, token: &str) -> String {
    if token.is_empty() {
        return text.to_owned();
    }
    let token: Vec<char> = token.chars().collect();
    let min_partial = MIN_PARTIAL_ECHO_CHARS.min(token.len());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match match_echo(rest, &token) {
            Some((consumed, matched))
                if matched == token.len() || (consumed == rest.len() && matched >= min_partial) =>
            {
                out.push_str(REDACTED);
                rest = &rest[consumed..];
            }
            _ => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// How far `text` matches a (possibly escaped) prefix of `token`: bytes consumed and token
/// characters matched; `None` when not even the first character matches.
fn match_echo(text: &str, token: &[char]) -> Option<(usize, usize)> {
    let ends = token.iter().scan(0, |end, &wanted| {
        *end += escaped_char_len(&text[*end..], wanted)?;
        Some(*end)
    });
    ends.enumerate().last().map(|(at, end)| (end, at + 1))
}

/// The length of `wanted` at the start of `text`, written literally or escaped.
fn escaped_char_len(text: &str, wanted: char) -> Option<usize> {
    if text.starts_with(wanted) {
        return Some(wanted.len_utf8());
    }
    // `from_str_radix` alone would take a sign too.
    let hex_char = |digits: Option<&str>| {
        digits
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .and_then(char::from_u32)
    };
    if wanted == '/' && text.starts_with("\\/") {
        return Some(2);
    }
    if text.starts_with("\\u") && hex_char(text.get(2..6)) == Some(wanted) {
        return Some(6);
    }
    if text.starts_with('%') && hex_char(text.get(1..3)) == Some(wanted) {
        return Some(3);
    }
    None
}

fn truncate_on_char_boundary(text: &str, max_bytes: usize) -> &str {
    &text[..text.floor_char_boundary(max_bytes)]
}

/// Redacts the token in every string of a parsed body (escapes are already decoded there).
pub fn redact_strings(value: &mut Value, token: &str) {
    match value {
        Value::String(text) if !token.is_empty() && text.contains(token) => {
            *text = text.replace(token, REDACTED);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, token)),
        Value::Object(fields) => fields.values_mut().for_each(|v| redact_strings(v, token)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "sk-ant-oat01-secret-token";

    #[test]
    fn echoes_are_redacted_escaped_and_cut_off_too() {
        let token = "sk-ant-oat01-ab/cd+ef_gh";
        let forms = [
            format!("echo {token} end"),
            format!("echo {} end", token.replace('/', "\\/")),
            format!("echo {} end", token.replace('/', "\\u002F").replace('a', "\\u0061")),
            format!("echo {} end", token.replace('/', "%2F").replace('+', "%2b")),
        ];
        for form in &forms {
            let text = error_body_text(form.as_bytes(), token, StatusCode::BAD_REQUEST);
            assert_eq!(text, "echo [redacted] end", "{form}");
        }
        // The read stopped inside the echo: all but the last character arrived.
        let mut cut = " ".repeat(3000);
        cut.push_str("bad: ");
        cut.push_str(&token[..token.len() - 1]);
        let text = error_body_text(cut.as_bytes(), token, StatusCode::BAD_REQUEST);
        assert_eq!(text, "bad: [redacted]");
        // Short common words that merely start like the token are left alone mid-body.
        let text = error_body_text(b"sk- is a prefix; sk-ant too", token, StatusCode::BAD_REQUEST);
        assert_eq!(text, "sk- is a prefix; sk-ant too");
        // An echo that starts past the first 1 KiB but within what is kept after trimming.
        let mut late = " ".repeat(3900);
        late.push_str(&"y".repeat(100));
        late.push_str(token);
        let text = error_body_text(late.as_bytes(), token, StatusCode::BAD_REQUEST);
        assert!(text.ends_with("[redacted]") && !text.contains("oat01"), "{text}");
    }

    #[test]
    fn truncation_lands_on_a_char_boundary() {
        let euros = "€".repeat(1000);
        let cut = truncate_on_char_boundary(&euros, MAX_ERROR_BODY_CHARS);
        assert_eq!(cut.len(), 1023);
        assert_eq!(truncate_on_char_boundary("abc", 2), "ab");
        assert_eq!(truncate_on_char_boundary("abc", 10), "abc");
        assert_eq!(truncate_on_char_boundary("é", 1), "");
    }

    #[test]
    fn error_bodies_are_trimmed_after_the_cut() {
        let mut raw = "a".repeat(1020);
        raw.push_str("    tail");
        let text = error_body_text(raw.as_bytes(), TOKEN, StatusCode::BAD_REQUEST);
        assert_eq!(text, "a".repeat(1020));
        let invalid_utf8 = error_body_text(b"\xff\xfeoops", TOKEN, StatusCode::BAD_REQUEST);
        assert_eq!(invalid_utf8, "\u{fffd}\u{fffd}oops");
        assert_eq!(error_body_text(b"", "", StatusCode::NOT_FOUND), "Not Found");
    }
}
