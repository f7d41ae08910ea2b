//! Reading urlencoded forms whose fields may repeat (env rows, ticked
//! paths, host checkboxes): the body as ordered pairs, and lookups on them.
use crate::error::AppError;

pub type Pairs = Vec<(String, String)>;

/// The form body as (name, value) pairs, in order.
pub fn pairs(body: &[u8]) -> Result<Pairs, AppError> {
    serde_urlencoded::from_bytes(body).map_err(|e| {
        AppError::BadRequest("invalid_form", format!("the form could not be read: {e}"))
    })
}

/// The first value of `name`, as sent.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The first value of `name`, trimmed, when it is not empty.
pub fn nonempty(pairs: &[(String, String)], name: &str) -> Option<String> {
    field(pairs, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_keep_their_order_and_blanks_are_absent() {
        let p = pairs(b"k=a&k=b&blank=+&x=%2Fsrv%20dir").unwrap();
        assert_eq!(field(&p, "k"), Some("a"));
        assert_eq!(p.iter().filter(|(n, _)| n == "k").count(), 2);
        assert_eq!(nonempty(&p, "blank"), None);
        assert_eq!(nonempty(&p, "x").as_deref(), Some("/srv dir"));
    }
}
