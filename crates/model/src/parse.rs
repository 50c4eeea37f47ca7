//! Strict JSON parsing: the document must match the type exactly (the types refuse unknown
//! fields), and an error names the field at fault and stays on one line.

use thiserror::Error;

/// A document that is not valid JSON or does not match the type.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}{}", at(path))]
pub struct ParseError {
    /// Where in the document (`machine-config.vcpu_count`), empty at the top level.
    pub path: String,
    /// What is wrong there (control characters escaped).
    pub message: String,
}

fn at(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!(" at `{path}`")
    }
}

/// Escapes control characters (a field name or value may contain a newline) so an error
/// stays one line.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses JSON text into `T` strictly, naming the field at fault.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, ParseError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| ParseError {
        path: printable(&e.path().to_string()),
        message: printable(&e.into_inner().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn errors_name_the_field_and_stay_on_one_line() {
        let e = from_json::<T>(br#"{"a": "x"}"#).unwrap_err();
        assert_eq!(e.path, "a");
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = from_json::<T>(br#"{"a": 1, "b\nc": 2}"#).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
