//! Text from outside (agents, login forms) made fit to store, show and log.
//! Postgres refuses NUL in `text` columns (the whole write fails), and a
//! control character in a log line could start a forged one.

/// Longest error or reason text kept from an agent; the rest is cut off.
pub const AGENT_TEXT_MAX_BYTES: usize = 2048;

/// Free text from an agent (an error, a reason; may span lines): NUL
/// replaced (see [`without_nul`]), cut to `max` bytes on a character boundary
/// with "…" marking the cut.
pub fn agent_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return without_nul(s.to_string());
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    without_nul(format!("{}…", &s[..end]))
}

/// NUL becomes U+FFFD, as undecodable bytes do; everything else is kept
/// (log output keeps its tabs, escapes and line breaks).
pub fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s
    }
}

/// A short identifier someone typed (a username at login, a hostname at
/// enrollment) for logs and the audit: at most `max_chars` characters, each
/// control character shown as U+FFFD.
pub fn one_line(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_replaces_nul_and_cuts_on_a_character_boundary() {
        assert_eq!(agent_text("a\0b", 10), "a\u{fffd}b");
        assert_eq!(agent_text("short", 5), "short");
        assert_eq!(agent_text("abcdef", 3), "abc…");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(agent_text("aé", 2), "a…");
        assert_eq!(agent_text("\0\0", 1), "\u{fffd}…");
        assert_eq!(agent_text("two\nlines\t", 100), "two\nlines\t");
        assert_eq!(without_nul("no nul".into()), "no nul");
    }

    #[test]
    fn one_line_cuts_by_characters_and_hides_control_characters() {
        assert_eq!(one_line("web-1", 64), "web-1");
        assert_eq!(
            one_line("a\nINFO forged\r\0", 64),
            "a\u{fffd}INFO forged\u{fffd}\u{fffd}"
        );
        assert_eq!(one_line("ééé", 2), "éé");
    }
}
