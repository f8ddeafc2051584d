//! Identifier newtypes. Device ids, registration ids, group ids and policy names share IoT Hub's
//! rule: 1–128 characters of `A-Z a-z 0-9 - . % _ * ? ! ( ) , : = @ $ '`, case-sensitive.

use std::fmt;

/// Why an id was refused; the text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// what kind of id
        kind: &'static str,
    },
    /// Longer than 128 characters.
    #[error("{kind} must be at most 128 characters (got {len})")]
    TooLong {
        /// what kind of id
        kind: &'static str,
        /// its length
        len: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} contains {ch:?}; allowed: A-Z a-z 0-9 - . % _ * ? ! ( ) , : = @ $ '")]
    BadCharacter {
        /// what kind of id
        kind: &'static str,
        /// the offending character
        ch: char,
    },
    /// Percent-encoding in the path is not valid UTF-8.
    #[error("{kind} is not valid percent-encoded UTF-8")]
    BadEncoding {
        /// what kind of id
        kind: &'static str,
    },
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(c)
}

/// Validates an id of `kind` (already percent-decoded).
pub fn validate(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = id.chars().count();
    if len > 128 {
        return Err(IdError::TooLong { kind, len });
    }
    if let Some(ch) = id.chars().find(|c| !allowed(*c)) {
        return Err(IdError::BadCharacter { kind, ch });
    }
    Ok(())
}

/// Decodes the percent-escapes the router left in a path segment (actix keeps `%`, `/` and `+`
/// encoded), so that every escape is decoded exactly once, then validates.
pub fn from_path(kind: &'static str, raw: &str) -> Result<String, IdError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| IdError::BadEncoding { kind })?
        .into_owned();
    validate(kind, &decoded)?;
    Ok(decoded)
}

/// A validated device id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates `id`.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        validate("device id", id)?;
        Ok(Self(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iot_hub_character_set_and_length() {
        for ok in ["d1", "A-Z.az_09", "%*?!(),:=@$'", &"x".repeat(128)] {
            validate("device id", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "a/b", "a b", "a;b", "é", "a\u{7}", &"x".repeat(129)] {
            assert!(validate("device id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_are_decoded_exactly_once() {
        assert_eq!(from_path("device id", "a%25b").unwrap(), "a%b");
        assert_eq!(from_path("device id", "a%2541").unwrap(), "a%41");
        assert!(from_path("device id", "a%2Fb").is_err());
        assert!(from_path("device id", "%FF").is_err());
    }
}
