//! Random bytes from the operating system, for ids, tokens and session keys.
//!
//! Without a source of randomness every token would be guessable, so nothing falls back to a
//! weaker one: the error propagates and the work that needed the bytes is refused (fail closed).

/// The operating system gave no random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no source of randomness: {0}")]
pub struct RandomError(getrandom::Error);

/// Fills `buf` with random bytes from the operating system.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    #[cfg(test)]
    if failing::is_on() {
        return Err(RandomError(getrandom::Error::UNSUPPORTED));
    }
    getrandom::fill(buf).map_err(RandomError)
}

/// `n` random bytes as lowercase hex.
pub fn hex(n: usize) -> Result<String, RandomError> {
    let mut bytes = vec![0u8; n];
    fill(&mut bytes)?;
    Ok(::hex::encode(bytes))
}

/// A seam for tests: the source fails on this thread while a [`failing::Guard`] lives (a
/// current-thread runtime runs its spawned tasks on the test's thread).
#[cfg(test)]
pub(crate) mod failing {
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
    }

    pub(crate) fn is_on() -> bool {
        ON.with(Cell::get)
    }

    /// The random source fails on this thread until the guard is dropped.
    pub(crate) struct Guard(());

    pub(crate) fn on_this_thread() -> Guard {
        ON.with(|on| on.set(true));
        Guard(())
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            ON.with(|on| on.set(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_twice_as_long() {
        let h = hex(16).unwrap();
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{h}");
        assert_ne!(h, hex(16).unwrap());
    }

    #[test]
    fn a_failing_source_is_an_error_not_a_panic() {
        let _failing = failing::on_this_thread();
        assert!(hex(8).is_err());
        let mut buf = [0u8; 4];
        assert!(fill(&mut buf).is_err());
    }
}
