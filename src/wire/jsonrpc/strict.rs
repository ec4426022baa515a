//! The one strict reading of every message: a single pass over the bytes that refuses what two
//! JSON parsers could read differently, and writes the canonical bytes the proxy then parses and
//! forwards.
//!
//! Refused: invalid UTF-8; a duplicate key in any object (compared after unescaping, so
//! `"n\u0061me"` is `"name"`); a `\u` escape that is not Unicode (a lone or misordered
//! surrogate); nesting deeper than [`MAX_DEPTH`]; a number the proxy cannot carry exactly (an
//! integer outside the i64/u64 range, a fraction or exponent whose double is not finite or is not
//! exactly the number written, like `0.1` is but `3.14159265358979323846` and `1e400` are not).
//!
//! Canonical means: no whitespace between tokens, and U+2028, U+2029 and U+0085 inside strings
//! written as `\uXXXX` escapes (same meaning; some line readers end a line at them). Everything
//! else is kept byte for byte: key order, escapes, number text. A canonical message therefore
//! holds no byte that any mainstream line reader takes for the end of a line.

use serde_json::value::RawValue;

/// The deepest nesting accepted, counting the message's own object as level 1.
pub const MAX_DEPTH: usize = 64;

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    #[error("not valid UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("not valid JSON at byte {at}: {what}")]
    Syntax { at: usize, what: &'static str },
    #[error("duplicate key {0:?} in one object")]
    DuplicateKey(String),
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

/// Checks one JSON text and returns its canonical bytes.
pub fn canonicalize(input: &[u8]) -> Result<Vec<u8>, StrictError> {
    let mut scanner = Scanner::new(input, false);
    scanner.run()?;
    Ok(scanner.out)
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
    let mut scanner = Scanner::new(input, true);
    let _ = scanner.run();
    let mut env = Envelope { id_count: scanner.ids.len(), response: scanner.response, ..Envelope::default() };
    if scanner.ids.len() == 1 {
        let (start, end) = scanner.ids[0];
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
    env.methods = scanner.methods.iter().map(decode).collect();
    env.tool_names = scanner.names.iter().map(decode).collect();
    env
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

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    stack: Vec<Frame>,
    /// Unescaped keys of the open objects, as ranges of `arena`.
    keys: Vec<(usize, usize)>,
    arena: Vec<u8>,
    /// Lenient mode: record nothing but the envelope, tolerate everything but syntax.
    lenient: bool,
    /// The envelope key of the value being read, when it is watched.
    watch: Watch,
    ids: Vec<(usize, usize)>,
    methods: Vec<(usize, usize)>,
    names: Vec<(usize, usize)>,
    response: bool,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a [u8], lenient: bool) -> Scanner<'a> {
        Scanner {
            input,
            pos: 0,
            out: Vec::with_capacity(input.len()),
            stack: Vec::new(),
            keys: Vec::new(),
            arena: Vec::new(),
            lenient,
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
        if self.lenient { Ok(()) } else { Err(e) }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    fn run(&mut self) -> Result<(), StrictError> {
        if let Err(e) = std::str::from_utf8(self.input) {
            if !self.lenient {
                return Err(StrictError::Utf8(e.valid_up_to()));
            }
        }
        let mut expect = Expect::Value;
        loop {
            self.skip_ws();
            match expect {
                Expect::Value => {
                    expect = Expect::After;
                    let start = self.pos;
                    match self.input.get(self.pos) {
                        Some(&open @ (b'{' | b'[')) => {
                            if self.stack.len() >= MAX_DEPTH {
                                // Fatal even to the lenient look, which must not grow its stack
                                // with a hostile line either.
                                return Err(StrictError::TooDeep);
                            }
                            let watch = if self.stack.len() == 1 && self.watch == Watch::Params {
                                Watch::Params
                            } else {
                                Watch::None
                            };
                            self.stack.push(Frame {
                                object: open == b'{',
                                keys_start: self.keys.len(),
                                arena_start: self.arena.len(),
                                watch,
                            });
                            self.watch = Watch::None;
                            self.out.push(open);
                            self.pos += 1;
                            self.skip_ws();
                            let close = if open == b'{' { b'}' } else { b']' };
                            if self.input.get(self.pos) == Some(&close) {
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
                    if self.input.get(self.pos) != Some(&b'"') {
                        return Err(self.syntax("expected a key"));
                    }
                    let arena_from = self.arena.len();
                    self.string(true)?;
                    self.watch_key(arena_from);
                    if !self.lenient {
                        self.keys.push((arena_from, self.arena.len()));
                    } else {
                        self.arena.truncate(arena_from);
                    }
                    self.skip_ws();
                    if self.input.get(self.pos) != Some(&b':') {
                        return Err(self.syntax("expected ':'"));
                    }
                    self.out.push(b':');
                    self.pos += 1;
                    expect = Expect::Value;
                }
                Expect::After => {
                    let Some(frame) = self.stack.last() else {
                        if self.pos != self.input.len() {
                            return Err(self.syntax("characters after the value"));
                        }
                        return Ok(());
                    };
                    let (object, close) = (frame.object, if frame.object { b'}' } else { b']' });
                    match self.input.get(self.pos) {
                        Some(b',') => {
                            self.out.push(b',');
                            self.pos += 1;
                            expect = if object { Expect::Key } else { Expect::Value };
                        }
                        Some(&b) if b == close => self.close()?,
                        _ => return Err(self.syntax("expected ',' or the end of the container")),
                    }
                }
            }
        }
    }

    /// Notes which envelope key the next value belongs to.
    fn watch_key(&mut self, arena_from: usize) {
        let key = &self.arena[arena_from..];
        self.watch = match (self.stack.len(), self.stack.last().map(|f| f.watch)) {
            (1, _) => match key {
                b"id" => Watch::Id,
                b"method" => Watch::Method,
                b"params" => Watch::Params,
                b"result" | b"error" => {
                    self.response = true;
                    Watch::None
                }
                _ => Watch::None,
            },
            (2, Some(Watch::Params)) if key == b"name" => Watch::ParamsName,
            _ => Watch::None,
        };
    }

    /// Records the span of a scalar the envelope look wants.
    fn record(&mut self, start: usize) {
        let span = (start, self.pos);
        match std::mem::replace(&mut self.watch, Watch::None) {
            Watch::Id => self.ids.push(span),
            Watch::Method if self.input[start] == b'"' => self.methods.push(span),
            Watch::ParamsName if self.input[start] == b'"' => self.names.push(span),
            _ => {}
        }
    }

    /// Closes the innermost container at `pos`, checking an object's keys for duplicates.
    fn close(&mut self) -> Result<(), StrictError> {
        let Some(frame) = self.stack.pop() else { return Err(self.syntax("unbalanced brackets")) };
        self.out.push(self.input[self.pos]);
        self.pos += 1;
        self.watch = Watch::None;
        if frame.object && !self.lenient {
            let keys = &mut self.keys[frame.keys_start..];
            if keys.len() > 1 {
                let arena = &self.arena;
                keys.sort_unstable_by(|a, b| arena[a.0..a.1].cmp(&arena[b.0..b.1]));
                if let Some(pair) = keys.windows(2).find(|w| arena[w[0].0..w[0].1] == arena[w[1].0..w[1].1]) {
                    let key = String::from_utf8_lossy(&arena[pair[0].0..pair[0].1]).into_owned();
                    return Err(StrictError::DuplicateKey(key));
                }
            }
            self.keys.truncate(frame.keys_start);
            self.arena.truncate(frame.arena_start);
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), StrictError> {
        if !self.input[self.pos..].starts_with(word) {
            return Err(self.syntax("expected true, false or null"));
        }
        self.out.extend_from_slice(word);
        self.pos += word.len();
        self.watch = Watch::None;
        Ok(())
    }

    /// Copies a string; a key's unescaped text is appended to `arena`.
    fn string(&mut self, key: bool) -> Result<(), StrictError> {
        let input = self.input;
        self.out.push(b'"');
        self.pos += 1;
        loop {
            let run_start = self.pos;
            while let Some(&b) = input.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 || b == 0xC2 || b == 0xE2 {
                    break;
                }
                self.pos += 1;
            }
            let run = &input[run_start..self.pos];
            self.out.extend_from_slice(run);
            if key {
                self.arena.extend_from_slice(run);
            }
            match input.get(self.pos) {
                None => return Err(self.syntax("unterminated string")),
                Some(b'"') => {
                    self.out.push(b'"');
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => self.escape(key)?,
                Some(&b @ (0xC2 | 0xE2)) => {
                    let width = if b == 0xC2 { 2 } else { 3 };
                    let seq = input.get(self.pos..self.pos + width).unwrap_or(&input[self.pos..self.pos + 1]);
                    let escaped: Option<&[u8]> = match seq {
                        [0xC2, 0x85] => Some(br"\u0085"),
                        [0xE2, 0x80, 0xA8] => Some(br"\u2028"),
                        [0xE2, 0x80, 0xA9] => Some(br"\u2029"),
                        _ => None,
                    };
                    match escaped {
                        Some(esc) => {
                            self.out.extend_from_slice(esc);
                            if key {
                                self.arena.extend_from_slice(seq);
                            }
                            self.pos += seq.len();
                        }
                        None => {
                            // The lead byte of another character: copy it, the rest follows as a run.
                            self.out.push(b);
                            if key {
                                self.arena.push(b);
                            }
                            self.pos += 1;
                        }
                    }
                }
                Some(_) => return Err(self.syntax("control character in a string")),
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
            self.out.extend_from_slice(&self.input[at..at + 2]);
            if key {
                self.arena.push(c);
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
        self.out.extend_from_slice(&self.input[at..at + len]);
        if key {
            let ch = ch.unwrap_or(char::REPLACEMENT_CHARACTER);
            let mut buf = [0u8; 4];
            self.arena.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
        self.pos = at + len;
        Ok(())
    }

    fn hex4(&self, at: usize) -> Result<u32, StrictError> {
        let digits = self.input.get(at..at + 4).ok_or_else(|| self.syntax("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.syntax("invalid \\u escape"))?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.syntax("invalid \\u escape"));
        }
        u32::from_str_radix(text, 16).map_err(|_| self.syntax("invalid \\u escape"))
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
        // The grammar above admits only ASCII.
        let text = std::str::from_utf8(&input[start..pos]).unwrap_or_default();
        if !exact(text, integer) {
            let shown: String = text.chars().take(40).collect();
            let shown = if shown.len() < text.len() { format!("{shown}...") } else { shown };
            self.refuse(StrictError::Number(shown))?;
        }
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }
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
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, "0"),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
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
