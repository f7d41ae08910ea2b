//! What the agent's HTTP calls to the server share: its `User-Agent`, how a
//! refusal is read, and how much of an unexpected answer is quoted.
use serde::Deserialize;

/// How much of an unexpected body or output to quote in an error: enough to
/// recognise a proxy's error page, not enough to flood a terminal.
const SNIPPET_CHARS: usize = 200;

/// `restic-manager-agent/<version>`, the agent's `User-Agent`.
pub fn user_agent() -> String {
    format!("restic-manager-agent/{}", crate::version::VERSION)
}

/// The start of `bytes` as text, for an error message.
pub fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".into();
    }
    let mut out: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    out
}

/// A non-success answer from the server.
pub enum Refusal {
    /// The server's `{"error":code,"message":text}`.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// Anything else (a proxy's page, say): its start.
    Unexpected { status: u16, snippet: String },
}

/// Reads a refusal's body; an empty message becomes the status's reason.
pub fn refusal(status: reqwest::StatusCode, body: &[u8]) -> Refusal {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => Refusal::Refused {
            status: status.as_u16(),
            message: if err.message.is_empty() {
                status.canonical_reason().unwrap_or("no message").into()
            } else {
                err.message
            },
            code: err.error,
        },
        Err(_) => Refusal::Unexpected {
            status: status.as_u16(),
            snippet: snippet(body),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_is_the_trimmed_start() {
        assert_eq!(snippet(b"  \n"), "(empty)");
        assert_eq!(snippet(b" bad gateway \n"), "bad gateway");
        let long = "x".repeat(500);
        let s = snippet(long.as_bytes());
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
    }
}
