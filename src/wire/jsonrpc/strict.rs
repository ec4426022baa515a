//! The one strict reading of every message: a single pass over the bytes that refuses what two
//! JSON parsers could read differently, and writes the canonical bytes the proxy then parses and
//! forwards.
//!
//! Refused: invalid UTF-8; a duplicate key in any object (compared after unescaping, so
//! `"n\u0061me"` is `"name"`), and with [`Keys::Folded`] (a client's messages) two keys that
//! differ only by case, and a key of the envelope or of its `params` that differs only by case from
//! one the protocol defines there ([`ENVELOPE_KEYS`], [`PARAMS_KEYS`]); a `\u` escape that is not
//! Unicode (a lone or misordered surrogate); nesting deeper than [`MAX_DEPTH`]; a number the proxy cannot carry exactly (an
//! integer outside the i64/u64 range, a fraction or exponent whose double is not finite or is not
//! exactly the number written, like `0.1` is but `3.14159265358979323846` and `1e400` are not).
//!
//! Canonical means: no whitespace between tokens, and U+2028, U+2029 and U+0085 inside strings
//! written as `\uXXXX` escapes (same meaning; some line readers end a line at them). Everything
//! else is kept byte for byte: key order, escapes, number text. A canonical message therefore
//! holds no byte that any mainstream line reader takes for the end of a line.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The deepest nesting accepted, counting the message's own object as level 1.
pub const MAX_DEPTH: usize = 64;

/// The keys a JSON-RPC message defines at its top level.
pub const ENVELOPE_KEYS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// The keys of a request's or notification's `params` that MCP defines and the proxy reads: a
/// client's key that differs from one of these only by case is refused ([`Keys::Folded`]).
pub const PARAMS_KEYS: &[&str] = &[
    "name",
    "arguments",
    "_meta",
    "task",
    "cursor",
    "uri",
    "ref",
    "taskId",
    "requestId",
    "requestState",
    "inputResponses",
    "protocolVersion",
    "capabilities",
    "clientInfo",
];

/// How the keys of one object must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Byte for byte, after unescaping: what a server may send (a tool's result may well hold
    /// `"a"` and `"A"`, and the proxy relays it as it is).
    Exact,
    /// Also after folding case, as some servers match keys to their fields (Go's `encoding/json`,
    /// .NET with `PropertyNameCaseInsensitive`): what a client may send, so that the upstream
    /// cannot read `"NAME"` where the gate judged `"name"`. Nor may a key of the envelope or of
    /// its `params` differ only by case from one the protocol defines there ([`ENVELOPE_KEYS`],
    /// [`PARAMS_KEYS`]): alone, `"Arguments"` would be no arguments to the gate and the arguments
    /// to such a server. A key is folded a character at a time: ASCII `A`-`Z` become `a`-`z`; `ſ`
    /// (U+017F) becomes `s`, `K` (U+212A, Kelvin) `k`, `ı` (U+0131) and `İ` (U+0130) `i`, the
    /// non-ASCII characters whose Unicode simple case mapping or folding is an ASCII letter; every
    /// other character is kept as it is.
    Folded,
}

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    #[error("not valid UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("not valid JSON at byte {at}: {what}")]
    Syntax { at: usize, what: &'static str },
    #[error("duplicate key {0:?} in one object")]
    DuplicateKey(String),
    #[error("keys {0:?} and {1:?} in one object differ only by case: some servers read them as one key")]
    CaseDuplicateKey(String, String),
    #[error("key {0:?} differs from {1:?} only by case: some servers read them as one key")]
    CaseVariantKey(String, &'static str),
    #[error("the string escape at byte {0} is not valid Unicode (a lone or misordered surrogate)")]
    Surrogate(usize),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "the number {0} cannot be carried exactly (integers must fit in 64 bits; other numbers must be exactly a finite double)"
    )]
    Number(String),
}

impl StrictError {
    /// The rule broken, without the offending text (for records that must not copy arguments).
    pub fn rule(&self) -> &'static str {
        match self {
            StrictError::Utf8(_) => "invalid UTF-8",
            StrictError::Syntax { .. } => "invalid JSON",
            StrictError::DuplicateKey(_) => "duplicate key",
            StrictError::CaseDuplicateKey(..) | StrictError::CaseVariantKey(..) => "keys differing only by case",
            StrictError::Surrogate(_) => "invalid Unicode escape",
            StrictError::TooDeep => "nesting too deep",
            StrictError::Number(_) => "number not carried exactly",
        }
    }

    /// Whether the bytes are not JSON at all (as opposed to JSON the proxy refuses to carry).
    pub fn is_syntax(&self) -> bool {
        matches!(self, StrictError::Utf8(_) | StrictError::Syntax { .. } | StrictError::Surrogate(_))
    }
}

/// Checks one JSON text, whose keys must differ as [`Keys::Exact`], and returns its canonical
/// bytes.
pub fn canonicalize(input: &[u8]) -> Result<Vec<u8>, StrictError> {
    canonical_read(input, Keys::Exact, |text, _| text.into_owned().into_bytes())
}

/// [`canonicalize`] with keys that must differ as `keys` says, handing `read` the canonical bytes
/// as the text they are (the input itself when it is canonical already) and, when that is an
/// object, where its members lie in it.
pub(crate) fn canonical_read<T>(
    input: &[u8],
    keys: Keys,
    read: impl FnOnce(Cow<'_, str>, Option<&[Member]>) -> T,
) -> Result<T, StrictError> {
    with_scratch(|scratch| {
        let mut scanner = Scanner::<false>::new(input, scratch, keys);
        scanner.run()?;
        let Scanner { text, out, copied, scratch, .. } = scanner;
        // Nothing was ever left out or replaced: the input is the canonical text.
        let text = if copied == 0 { Cow::Borrowed(text) } else { Cow::Owned(out) };
        let members = text.starts_with('{').then_some(scratch.members.as_slice());
        Ok(read(text, members))
    })
}

/// A member of a canonical object: `"key":value` is `text[key.0..key.1]`, `:`,
/// `text[key.1 + 1..end]`.
#[derive(Clone, Copy)]
pub(crate) struct Member {
    pub key: (usize, usize),
    pub end: usize,
}

/// What a lenient second look at a refused message could read of its envelope: enough to answer
/// a request with its own id and to audit a refused `tools/call`.
#[derive(Debug, Default)]
pub struct Envelope {
    /// The id, when the message has exactly one and it is a string or a number.
    pub id: Option<Box<RawValue>>,
    /// How many `id` keys the envelope has.
    pub id_count: usize,
    /// Every `method` of the envelope, as far as it could be decoded.
    pub methods: Vec<String>,
    /// Every `name` in the envelope's `params` objects.
    pub tool_names: Vec<String>,
    /// Whether the envelope has a `result` or an `error` (it is meant as a response).
    pub response: bool,
}

impl Envelope {
    pub fn is_tools_call(&self) -> bool {
        self.methods.iter().any(|m| m == "tools/call")
    }
}

/// Reads what it can of a message's envelope without the strict rules (duplicates, numbers and
/// surrogates are tolerated; syntax errors and nesting past [`MAX_DEPTH`] end the look).
pub fn lenient_envelope(input: &[u8]) -> Envelope {
    let (ids, methods, names, response) = with_scratch(|scratch| {
        let mut scanner = Scanner::<true>::new(input, scratch, Keys::Exact);
        let _ = scanner.run();
        (scanner.ids, scanner.methods, scanner.names, scanner.response)
    });
    let mut env = Envelope { id_count: ids.len(), response, ..Envelope::default() };
    if ids.len() == 1 {
        let (start, end) = ids[0];
        let text = &input[start..end];
        if matches!(text.first(), Some(b'"' | b'-' | b'0'..=b'9')) {
            env.id = std::str::from_utf8(text).ok().and_then(|t| RawValue::from_string(t.to_owned()).ok());
        }
    }
    let decode = |&(start, end): &(usize, usize)| {
        let raw = &input[start..end];
        serde_json::from_slice::<String>(raw)
            .unwrap_or_else(|_| String::from_utf8_lossy(raw.get(1..raw.len().saturating_sub(1)).unwrap_or(raw)).into())
    };
    env.methods = methods.iter().map(decode).collect();
    env.tool_names = names.iter().map(decode).collect();
    env
}

/// The working memory of a scan, kept per thread between messages so that a message costs no
/// allocation but its output.
#[derive(Default)]
struct Scratch {
    stack: Vec<Frame>,
    /// The keys of the open objects.
    keys: Vec<Key>,
    /// The unescaped text of the keys written with escapes (or with U+0085, U+2028, U+2029).
    arena: Vec<u8>,
    /// The members of the top-level object, in the output.
    members: Vec<Member>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> =
        const {
            std::cell::Cell::new(Scratch { stack: Vec::new(), keys: Vec::new(), arena: Vec::new(), members: Vec::new() })
        };
}

/// Runs `f` with this thread's scratch memory (fresh memory when it is in use or gone), and
/// keeps the memory, emptied, for the next message (unless a huge message made it large).
fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    let mut scratch = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    let out = f(&mut scratch);
    scratch.stack.clear();
    scratch.keys.clear();
    scratch.arena.clear();
    scratch.members.clear();
    if scratch.keys.capacity() <= 4096 && scratch.arena.capacity() <= 64 * 1024 {
        let _ = SCRATCH.try_with(|cell| cell.set(scratch));
    }
    out
}

/// Bytes a string's plain run ends at: its closing quote, an escape, a control character (an
/// error), and the lead bytes of U+0085 (`C2 85`) and U+2028/U+2029 (`E2 80 A8`/`E2 80 A9`).
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0xC2] = true;
    table[0xE2] = true;
    table
};

/// Where the plain run of a string starting at `from` ends.
#[inline(always)]
fn plain_run(input: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut pos = from;
    // Eight bytes at a time: the lowest byte flagged is the first that is a control character,
    // a quote, a backslash or not ASCII (a subtraction borrows only upwards from a byte that is
    // below its bound), then looked up to tell a stop from other non-ASCII bytes.
    while let Some(chunk) = input.get(pos..pos + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
        let flagged = below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5C), 1) | (w & HIGH);
        if flagged == 0 {
            pos += 8;
            continue;
        }
        pos += (flagged.trailing_zeros() / 8) as usize;
        if STRING_STOP[usize::from(input[pos])] {
            return pos;
        }
        pos += 1;
    }
    let rest = &input[pos..];
    pos + rest.iter().position(|&b| STRING_STOP[usize::from(b)]).unwrap_or(rest.len())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value,
    Key,
    After,
}

/// Which envelope key a value at level 1 (or a `params` member at level 2) belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    None,
    Id,
    Method,
    Params,
    ParamsName,
}

struct Frame {
    object: bool,
    /// Index in `keys` of this object's first key.
    keys_start: usize,
    /// Length of `arena` when the object opened.
    arena_start: usize,
    /// The envelope key this container is the value of (level-2 containers only).
    watch: Watch,
}

/// A key's unescaped text: `input[start..end]` when it was written without escapes, else
/// `arena[start..end]`.
#[derive(Clone, Copy)]
struct Key {
    start: usize,
    end: usize,
    in_arena: bool,
}

/// One pass over a message. The canonical output is the input without the whitespace between
/// tokens and with U+0085, U+2028 and U+2029 escaped: it is copied from the input in runs, when
/// whitespace or such a character interrupts it, and at the end (always at a character boundary:
/// before and after an ASCII byte, before and after a whole character).
///
/// `LENIENT`: record nothing but the envelope, tolerate everything but syntax.
struct Scanner<'a, 's, const LENIENT: bool> {
    input: &'a [u8],
    /// The input as text once it is known to be UTF-8 (always, but in the lenient look).
    text: &'a str,
    pos: usize,
    out: String,
    /// `input[copied..pos]` is still to be appended to `out` (nothing is, in the lenient look).
    /// Still 0 at the end: the input is canonical already, `out` is not needed.
    copied: usize,
    scratch: &'s mut Scratch,
    /// How the keys of an object must differ.
    keys: Keys,
    /// The envelope key of the value being read, when it is watched.
    watch: Watch,
    ids: Vec<(usize, usize)>,
    methods: Vec<(usize, usize)>,
    names: Vec<(usize, usize)>,
    response: bool,
}

impl<'a, 's, const LENIENT: bool> Scanner<'a, 's, LENIENT> {
    fn new(input: &'a [u8], scratch: &'s mut Scratch, keys: Keys) -> Self {
        Scanner {
            input,
            text: "",
            pos: 0,
            // Allocated at the first byte left out or replaced.
            out: String::new(),
            copied: 0,
            scratch,
            keys,
            watch: Watch::None,
            ids: Vec::new(),
            methods: Vec::new(),
            names: Vec::new(),
            response: false,
        }
    }

    fn syntax(&self, what: &'static str) -> StrictError {
        StrictError::Syntax { at: self.pos, what }
    }

    /// A rule broken: fatal when strict, ignored in the lenient look.
    fn refuse(&self, e: StrictError) -> Result<(), StrictError> {
        if LENIENT { Ok(()) } else { Err(e) }
    }

    /// Where the input at `pos` goes in the output.
    fn out_pos(&self) -> usize {
        self.out.len() + (self.pos - self.copied)
    }

    /// Appends the input up to `upto` to the output, and goes on copying from `from`.
    fn flush(&mut self, upto: usize, from: usize) {
        if !LENIENT {
            if self.out.capacity() == 0 {
                // Room for a few escaped line separators (each three or four bytes longer).
                self.out.reserve(self.input.len() + 32);
            }
            self.out.push_str(&self.text[self.copied..upto]);
        }
        self.copied = from;
    }

    /// Skips whitespace; the byte after it.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        match self.input.get(self.pos) {
            Some(b' ' | b'\t' | b'\n' | b'\r') => self.skip_ws(),
            next => next.copied(),
        }
    }

    fn skip_ws(&mut self) -> Option<u8> {
        let start = self.pos;
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
        self.flush(start, self.pos);
        self.input.get(self.pos).copied()
    }

    fn run(&mut self) -> Result<(), StrictError> {
        match std::str::from_utf8(self.input) {
            Ok(text) => self.text = text,
            Err(e) if !LENIENT => return Err(StrictError::Utf8(e.valid_up_to())),
            Err(_) => {}
        }
        let mut expect = Expect::Value;
        loop {
            let next = self.peek();
            match expect {
                Expect::Value => {
                    expect = Expect::After;
                    let start = self.pos;
                    match next {
                        Some(open @ (b'{' | b'[')) => {
                            let depth = self.scratch.stack.len();
                            if depth >= MAX_DEPTH {
                                // Fatal even to the lenient look, which must not grow its stack
                                // with a hostile line either.
                                return Err(StrictError::TooDeep);
                            }
                            let watch =
                                if depth == 1 && self.watch == Watch::Params { Watch::Params } else { Watch::None };
                            self.scratch.stack.push(Frame {
                                object: open == b'{',
                                keys_start: self.scratch.keys.len(),
                                arena_start: self.scratch.arena.len(),
                                watch,
                            });
                            self.watch = Watch::None;
                            self.pos += 1;
                            let close = if open == b'{' { b'}' } else { b']' };
                            if self.peek() == Some(close) {
                                self.close()?;
                            } else {
                                expect = if open == b'{' { Expect::Key } else { Expect::Value };
                            }
                        }
                        Some(b'"') => {
                            self.string(false)?;
                            self.record(start);
                        }
                        Some(b't') => self.literal(b"true")?,
                        Some(b'f') => self.literal(b"false")?,
                        Some(b'n') => self.literal(b"null")?,
                        Some(b'-' | b'0'..=b'9') => {
                            self.number()?;
                            self.record(start);
                        }
                        _ => return Err(self.syntax("expected a value")),
                    }
                }
                Expect::Key => {
                    if next != Some(b'"') {
                        return Err(self.syntax("expected a key"));
                    }
                    let key_start = self.out_pos();
                    let key = self.string(true)?;
                    if !LENIENT && self.scratch.stack.len() == 1 {
                        let member = Member { key: (key_start, self.out_pos()), end: 0 };
                        self.scratch.members.push(member);
                    }
                    if LENIENT {
                        self.watch_key(key);
                        if key.in_arena {
                            self.scratch.arena.truncate(key.start);
                        }
                    } else {
                        if self.keys == Keys::Folded && self.scratch.stack.len() == 1 {
                            // Which object is the envelope's `params`, for its known keys.
                            self.watch = if self.key_text(key) == b"params" { Watch::Params } else { Watch::None };
                        }
                        self.scratch.keys.push(key);
                    }
                    if self.peek() != Some(b':') {
                        return Err(self.syntax("expected ':'"));
                    }
                    self.pos += 1;
                    expect = Expect::Value;
                }
                Expect::After => {
                    let Some(frame) = self.scratch.stack.last() else {
                        if self.pos != self.input.len() {
                            return Err(self.syntax("characters after the value"));
                        }
                        if self.copied > 0 {
                            self.flush(self.pos, self.pos);
                        }
                        return Ok(());
                    };
                    let (object, close) = (frame.object, if frame.object { b'}' } else { b']' });
                    if !LENIENT && object && self.scratch.stack.len() == 1 {
                        // The end of a top-level member's value (or an error).
                        let end = self.out_pos();
                        if let Some(member) = self.scratch.members.last_mut() {
                            member.end = end;
                        }
                    }
                    match next {
                        Some(b',') => {
                            self.pos += 1;
                            expect = if object { Expect::Key } else { Expect::Value };
                        }
                        Some(b) if b == close => self.close()?,
                        _ => return Err(self.syntax("expected ',' or the end of the container")),
                    }
                }
            }
        }
    }

    fn key_text(&self, key: Key) -> &[u8] {
        if key.in_arena { &self.scratch.arena[key.start..key.end] } else { &self.input[key.start..key.end] }
    }

    /// Notes which envelope key the next value belongs to.
    fn watch_key(&mut self, key: Key) {
        let depth = self.scratch.stack.len();
        let frame_watch = self.scratch.stack.last().map(|f| f.watch);
        let key = self.key_text(key);
        let mut response = false;
        let watch = match (depth, frame_watch) {
            (1, _) => match key {
                b"id" => Watch::Id,
                b"method" => Watch::Method,
                b"params" => Watch::Params,
                b"result" | b"error" => {
                    response = true;
                    Watch::None
                }
                _ => Watch::None,
            },
            (2, Some(Watch::Params)) if key == b"name" => Watch::ParamsName,
            _ => Watch::None,
        };
        self.watch = watch;
        self.response |= response;
    }

    /// Records the span of a scalar the envelope look wants.
    #[inline]
    fn record(&mut self, start: usize) {
        if !LENIENT {
            return;
        }
        let span = (start, self.pos);
        match std::mem::replace(&mut self.watch, Watch::None) {
            Watch::Id => self.ids.push(span),
            Watch::Method if self.input[start] == b'"' => self.methods.push(span),
            Watch::ParamsName if self.input[start] == b'"' => self.names.push(span),
            _ => {}
        }
    }

    /// Closes the innermost container at `pos`, checking an object's keys for duplicates (and,
    /// with [`Keys::Folded`], for keys that differ only by case from each other or, in the envelope
    /// and its `params`, from a key the protocol defines there).
    #[inline]
    fn close(&mut self) -> Result<(), StrictError> {
        let Some(frame) = self.scratch.stack.pop() else { return Err(self.syntax("unbalanced brackets")) };
        self.pos += 1;
        self.watch = Watch::None;
        if frame.object && !LENIENT {
            if self.scratch.keys.len() - frame.keys_start > 1 {
                if let Some(key) = self.duplicate(frame.keys_start) {
                    return Err(StrictError::DuplicateKey(key));
                }
                if self.keys == Keys::Folded {
                    if let Some((a, b)) = self.case_duplicate(frame.keys_start) {
                        return Err(StrictError::CaseDuplicateKey(a, b));
                    }
                }
            }
            // The envelope (no frame left open), or the object that is its `params`.
            let envelope = self.scratch.stack.is_empty();
            if self.keys == Keys::Folded && (envelope || frame.watch == Watch::Params) {
                let known = if envelope { ENVELOPE_KEYS } else { PARAMS_KEYS };
                if let Some((key, known)) = self.case_variant(frame.keys_start, known) {
                    return Err(StrictError::CaseVariantKey(key, known));
                }
            }
            self.scratch.keys.truncate(frame.keys_start);
            self.scratch.arena.truncate(frame.arena_start);
        }
        Ok(())
    }

    /// The smallest key (in byte order) that the object whose keys start at `keys_start` holds
    /// more than once.
    #[inline(never)]
    fn duplicate(&mut self, keys_start: usize) -> Option<String> {
        let (input, arena) = (self.input, &self.scratch.arena);
        let text = |k: &Key| if k.in_arena { &arena[k.start..k.end] } else { &input[k.start..k.end] };
        let keys = &mut self.scratch.keys[keys_start..];
        // A few keys: first whether any two are equal at all, comparing the texts only of those
        // of the same length (and, past four keys, with the same first and last byte).
        if keys.len() <= 4 {
            let mut found = false;
            for (i, a) in keys.iter().enumerate() {
                let len = a.end - a.start;
                found |= keys[i + 1..].iter().any(|b| b.end - b.start == len && text(b) == text(a));
            }
            if !found {
                return None;
            }
        } else if keys.len() <= 16 {
            let mut tags = [0u32; 16];
            for (tag, key) in tags.iter_mut().zip(keys.iter()) {
                let text = text(key);
                let (first, last) = (text.first().copied().unwrap_or(0), text.last().copied().unwrap_or(0));
                *tag = (text.len() as u32) << 16 | u32::from(first) << 8 | u32::from(last);
            }
            let mut found = false;
            for (i, a) in keys.iter().enumerate() {
                found |= keys[i + 1..].iter().zip(&tags[i + 1..]).any(|(b, &tag)| tag == tags[i] && text(b) == text(a));
            }
            if !found {
                return None;
            }
        }
        keys.sort_unstable_by(|a, b| text(a).cmp(text(b)));
        let pair = keys.windows(2).find(|w| text(&w[0]) == text(&w[1]))?;
        Some(String::from_utf8_lossy(text(&pair[0])).into_owned())
    }

    /// Two keys of the object whose keys start at `keys_start` (distinct byte for byte) that are
    /// equal once folded ([`Keys::Folded`]): in the order written when the object has a few keys,
    /// else the pair that comes first in folded order.
    #[inline(never)]
    fn case_duplicate(&mut self, keys_start: usize) -> Option<(String, String)> {
        let (input, arena) = (self.input, &self.scratch.arena);
        let text = |k: &Key| if k.in_arena { &arena[k.start..k.end] } else { &input[k.start..k.end] };
        let shown = |a: &Key, b: &Key| {
            (String::from_utf8_lossy(text(a)).into_owned(), String::from_utf8_lossy(text(b)).into_owned())
        };
        let keys = &mut self.scratch.keys[keys_start..];
        // A few keys: each pair, most told apart at their first byte, without sorting.
        if keys.len() <= 16 {
            for (i, a) in keys.iter().enumerate() {
                if let Some(b) = keys[i + 1..].iter().find(|b| folded(text(a)).eq(folded(text(b)))) {
                    return Some(shown(a, b));
                }
            }
            return None;
        }
        keys.sort_unstable_by(|a, b| folded(text(a)).cmp(folded(text(b))).then_with(|| text(a).cmp(text(b))));
        let pair = keys.windows(2).find(|w| folded(text(&w[0])).eq(folded(text(&w[1]))))?;
        Some(shown(&pair[0], &pair[1]))
    }

    /// A key of the object whose keys start at `keys_start` that differs only by case from one of
    /// `known` ([`same_but_case`]), with that one (the first in the order the keys are kept: as
    /// written, or sorted when the object had many).
    #[inline(never)]
    fn case_variant(&self, keys_start: usize, known: &[&'static str]) -> Option<(String, &'static str)> {
        self.scratch.keys[keys_start..].iter().find_map(|&key| {
            let text = self.key_text(key);
            let known = known.iter().find(|k| same_but_case(text, k.as_bytes()))?;
            Some((String::from_utf8_lossy(text).into_owned(), *known))
        })
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), StrictError> {
        if !self.input[self.pos..].starts_with(word) {
            return Err(self.syntax("expected true, false or null"));
        }
        self.pos += word.len();
        self.watch = Watch::None;
        Ok(())
    }

    /// Reads the string whose opening quote is at `pos`; returns where a key's unescaped text is.
    #[inline(always)]
    fn string(&mut self, key: bool) -> Result<Key, StrictError> {
        let start = self.pos + 1;
        let end = plain_run(self.input, start);
        self.pos = end;
        if self.input.get(end) == Some(&b'"') {
            self.pos += 1;
            return Ok(Key { start, end, in_arena: false });
        }
        self.string_rest(key, start)
    }

    /// The rest of a string that does not end with its plain run; a key's unescaped text goes to
    /// `arena`.
    #[inline(never)]
    fn string_rest(&mut self, key: bool, start: usize) -> Result<Key, StrictError> {
        let input = self.input;
        let arena_from = self.scratch.arena.len();
        if key {
            self.scratch.arena.extend_from_slice(&input[start..self.pos]);
        }
        loop {
            match input.get(self.pos) {
                None => return Err(self.syntax("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Key { start: arena_from, end: self.scratch.arena.len(), in_arena: true });
                }
                Some(b'\\') => self.escape(key)?,
                Some(&b @ (0xC2 | 0xE2)) => {
                    let width = if b == 0xC2 { 2 } else { 3 };
                    let seq = input.get(self.pos..self.pos + width).unwrap_or(&input[self.pos..self.pos + 1]);
                    let escaped: Option<&str> = match seq {
                        [0xC2, 0x85] => Some(r"\u0085"),
                        [0xE2, 0x80, 0xA8] => Some(r"\u2028"),
                        [0xE2, 0x80, 0xA9] => Some(r"\u2029"),
                        _ => None,
                    };
                    match escaped {
                        Some(esc) => {
                            self.flush(self.pos, self.pos + seq.len());
                            if !LENIENT {
                                self.out.push_str(esc);
                            }
                            if key {
                                self.scratch.arena.extend_from_slice(seq);
                            }
                            self.pos += seq.len();
                        }
                        None => {
                            // The lead byte of another character: kept, the rest follows as a run.
                            if key {
                                self.scratch.arena.push(b);
                            }
                            self.pos += 1;
                        }
                    }
                }
                Some(_) => return Err(self.syntax("control character in a string")),
            }
            let run_start = self.pos;
            self.pos = plain_run(input, run_start);
            if key {
                self.scratch.arena.extend_from_slice(&input[run_start..self.pos]);
            }
        }
    }

    fn escape(&mut self, key: bool) -> Result<(), StrictError> {
        let at = self.pos;
        let simple = match self.input.get(at + 1) {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0C),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            _ => return Err(self.syntax("invalid escape")),
        };
        if let Some(c) = simple {
            if key {
                self.scratch.arena.push(c);
            }
            self.pos += 2;
            return Ok(());
        }
        let first = self.hex4(at + 2)?;
        let (len, ch) = match first {
            0xD800..=0xDBFF => {
                let low = if self.input.get(at + 6..at + 8) == Some(b"\\u") { Some(self.hex4(at + 8)?) } else { None };
                match low {
                    Some(low @ 0xDC00..=0xDFFF) => {
                        (12, char::from_u32(0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)))
                    }
                    _ => {
                        self.refuse(StrictError::Surrogate(at))?;
                        (6, None)
                    }
                }
            }
            0xDC00..=0xDFFF => {
                self.refuse(StrictError::Surrogate(at))?;
                (6, None)
            }
            _ => (6, char::from_u32(first)),
        };
        if key {
            let ch = ch.unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut buf = [0u8; 4];
            self.scratch.arena.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
        self.pos = at + len;
        Ok(())
    }

    /// The four hex digits at `at` (errors are reported at the escape's backslash, `pos`).
    fn hex4(&self, at: usize) -> Result<u32, StrictError> {
        let digits = self.input.get(at..at + 4).ok_or_else(|| self.syntax("short \\u escape"))?;
        let mut value = 0;
        for &d in digits {
            let digit = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.syntax("invalid \\u escape")),
            };
            value = value << 4 | u32::from(digit);
        }
        Ok(value)
    }

    fn number(&mut self) -> Result<(), StrictError> {
        let input = self.input;
        let start = self.pos;
        let digits = |pos: &mut usize| {
            let from = *pos;
            while input.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        let mut pos = start;
        if input[pos] == b'-' {
            pos += 1;
        }
        let int_start = pos;
        let n = digits(&mut pos);
        if n == 0 || (n > 1 && input[int_start] == b'0') {
            self.pos = pos;
            return Err(self.syntax("invalid number"));
        }
        let mut integer = true;
        if input.get(pos) == Some(&b'.') {
            pos += 1;
            integer = false;
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = input.get(pos) {
            pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = input.get(pos) {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.syntax("invalid number"));
            }
        }
        self.pos = pos;
        // An integer of up to 18 digits fits in an i64 (the common case, checked without parsing).
        if integer && pos - int_start <= 18 {
            return Ok(());
        }
        // The grammar above admits only ASCII.
        let text = std::str::from_utf8(&input[start..pos]).unwrap_or_default();
        let carried = if integer { exact(text, true) } else { plainly_exact(text) || exact(text, false) };
        if !carried {
            let shown: String = text.chars().take(40).collect();
            let shown = if shown.len() < text.len() { format!("{shown}...") } else { shown };
            self.refuse(StrictError::Number(shown))?;
        }
        Ok(())
    }
}

/// The bytes of a key's UTF-8 `text` folded as [`Keys::Folded`] says, without allocating. The
/// characters folded to ASCII start with a lead byte (`C4`, `C5`, `E2`), never found inside another
/// character, so two texts are equal folded exactly when these bytes are.
#[inline]
fn folded(text: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let b = *text.get(pos)?;
        let (byte, width) = match b {
            b'A'..=b'Z' => (b | 0x20, 1),
            0xC4 | 0xC5 | 0xE2 => match &text[pos..] {
                // U+0130 İ, U+0131 ı
                [0xC4, 0xB0 | 0xB1, ..] => (b'i', 2),
                // U+017F ſ
                [0xC5, 0xBF, ..] => (b's', 2),
                // U+212A K
                [0xE2, 0x84, 0xAA, ..] => (b'k', 3),
                _ => (b, 1),
            },
            _ => (b, 1),
        };
        pos += width;
        Some(byte)
    })
}

/// Whether `key` differs from `known` but is equal to it once both are folded as [`Keys::Folded`]
/// says: a server that matches keys loosely reads one as the other. Cheap and without allocating:
/// only a key whose length a folding of `known` can have (each character folded to an ASCII letter
/// is one to three bytes) is folded, and the folding stops at the first byte that differs.
#[inline]
pub(crate) fn same_but_case(key: &[u8], known: &[u8]) -> bool {
    (known.len()..=3 * known.len()).contains(&key.len()) && key != known && folded(key).eq(folded(known))
}

/// Whether a JSON number can be carried exactly: an integer within i64/u64, or a number whose
/// double is finite and whose shortest representation, as serde_json, Python and JavaScript print
/// it, has the same decimal value as the text. (Where a double lies exactly between two shortest
/// candidates, as `208491156540016.625` does, they print the even one, `.62`; Rust's own `{}`
/// prints `.63`, so it is not the reference.)
pub fn exact(text: &str, integer: bool) -> bool {
    if integer {
        return if text.starts_with('-') { text.parse::<i64>().is_ok() } else { text.parse::<u64>().is_ok() };
    }
    let Ok(f) = text.parse::<f64>() else { return false };
    if !f.is_finite() {
        return false;
    }
    let Some(written) = Decimal::of(text) else { return false };
    let Some(shortest) = serde_json::Number::from_f64(f).map(|n| n.to_string()) else { return false };
    let Some(repr) = Decimal::of(&shortest) else { return false };
    written == repr
}

/// Whether a number with a fraction or an exponent, as the JSON grammar admits it, is carried
/// exactly for a plain reason, which [`exact`] would find at a greater cost: it has at most 15
/// significant digits and lies within the normal range of doubles, so it prints back as written
/// (any 15-digit decimal survives a round trip through a double: in one decade those decimals lie
/// further apart than the width of a double's rounding interval there).
fn plainly_exact(text: &str) -> bool {
    // 0.DIGITS × 10^exp with exp in -306..=308 lies in [1e-307, 1e308): finite and normal.
    Decimal::of(text).is_some_and(|d| d.len == 0 || (d.len <= 15 && (-306..=308).contains(&d.exp)))
}

/// A decimal value as `0.DIGITS × 10^exp`, without leading or trailing zeros (zero has no digits).
#[derive(PartialEq, Eq)]
struct Decimal {
    digits: [u8; 17],
    len: usize,
    exp: i64,
}

impl Decimal {
    /// `None` when it has more than 17 significant digits (no double's shortest form does).
    fn of(text: &str) -> Option<Decimal> {
        let text = text.strip_prefix('-').unwrap_or(text);
        // (Bytes are searched rather than chars: the same positions, found at a lower cost.)
        let (mantissa, exponent) = match text.bytes().position(|b| b == b'e' || b == b'E') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, "0"),
        };
        let (int, frac) = match mantissa.bytes().position(|b| b == b'.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        let (negative, exp_digits) = match exponent.as_bytes().first() {
            Some(b'-') => (true, &exponent[1..]),
            Some(b'+') => (false, &exponent[1..]),
            _ => (false, exponent),
        };
        let mut written_exp: i64 = 0;
        for d in exp_digits.bytes() {
            written_exp = written_exp.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        }
        if negative {
            written_exp = -written_exp;
        }
        let mut out = Decimal { digits: [0; 17], len: 0, exp: 0 };
        // Digits seen past the 17 kept (all must be zeros that end up trailing).
        let mut leading = true;
        let mut point: i64 = int.len() as i64;
        let mut zeros_pending = 0usize;
        for d in int.bytes().chain(frac.bytes()) {
            if leading {
                if d == b'0' {
                    point -= 1;
                    continue;
                }
                leading = false;
            }
            if d == b'0' {
                zeros_pending += 1;
                continue;
            }
            if out.len + zeros_pending + 1 > 17 {
                return None;
            }
            out.len += zeros_pending;
            zeros_pending = 0;
            out.digits[out.len] = d;
            out.len += 1;
        }
        if out.len == 0 {
            return Some(Decimal { digits: [0; 17], len: 0, exp: 0 });
        }
        out.exp = point.saturating_add(written_exp);
        // Unused digit slots stay 0 for a stable comparison; fill the kept zeros.
        for slot in out.digits[..out.len].iter_mut() {
            if *slot == 0 {
                *slot = b'0';
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests;
