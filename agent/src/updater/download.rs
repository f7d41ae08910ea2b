//! Downloading the staged binary to `<bin>.new`, checking its size and
//! SHA-256 as it streams, and reading a refusal.
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{SHA256_HEADER, UpdateError, VERSION_HEADER, io_error, remove_quietly};
use crate::wire::CommandUpdate;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two chunks of the download.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of a refusal's body read.
const ERROR_BODY_MAX: usize = 64 * 1024;

pub(super) async fn download(
    url: &url::Url,
    secret: &str,
    staged: &Path,
    command: &CommandUpdate,
) -> Result<(), UpdateError> {
    let failed = |reason: String| UpdateError::Download {
        url: url.to_string(),
        reason,
    };
    // reqwest is built without a default TLS provider and panics without one.
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(crate::http::user_agent())
        .build()
        .map_err(|e| failed(crate::client::error_chain(&e)))?;
    let mut response = client
        .get(url.clone())
        .bearer_auth(secret)
        .send()
        .await
        .map_err(|e| failed(crate::client::error_chain(&e)))?;

    let status = response.status();
    if !status.is_success() {
        // Only its start is shown: read no more than 64 KiB of it (a proxy
        // may answer with a large page); a failure only costs detail.
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_MAX {
            match response.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_MAX);
        return Err(refusal(status, &body));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_string)
    };
    if let Some(offered) = header(SHA256_HEADER)
        && !offered.eq_ignore_ascii_case(&command.sha256)
    {
        return Err(UpdateError::Offered {
            what: "a binary with sha256",
            offered: offered.to_ascii_lowercase(),
            expected: command.sha256.to_ascii_lowercase(),
        });
    }
    if let Some(offered) = header(VERSION_HEADER)
        && offered != command.target_version
    {
        return Err(UpdateError::Offered {
            what: "version",
            offered,
            expected: command.target_version.clone(),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > command.size)
    {
        return Err(UpdateError::TooLarge {
            expected: command.size,
        });
    }

    // A leftover from an interrupted update is stale: start afresh, and
    // create the file private until it is verified.
    remove_quietly(staged);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(staged)
        .await
        .map_err(io_error("create", staged))?;

    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(UpdateError::Truncated {
                    got,
                    expected: command.size,
                    detail: format!(": {}", crate::client::error_chain(&e)),
                });
            }
        };
        got += chunk.len() as u64;
        if got > command.size {
            return Err(UpdateError::TooLarge {
                expected: command.size,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_error("write", staged))?;
    }
    if got < command.size {
        return Err(UpdateError::Truncated {
            got,
            expected: command.size,
            detail: String::new(),
        });
    }
    let digest = hex::encode(hasher.finalize());
    if !digest.eq_ignore_ascii_case(&command.sha256) {
        return Err(UpdateError::Checksum {
            expected: command.sha256.to_ascii_lowercase(),
            got: digest,
        });
    }
    file.sync_all().await.map_err(io_error("fsync", staged))?;
    Ok(())
}

/// The server's `{"error","message"}` when it sent one, else a snippet.
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> UpdateError {
    match crate::http::refusal(status, body) {
        crate::http::Refusal::Refused {
            status,
            code,
            message,
        } => UpdateError::Refused {
            status,
            code,
            message,
        },
        crate::http::Refusal::Unexpected { status, snippet } => {
            UpdateError::UnexpectedStatus { status, snippet }
        }
    }
}
