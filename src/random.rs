//! Random bytes from the operating system, for ids, tokens and session keys.

use std::io::Read;

pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// `n` random bytes as lowercase hex. Panics only if the OS has no randomness source, which
/// would make every token guessable: better to stop.
pub fn hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if let Err(e) = fill(&mut bytes) {
        panic!("no source of randomness (/dev/urandom): {e}");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
