//! The clock that every time in the store and the approval queue is read from.
//!
//! Times are wall-clock unix milliseconds (what the database stores). A real run uses
//! [`Clock::system`]. A test uses [`Clock::tokio`]: a fixed wall time plus the time elapsed on
//! tokio's clock since the clock was made, so under `tokio::time::pause()` the wall clock stands
//! still and `tokio::time::advance` (or the runtime's auto-advance) moves it, together with the
//! sweeper's interval and every wait. A store on a tokio clock also keeps tokio from counting
//! the time it works as idle (paused time jumps to the next timer only when every task waits on
//! one), so a test sees the same times on every machine.

use std::time::Duration;

/// A cloneable source of the current time (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Debug, Default)]
enum Source {
    /// The operating system's wall clock.
    #[default]
    System,
    /// `base_ms` at `start`, moving with tokio's clock (which may be paused).
    Tokio {
        base_ms: i64,
        start: tokio::time::Instant,
        /// The runtime whose clock is followed, so threads outside it (the store worker) read
        /// the same, possibly paused, time.
        runtime: tokio::runtime::Handle,
    },
}

impl Clock {
    /// The operating system's wall clock.
    pub fn system() -> Clock {
        Clock { source: Source::System }
    }

    /// A clock at `base_ms` now, moving with the current tokio runtime's clock.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn tokio(base_ms: i64) -> Clock {
        Clock {
            source: Source::Tokio {
                base_ms,
                start: tokio::time::Instant::now(),
                runtime: tokio::runtime::Handle::current(),
            },
        }
    }

    /// Whether this clock follows tokio's clock ([`Clock::tokio`]). A store on such a clock
    /// keeps paused time still while it works (see [`crate::store::Store::call`]).
    pub fn follows_tokio(&self) -> bool {
        matches!(self.source, Source::Tokio { .. })
    }

    /// The current time in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.source {
            Source::System => system_now_ms(),
            Source::Tokio { base_ms, start, runtime } => {
                let now = {
                    let _entered = runtime.enter();
                    tokio::time::Instant::now()
                };
                base_ms.saturating_add(millis(now.saturating_duration_since(*start)))
            }
        }
    }
}

/// A duration in milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The operating system's wall clock in unix milliseconds.
fn system_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 3_500);
        // Read from a thread outside the runtime (as the store worker does): the same time.
        let other = clock.clone();
        let read = std::thread::spawn(move || other.now_ms()).join().unwrap();
        assert_eq!(read, 3_500);
        assert!(Clock::system().now_ms() > 1_600_000_000_000);
    }
}
