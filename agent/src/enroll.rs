//! Enrollment: trades a one-time token for this host's id and secret over
//! `POST /agent/enroll`. Neither the token nor the secret is ever logged or
//! put into an error message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, AgentConfig, ServerUrlError};
use crate::http;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize)]
struct EnrollRequest<'a> {
    token: &'a str,
    hostname: &'a str,
}

#[derive(Deserialize)]
struct EnrollResponse {
    host_id: i64,
    secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    ServerUrl(#[from] ServerUrlError),
    #[error("the enrollment token is empty")]
    EmptyToken,
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("enrollment request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server said no in its JSON error shape; `message` is its words.
    #[error("server refused enrollment ({code}, HTTP {status}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A non-success answer that is not the server's error shape — usually a
    /// proxy or the wrong URL.
    #[error("server answered HTTP {status}: {snippet}")]
    UnexpectedStatus { status: u16, snippet: String },
    /// A success answer without a usable host id and secret. The body is
    /// deliberately not quoted: it may hold the secret.
    #[error("server's enrollment answer is not usable: {0}")]
    BadAnswer(String),
}

/// Enrolls this host and returns the config to save. `server_url` is the
/// base URL (`https://rm.example.com`, a path prefix is fine).
pub async fn enroll(
    server_url: &str,
    token: &str,
    hostname: &str,
) -> Result<AgentConfig, EnrollError> {
    crate::install_crypto_provider();
    let server_url = config::normalize_server_url(server_url)?;
    let url = config::endpoint_url(&server_url, crate::wire::ENROLL_PATH)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(EnrollError::EmptyToken);
    }

    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(http::user_agent())
        .build()
        .map_err(EnrollError::Client)?;
    let request_err = |source| EnrollError::Request {
        url: url.to_string(),
        source,
    };
    tracing::info!(url = %url, hostname, "enrolling with the server");
    let response = client
        .post(url.clone())
        .json(&EnrollRequest { token, hostname })
        .send()
        .await
        .map_err(request_err)?;
    let status = response.status();
    let body = response.bytes().await.map_err(request_err)?;

    if !status.is_success() {
        return Err(match http::refusal(status, &body) {
            http::Refusal::Refused {
                status,
                code,
                message,
            } => EnrollError::Refused {
                status,
                code,
                message,
            },
            http::Refusal::Unexpected { status, snippet } => {
                EnrollError::UnexpectedStatus { status, snippet }
            }
        });
    }

    let answer: EnrollResponse = serde_json::from_slice(&body).map_err(|e| {
        // serde_json's message names the position and the expected type,
        // never the offending value, so it is safe to show.
        EnrollError::BadAnswer(format!("expected {{\"host_id\", \"secret\"}}: {e}"))
    })?;
    let config = AgentConfig {
        server_url,
        host_id: answer.host_id,
        secret: answer.secret,
        ..AgentConfig::default()
    };
    config.validate().map_err(EnrollError::BadAnswer)?;
    tracing::info!(host_id = config.host_id, "enrolled");
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// A one-shot HTTP/1.1 responder: answers the first request with
    /// `status` and `body`, and hands the raw request (head + body) back.
    async fn respond_once(status: &str, body: &str) -> (String, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read until the head is complete and the declared body arrived.
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            sock.write_all(response.as_bytes()).await.unwrap();
            let _ = sock.shutdown().await;
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        (url, rx)
    }

    #[tokio::test]
    async fn success_returns_a_config_and_sends_token_and_hostname() {
        let (url, request) = respond_once("200 OK", r#"{"host_id": 42, "secret": "abc123"}"#).await;
        let config = enroll(&format!("{url}/"), "tok-1", "web-1").await.unwrap();
        assert_eq!(config.host_id, 42);
        assert_eq!(config.secret, "abc123");
        assert_eq!(config.server_url, url, "trailing slash is dropped");

        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /agent/enroll HTTP/1.1"),
            "{request}"
        );
        let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"token": "tok-1", "hostname": "web-1"})
        );
    }

    #[tokio::test]
    async fn refusal_surfaces_the_servers_message() {
        let (url, _) = respond_once(
            "401 Unauthorized",
            r#"{"error":"invalid_token","message":"enrollment token is unknown or expired"}"#,
        )
        .await;
        let err = enroll(&url, "tok-1", "web-1").await.unwrap_err();
        match &err {
            EnrollError::Refused {
                status,
                code,
                message,
            } => {
                assert_eq!(*status, 401);
                assert_eq!(code, "invalid_token");
                assert_eq!(message, "enrollment token is unknown or expired");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let shown = err.to_string();
        assert!(
            shown.contains("enrollment token is unknown or expired"),
            "{shown}"
        );
        assert!(
            !shown.contains("tok-1"),
            "token must never be shown: {shown}"
        );
    }

    #[tokio::test]
    async fn non_json_error_is_quoted_briefly() {
        let (url, _) = respond_once("502 Bad Gateway", "<html>upstream down</html>").await;
        let err = enroll(&url, "tok-1", "web-1").await.unwrap_err();
        assert!(
            matches!(&err, EnrollError::UnexpectedStatus { status: 502, snippet } if snippet.contains("upstream down")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn unusable_success_answer_does_not_echo_the_body() {
        let (url, _) = respond_once("200 OK", r#"{"host_id": 0, "secret": "leaky"}"#).await;
        let err = enroll(&url, "tok-1", "web-1").await.unwrap_err();
        assert!(matches!(err, EnrollError::BadAnswer(_)), "{err:?}");
        assert!(!err.to_string().contains("leaky"));
    }

    #[tokio::test]
    async fn bad_urls_and_empty_tokens_fail_before_any_request() {
        let err = enroll("ftp://rm.example.com", "t", "h").await.unwrap_err();
        assert!(matches!(
            err,
            EnrollError::ServerUrl(ServerUrlError::Scheme { .. })
        ));
        let err = enroll("http://127.0.0.1:9", "  ", "h").await.unwrap_err();
        assert!(matches!(err, EnrollError::EmptyToken));
    }
}
