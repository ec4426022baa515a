//! Secrets: tokens and keys held as [`SecretString`] (wiped from memory when dropped, never shown
//! by `Debug`), and the constant-time comparison every credential check uses.

pub use secrecy::{ExposeSecret, SecretSlice, SecretString};
use subtle::ConstantTimeEq;

/// Whether `a` and `b` are equal, in a time that depends on their lengths only, never on where
/// they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A secret from its text.
pub fn secret(text: impl Into<String>) -> SecretString {
    SecretString::from(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = secret("sk-very-secret");
        assert!(!format!("{s:?}").contains("very"));
        assert_eq!(s.expose_secret(), "sk-very-secret");
    }
}
