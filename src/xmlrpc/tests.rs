//! Table-driven tests of the codec and property tests: decoding never
//! panics, encoding then decoding gives the same values back.

use proptest::prelude::*;

use super::*;

/// The `ivr.getAgentAvail` response exactly as the Belfabriek document shows
/// it (blank lines between the lines, as in the seed file).
const SEED_AGENT_AVAIL: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>available</name>\n\n           <value>\n\n             <i4>0</i4>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>availReason</name>\n\n           <value>\n\n             <string>-</string>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>extension</name>\n\n           <value>\n\n             <string>31201234567</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

/// The `general.getExtensionStatus` response exactly as the document shows it.
const SEED_EXTENSION_STATUS: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>Available</name>\n\n           <value>\n\n             <string>called</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

/// The generic response example of the document, with its declaration.
const SEED_GENERIC: &str = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\n<methodResponse>\n\n   <params>\n\n       <param>\n\n           <value>\n\n               <struct>\n\n                   <member>\n\n                       <name>param1</name>\n\n                       <value><string>value1</string></value>\n\n                   </member>\n\n                   <member>\n\n                       <name>param2</name>\n\n                       <value><string>value2</string></value>\n\n                   </member>\n\n               </struct>\n\n           </value>\n\n       </param>\n\n   </params>\n\n</methodResponse>";

/// The generic request example of the document.
const SEED_CALL: &str = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\n<methodCall>\n\n<methodName>functie.naam</methodName>\n\n   <params>\n\n       <param>\n\n               <value>\n\n                   <struct>\n\n                       <member>\n\n                           <name>param1</name>\n\n                           <value><string>value1</string></value>\n\n                       </member>\n\n                       <member>\n\n                           <name>param2</name>\n\n                           <value><string>value2</string></value>\n\n                       </member>\n\n                   </struct>\n\n               </value>\n\n           </param>\n\n       </params>\n\n</methodCall>";

fn response_with(value_xml: &str) -> String {
    format!("<?xml version=\"1.0\"?><methodResponse><params><param><value>{value_xml}</value></param></params></methodResponse>")
}

fn structure(members: &[(&str, Value)]) -> Value {
    Value::Struct(
        members
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
    )
}

/// Decodes `body` and compares with the expected response or error text.
fn check(body: &[u8], expected: Result<Response, &str>) {
    let decoded = decode_response(body);
    match (&decoded, &expected) {
        (Ok(got), Ok(want)) => assert_eq!(got, want, "body: {}", String::from_utf8_lossy(body)),
        (Err(got), Err(want)) => assert!(
            got.to_string().contains(want),
            "error {got:?} ({got}) does not contain {want:?}; body: {}",
            String::from_utf8_lossy(body)
        ),
        _ => panic!(
            "decoded {decoded:?}, expected {expected:?}; body: {}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn one(value: Value) -> Result<Response, &'static str> {
    Ok(Response::Params(vec![value]))
}

#[test]
fn decodes_every_value_type() {
    let cases: Vec<(&str, Value)> = vec![
        ("<int>42</int>", Value::Int(42)),
        ("<i4>-7</i4>", Value::Int(-7)),
        ("<i4> +7 </i4>", Value::Int(7)),
        ("<i8>9007199254740993</i8>", Value::Int(9_007_199_254_740_993)),
        ("<ex:i8>-5</ex:i8>", Value::Int(-5)),
        ("<boolean>1</boolean>", Value::Bool(true)),
        ("<boolean>0</boolean>", Value::Bool(false)),
        ("<boolean> true </boolean>", Value::Bool(true)),
        ("<double>-1.5</double>", Value::Double(-1.5)),
        ("<double>3</double>", Value::Double(3.0)),
        ("<string>hello world</string>", Value::from("hello world")),
        ("<string></string>", Value::from("")),
        ("<string/>", Value::from("")),
        ("<string>  keep  spaces </string>", Value::from("  keep  spaces ")),
        ("untyped text", Value::from("untyped text")),
        ("", Value::from("")),
        ("  ", Value::from("  ")),
        ("<string>a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;</string>", Value::from("a <b> & \"c\" 'd'")),
        ("<string>&#233;&#x20AC;</string>", Value::from("é€")),
        ("<string><![CDATA[<raw> & ]]>tail</string>", Value::from("<raw> & tail")),
        ("<string>a<!-- comment -->b</string>", Value::from("ab")),
        ("<dateTime.iso8601>19980717T14:08:55</dateTime.iso8601>", Value::DateTime("19980717T14:08:55".into())),
        ("<base64>aGVsbG8=</base64>", Value::Base64(b"hello".to_vec())),
        ("<base64>aGVs\n bG8</base64>", Value::Base64(b"hello".to_vec())),
        ("<base64/>", Value::Base64(Vec::new())),
        ("<nil/>", Value::Nil),
        ("<ex:nil/>", Value::Nil),
        ("<struct/>", Value::Struct(Vec::new())),
        ("<struct></struct>", Value::Struct(Vec::new())),
        (
            "<struct><member><name>a</name><value><i4>1</i4></value></member><member><value>x</value><name>b</name></member></struct>",
            structure(&[("a", Value::Int(1)), ("b", Value::from("x"))]),
        ),
        ("<struct><member><name>e</name><value/></member></struct>", structure(&[("e", Value::from(""))])),
        ("<array><data/></array>", Value::Array(Vec::new())),
        ("<array></array>", Value::Array(Vec::new())),
        (
            "<array><data><value><i4>1</i4></value><value>two</value><value><array><data><value><nil/></value></data></array></value></data></array>",
            Value::Array(vec![Value::Int(1), Value::from("two"), Value::Array(vec![Value::Nil])]),
        ),
        ("\n   <string>spaced</string>\n   ", Value::from("spaced")),
    ];
    for (value_xml, expected) in cases {
        check(response_with(value_xml).as_bytes(), one(expected));
    }
}

#[test]
fn decodes_the_documented_examples() {
    check(
        SEED_AGENT_AVAIL.as_bytes(),
        one(structure(&[
            ("available", Value::Int(0)),
            ("availReason", Value::from("-")),
            ("extension", Value::from("31201234567")),
        ])),
    );
    check(
        SEED_EXTENSION_STATUS.as_bytes(),
        one(structure(&[("Available", Value::from("called"))])),
    );
    check(
        SEED_GENERIC.as_bytes(),
        one(structure(&[
            ("param1", Value::from("value1")),
            ("param2", Value::from("value2")),
        ])),
    );
    let (method, params) = decode_call(SEED_CALL.as_bytes()).unwrap();
    assert_eq!(method, "functie.naam");
    assert_eq!(
        params,
        [structure(&[
            ("param1", Value::from("value1")),
            ("param2", Value::from("value2"))
        ])]
    );
}

#[test]
fn decodes_faults() {
    let fault = |code: &str, message: &str| {
        format!("<methodResponse><fault><value><struct><member><name>faultCode</name><value>{code}</value></member><member><name>faultString</name><value>{message}</value></member></struct></value></fault></methodResponse>")
    };
    check(
        fault("<int>4</int>", "<string>Too many parameters.</string>").as_bytes(),
        Ok(Response::Fault {
            code: 4,
            message: "Too many parameters.".into(),
        }),
    );
    check(
        fault("<i4>-32700</i4>", "parse error &amp; more").as_bytes(),
        Ok(Response::Fault {
            code: -32700,
            message: "parse error & more".into(),
        }),
    );
    check(
        fault("<string> 12 </string>", "<string/>").as_bytes(),
        Ok(Response::Fault {
            code: 12,
            message: String::new(),
        }),
    );
    check(
        b"<methodResponse><fault><value><struct></struct></value></fault></methodResponse>",
        Ok(Response::Fault {
            code: 0,
            message: String::new(),
        }),
    );
    check(
        b"<methodResponse><fault><value>plain</value></fault></methodResponse>",
        Ok(Response::Fault {
            code: 0,
            message: "plain".into(),
        }),
    );
}

#[test]
fn decodes_by_the_declared_encoding() {
    let mut latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><methodResponse><params><param><value><string>caf".to_vec();
    latin1.push(0xE9);
    latin1.extend_from_slice(b"</string></value></param></params></methodResponse>");
    check(&latin1, one(Value::from("café")));

    let single_quotes = latin1
        .iter()
        .map(|&b| if b == b'"' { b'\'' } else { b })
        .collect::<Vec<_>>();
    check(&single_quotes, one(Value::from("café")));

    let utf8 = response_with("<string>café €</string>");
    check(utf8.as_bytes(), one(Value::from("café €")));

    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(utf8.as_bytes());
    check(&bom, one(Value::from("café €")));

    // Undeclared but not UTF-8: read as windows-1252 rather than rejected.
    let mut undeclared = b"<methodResponse><params><param><value>caf".to_vec();
    undeclared.push(0xE9);
    undeclared.extend_from_slice(b"</value></param></params></methodResponse>");
    check(&undeclared, one(Value::from("café")));

    check(
        b"<?xml version=\"1.0\" encoding=\"x-klingon\"?><methodResponse/>",
        Err("unsupported character encoding \"x-klingon\""),
    );
}

#[test]
fn rejects_what_is_not_an_xml_rpc_response() {
    let cases: Vec<(String, &str)> = vec![
        ("".to_owned(), "empty body"),
        ("  \r\n ".to_owned(), "empty body"),
        ("<html><body>Internal Server Error</body></html>".to_owned(), "unexpected element <html>"),
        ("<!DOCTYPE html><html></html>".to_owned(), "found <!DOCTYPE html>"),
        (
            "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x \"boom\">]><methodResponse><params><param><value>&x;</value></param></params></methodResponse>".to_owned(),
            "document type declarations are not accepted",
        ),
        (
            "<methodResponse><params><param><value>&x;</value></param></params></methodResponse>".to_owned(),
            "bad entity",
        ),
        ("<methodResponse><params><param><value><struct>".to_owned(), "truncated document"),
        ("<methodResponse><params><param><value><string>abc".to_owned(), "truncated document"),
        ("<methodResponse><params><param><val".to_owned(), "truncated document"),
        ("<methodResponse>".to_owned(), "truncated document"),
        ("<methodResponse/>".to_owned(), "truncated document"),
        ("Service Unavailable".to_owned(), "unexpected text \"Service Unavailable\""),
        ("<methodResponse></methodResponse>".to_owned(), "where <params> or <fault> was expected"),
        (response_with("<int>abc</int>"), "invalid <int> value \"abc\""),
        (response_with("<i4>99999999999999999999</i4>"), "invalid <i4>"),
        (response_with("<boolean>2</boolean>"), "invalid <boolean>"),
        (response_with("<double>1.2.3</double>"), "invalid <double>"),
        (response_with("<base64>!!</base64>"), "invalid <base64>"),
        (response_with("<float>1</float>"), "unexpected element <float>"),
        (response_with("x<string>y</string>"), "unexpected text \"x\""),
        (response_with("<string><b>bold</b></string>"), "unexpected element <b>"),
        (
            response_with("<struct><member><value>1</value></member></struct>"),
            "struct member without <name>",
        ),
        (
            response_with("<struct><member><name>a</name></member></struct>"),
            "struct member without <value>",
        ),
        (
            "<methodResponse><params></param></params></methodResponse>".to_owned(),
            "ill-formed xml",
        ),
        (
            "<methodResponse><params/></methodResponse><methodResponse/>".to_owned(),
            "after the end of the document",
        ),
        ("<methodResponse><params/></methodResponse>trailing".to_owned(), "after the end of the document"),
    ];
    for (body, expected) in cases {
        check(body.as_bytes(), Err(expected));
    }
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| {
        let mut xml = String::new();
        for _ in 0..depth {
            xml.push_str("<array><data><value>");
        }
        xml.push_str("<nil/>");
        for _ in 0..depth {
            xml.push_str("</value></data></array>");
        }
        response_with(&xml)
    };
    assert!(decode_response(nested(MAX_DEPTH - 1).as_bytes()).is_ok());
    check(nested(MAX_DEPTH).as_bytes(), Err("nested deeper than 64"));
    check(nested(100_000).as_bytes(), Err("nested deeper than 64"));
}

#[test]
fn empty_params_and_several_params_pass_through() {
    check(
        b"<methodResponse><params/></methodResponse>",
        Ok(Response::Params(Vec::new())),
    );
    check(
        b"<methodResponse><params><param><value>a</value></param><param><value><i4>2</i4></value></param></params></methodResponse>",
        Ok(Response::Params(vec![Value::from("a"), Value::Int(2)])),
    );
}

#[test]
fn encoded_calls_are_iso_8859_1_and_escape_everything() {
    let body = encode_call(
        "ivr.getAgentAvail",
        &[structure(&[
            ("accountCode", Value::from("12345")),
            ("extensionId", Value::from("</string><name>x</name>&evil;")),
            ("nameé", Value::from("café € 'q' \"d\" > \r")),
        ])],
    );
    assert!(body.starts_with(b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>"));
    // é is the single byte 0xE9; € (not in Latin-1) a character reference.
    assert!(body.windows(5).any(|w| w == b"caf\xE9 "));
    assert!(
        std::str::from_utf8(&body).is_err(),
        "é must not be written as UTF-8"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("&#8364;"), "{text}");
    assert!(
        text.contains("&lt;/string&gt;&lt;name&gt;x&lt;/name&gt;&amp;evil;"),
        "{text}"
    );
    assert!(
        text.contains("&apos;q&apos; &quot;d&quot; &gt; &#13;"),
        "{text}"
    );
    assert_eq!(text.matches("<member>").count(), 3, "{text}");

    let (method, params) = decode_call(&body).unwrap();
    assert_eq!(method, "ivr.getAgentAvail");
    assert_eq!(
        params[0].member("extensionId").and_then(Value::as_str),
        Some("</string><name>x</name>&evil;")
    );
    assert_eq!(
        params[0].member("nameé").and_then(Value::as_str),
        Some("café € 'q' \"d\" > \r")
    );
}

#[test]
fn encoded_responses_use_i4_and_declare_their_encoding() {
    let response = Response::Params(vec![structure(&[
        ("available", Value::Int(1)),
        ("availReason", Value::from("pauzé")),
    ])]);
    let latin1 = encode_response(&response, Encoding::Iso8859_1);
    assert!(latin1.starts_with(b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>"));
    assert!(String::from_utf8_lossy(&latin1).contains("<i4>1</i4>"));
    assert!(latin1.contains(&0xE9));
    assert_eq!(decode_response(&latin1).unwrap(), response);

    let utf8 = encode_response(&response, Encoding::Utf8);
    assert!(std::str::from_utf8(&utf8).unwrap().contains("pauzé"));
    assert_eq!(decode_response(&utf8).unwrap(), response);

    let fault = Response::Fault {
        code: 3,
        message: "no such agent <&>".into(),
    };
    assert_eq!(
        decode_response(&encode_response(&fault, Encoding::Iso8859_1)).unwrap(),
        fault
    );
}

#[test]
fn value_helpers_are_lenient_where_documented() {
    let value = structure(&[("Available", Value::from("idle")), ("n", Value::Int(7))]);
    assert_eq!(
        value.member("Available").and_then(Value::as_str),
        Some("idle")
    );
    assert_eq!(value.member("available"), None);
    assert_eq!(
        value.member_ci("AVAILABLE").and_then(Value::as_str),
        Some("idle")
    );
    assert_eq!(value.member("n").and_then(Value::as_i64), Some(7));
    assert_eq!(Value::Int(7).member("n"), None);

    for (value, expected) in [
        (Value::Int(0), Some(false)),
        (Value::Int(1), Some(true)),
        (Value::Int(2), None),
        (Value::Bool(true), Some(true)),
        (Value::from(" 1 "), Some(true)),
        (Value::from("0"), Some(false)),
        (Value::from("TRUE"), Some(true)),
        (Value::from("false"), Some(false)),
        (Value::from("yes"), None),
        (Value::Double(1.0), None),
        (Value::Nil, None),
    ] {
        assert_eq!(value.as_bool_lenient(), expected, "{value:?}");
    }
    assert_eq!(
        Value::Int(31201234567).as_text_lenient().as_deref(),
        Some("31201234567")
    );
    assert_eq!(Value::Nil.as_text_lenient(), None);
}

fn value_tree() -> impl Strategy<Value = Value> {
    // Any text but U+0000, which XML cannot carry.
    let text = "[^\u{0}]{0,12}";
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_filter("NaN never equals itself", |number| !number.is_nan())
            .prop_map(Value::Double),
        text.prop_map(Value::String),
        "[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}".prop_map(Value::DateTime),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Base64),
        Just(Value::Nil),
    ];
    leaf.prop_recursive(6, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec((text, inner.clone()), 0..6).prop_map(Value::Struct),
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array),
        ]
    })
}

/// A valid response body to mutate.
fn valid_body() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(value_tree(), 0..3), any::<bool>()).prop_map(|(params, latin1)| {
        let encoding = if latin1 {
            Encoding::Iso8859_1
        } else {
            Encoding::Utf8
        };
        encode_response(&Response::Params(params), encoding)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragment = prop_oneof![
        Just(b"<".to_vec()),
        Just(b"</value>".to_vec()),
        Just(b"<struct>".to_vec()),
        Just(b"&".to_vec()),
        Just(b"&#0;".to_vec()),
        Just(b"<!DOCTYPE x [<!ENTITY a \"b\">]>".to_vec()),
        Just(b"<![CDATA[".to_vec()),
        Just(b"\xFF\xFE".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
        (any::<usize>(), fragment).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1..16usize).prop_map(|(at, length)| Mutation::Remove(at, length)),
    ]
}

fn apply(body: &mut Vec<u8>, mutation: &Mutation) {
    if body.is_empty() {
        return;
    }
    let len = body.len();
    match mutation {
        Mutation::Truncate(at) => body.truncate(at % len),
        Mutation::Flip(at, byte) => body[at % len] = *byte,
        Mutation::Insert(at, bytes) => {
            let at = at % len;
            body.splice(at..at, bytes.iter().copied());
        }
        Mutation::Remove(at, length) => {
            let at = at % len;
            body.drain(at..(at + length).min(len));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_response(&body);
        let _ = decode_call(&body);
    }

    #[test]
    fn decoding_xml_like_noise_never_panics(body in "(<|>|/|&|;|#|x|[a-z]{1,8}|methodResponse|params|param|value|struct|member|name|array|data|i4|string|\\?|!|\\[|\\]|\"|=| |\n){0,64}") {
        let _ = decode_response(body.as_bytes());
        let _ = decode_call(body.as_bytes());
    }

    #[test]
    fn decoding_mutated_documents_never_panics(
        mut body in valid_body(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        for mutation in &mutations {
            apply(&mut body, mutation);
        }
        let _ = decode_response(&body);
        let _ = decode_call(&body);
    }

    #[test]
    fn calls_round_trip(method in "[A-Za-z0-9_.:/<>&]{1,20}", params in proptest::collection::vec(value_tree(), 0..3)) {
        let body = encode_call(&method, &params);
        let (decoded_method, decoded_params) = decode_call(&body).unwrap();
        prop_assert_eq!(decoded_method, method);
        prop_assert_eq!(decoded_params, params);
    }

    #[test]
    fn responses_round_trip(
        params in proptest::collection::vec(value_tree(), 0..3),
        code in any::<i64>(),
        message in "[^\u{0}]{0,40}",
        latin1 in any::<bool>(),
    ) {
        let encoding = if latin1 { Encoding::Iso8859_1 } else { Encoding::Utf8 };
        let response = Response::Params(params);
        prop_assert_eq!(decode_response(&encode_response(&response, encoding)).unwrap(), response);
        let fault = Response::Fault { code, message };
        prop_assert_eq!(decode_response(&encode_response(&fault, encoding)).unwrap(), fault);
    }
}

/// A response whose one value is `depth` arrays inside each other around an
/// `<i4>`; `closed: false` leaves every element open.
fn nested(depth: usize, closed: bool) -> String {
    let mut body = String::from("<methodResponse><params><param><value>");
    body.push_str(&"<array><data><value>".repeat(depth));
    body.push_str("<i4>1</i4>");
    if closed {
        body.push_str(&"</value></data></array>".repeat(depth));
        body.push_str("</value></param></params></methodResponse>");
    }
    body
}

/// The case the garbage property once found (CI, 2026-12-01): forty
/// characters that a quote writes as escapes made the message far longer
/// than the forty characters cut.
#[test]
fn garbage_quoted_as_escapes_stays_short() {
    let body = "\u{1dc0}\u{3347a}\u{3347a}\u{3347a}\u{100000}\u{10}\u{100000}\u{7f}\u{3347a}\u{10}\u{18cd6}\0\u{1fff}\u{3347a}¡0¡a \"\0\u{10}¡¡=A A aaa=a¡a\\AA¡!";
    for message in [
        decode_response(body.as_bytes())
            .map(drop)
            .unwrap_err()
            .to_string(),
        decode_call(body.as_bytes())
            .map(drop)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            message.starts_with("unexpected text \"\\u{1dc0}"),
            "{message}"
        );
        assert!(message.chars().count() <= 200, "{message}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nesting is accepted up to the limit and refused beyond it with
    /// `TooDeep`, however deep (no stack overflow); an unclosed document is
    /// an error whatever its depth.
    #[test]
    fn nesting_is_bounded_by_max_depth(depth in 0usize..5_000) {
        let decoded = decode_response(nested(depth, true).as_bytes());
        if depth < MAX_DEPTH - 1 {
            let mut value = Value::Int(1);
            for _ in 0..depth {
                value = Value::Array(vec![value]);
            }
            prop_assert_eq!(decoded, Ok(Response::Params(vec![value])));
        } else if depth > MAX_DEPTH + 1 {
            prop_assert_eq!(decoded, Err(DecodeError::TooDeep { limit: MAX_DEPTH }));
        }
        prop_assert!(decode_response(nested(depth, false).as_bytes()).is_err());
    }

    /// Garbage is always a typed error, never a value, and its message
    /// quotes only a short piece of the input.
    #[test]
    fn garbage_is_a_short_typed_error(
        prefix in "[^<\u{feff}]{0,200}",
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        prop_assume!(!prefix.trim().is_empty());
        let mut body = prefix.into_bytes();
        body.extend(tail);
        for message in [
            decode_response(&body).map(drop).unwrap_err().to_string(),
            decode_call(&body).map(drop).unwrap_err().to_string(),
        ] {
            prop_assert!(message.chars().count() <= 200, "{}", message);
        }
    }

    /// Noise that looks like XML-RPC: whatever it decodes to, its error
    /// message stays short.
    #[test]
    fn errors_quote_the_input_short(
        mut body in valid_body(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        padding in "[a-zA-Z0-9 ]{200,400}",
    ) {
        for mutation in &mutations {
            apply(&mut body, mutation);
        }
        // A long run of text or a long name somewhere in the document.
        let at = body.len() / 2;
        body.splice(at..at, padding.into_bytes());
        for result in [decode_response(&body).map(drop), decode_call(&body).map(drop)] {
            if let Err(error) = result {
                prop_assert!(error.to_string().chars().count() <= 200, "{}", error);
            }
        }
    }
}
