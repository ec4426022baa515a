//! What a person is shown is what runs: characters that are invisible, reorder the text around
//! them or pass for a plain space are shown as a visible mark (`⟨U+202E⟩`) wherever an approver
//! reads untrusted text (the dashboard, `mcp-gate approvals`, Slack and Teams messages), and names
//! are compared the way a person reads them.
//!
//! Marked: bidirectional controls (U+202A-202E, U+2066-2069, U+200E, U+200F, U+061C), the other
//! format characters of Unicode category Cf (zero-width spaces and joiners, U+2060-2064, U+FEFF,
//! tag characters...), control characters other than line feed and tab, fillers and variation
//! selectors that draw nothing, and the spaces that look like U+0020 but are not (U+00A0,
//! U+2000-200A, U+202F, U+205F, U+3000...).

use std::borrow::Cow;

/// Whether `c` is shown as a mark rather than drawn.
pub fn is_hidden(c: char) -> bool {
    matches!(
        c as u32,
        // Control characters (C0, DEL, C1) but line feed and tab.
        0x00..=0x08 | 0x0B..=0x1F | 0x7F..=0x9F
        // Category Cf: soft hyphen, Arabic and Syriac marks, bidi and zero-width controls,
        // invisible operators, the byte-order mark, interlinear annotations, tags.
        | 0xAD
        | 0x600..=0x605
        | 0x61C
        | 0x6DD
        | 0x70F
        | 0x890..=0x891
        | 0x8E2
        | 0x180E
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x206F
        | 0xFEFF
        | 0xFFF9..=0xFFFB
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0001
        | 0xE0020..=0xE007F
        // Characters that draw nothing: the combining grapheme joiner, Hangul fillers, Khmer
        // inherent vowels, variation selectors, the Mongolian free variation selectors.
        | 0x34F
        | 0x115F..=0x1160
        | 0x17B4..=0x17B5
        | 0x180B..=0x180D
        | 0x180F
        | 0x3164
        | 0xFFA0
        | 0xFE00..=0xFE0F
        | 0xE0100..=0xE01EF
        // Spaces that pass for U+0020, and the line and paragraph separators.
        | 0xA0
        | 0x1680
        | 0x2000..=0x200A
        | 0x2028..=0x2029
        | 0x202F
        | 0x205F
        | 0x3000
    )
}

/// Whether `text` holds any character that [`mark`] would show as a mark.
pub fn contains_hidden(text: &str) -> bool {
    text.chars().any(is_hidden)
}

/// Whether any string (or object key) inside a JSON value holds a hidden character other than a
/// control character (those are escaped wherever text is shown, JSON and terminals alike).
pub fn in_json(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    let misleads = |s: &str| s.chars().any(|c| is_hidden(c) && !c.is_control());
    match value {
        Value::String(s) => misleads(s),
        Value::Array(items) => items.iter().any(in_json),
        Value::Object(map) => map.iter().any(|(k, v)| misleads(k) || in_json(v)),
        _ => false,
    }
}

/// The warning shown on a request whose text holds hidden characters.
pub const WARNING: &str = "this request contains invisible or look-alike characters, shown as ⟨U+XXXX⟩: what \
                           you read may differ from what runs";

/// Whether a request (the API's JSON of an approval) holds hidden characters in what an approver
/// reads: agent, server, tool, arguments, the tool's description.
pub fn in_request(approval: &serde_json::Value) -> bool {
    ["agent", "server", "tool", "arguments", "tool_info"].iter().any(|k| approval.get(k).is_some_and(in_json))
}

/// The mark shown in place of `c`: `⟨U+202E⟩`.
pub fn mark_of(c: char) -> String {
    format!("⟨U+{:04X}⟩", c as u32)
}

/// `text` with every hidden character replaced by its mark.
pub fn mark(text: &str) -> Cow<'_, str> {
    if !contains_hidden(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_hidden(c) {
            out.push_str(&mark_of(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A run of drawable text, or one hidden character (for renderers that highlight marks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Hidden(char),
}

/// `text` cut into drawable runs and hidden characters, in order.
pub fn segments(text: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if is_hidden(c) {
            if start < i {
                out.push(Segment::Text(&text[start..i]));
            }
            out.push(Segment::Hidden(c));
            start = i + c.len_utf8();
        }
    }
    if start < text.len() {
        out.push(Segment::Text(&text[start..]));
    }
    out
}

/// A name as a person reads it, for comparing identities: hidden characters dropped, Unicode
/// compatibility normalisation (NFKC), case folded, whitespace trimmed and collapsed. `Agent-X`,
/// `agent\u{2011}x`-like variants of width or case, and ` agent-x ` are one name.
pub fn normalise_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let visible: String = name.chars().filter(|c| !is_hidden(*c) || c.is_whitespace()).collect();
    let folded = visible.nfkc().collect::<String>().to_lowercase();
    let folded: String = folded.nfkc().collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_and_odd_spaces_are_marked() {
        assert_eq!(mark("/home/user/\u{202e}cod.tropeR"), "/home/user/⟨U+202E⟩cod.tropeR");
        assert_eq!(mark("a\u{200b}b\u{a0}\u{a0}c\u{2066}d\u{feff}"), "a⟨U+200B⟩b⟨U+00A0⟩⟨U+00A0⟩c⟨U+2066⟩d⟨U+FEFF⟩");
        assert_eq!(mark("tag\u{e0041}"), "tag⟨U+E0041⟩");
        assert_eq!(mark("line\r\nnext\tcol"), "line⟨U+000D⟩\nnext\tcol");
        for c in ['\u{200e}', '\u{200f}', '\u{61c}', '\u{202a}', '\u{2069}', '\u{2060}', '\u{3000}', '\u{202f}'] {
            assert!(is_hidden(c), "{:04X}", c as u32);
        }
        let plain = "plain text, accents é and 漢字, spaces and\nlines";
        assert!(matches!(mark(plain), Cow::Borrowed(_)));
        assert!(!contains_hidden(plain));
    }

    #[test]
    fn segments_keep_the_order() {
        assert_eq!(
            segments("a\u{202e}bc\u{200b}"),
            vec![Segment::Text("a"), Segment::Hidden('\u{202e}'), Segment::Text("bc"), Segment::Hidden('\u{200b}')]
        );
        assert!(segments("").is_empty());
    }

    #[test]
    fn requests_are_searched_everywhere_an_approver_reads() {
        let plain = serde_json::json!({"agent": "claude", "tool": "delete_file", "arguments": {"path": "/tmp/x"}});
        assert!(!in_request(&plain));
        for (k, v) in [
            ("agent", serde_json::json!("clau\u{200b}de")),
            ("arguments", serde_json::json!({"path": ["/home/\u{202e}cod.tropeR"]})),
            ("arguments", serde_json::json!({"pa\u{a0}th": 1})),
            ("tool_info", serde_json::json!({"description": "Reads\u{2066} a file"})),
        ] {
            let mut a = plain.clone();
            a[k] = v;
            assert!(in_request(&a), "{k}");
        }
    }

    #[test]
    fn names_compare_as_read() {
        assert_eq!(normalise_name("Agent-X"), "agent-x");
        assert_eq!(normalise_name("  agent-x "), "agent-x");
        assert_eq!(normalise_name("ＡＧＥＮＴ-Ｘ"), "agent-x", "full-width letters");
        assert_eq!(normalise_name("agent\u{200b}-x"), "agent-x", "zero-width space");
        assert_eq!(normalise_name("second\u{a0}\u{2003} person"), "second person");
        assert_ne!(normalise_name("agent-x"), normalise_name("agent-y"));
    }
}
