//! Newline-delimited JSON framing for stdio: a capped line reader and a batching writer.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::MAX_MESSAGE_BYTES;

/// One framed input unit.
#[derive(Debug)]
pub enum Line {
    /// A complete line without its terminator (may be empty or whitespace).
    Data(BytesMut),
    /// A line longer than the cap; its bytes were discarded up to the next newline. What it
    /// began and ended with (up to [`EDGE_BYTES`] each) is kept, so that the reader may find
    /// out which request it answered.
    TooLong { head: BytesMut, tail: BytesMut },
}

/// How much of each end of an over-long line [`Line::TooLong`] keeps.
pub const EDGE_BYTES: usize = 1024;

/// Reads newline-terminated lines, never buffering more than the cap for one line.
///
/// Written by hand rather than with tokio-util's `LinesCodec` or `AnyDelimiterCodec`: past their
/// `max_length` those discard the line's bytes and report only that it was too long, while the
/// proxy answers an over-long request under its own id, which it reads from the line's first and
/// last bytes ([`Line::TooLong`]). `AnyDelimiterCodec` would also keep a CR before the LF, and
/// `LinesCodec` would refuse a line that is not UTF-8 instead of passing it to the JSON parser.
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// Discarding the rest of an over-long line.
    skipping: bool,
    /// The start of the over-long line being discarded, and its latest bytes.
    head: BytesMut,
    tail: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max(inner, MAX_MESSAGE_BYTES)
    }

    pub fn with_max(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            scanned: 0,
            skipping: false,
            head: BytesMut::new(),
            tail: BytesMut::new(),
            max,
        }
    }

    /// The next line, or `None` at end of input. A final line without a newline is returned.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if let Some(pos) = memchr(&self.buf[self.scanned..]).map(|p| p + self.scanned) {
                let mut line = self.buf.split_to(pos + 1);
                self.scanned = 0;
                line.truncate(pos);
                if line.last() == Some(&b'\r') {
                    line.truncate(pos - 1);
                }
                if self.skipping {
                    // The end of the over-long line: reported now, with both of its ends.
                    self.skipping = false;
                    keep_tail(&mut self.tail, &line);
                    let (head, tail) = (std::mem::take(&mut self.head), std::mem::take(&mut self.tail));
                    return Ok(Some(Line::TooLong { head, tail }));
                }
                if line.len() > self.max {
                    let head = BytesMut::from(&line[..EDGE_BYTES.min(line.len())]);
                    let tail = BytesMut::from(&line[line.len().saturating_sub(EDGE_BYTES)..]);
                    return Ok(Some(Line::TooLong { head, tail }));
                }
                return Ok(Some(Line::Data(line)));
            }
            self.scanned = self.buf.len();
            // A CR may be the first half of the line's CRLF, whose LF has not arrived yet: it
            // does not count toward the limit until a byte other than LF follows it.
            let limit = if self.buf.last() == Some(&b'\r') { self.max + 1 } else { self.max };
            if self.buf.len() > limit || (self.skipping && !self.buf.is_empty()) {
                // Drop what we have of the over-long line (keeping its ends); it is reported
                // once, when its newline arrives.
                if !self.skipping {
                    self.skipping = true;
                    self.head = BytesMut::from(&self.buf[..EDGE_BYTES.min(self.buf.len())]);
                    self.tail.clear();
                }
                keep_tail(&mut self.tail, &self.buf);
                self.buf.clear();
                self.scanned = 0;
            }
            if self.buf.capacity() - self.buf.len() < 8 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.skipping {
                    // The input ended inside an over-long line: it is reported all the same.
                    self.skipping = false;
                    let (head, tail) = (std::mem::take(&mut self.head), std::mem::take(&mut self.tail));
                    return Ok(Some(Line::TooLong { head, tail }));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = self.buf.split();
                self.scanned = 0;
                return Ok(Some(Line::Data(line)));
            }
        }
    }
}

/// Appends `more` to `tail`, keeping only the last [`EDGE_BYTES`].
fn keep_tail(tail: &mut BytesMut, more: &[u8]) {
    if more.len() >= EDGE_BYTES {
        tail.clear();
        tail.extend_from_slice(&more[more.len() - EDGE_BYTES..]);
        return;
    }
    tail.extend_from_slice(more);
    if tail.len() > EDGE_BYTES {
        let _ = tail.split_to(tail.len() - EDGE_BYTES);
    }
}

/// Appends one JSON message so that no line reader can split it: raw CR and LF (in valid JSON
/// only whitespace between tokens) are left out, and raw U+0085, U+2028 and U+2029 (in valid JSON
/// only inside strings) are written as escapes. Neither changes what the message means. Messages
/// read through the strict parse are canonical already; this holds for every message written.
pub fn push_unsplittable(out: &mut impl ByteSink, msg: &[u8]) {
    // The next CR, LF or 0xC2 (the lead byte of U+0085), and the next 0xE2 (of U+2028 and
    // U+2029), each searched for again only once passed: most messages hold none of them and are
    // appended in one piece.
    let search_a = |from: usize| ::memchr::memchr3(b'\n', b'\r', 0xC2, &msg[from..]).map(|p| p + from);
    let search_b = |from: usize| ::memchr::memchr(0xE2, &msg[from..]).map(|p| p + from);
    let (mut next_a, mut next_b) = (search_a(0), search_b(0));
    let mut run = 0;
    loop {
        let i = match (next_a, next_b) {
            (Some(a), Some(b)) => a.min(b),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => break,
        };
        let replaced: Option<(&[u8], usize)> = match msg[i] {
            b'\n' | b'\r' => Some((b"", 1)),
            0xC2 if msg.get(i + 1) == Some(&0x85) => Some((br"\u0085", 2)),
            0xE2 if msg.get(i + 1..i + 3) == Some(&[0x80, 0xA8]) => Some((br"\u2028", 3)),
            0xE2 if msg.get(i + 1..i + 3) == Some(&[0x80, 0xA9]) => Some((br"\u2029", 3)),
            _ => None,
        };
        let next = match replaced {
            Some((text, len)) => {
                out.put(&msg[run..i]);
                out.put(text);
                run = i + len;
                run
            }
            None => i + 1,
        };
        if next_a.is_some_and(|a| a < next) {
            next_a = search_a(next);
        }
        if next_b.is_some_and(|b| b < next) {
            next_b = search_b(next);
        }
    }
    out.put(&msg[run..]);
}

/// A buffer [`push_unsplittable`] appends to.
pub trait ByteSink {
    fn put(&mut self, bytes: &[u8]);
}

impl ByteSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl ByteSink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn memchr(hay: &[u8]) -> Option<usize> {
    ::memchr::memchr(b'\n', hay)
}

/// Writes queued messages, one per line, flushing whenever the queue runs dry so that bursts
/// cost one write and a lone message is not delayed.
pub async fn write_lines<W: AsyncWrite + Unpin>(
    mut out: W,
    mut rx: mpsc::UnboundedReceiver<bytes::Bytes>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        push_unsplittable(&mut buf, &first);
        buf.extend_from_slice(b"\n");
        while buf.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(more) => {
                    push_unsplittable(&mut buf, &more);
                    buf.extend_from_slice(b"\n");
                }
                Err(_) => break,
            }
        }
        while buf.has_remaining() {
            let n = out.write(&buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            buf.advance(n);
        }
        out.flush().await?;
        buf.clear();
    }
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::with_max(input, max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(match l {
                Line::Data(d) => String::from_utf8(d.to_vec()).unwrap(),
                Line::TooLong { .. } => "<too long>".to_owned(),
            });
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_strips_cr() {
        assert_eq!(lines(b"a\r\nbb\n\nlast", 100).await, ["a", "bb", "", "last"]);
    }

    #[tokio::test]
    async fn over_long_line_is_reported_once_and_skipped() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&input, 10).await, ["<too long>", "ok"]);
        // Longer than the read buffer growth so the cap triggers before the newline is seen.
        let mut input = vec![b'y'; 200_000];
        input.extend_from_slice(b"\nfine\n");
        assert_eq!(lines(&input, 1000).await, ["<too long>", "fine"]);
    }

    #[tokio::test]
    async fn writer_never_writes_a_line_end_inside_a_message() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(bytes::Bytes::from("{\r\n\"a\" :\r[\"x\u{2028}\u{2029}\u{85}\u{e9}\u{20ac}\"]}")).unwrap();
        drop(tx);
        let mut out = Vec::new();
        write_lines(&mut out, rx).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\" :[\"x\\u2028\\u2029\\u0085\u{e9}\u{20ac}\"]}\n");
    }

    #[tokio::test]
    async fn writer_appends_newlines() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(bytes::Bytes::from_static(b"{}")).unwrap();
        tx.send(bytes::Bytes::from_static(b"[1]")).unwrap();
        drop(tx);
        let mut out = Vec::new();
        write_lines(&mut out, rx).await.unwrap();
        assert_eq!(out, b"{}\n[1]\n");
    }
}
