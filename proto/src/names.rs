//! The one rule for node names that the server enforces and every client must respect.
//!
//! A name is one path component: not empty, not `.` or `..`, without `/` or NUL, at most 255 bytes of
//! UTF-8. Platform rules that are stricter (Windows reserved names, case folding) belong to the client's
//! planner, which keeps such nodes remote-only instead of failing.

use std::fmt;

/// The longest name in bytes, as on Linux (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name is not a valid node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    Dot,
    DotDot,
    ContainsSlash,
    ContainsNul,
    TooLong { bytes: usize },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("the name is empty"),
            NameError::Dot => f.write_str("the name is \".\""),
            NameError::DotDot => f.write_str("the name is \"..\""),
            NameError::ContainsSlash => f.write_str("the name contains '/'"),
            NameError::ContainsNul => f.write_str("the name contains a NUL byte"),
            NameError::TooLong { bytes } => {
                write!(
                    f,
                    "the name is {bytes} bytes long, over the limit of {MAX_NAME_BYTES}"
                )
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Checks that `name` is a valid node name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    match name {
        "" => return Err(NameError::Empty),
        "." => return Err(NameError::Dot),
        ".." => return Err(NameError::DotDot),
        _ => {}
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { bytes: name.len() });
    }
    if name.contains('/') {
        return Err(NameError::ContainsSlash);
    }
    if name.contains('\0') {
        return Err(NameError::ContainsNul);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_each_invalid_form() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("."), Err(NameError::Dot));
        assert_eq!(validate_name(".."), Err(NameError::DotDot));
        assert_eq!(validate_name("a/b"), Err(NameError::ContainsSlash));
        assert_eq!(validate_name("a\0b"), Err(NameError::ContainsNul));
        assert_eq!(
            validate_name(&"x".repeat(256)),
            Err(NameError::TooLong { bytes: 256 })
        );
    }

    #[test]
    fn accepts_ordinary_and_edge_names() {
        for name in [
            "a",
            "...",
            ".hidden",
            "name with spaces",
            "ünïcödé",
            "CON",
            "a\\b",
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(validate_name(&"x".repeat(255)), Ok(()));
        // 255 bytes made of 2-byte characters is still fine; one more is not.
        assert_eq!(validate_name(&"é".repeat(127)), Ok(()));
        assert!(validate_name(&"é".repeat(128)).is_err());
    }
}
