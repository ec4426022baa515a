use super::*;

fn ok(input: &str) -> String {
    String::from_utf8(canonicalize(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"))).unwrap()
}

fn err(input: &str) -> StrictError {
    canonicalize(input.as_bytes()).expect_err(input)
}

#[test]
fn whitespace_between_tokens_is_removed_and_the_rest_kept() {
    assert_eq!(ok(" {\r\n\"a\" :\t[ 1 , \"x y\\n\\u00e9\" ,{} ,[ ]] }\r\n"), r#"{"a":[1,"x y\n\u00e9",{},[]]}"#);
    assert_eq!(ok(r#"{"b":1.50,"a":-0,"c":1E+2}"#), r#"{"b":1.50,"a":-0,"c":1E+2}"#);
}

#[test]
fn line_separators_inside_strings_are_escaped() {
    assert_eq!(ok("[\"a\u{2028}b\u{2029}c\u{85}d\u{e9}\u{20ac}\"]"), r#"["a\u2028b\u2029c\u0085dé€"]"#);
}

#[test]
fn duplicate_keys_are_refused_at_every_depth_after_unescaping() {
    assert_eq!(err(r#"{"name":"echo","name":"rm"}"#), StrictError::DuplicateKey("name".into()));
    assert_eq!(err(r#"{"name":"echo","n\u0061me":"rm"}"#), StrictError::DuplicateKey("name".into()));
    assert_eq!(err(r#"{"method":"a","x":{},"method":"b"}"#), StrictError::DuplicateKey("method".into()));
    assert_eq!(err(r#"{"a":[{"k":1,"\u006b":2}]}"#), StrictError::DuplicateKey("k".into()));
    assert_eq!(err(r#"{"\ud83d\ude00":1,"😀":2}"#), StrictError::DuplicateKey("😀".into()));
    assert_eq!(err(r#"{"\n":1,"\u000a":2}"#), StrictError::DuplicateKey("\n".into()));
    // The same key in sibling objects, or in an object and its child, is fine.
    ok(r#"{"a":{"a":1},"b":{"a":2},"c":[{"a":1},{"a":1}]}"#);
}

#[test]
fn invalid_unicode_escapes_are_refused() {
    assert!(matches!(err(r#"["\ud800"]"#), StrictError::Surrogate(_)));
    assert!(matches!(err(r#"["\udc00\ud800"]"#), StrictError::Surrogate(_)));
    assert!(matches!(err(r#"["\ud800\u0041"]"#), StrictError::Surrogate(_)));
    assert!(matches!(err(r#"["\ud800x"]"#), StrictError::Surrogate(_)));
    assert_eq!(ok(r#"["\ud83d\ude00"]"#), r#"["\ud83d\ude00"]"#);
    assert!(matches!(err("[\"a\u{0}\"]"), StrictError::Syntax { .. }));
    assert!(matches!(err("[\"a\rb\"]"), StrictError::Syntax { .. }));
    assert!(matches!(canonicalize(b"[\"\xff\"]"), Err(StrictError::Utf8(2))));
}

#[test]
fn nesting_is_limited() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    ok(&deep(MAX_DEPTH));
    assert_eq!(err(&deep(MAX_DEPTH + 1)), StrictError::TooDeep);
    assert_eq!(err(&deep(200)), StrictError::TooDeep);
    assert_eq!(err(&deep(100_000)), StrictError::TooDeep);
}

#[test]
fn numbers_must_be_carried_exactly() {
    for good in [
        "0",
        "-0",
        "1.50",
        "0.1",
        "1e23",
        "1E23",
        "-1.5e-7",
        "18446744073709551615",
        "-9223372036854775808",
        "5e-324",
        "1.7976931348623157e308",
        "0.30000000000000004",
        "100.0",
        "123e3",
        "0e999999",
    ] {
        ok(&format!("[{good}]"));
    }
    for bad in [
        "1e400",
        "-1e400",
        "1e-400",
        "3.14159265358979323846",
        "100000000000000000000000",
        "18446744073709551616",
        "18446744073709551617",
        "-9223372036854775809",
        "0.1000000000000000055511151231257827",
        "9007199254740993.0",
        "123456789012345678e3",
    ] {
        assert!(matches!(err(&format!("[{bad}]")), StrictError::Number(_)), "{bad}");
    }
}

#[test]
fn syntax_errors_are_reported() {
    for bad in ["", "{", "[1,]", "{\"a\"}", "{\"a\":1,}", "01", "[1.]", "tru", "[] x", "{'a':1}", "\u{feff}{}", "[1e]"]
    {
        assert!(err(bad).is_syntax(), "{bad:?}");
    }
}

#[test]
fn the_lenient_look_reads_the_envelope_of_refused_messages() {
    let env = lenient_envelope(br#"{"jsonrpc":"2.0","id":"r1","method":"tools/call","params":{"name":"a","name":"b","arguments":{"x":1e400,"y":"\ud800"}}}"#);
    assert_eq!(env.id.as_ref().map(|r| r.get()), Some(r#""r1""#));
    assert!(env.is_tools_call());
    assert_eq!(env.tool_names, ["a", "b"]);
    // Two ids: no id can be trusted.
    let env = lenient_envelope(br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#);
    assert!(env.id.is_none());
    let env = lenient_envelope(br#"{"jsonrpc":"2.0","id":3,"method":"x","params":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#);
    assert_eq!(env.id.as_ref().map(|r| r.get()), Some("3"));
    assert!(lenient_envelope(b"{not json").id.is_none());
}
