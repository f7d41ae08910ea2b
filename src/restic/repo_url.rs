//! Repository URLs: which are local (one repository per host that uses it)
//! and which are shared, and how a URL is shown (any password masked).
//! Pure functions; the URL itself is stored sealed (`secrets.rs`).

/// restic's remote backends, by the prefix before the first colon.
const SHARED_BACKENDS: &[&str] = &["sftp", "rest", "s3", "b2", "azure", "gs", "rclone", "swift"];

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A plain path, `local:…`, or a Windows drive path (`C:\…`) is local;
/// any of restic's remote backends is shared. Decided by restic's list of
/// backends, not by the presence of a colon.
pub fn is_local(url: &str) -> bool {
    match url.split_once(':') {
        Some((prefix, _)) => !SHARED_BACKENDS.contains(&prefix),
        None => true,
    }
}

/// Checks a repository URL; the message names what is wrong.
pub fn validate(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("url must not be empty".into());
    }
    if url != url.trim() {
        return Err("url must not start or end with spaces".into());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!("url must be at most {MAX_URL_LEN} characters"));
    }
    if url.chars().any(char::is_control) {
        return Err("url must not contain control characters".into());
    }
    if url.starts_with('-') {
        return Err("url must not start with '-'".into());
    }
    if let Some((prefix, rest)) = url.split_once(':') {
        if SHARED_BACKENDS.contains(&prefix) && rest.is_empty() {
            return Err(format!("url {prefix}: needs a location after the colon"));
        }
        if prefix == "local" && rest.is_empty() {
            return Err("url local: needs a path after the colon".into());
        }
    }
    Ok(())
}

/// The URL with the password of any `user:password@` replaced by `***`
/// (`rest:https://u:***@host/`). Safe to show and log.
pub fn masked(url: &str) -> String {
    // Userinfo sits between "//" and the next "@" before the first "/"
    // after the authority starts.
    let Some(start) = url.find("//").map(|i| i + 2) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => return url.to_string(),
    };
    format!("{}{}{}", &url[..start], shown, &url[start + at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_shared_are_told_apart_by_backend() {
        for local in [
            "/srv/restic",
            "local:/srv/restic",
            "C:\\backups\\repo",
            "D:/repo",
            "relative/dir",
        ] {
            assert!(is_local(local), "{local}");
        }
        for shared in [
            "sftp:user@host:/srv/repo",
            "rest:http://127.0.0.1:8000/repo",
            "s3:s3.amazonaws.com/bucket",
            "b2:bucket:path",
            "azure:container:/",
            "gs:bucket:/",
            "rclone:remote:path",
            "swift:container:/",
        ] {
            assert!(!is_local(shared), "{shared}");
        }
    }

    #[test]
    fn passwords_in_userinfo_are_masked() {
        assert_eq!(
            masked("rest:https://u:p%40ss@host:8000/repo"),
            "rest:https://u:***@host:8000/repo"
        );
        assert_eq!(
            masked("rest:http://user:secret@127.0.0.1:1/r?x=@"),
            "rest:http://user:***@127.0.0.1:1/r?x=@"
        );
        assert_eq!(masked("rest:http://host/"), "rest:http://host/");
        assert_eq!(
            masked("rest:http://onlyuser@host/"),
            "rest:http://onlyuser@host/"
        );
        assert_eq!(masked("/srv/restic"), "/srv/restic");
        assert_eq!(masked("s3:s3.amazonaws.com/b"), "s3:s3.amazonaws.com/b");
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        assert!(validate("").is_err());
        assert!(validate(" /x").is_err());
        assert!(validate("/x\n").is_err());
        assert!(validate("-r/x").is_err());
        assert!(validate("s3:").is_err());
        assert!(validate(&"a".repeat(MAX_URL_LEN + 1)).is_err());
        assert!(validate("/srv/restic").is_ok());
        assert!(validate("rest:http://u:p@127.0.0.1:1/r").is_ok());
    }
}
