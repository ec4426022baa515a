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

/// A client's message: keys must differ after folding case too.
fn client(input: &str) -> Result<String, StrictError> {
    canonical_read(input.as_bytes(), Keys::Folded, |text, _| text.into_owned())
}

fn case_dup(a: &str, b: &str) -> Result<String, StrictError> {
    Err(StrictError::CaseDuplicateKey(a.into(), b.into()))
}

#[test]
fn a_clients_keys_that_differ_only_by_case_are_refused_at_every_depth() {
    // The envelope, the params of a call, and its arguments.
    assert_eq!(
        client(r#"{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}"#),
        case_dup("method", "METHOD")
    );
    assert_eq!(
        client(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"},"Params":{"name":"b"}}"#),
        case_dup("params", "Params")
    );
    let smuggled = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"NAME":"delete_file","Arguments":{"path":"/etc/passwd"}}}"#;
    assert_eq!(client(smuggled), case_dup("name", "NAME"));
    assert_eq!(
        client(r#"{"params":{"name":"rm","arguments":{"path":"/a","x":[{"k":1}],"PATH":"/etc"}}}"#),
        case_dup("path", "PATH")
    );
    assert_eq!(client(r#"{"a":[1,{"b":{"Key":1,"kEY":2}}]}"#), case_dup("Key", "kEY"));
    // Compared after unescaping.
    assert_eq!(client(r#"{"name":1,"\u004eame":2}"#), case_dup("name", "Name"));
    // The non-ASCII letters some decoders take for ASCII ones.
    assert_eq!(client("{\"name\":1,\"argument\u{17f}\":2,\"arguments\":3}"), case_dup("argument\u{17f}", "arguments"));
    assert_eq!(client(r#"{"task":1,"tas\u212a":2}"#), case_dup("task", "tas\u{212a}"));
    assert_eq!(client("{\"\u{212a}ind\":1,\"KIND\":2}"), case_dup("\u{212a}ind", "KIND"));
    assert_eq!(client("{\"\u{131}d\":1,\"ID\":2}"), case_dup("\u{131}d", "ID"));
    assert_eq!(client("{\"\u{130}d\":1,\"id\":2}"), case_dup("\u{130}d", "id"));
    // An object with many keys is sorted to find them.
    let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let many = format!(r#"{{{},"K17":0}}"#, many.join(","));
    assert_eq!(client(&many), case_dup("K17", "k17"));
    // A plain duplicate is still reported as one.
    assert_eq!(client(r#"{"name":1,"NAME":2,"name":3}"#), Err(StrictError::DuplicateKey("name".into())));
    assert_eq!(StrictError::CaseDuplicateKey("name".into(), "NAME".into()).rule(), "keys differing only by case");
}

fn case_variant(key: &str, known: &'static str) -> Result<String, StrictError> {
    Err(StrictError::CaseVariantKey(key.into(), known))
}

#[test]
fn a_clients_envelope_and_params_keys_that_differ_only_by_case_from_the_protocols_are_refused() {
    // Alone, with no exact partner: the gate sees no arguments, a loose server sees them.
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","Arguments":{"path":"/etc/passwd"}}}"#;
    assert_eq!(client(call), case_variant("Arguments", "arguments"));
    // The envelope.
    for (line, key, known) in [
        (r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","Params":{"name":"w"}}"#, "Params", "params"),
        (r#"{"jsonrpc":"2.0","id":1,"METHOD":"tools/call","params":{}}"#, "METHOD", "method"),
        (r#"{"jsonrpc":"2.0","ID":1,"method":"tools/call","params":{}}"#, "ID", "id"),
        (r#"{"JSONRPC":"2.0","id":1,"method":"ping"}"#, "JSONRPC", "jsonrpc"),
        (r#"{"jsonrpc":"2.0","id":1,"Result":{}}"#, "Result", "result"),
        (r#"{"jsonrpc":"2.0","id":1,"eRROR":{}}"#, "eRROR", "error"),
        ("{\"jsonrpc\":\"2.0\",\"\u{130}d\":1,\"method\":\"ping\"}", "\u{130}d", "id"),
    ] {
        assert_eq!(client(line), case_variant(key, known), "{line}");
    }
    // The params of any request or notification.
    for (params, key, known) in [
        (r#"{"Name":"w","arguments":{}}"#, "Name", "name"),
        (r#"{"name":"w","_Meta":{"progressToken":1}}"#, "_Meta", "_meta"),
        (r#"{"name":"w","Task":{"ttl":1}}"#, "Task", "task"),
        ("{\"name\":\"w\",\"ta\u{17f}k\":{}}", "ta\u{17f}k", "task"),
        (r#"{"CURSOR":"x"}"#, "CURSOR", "cursor"),
        (r#"{"Uri":"file:///etc/passwd"}"#, "Uri", "uri"),
        (r#"{"taskid":"t"}"#, "taskid", "taskId"),
        (r#"{"RequestId":3}"#, "RequestId", "requestId"),
        (r#"{"name":"w","requeststate":"s"}"#, "requeststate", "requestState"),
        (r#"{"\u0041rguments":{}}"#, "Arguments", "arguments"),
    ] {
        for method in ["tools/call", "notifications/cancelled"] {
            let id = if method.starts_with("notifications/") { "" } else { r#""id":2,"# };
            let line = format!(r#"{{"jsonrpc":"2.0",{id}"method":"{method}","params":{params}}}"#);
            assert_eq!(client(&line), case_variant(key, known), "{line}");
        }
    }
    // A pair is still reported as a pair, and a duplicate as a duplicate.
    assert_eq!(
        client(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","NAME":"b"}}"#),
        case_dup("name", "NAME")
    );
    assert_eq!(
        client(r#"{"jsonrpc":"2.0","Id":1,"Id":2,"method":"ping"}"#),
        Err(StrictError::DuplicateKey("Id".into()))
    );
    let err = crate::wire::jsonrpc::Message::parse_with(call.as_bytes(), Keys::Folded).unwrap_err();
    assert_eq!(err.code(), crate::wire::jsonrpc::code::INVALID_REQUEST);
    assert_eq!(
        err.to_string(),
        r#"message refused: key "Arguments" differs from "arguments" only by case: some servers read them as one key"#
    );
    assert_eq!(err.rule(), "keys differing only by case");
}

#[test]
fn keys_elsewhere_or_from_a_server_may_differ_by_case_from_the_protocols() {
    for line in [
        // Deeper than params: arguments, _meta, and objects inside arrays.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"w","arguments":{"Name":"x","ARGUMENTS":{},"Params":1,"ID":2},"_meta":{"Task":1}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"list":[{"Name":1}],"nested":{"Uri":2}}}"#,
        // Params keys are not envelope keys, and the other way round.
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"Id":1,"Method":2,"Params":3},"Name":4,"Arguments":5}"#,
        // A params that is no object, or a result.
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[{"Name":1}]}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{"Name":1,"Cursor":2}}"#,
        // Keys of the same letters but another length, or the protocol's own.
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"names":1,"uris":2,"_meta_":3,"tasks":4,"name":5}}"#,
    ] {
        assert_eq!(client(line).as_deref(), Ok(line), "{line}");
    }
    let line = r#"{"jsonrpc":"2.0","ID":1,"Result":{},"Params":{"Name":1}}"#;
    assert_eq!(ok(line), line, "a server's message may hold them");
    assert!(same_but_case(b"NAME", b"name") && same_but_case("\u{212a}ey".as_bytes(), b"key"));
    assert!(!same_but_case(b"name", b"name") && !same_but_case(b"nam", b"name") && !same_but_case(b"names", b"name"));
}

#[test]
fn keys_that_differ_only_by_case_are_accepted_apart_or_from_a_server() {
    // In different objects, or distinct once folded.
    let apart = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"Name":1,"x":{"NAME":2},"y":[{"name":3}]}}}"#;
    assert_eq!(client(apart).as_deref(), Ok(apart));
    for distinct in [
        r#"{"a":1,"b":2,"_a":3,"a_":4}"#,
        "{\"\u{e9}\":1,\"\u{c9}\":2,\"\u{212b}\":3,\"\u{c5}\":4,\"\u{df}\":5,\"ss\":6}",
        "{\"s\":1,\"\u{17e}\":2,\"\u{c4}\u{b0}\":3}",
    ] {
        assert_eq!(client(distinct).as_deref(), Ok(distinct));
    }
    let many: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i},"x{i}":{i}"#)).collect();
    let many = format!("{{{}}}", many.join(","));
    assert_eq!(client(&many).as_deref(), Ok(many.as_str()));
    // A server's message may hold them: its tool results are relayed as they are.
    let result =
        r#"{"jsonrpc":"2.0","id":3,"result":{"structuredContent":{"a":1,"A":2,"\u017f":3,"S":4},"content":[]}}"#;
    assert_eq!(ok(result), result);
    assert!(crate::wire::jsonrpc::Message::parse(result.as_bytes()).is_ok());
    let err = crate::wire::jsonrpc::Message::parse_with(result.as_bytes(), Keys::Folded).unwrap_err();
    assert_eq!(err.code(), crate::wire::jsonrpc::code::INVALID_REQUEST);
    assert_eq!(
        err.to_string(),
        r#"message refused: keys "a" and "A" in one object differ only by case: some servers read them as one key"#
    );
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
    // The look stops at the depth limit: a line of brackets cannot make it grow.
    let deep = format!(r#"{{"jsonrpc":"2.0","id":4,"method":"x","params":{}}}"#, "[".repeat(1_000_000));
    assert_eq!(lenient_envelope(deep.as_bytes()).id.as_ref().map(|r| r.get()), Some("4"));
}

// === properties ===

use proptest::prelude::*;

/// Bytes no canonical message may hold raw: line ends of any mainstream reader.
fn holds_a_line_end(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    out.iter().any(|b| matches!(b, 0x0A | 0x0B | 0x0C | 0x0D | 0x1C..=0x1E))
        || text.contains(['\u{2028}', '\u{2029}', '\u{85}'])
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "\r", "\n", "\r\n ", " \t\r"])
}

fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c\u{2028}\u{2029}\u{85}\u{e9}\u{1f600} ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""\ud83d\ude00\u0000\n\/""#.to_owned()),
    ]
}

/// JSON texts the strict reading accepts: unique keys, exact numbers, any whitespace.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        // Rust's `{:e}` and the JSON printers write the same shortest digits, except for a double
        // exactly between two candidates, where Rust rounds the other way: such a text is not the
        // double's and is refused (see the test of 208491156540016.625), so it is left out here.
        any::<f64>()
            .prop_filter("finite, written as the printers write it", |f| {
                f.is_finite()
                    && Decimal::of(&format!("{f:e}")) == serde_json::to_string(f).ok().and_then(|t| Decimal::of(&t))
            })
            .prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::to_string(&f).unwrap()),
        string_literal(),
        Just("true".to_owned()),
        Just("null".to_owned()),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..4).prop_map(|items| {
                let parts: Vec<String> = items.iter().map(|(a, v, b)| format!("{a}{v}{b}")).collect();
                format!("[{}]", parts.join(","))
            }),
            prop::collection::btree_map("[a-c\u{2028}]{0,2}", (ws(), inner, ws()), 0..4).prop_map(|members| {
                let parts: Vec<String> = members
                    .iter()
                    .map(|(k, (a, v, b))| format!("{a}{}{b}:{a}{v}{b}", serde_json::to_string(k).unwrap()))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }),
        ]
    })
}

/// `"k"` written with its first character escaped.
fn escaped_key(k: &str) -> String {
    let mut chars = k.chars();
    match chars.next() {
        Some(c) if (c as u32) < 0x10000 => format!("\"\\u{:04x}{}\"", c as u32, chars.as_str()),
        _ => serde_json::to_string(k).unwrap(),
    }
}

/// 512 cases from a fixed seed, so that every run checks the same inputs; set
/// `PROPTEST_RNG_SEED` to explore others.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig { cases: 512, ..ProptestConfig::default() };
    if config.rng_seed == proptest::test_runner::RngSeed::Random {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x6d63_702d_6761_7465);
    }
    config
}

#[test]
fn a_double_between_two_shortest_forms_is_written_as_the_printers_write_it() {
    // 208491156540016.625 is a double: .62 and .63 both read back as it, and the printers of
    // serde_json, Python and JavaScript write it as .62.
    assert!(canonicalize(b"[208491156540016.62]").is_ok());
    for text in ["208491156540016.63", "208491156540016.625", "9007199254740993.0"] {
        assert!(canonicalize(format!("[{text}]").as_bytes()).is_err(), "{text}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn accepted_texts_keep_their_meaning_and_lose_every_line_end(text in json_text()) {
        let out = canonicalize(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let before: serde_json::Value = serde_json::from_str(&text).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(before, after);
        prop_assert!(!holds_a_line_end(&out), "{:?}", String::from_utf8_lossy(&out));
        prop_assert!(!out.contains(&b' ') || String::from_utf8_lossy(&out).contains('"'), "whitespace only inside strings");
        prop_assert_eq!(canonicalize(&out).unwrap(), out, "idempotent");
    }

    #[test]
    fn a_clients_keys_are_refused_when_equal_once_folded(
        keys in prop::collection::vec("[aAsSkKiI\u{17f}\u{212a}\u{131}\u{130}\u{e9}]{1,2}", 1..24),
        escaped in any::<bool>(),
    ) {
        let fold = |k: &str| -> String {
            k.chars()
                .map(|c| match c {
                    '\u{17f}' => 's',
                    '\u{212a}' => 'k',
                    '\u{130}' | '\u{131}' => 'i',
                    c => c.to_ascii_lowercase(),
                })
                .collect()
        };
        let members: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = if escaped && i % 2 == 1 { escaped_key(k) } else { serde_json::to_string(k).unwrap() };
                format!("{key}:{i}")
            })
            .collect();
        let doc = format!("[{{{}}}]", members.join(","));
        let mut sorted = keys.clone();
        sorted.sort();
        let duplicate = sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0].clone());
        let mut folded: Vec<String> = keys.iter().map(|k| fold(k)).collect();
        folded.sort();
        let case_duplicate = folded.windows(2).any(|w| w[0] == w[1]);
        let got = canonical_read(doc.as_bytes(), Keys::Folded, |_, _| ());
        match (duplicate, got) {
            (Some(key), got) => {
                prop_assert_eq!(got, Err(StrictError::DuplicateKey(key.clone())));
                prop_assert_eq!(canonicalize(doc.as_bytes()), Err(StrictError::DuplicateKey(key)));
            }
            (None, Err(StrictError::CaseDuplicateKey(a, b))) => {
                prop_assert!(case_duplicate && a != b && fold(&a) == fold(&b) && keys.contains(&a) && keys.contains(&b));
                prop_assert!(canonicalize(doc.as_bytes()).is_ok(), "a server's message may hold them");
            }
            (None, got) => prop_assert!(!case_duplicate && got.is_ok(), "{doc}: {got:?}"),
        }
    }

    #[test]
    fn a_duplicate_key_is_refused_wherever_it_is(
        text in json_text(),
        key in "[a-c\u{e9}]{1,3}",
        escaped in any::<bool>(),
        depth in 0usize..5,
    ) {
        let second = if escaped { escaped_key(&key) } else { serde_json::to_string(&key).unwrap() };
        let mut doc = format!("{{{}:{text},{second}:null}}", serde_json::to_string(&key).unwrap());
        for _ in 0..depth {
            doc = format!("[{{\"x\":{doc}}}]");
        }
        prop_assert_eq!(canonicalize(doc.as_bytes()), Err(StrictError::DuplicateKey(key)));
    }

    #[test]
    fn any_bytes_are_refused_or_come_out_canonical(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..48),
            "[\\[\\]{}\",:0-9eE.+\\-\\\\u a-d\r\n\t\u{2028}\u{0}]{0,40}".prop_map(String::into_bytes),
        ]
    ) {
        if let Ok(out) = canonicalize(&bytes) {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            prop_assert!(!holds_a_line_end(&out));
            prop_assert_eq!(canonicalize(&out).unwrap(), out);
        }
        let _ = lenient_envelope(&bytes);
    }

    #[test]
    fn the_line_reader_gives_back_every_line(text in "[ab\n]{0,64}", max in 1usize..8) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lines = rt.block_on(async {
            let mut reader = crate::wire::framing::LineReader::with_max(text.as_bytes(), max);
            let mut out = Vec::new();
            while let Some(line) = reader.next_line().await.unwrap() {
                out.push(line);
            }
            out
        });
        let mut rebuilt = Vec::new();
        let mut too_long = false;
        for line in &lines {
            match line {
                crate::wire::framing::Line::Data(d) => {
                    prop_assert!(d.len() <= max && !d.contains(&b'\n'));
                    rebuilt.push(String::from_utf8(d.to_vec()).unwrap());
                }
                crate::wire::framing::Line::TooLong { .. } => too_long = true,
            }
        }
        if !too_long {
            let mut joined = rebuilt.join("\n");
            if text.ends_with('\n') {
                joined.push('\n');
            }
            prop_assert_eq!(joined, text);
        }
    }
}

// === the same answers as the reference ===

/// Bits of JSON (and of broken JSON) to splice into texts.
fn splice() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        &b"\""[..],
        b"\\",
        b"\\u",
        b"\\u00",
        b"\\ud800",
        b"\\udc00",
        b"\\ud83d\\ude00",
        b"\\u0061",
        b"\\n",
        b"\\x",
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"]",
        b" ",
        b"\r\n",
        "\u{85}".as_bytes(),
        "\u{2028}".as_bytes(),
        "\u{2029}".as_bytes(),
        "\u{e9}\u{20ac}\u{1f600}".as_bytes(),
        b"\xC2",
        b"\xE2",
        b"\xE2\x80",
        b"\xE2\x80\xA8",
        b"\xff",
        b"\x00",
        b"\x1f",
        b"1e400",
        b"0.1",
        b"3.14159265358979323846",
        b"-",
        b"00",
        b"1.",
        b"18446744073709551616",
        b"\"a\":1,",
        b"\"\\u0061\":2,",
        b"null",
        b"tru",
        b"\"id\":7,",
        b"\"method\":\"tools/call\",",
        b"\"params\":{\"name\":\"x\"},",
        b"\"result\":1,",
    ])
    .prop_map(<[u8]>::to_vec)
}

/// A JSON text, often broken by a few splices, cuts or stray bytes.
fn mutated_text() -> impl Strategy<Value = Vec<u8>> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), splice()).prop_map(|(at, bits)| (at, Some(bits))),
        any::<prop::sample::Index>().prop_map(|at| (at, None)),
    ];
    (json_text(), prop::collection::vec(edit, 0..3)).prop_map(|(text, edits)| {
        let mut bytes = text.into_bytes();
        for (at, bits) in edits {
            let at = at.index(bytes.len() + 1);
            match bits {
                Some(bits) => {
                    bytes.splice(at..at, bits);
                }
                None => bytes.truncate(at),
            }
        }
        bytes
    })
}

/// Objects with up to 14 members whose keys, some escaped, often repeat.
fn crowded_object() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(("[ab\u{e9}\u{2028}]{0,2}", any::<bool>(), json_text()), 0..14).prop_map(|members| {
        let parts: Vec<String> = members
            .iter()
            .map(|(k, escaped, v)| {
                let key = if *escaped { escaped_key(k) } else { serde_json::to_string(k).unwrap() };
                format!("{key}:{v}")
            })
            .collect();
        format!("{{\"x\":[{{{}}}]}}", parts.join(",")).into_bytes()
    })
}

/// A JSON-RPC envelope around a text, with its members in any order and sometimes broken.
fn envelope_text() -> impl Strategy<Value = Vec<u8>> {
    let member = prop::sample::select(vec![
        r#""jsonrpc":"2.0""#,
        r#""jsonrpc":"2\u002e0""#,
        r#""jsonrpc":"1.0""#,
        r#""jsonrpc":2"#,
        r#""id":17"#,
        r#""id":"r-\u00e9""#,
        r#""id":null"#,
        r#""id":{}"#,
        r#""id":true"#,
        r#""method":"tools/call""#,
        r#""method":"tools\/call""#,
        r#""method":7"#,
        r#""m\u0065thod":"ping""#,
        r#""result":{"content":[]}"#,
        r#""error":{"code":-32601,"message":"no"}"#,
        r#""vendor":[1,{"a":"\u2028"}]"#,
        r#""_meta":{}"#,
        "\"\u{e9}\":\"\u{2028}\"",
    ]);
    (prop::collection::vec(member, 0..6), json_text(), any::<bool>(), any::<prop::sample::Index>()).prop_map(
        |(members, params, with_params, at)| {
            let mut members: Vec<String> = members.into_iter().map(str::to_owned).collect();
            if with_params {
                members.insert(at.index(members.len() + 1), format!("\"params\":{params}"));
            }
            format!("{{{}}}", members.join(",")).into_bytes()
        },
    )
}

/// Any of the texts above.
fn any_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_text().prop_map(String::into_bytes),
        mutated_text(),
        crowded_object(),
        envelope_text(),
        prop::collection::vec(any::<u8>(), 0..48),
    ]
}

fn same_envelope(a: &Envelope, b: &Envelope) -> bool {
    a.id.as_ref().map(|r| r.get()) == b.id.as_ref().map(|r| r.get())
        && a.id_count == b.id_count
        && a.methods == b.methods
        && a.tool_names == b.tool_names
        && a.response == b.response
}

/// A number the JSON grammar admits, with up to 20 digits and an exponent near the ends of the
/// range of doubles.
fn number_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        "(0|[1-9][0-9]{0,19})",
        prop::option::of("[0-9]{1,20}"),
        prop::option::of((prop::sample::select(vec!["e", "E", "e+", "e-", "E-"]), prop_oneof![0i32..30, 280i32..330])),
    )
        .prop_map(|(negative, int, frac, exp)| {
            let mut text = if negative { format!("-{int}") } else { int };
            if let Some(frac) = frac {
                text.push('.');
                text.push_str(&frac);
            }
            if let Some((e, n)) = exp {
                text.push_str(&format!("{e}{n}"));
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..config() })]

    #[test]
    fn the_scan_answers_as_the_reference(bytes in any_text()) {
        prop_assert_eq!(canonicalize(&bytes), reference::canonicalize(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
        let (env, expected) = (lenient_envelope(&bytes), reference::lenient_envelope(&bytes));
        prop_assert!(same_envelope(&env, &expected), "{:?}: {env:?} != {expected:?}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn a_plainly_exact_number_is_exact(text in number_text()) {
        let integer = !text.contains(['.', 'e', 'E']);
        prop_assert!(integer || !plainly_exact(&text) || exact(&text, false), "{text}");
        prop_assert_eq!(canonicalize(format!("[{text}]").as_bytes()), reference::canonicalize(format!("[{text}]").as_bytes()));
    }

    #[test]
    fn the_envelope_is_read_as_the_reference_reads_it(bytes in any_text()) {
        use crate::wire::jsonrpc::Message;
        match (Message::parse(&bytes), reference::parse_message(&bytes)) {
            (Ok(msg), Ok(expected)) => {
                prop_assert_eq!(format!("{msg:?}"), format!("{expected:?}"));
            }
            (Err(e), Err(expected)) => {
                prop_assert_eq!(e.to_string(), expected.to_string());
                prop_assert_eq!(e.code(), expected.code());
                prop_assert_eq!(e.rule(), expected.rule());
            }
            (got, expected) => prop_assert!(false, "{:?}: {got:?} != {expected:?}", String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn the_writer_writes_as_the_reference(bytes in any_text()) {
        let mut out = b"x".to_vec();
        crate::wire::framing::push_unsplittable(&mut out, &bytes);
        let mut expected = b"x".to_vec();
        reference::push_unsplittable(&mut expected, &bytes);
        prop_assert_eq!(out, expected);
    }
}

// === the reference: the first, plain implementation ===

/// The scanner as first written (a byte at a time, allocating as it goes), kept as the reference
/// the faster one must match byte for byte and error for error.
mod reference {
    use serde_json::value::RawValue;

    use super::super::{Envelope, MAX_DEPTH, StrictError, exact};

    /// Checks one JSON text and returns its canonical bytes.
    pub fn canonicalize(input: &[u8]) -> Result<Vec<u8>, StrictError> {
        let mut scanner = Scanner::new(input, false);
        scanner.run()?;
        Ok(scanner.out)
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
            serde_json::from_slice::<String>(raw).unwrap_or_else(|_| {
                String::from_utf8_lossy(raw.get(1..raw.len().saturating_sub(1)).unwrap_or(raw)).into()
            })
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
                    let low =
                        if self.input.get(at + 6..at + 8) == Some(b"\\u") { Some(self.hex4(at + 8)?) } else { None };
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

    // --- the envelope, the field reader and the line writer as first written ---

    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, Visitor};

    use crate::wire::jsonrpc::{Message, ParseError};

    pub struct OldMessage(pub Message);

    impl<'de> serde::Deserialize<'de> for OldMessage {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<OldMessage, D::Error> {
            struct MsgVisitor;
            impl<'de> Visitor<'de> for MsgVisitor {
                type Value = Message;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON-RPC 2.0 object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                    let mut msg = Message::default();
                    let mut version_ok = false;
                    while let Some(key) = map.next_key::<String>()? {
                        match key.as_str() {
                            "jsonrpc" => {
                                let v: String = map.next_value()?;
                                if v != "2.0" {
                                    return Err(de::Error::custom("jsonrpc must be \"2.0\""));
                                }
                                version_ok = true;
                            }
                            "id" => {
                                let id: Box<RawValue> = map.next_value()?;
                                let first = id.get().as_bytes().first().copied();
                                if !matches!(first, Some(b'"' | b'-' | b'0'..=b'9' | b'n')) {
                                    return Err(de::Error::custom("id must be a string or a number"));
                                }
                                msg.id = Some(id);
                            }
                            "method" => msg.method = Some(map.next_value()?),
                            "params" => msg.params = Some(map.next_value()?),
                            "result" => msg.result = Some(map.next_value()?),
                            "error" => msg.error = Some(map.next_value()?),
                            _ => {
                                let v: Box<RawValue> = map.next_value()?;
                                msg.extra.push((key, v));
                            }
                        }
                    }
                    if !version_ok {
                        return Err(de::Error::custom("missing \"jsonrpc\": \"2.0\""));
                    }
                    Ok(msg)
                }
            }
            deserializer.deserialize_map(MsgVisitor).map(OldMessage)
        }
    }

    pub fn parse_message(bytes: &[u8]) -> Result<Message, ParseError> {
        let canonical = canonicalize(bytes)?;
        if canonical.first() == Some(&b'[') {
            return Err(ParseError::Invalid("JSON-RPC batches are not supported"));
        }
        let msg: OldMessage = serde_json::from_slice(&canonical)?;
        msg.0.validate()?;
        Ok(msg.0)
    }

    pub fn push_unsplittable(out: &mut Vec<u8>, msg: &[u8]) {
        let mut run = 0;
        let mut i = 0;
        while i < msg.len() {
            let replaced: Option<(&[u8], usize)> = match msg[i] {
                b'\n' | b'\r' => Some((b"", 1)),
                0xC2 if msg.get(i + 1) == Some(&0x85) => Some((br"\u0085", 2)),
                0xE2 if msg.get(i + 1..i + 3) == Some(&[0x80, 0xA8]) => Some((br"\u2028", 3)),
                0xE2 if msg.get(i + 1..i + 3) == Some(&[0x80, 0xA9]) => Some((br"\u2029", 3)),
                _ => None,
            };
            match replaced {
                Some((text, len)) => {
                    out.extend_from_slice(&msg[run..i]);
                    out.extend_from_slice(text);
                    i += len;
                    run = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&msg[run..]);
    }
}

// === instruction counts (run by hand) ===
//
// `cargo test --release --lib bench_ -- --ignored --nocapture` prints ns per message; under
// `valgrind --tool=callgrind --toggle-collect='*strict::tests::bench' <test binary> wire::jsonrpc::strict::tests::bench_canonicalize --ignored --exact`
// Ir divided by `BENCH_ROUNDS` × 3 is the count per message (`BENCH_MSG=i` measures the i-th alone).

/// A typical Python SDK `tools/call` request and its response, and a larger message with
/// escapes, raw non-ASCII text, line separators and numbers.
const BENCH_MESSAGES: [&str; 3] = [
    r#"{"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench 17"},"_meta":{"progressToken":17}},"jsonrpc":"2.0","id":17}"#,
    r#"{"result":{"content":[{"type":"text","text":"Echo: bench 17"}]},"jsonrpc":"2.0","id":17}"#,
    "{\"jsonrpc\":\"2.0\",\"id\":\"req-42\",\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"Line one\\nLine \\\"two\\\"\\tTabbed \\\\ back\\/slash caf\\u00e9 café naïve 日本語 😀 \\ud83d\\ude00 para\u{2028}graph\u{85}end and some more plain text to make the run long enough\"},{\"type\":\"resource\",\"resource\":{\"uri\":\"file:///tmp/x.txt\",\"mimeType\":\"text/plain\",\"text\":\"a\\u0000b\"}}],\"structuredContent\":{\"numbers\":[0,-1,42,3.5,-0.25,1e10,6.02e23,18446744073709551615,-9223372036854775808,0.1],\"flags\":[true,false,null],\"nested\":{\"a\":{\"b\":{\"c\":[1,2,{\"d\":\"e\",\"f\\u0067\":\"h\"}]}}},\"_meta\":{\"k1\":1,\"k2\":2,\"k3\":3,\"k4\":4,\"k5\":5,\"k6\":6,\"k7\":7,\"k8\":8,\"k9\":9,\"k10\":10}},\"isError\":false}}",
];

fn bench_rounds() -> usize {
    std::env::var("BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000)
}

/// Not inlined, so that callgrind can count it alone: `--toggle-collect='*strict::tests::bench'`.
#[inline(never)]
fn bench<T: ?Sized>(what: &str, inputs: &[&T], mut f: impl FnMut(&T)) {
    let rounds = bench_rounds();
    // `BENCH_MSG=i` keeps only the i-th message.
    let only: Option<usize> = std::env::var("BENCH_MSG").ok().and_then(|n| n.parse().ok());
    let inputs: Vec<&T> =
        inputs.iter().enumerate().filter(|(i, _)| only.is_none_or(|o| o == *i)).map(|(_, m)| *m).collect();
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for input in &inputs {
            f(std::hint::black_box(input));
        }
    }
    let each = start.elapsed().as_nanos() as f64 / (rounds * inputs.len()) as f64;
    eprintln!("{what}: {each:.1} ns per message ({} messages)", inputs.len());
}

fn bench_inputs() -> Vec<&'static [u8]> {
    BENCH_MESSAGES.iter().map(|m| m.as_bytes()).collect()
}

#[test]
#[ignore]
fn bench_canonicalize() {
    bench("canonicalize", &bench_inputs(), |m| {
        std::hint::black_box(canonicalize(m).unwrap());
    });
}

#[test]
#[ignore]
fn bench_message_parse() {
    bench("Message::parse", &bench_inputs(), |m| {
        std::hint::black_box(crate::wire::jsonrpc::Message::parse(m).unwrap());
    });
}

#[test]
#[ignore]
fn bench_push_unsplittable() {
    let canonical: Vec<Vec<u8>> = BENCH_MESSAGES.iter().map(|m| canonicalize(m.as_bytes()).unwrap()).collect();
    let inputs: Vec<&[u8]> = canonical.iter().map(Vec::as_slice).collect();
    let mut out = Vec::with_capacity(4096);
    bench("push_unsplittable", &inputs, |m: &[u8]| {
        out.clear();
        crate::wire::framing::push_unsplittable(&mut out, m);
        std::hint::black_box(&out);
    });
}
