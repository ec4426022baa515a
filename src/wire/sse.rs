//! Server-Sent Events: an incremental parser (bytes in, events out) and a small encoder.
//!
//! The parser follows the WHATWG event-stream rules: lines end with CRLF, LF or CR (a CRLF may be
//! split across two chunks), lines starting with `:` are comments, `data` lines are joined with
//! `\n`, `id` values containing NUL are ignored, `retry` must be all ASCII digits, a field without a
//! colon has an empty value, and one space after the colon is dropped. An event is dispatched on a
//! blank line. Unlike a browser, an event whose block carried any known field is dispatched even
//! when its data is empty, so callers see priming events (`id` + empty `data`) and `retry`
//! hints; callers that only want messages skip events whose `data` is empty. A block of comments
//! only is not an event. An event that is not finished when the stream ends is discarded.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::MAX_MESSAGE_BYTES;

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (the event type), when the block had one.
    pub event: Option<String>,
    /// The `data` lines joined with `\n` (empty when there were none).
    pub data: String,
    /// The `id` field of this block, when it had one (it may be empty: that resets the id).
    pub id: Option<String>,
    /// The `retry` field in milliseconds, when the block had a valid one.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// The event type with the default applied: `message` when the block named none.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => "message",
        }
    }
}

/// Incremental event-stream parser.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read (without its terminator).
    line: Vec<u8>,
    /// The previous chunk ended with CR: a LF at the start of the next one belongs to it.
    skip_lf: bool,
    /// No line has been completed yet (a UTF-8 BOM is stripped from the first one).
    first_line: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
    /// The block being read carried at least one known field.
    has_field: bool,
    /// The id of the last event that set one (persists across events, as in `Last-Event-ID`).
    last_event_id: String,
    /// Largest accepted event (line plus data); larger events are dropped.
    max_event_bytes: usize,
    /// The current event grew past the limit: ignore lines until the next blank one.
    discarding: bool,
    /// While discarding: the line being skipped is not blank.
    discard_line_seen: bool,
    /// How many events were dropped for size.
    dropped: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new()
    }
}

impl SseParser {
    /// A parser that accepts events of up to [`MAX_MESSAGE_BYTES`] plus some room for field names.
    pub fn new() -> SseParser {
        SseParser::with_limit(MAX_MESSAGE_BYTES + 64 * 1024)
    }

    /// A parser that drops events whose size exceeds `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            skip_lf: false,
            first_line: true,
            event: None,
            data: String::new(),
            has_data: false,
            id: None,
            retry: None,
            has_field: false,
            last_event_id: String::new(),
            max_event_bytes,
            discarding: false,
            discard_line_seen: false,
            dropped: 0,
        }
    }

    /// The last event id seen on this stream, if any (an empty `id` resets it).
    pub fn last_event_id(&self) -> Option<&str> {
        if self.last_event_id.is_empty() { None } else { Some(&self.last_event_id) }
    }

    /// How many events were dropped because they were larger than the limit.
    pub fn dropped_events(&self) -> u64 {
        self.dropped
    }

    /// Feeds a chunk and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed_into(chunk, &mut out);
        out
    }

    /// Feeds a chunk and appends the events it completed to `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.append(&rest[..pos]);
            self.end_line(out);
            let terminator = rest[pos];
            rest = &rest[pos + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        self.append(rest);
    }

    fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.discarding {
            self.discard_line_seen = true;
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > self.max_event_bytes {
            self.start_discarding();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn start_discarding(&mut self) {
        self.discarding = true;
        self.discard_line_seen = true;
        self.dropped += 1;
        tracing::warn!(limit = self.max_event_bytes, "SSE event too large, dropped");
        self.line = Vec::new();
        self.reset_event();
        self.data = String::new();
    }

    fn reset_event(&mut self) {
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.id = None;
        self.retry = None;
        self.has_field = false;
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let mut line = std::mem::take(&mut self.line);
        if self.first_line {
            self.first_line = false;
            if line.starts_with(&[0xEF, 0xBB, 0xBF]) {
                line.drain(..3);
            }
        }
        if self.discarding {
            if self.discard_line_seen {
                self.discard_line_seen = false;
            } else {
                self.discarding = false;
                self.reset_event();
            }
            return;
        }
        if line.is_empty() {
            if self.has_field {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                    id: self.id.take(),
                    retry: self.retry.take(),
                });
            }
            self.reset_event();
            return;
        }
        if line[0] == b':' {
            // A comment (keep-alive).
            self.line = reuse(line);
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (name, value) = match text.find(':') {
            Some(colon) => {
                let value = &text[colon + 1..];
                (&text[..colon], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&text[..], ""),
        };
        match name {
            "event" => {
                self.event = Some(value.to_owned());
                self.has_field = true;
            }
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                self.has_field = true;
            }
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.last_event_id = value.to_owned();
                self.has_field = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only, so the parse fails only on overflow: such a value is ignored.
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(ms);
                    self.has_field = true;
                }
            }
            _ => {}
        }
        drop(text);
        self.line = reuse(line);
    }
}

/// Keeps a line buffer's allocation for the next line unless it grew large.
fn reuse(mut line: Vec<u8>) -> Vec<u8> {
    line.clear();
    if line.capacity() > 64 * 1024 { Vec::new() } else { line }
}

/// Reads events from a byte stream (an HTTP body) as they arrive.
pub struct EventReader<S> {
    stream: S,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
    done: bool,
}

impl<S, E> EventReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    pub fn new(stream: S) -> EventReader<S> {
        EventReader { stream, parser: SseParser::new(), queue: VecDeque::new(), done: false }
    }

    /// The next event; `None` at the end of the stream, `Some(Err)` when reading failed (the
    /// reader is then finished).
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, E>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    self.parser.feed_into(&chunk, &mut out);
                    self.queue.extend(out);
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// The last event id seen on the stream.
    pub fn last_event_id(&self) -> Option<&str> {
        self.parser.last_event_id()
    }
}

/// Encodes one event. `data` is split on line breaks (CRLF, LF or CR) into several `data:`
/// lines; line breaks in `event` and `id` are removed so they cannot break the framing.
pub fn encode_event(event: Option<&str>, id: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.extend(event.chars().filter(|c| *c != '\r' && *c != '\n'));
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.extend(id.chars().filter(|c| *c != '\r' && *c != '\n' && *c != '\0'));
        out.push('\n');
    }
    let normalized;
    let data = if data.contains('\r') {
        normalized = data.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        data
    };
    for line in data.split('\n') {
        if line.is_empty() {
            out.push_str("data:\n");
        } else {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent { event: event.map(str::to_owned), data: data.to_owned(), id: id.map(str::to_owned), retry: None }
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().feed(input)
    }

    /// Feeds `input` split at every pair of positions (three chunks) and checks the result
    /// is always the same as feeding it whole.
    fn assert_split_invariant(input: &[u8]) {
        let whole = parse_all(input);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut p = SseParser::new();
                let mut got = p.feed(&input[..i]);
                got.extend(p.feed(&input[i..j]));
                got.extend(p.feed(&input[j..]));
                assert_eq!(got, whole, "split at {i},{j} of {:?}", String::from_utf8_lossy(input));
            }
        }
        // Byte by byte.
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input {
            got.extend(p.feed(std::slice::from_ref(b)));
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn parses_basic_fields() {
        let got = parse_all(b"event: message\nid: 7\ndata: {\"a\":1}\n\n");
        assert_eq!(got, vec![ev(Some("message"), "{\"a\":1}", Some("7"))]);
        assert_eq!(got[0].event_type(), "message");
    }

    #[test]
    fn joins_multi_line_data() {
        let got = parse_all(b"data: one\ndata: two\ndata:three\n\n");
        assert_eq!(got, vec![ev(None, "one\ntwo\nthree", None)]);
        assert_eq!(got[0].event_type(), "message");
    }

    #[test]
    fn strips_only_one_leading_space() {
        let got = parse_all(b"data:  two spaces\n\n");
        assert_eq!(got[0].data, " two spaces");
    }

    #[test]
    fn ignores_comments_and_unknown_fields() {
        let got = parse_all(b": keep-alive\n\n:another\nfoo: bar\ndata: x\n: inside\n\n");
        assert_eq!(got, vec![ev(None, "x", None)]);
    }

    #[test]
    fn comment_only_block_is_not_an_event() {
        assert!(parse_all(b": ping\n\n: ping\n\n").is_empty());
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        let got = parse_all(b"data\ndata\n\n");
        assert_eq!(got, vec![ev(None, "\n", None)]);
        let got = parse_all(b"event\ndata: x\n\n");
        assert_eq!(got[0].event.as_deref(), Some(""));
        assert_eq!(got[0].event_type(), "message");
    }

    #[test]
    fn empty_data_events_are_dispatched() {
        // A 2025-11-25 priming event: an id and empty data.
        let mut p = SseParser::new();
        let got = p.feed(b"id: prime-0\ndata:\n\nid: prime-1\ndata: \n\n");
        assert_eq!(got, vec![ev(None, "", Some("prime-0")), ev(None, "", Some("prime-1"))]);
        assert_eq!(p.last_event_id(), Some("prime-1"));
        // An id alone also dispatches (with no data).
        let got = parse_all(b"id: 5\n\n");
        assert_eq!(got, vec![ev(None, "", Some("5"))]);
    }

    #[test]
    fn retry_requires_digits() {
        let got = parse_all(b"retry: 3000\n\nretry: 3s\ndata: x\n\n");
        assert_eq!(got[0].retry, Some(3000));
        assert_eq!(got[0].data, "");
        assert_eq!(got[1].retry, None);
        assert_eq!(got[1].data, "x");
        // An invalid retry alone is no event.
        assert_eq!(parse_all(b"retry: x\n\n").len(), 0);
    }

    #[test]
    fn last_event_id_persists_and_resets() {
        let mut p = SseParser::new();
        let got = p.feed(b"id: a\ndata: 1\n\ndata: 2\n\n");
        assert_eq!(got[0].id.as_deref(), Some("a"));
        assert_eq!(got[1].id, None);
        assert_eq!(p.last_event_id(), Some("a"));
        p.feed(b"id\ndata: 3\n\n");
        assert_eq!(p.last_event_id(), None);
        // An id with NUL is ignored.
        p.feed(b"id: b\0c\ndata: 4\n\n");
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn handles_all_line_endings() {
        let lf = parse_all(b"event: e\ndata: a\ndata: b\n\n");
        let crlf = parse_all(b"event: e\r\ndata: a\r\ndata: b\r\n\r\n");
        let cr = parse_all(b"event: e\rdata: a\rdata: b\r\r");
        let mixed = parse_all(b"event: e\r\ndata: a\rdata: b\n\r\n");
        assert_eq!(lf, vec![ev(Some("e"), "a\nb", None)]);
        assert_eq!(crlf, lf);
        assert_eq!(cr, lf);
        assert_eq!(mixed, lf);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut p = SseParser::new();
        let mut got = p.feed(b"data: a\r");
        got.extend(p.feed(b"\n"));
        assert!(got.is_empty(), "the LF completes the CRLF; no blank line yet: {got:?}");
        got.extend(p.feed(b"\r"));
        assert_eq!(got, vec![ev(None, "a", None)], "a CR alone is a line ending");
        // The LF after that CR is part of the same CRLF, not a second blank line.
        got.extend(p.feed(b"\ndata: b\r\n\r\n"));
        assert_eq!(got, vec![ev(None, "a", None), ev(None, "b", None)]);
    }

    #[test]
    fn empty_chunks_keep_pending_cr() {
        let mut p = SseParser::new();
        let mut got = p.feed(b"data: a\r");
        got.extend(p.feed(b""));
        got.extend(p.feed(b"\n\r\n"));
        assert_eq!(got, vec![ev(None, "a", None)]);
    }

    #[test]
    fn any_split_gives_the_same_events() {
        assert_split_invariant(
            b"event: message\r\nid: 1\r\ndata: {\"x\":\"\xc3\xa9\"}\r\n\r\n: c\r\ndata: a\rdata: b\r\r",
        );
        assert_split_invariant(b"\xEF\xBB\xBFdata: bom\n\nid: 2\ndata:\n\nretry: 10\n\n");
    }

    #[test]
    fn strips_bom_from_first_line_only() {
        let got = parse_all(b"\xEF\xBB\xBFdata: x\n\n");
        assert_eq!(got, vec![ev(None, "x", None)]);
        let mut p = SseParser::new();
        let mut got = p.feed(b"\xEF");
        got.extend(p.feed(b"\xBB\xBFdata: y\n\n"));
        assert_eq!(got, vec![ev(None, "y", None)]);
    }

    #[test]
    fn unfinished_event_is_not_dispatched() {
        assert!(parse_all(b"data: partial\n").is_empty());
        assert!(parse_all(b"data: partial").is_empty());
    }

    #[test]
    fn oversized_event_is_dropped_and_parsing_resumes() {
        let mut p = SseParser::with_limit(16);
        let mut got = p.feed(b"data: 0123456789");
        got.extend(p.feed(b"abcdefghij\ndata: more\n\n"));
        got.extend(p.feed(b"data: ok\n\n"));
        assert_eq!(got, vec![ev(None, "ok", None)]);
        assert_eq!(p.dropped_events(), 1);
    }

    #[test]
    fn encode_splits_lines_and_round_trips() {
        let text = encode_event(Some("message"), Some("42"), "{\"a\":1}");
        assert_eq!(text, "event: message\nid: 42\ndata: {\"a\":1}\n\n");
        let text = encode_event(None, None, "l1\nl2\r\nl3\rl4");
        assert_eq!(text, "data: l1\ndata: l2\ndata: l3\ndata: l4\n\n");
        assert_eq!(parse_all(text.as_bytes())[0].data, "l1\nl2\nl3\nl4");
        let text = encode_event(Some("endpoint"), None, "");
        assert_eq!(text, "event: endpoint\ndata:\n\n");
        assert_eq!(parse_all(text.as_bytes()), vec![ev(Some("endpoint"), "", None)]);
        // Line breaks in the id or event cannot inject fields.
        let text = encode_event(Some("a\nb"), Some("1\r\ndata: evil"), "x");
        assert_eq!(parse_all(text.as_bytes()), vec![ev(Some("ab"), "x", Some("1data: evil"))]);
    }

    #[tokio::test]
    async fn event_reader_reads_from_a_stream() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"id: 1\ndata: a")),
            Ok(Bytes::from_static(b"\r")),
            Ok(Bytes::from_static(b"\n\r\ndata: b\n\n")),
            Err(std::io::Error::other("boom")),
        ];
        let mut reader = EventReader::new(futures::stream::iter(chunks));
        assert_eq!(reader.next_event().await.unwrap().unwrap(), ev(None, "a", Some("1")));
        assert_eq!(reader.next_event().await.unwrap().unwrap(), ev(None, "b", None));
        assert_eq!(reader.last_event_id(), Some("1"));
        assert!(reader.next_event().await.unwrap().is_err());
        assert!(reader.next_event().await.is_none());
    }
}
