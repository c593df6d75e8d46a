use super::*;
use serde_json::json;

fn scalar(type_oid: u32, text: &str) -> Value {
    text_to_json(ValueType::Scalar(type_oid), text)
}

fn array(array_oid: u32, text: &str) -> Value {
    match builtin_value_type(array_oid) {
        Some(ty @ ValueType::Array { .. }) => text_to_json(ty, text),
        other => panic!("{array_oid} is not a built-in array: {other:?}"),
    }
}

#[test]
fn builtin_types_resolve() {
    assert_eq!(
        builtin_value_type(oid::INT4),
        Some(ValueType::Scalar(oid::INT4))
    );
    assert_eq!(
        builtin_value_type(oid::INT4_ARRAY),
        Some(ValueType::Array {
            element: oid::INT4,
            delimiter: b','
        })
    );
    assert_eq!(
        builtin_value_type(oid::BOX_ARRAY),
        Some(ValueType::Array {
            element: oid::BOX,
            delimiter: b';'
        })
    );
    assert_eq!(builtin_value_type(16_384), None);
    assert_eq!(builtin_value_type(0), None);
}

#[test]
fn builtin_tables_are_consistent() {
    for &(array, element) in BUILTIN_ARRAYS {
        assert!(BUILTIN_SCALARS.contains(&element), "element of {array}");
        assert!(
            !BUILTIN_SCALARS.contains(&array),
            "{array} listed as scalar"
        );
        let same = BUILTIN_ARRAYS.iter().filter(|(a, _)| *a == array).count();
        assert_eq!(same, 1, "{array} listed twice");
    }
    for &scalar in BUILTIN_SCALARS {
        let same = BUILTIN_SCALARS.iter().filter(|&&s| s == scalar).count();
        assert_eq!(same, 1, "{scalar} listed twice");
    }
}

#[test]
fn integers() {
    assert_eq!(scalar(oid::INT2, "-32768"), json!(-32768));
    assert_eq!(scalar(oid::INT4, "2147483647"), json!(2147483647));
    assert_eq!(scalar(oid::OID, "4294967295"), json!(4294967295u32));
    assert_eq!(scalar(oid::XID, "771"), json!(771));
    assert_eq!(scalar(oid::INT4, "0"), json!(0));
    assert_eq!(scalar(oid::INT4, "12abc"), json!("12abc"));
    assert_eq!(scalar(oid::INT4, ""), json!(""));
}

#[test]
fn int8_beyond_two_to_the_53_is_a_string() {
    assert_eq!(
        scalar(oid::INT8, "9007199254740991"),
        json!(9007199254740991i64)
    );
    assert_eq!(
        scalar(oid::INT8, "-9007199254740991"),
        json!(-9007199254740991i64)
    );
    assert_eq!(
        scalar(oid::INT8, "9007199254740992"),
        json!("9007199254740992")
    );
    assert_eq!(
        scalar(oid::INT8, "-9007199254740992"),
        json!("-9007199254740992")
    );
    assert_eq!(
        scalar(oid::INT8, "9223372036854775807"),
        json!("9223372036854775807")
    );
    assert_eq!(
        scalar(oid::INT8, "-9223372036854775808"),
        json!("-9223372036854775808")
    );
    assert_eq!(
        scalar(oid::XID8, "18446744073709551615"),
        json!("18446744073709551615")
    );
}

#[test]
fn floats() {
    assert_eq!(scalar(oid::FLOAT8, "1.5"), json!(1.5));
    assert_eq!(scalar(oid::FLOAT8, "-2.5e-300"), json!(-2.5e-300));
    assert_eq!(scalar(oid::FLOAT4, "0.1"), json!(0.1));
    assert_eq!(scalar(oid::FLOAT8, "1e+100"), json!(1e100));
    assert_eq!(scalar(oid::FLOAT8, "42"), json!(42.0));
    assert_eq!(scalar(oid::FLOAT8, "NaN"), json!("NaN"));
    assert_eq!(scalar(oid::FLOAT8, "Infinity"), json!("Infinity"));
    assert_eq!(scalar(oid::FLOAT4, "-Infinity"), json!("-Infinity"));
    assert_eq!(scalar(oid::FLOAT8, "one"), json!("one"));
}

#[test]
fn numeric_is_always_text() {
    assert_eq!(scalar(oid::NUMERIC, "12.50"), json!("12.50"));
    assert_eq!(scalar(oid::NUMERIC, "NaN"), json!("NaN"));
    assert_eq!(scalar(oid::NUMERIC, "Infinity"), json!("Infinity"));
    let forty = "1234567890123456789012345678901234567890";
    assert_eq!(scalar(oid::NUMERIC, forty), json!(forty));
    assert_eq!(scalar(oid::NUMERIC, "-0.000001"), json!("-0.000001"));
}

#[test]
fn booleans() {
    assert_eq!(scalar(oid::BOOL, "t"), json!(true));
    assert_eq!(scalar(oid::BOOL, "f"), json!(false));
    // `bool::text` (the writer's `current` rows) spells them out.
    assert_eq!(scalar(oid::BOOL, "true"), json!(true));
    assert_eq!(scalar(oid::BOOL, "false"), json!(false));
    assert_eq!(scalar(oid::BOOL, "yes"), json!("yes"));
}

#[test]
fn json_and_jsonb_are_embedded() {
    let text = r#"{"a": [1, 2.5, null, true], "b": {"c": "d"}}"#;
    let expected = json!({"a": [1, 2.5, null, true], "b": {"c": "d"}});
    assert_eq!(scalar(oid::JSON, text), expected);
    assert_eq!(scalar(oid::JSONB, text), expected);
    assert_eq!(
        scalar(oid::JSONB, "\"just a string\""),
        json!("just a string")
    );
    assert_eq!(scalar(oid::JSONB, "null"), Value::Null);
    assert_eq!(scalar(oid::JSON, "{not json"), json!("{not json"));
}

#[test]
fn bytea_is_base64() {
    assert_eq!(scalar(oid::BYTEA, "\\x"), json!(""));
    assert_eq!(scalar(oid::BYTEA, "\\x0a0b"), json!("Cgs="));
    assert_eq!(scalar(oid::BYTEA, "\\xDEADBEEF"), json!("3q2+7w=="));
    assert_eq!(scalar(oid::BYTEA, "\\x48656c6c6f"), json!("SGVsbG8="));
    // Not hex form: kept as text.
    assert_eq!(scalar(oid::BYTEA, "\\x0a0"), json!("\\x0a0"));
    assert_eq!(scalar(oid::BYTEA, "\\x0g"), json!("\\x0g"));
    assert_eq!(scalar(oid::BYTEA, "abc"), json!("abc"));
}

#[test]
fn timestamptz_is_rfc3339_utc() {
    assert_eq!(
        scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00.123+00"),
        json!("2025-01-15T11:00:00.123000Z")
    );
    assert_eq!(
        scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00+00"),
        json!("2025-01-15T11:00:00.000000Z")
    );
    assert_eq!(
        scalar(oid::TIMESTAMPTZ, "2024-02-29 23:59:59.999999+00"),
        json!("2024-02-29T23:59:59.999999Z")
    );
    assert_eq!(
        scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00.5+05:30"),
        json!("2025-01-15T11:00:00.500000+05:30")
    );
    assert_eq!(
        scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00-03"),
        json!("2025-01-15T11:00:00.000000-03:00")
    );
}

#[test]
fn timestamp_without_zone() {
    assert_eq!(
        scalar(oid::TIMESTAMP, "2025-01-15 11:00:00.123"),
        json!("2025-01-15T11:00:00.123000")
    );
    assert_eq!(
        scalar(oid::TIMESTAMP, "2025-01-15 11:00:00"),
        json!("2025-01-15T11:00:00.000000")
    );
    // An offset on a timestamp without time zone is not its form: text.
    assert_eq!(
        scalar(oid::TIMESTAMP, "2025-01-15 11:00:00+00"),
        json!("2025-01-15 11:00:00+00")
    );
}

#[test]
fn timestamps_rfc3339_cannot_express_stay_text() {
    for text in [
        "infinity",
        "-infinity",
        "0044-03-15 12:00:00+00 BC",
        "10000-01-01 00:00:00+00",
        "1850-01-01 00:00:00+00:53:28",
        "2025-13-01 00:00:00+00",
        "2025-01-15 11:00:00.1234567+00",
        "2025-01-15T11:00:00+00",
        "2025-01-15 11:00:00.+00",
        "2025-01-15 11:00:00",
        "",
    ] {
        assert_eq!(scalar(oid::TIMESTAMPTZ, text), json!(text), "{text}");
    }
    assert_eq!(
        scalar(oid::TIMESTAMP, "2025-01-15 11:00:00 BC"),
        json!("2025-01-15 11:00:00 BC")
    );
}

#[test]
fn dates_and_times_are_iso_text() {
    assert_eq!(scalar(oid::DATE, "2025-01-15"), json!("2025-01-15"));
    assert_eq!(scalar(oid::DATE, "infinity"), json!("infinity"));
    assert_eq!(scalar(oid::DATE, "0001-01-01 BC"), json!("0001-01-01 BC"));
    assert_eq!(scalar(oid::TIME, "11:00:00.123"), json!("11:00:00.123"));
    assert_eq!(
        scalar(oid::TIMETZ, "11:00:00+05:30"),
        json!("11:00:00+05:30")
    );
}

#[test]
fn other_types_are_their_text() {
    let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(scalar(oid::UUID, uuid), json!(uuid));
    assert_eq!(
        scalar(oid::INTERVAL, "1 year 2 mons 3 days 04:05:06"),
        json!("1 year 2 mons 3 days 04:05:06")
    );
    assert_eq!(scalar(oid::MONEY, "$1,000.00"), json!("$1,000.00"));
    assert_eq!(scalar(oid::INET, "192.168.0.1/24"), json!("192.168.0.1/24"));
    assert_eq!(scalar(oid::TEXT, "hello"), json!("hello"));
    assert_eq!(scalar(oid::INT2VECTOR, "1 2 3"), json!("1 2 3"));
    // An enum or any other non-built-in type.
    assert_eq!(scalar(70_000, "happy"), json!("happy"));
}

#[test]
fn integer_arrays_with_nulls() {
    assert_eq!(array(oid::INT4_ARRAY, "{1,2,NULL}"), json!([1, 2, null]));
    assert_eq!(array(oid::INT4_ARRAY, "{null, 3}"), json!([null, 3]));
    assert_eq!(array(oid::INT4_ARRAY, "{}"), json!([]));
    assert_eq!(
        array(oid::INT8_ARRAY, "{9007199254740992,1}"),
        json!(["9007199254740992", 1])
    );
}

#[test]
fn text_arrays_with_quoting() {
    assert_eq!(
        array(oid::TEXT_ARRAY, r#"{"a b","say \"hi\"","NULL",NULL,plain}"#),
        json!(["a b", "say \"hi\"", "NULL", null, "plain"])
    );
    assert_eq!(
        array(oid::TEXT_ARRAY, r#"{"back\\slash","",  spaced out  }"#),
        json!(["back\\slash", "", "spaced out"])
    );
    assert_eq!(
        array(oid::TEXT_ARRAY, r#"{"{braces}","a,b",héllo}"#),
        json!(["{braces}", "a,b", "héllo"])
    );
    // A backslash in an unquoted element escapes the next character.
    assert_eq!(
        array(oid::TEXT_ARRAY, r"{N\ULL,a\,b}"),
        json!(["NULL", "a,b"])
    );
}

#[test]
fn multidimensional_arrays() {
    assert_eq!(
        array(oid::INT4_ARRAY, "{{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    assert_eq!(
        array(oid::INT4_ARRAY, "{{{1},{2}},{{3},{NULL}}}"),
        json!([[[1], [2]], [[3], [null]]])
    );
    assert_eq!(
        array(oid::TEXT_ARRAY, " { { a , b } , { c , d } } "),
        json!([["a", "b"], ["c", "d"]])
    );
}

#[test]
fn dimension_prefix_is_dropped() {
    assert_eq!(array(oid::INT4_ARRAY, "[0:1]={1,2}"), json!([1, 2]));
    assert_eq!(
        array(oid::INT4_ARRAY, "[-1:0][1:2]={{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
}

#[test]
fn arrays_of_mapped_types() {
    assert_eq!(
        array(oid::JSONB_ARRAY, r#"{"{\"a\": 1}","[1, 2]",NULL,"\"s\""}"#),
        json!([{"a": 1}, [1, 2], null, "s"])
    );
    assert_eq!(
        array(oid::JSON_ARRAY, r#"{"{\"nested\": {\"x\": [true]}}"}"#),
        json!([{"nested": {"x": [true]}}])
    );
    assert_eq!(
        array(oid::BYTEA_ARRAY, r#"{"\\x0a0b",NULL,"\\x"}"#),
        json!(["Cgs=", null, ""])
    );
    assert_eq!(
        array(oid::NUMERIC_ARRAY, "{1.50,NaN,NULL}"),
        json!(["1.50", "NaN", null])
    );
    assert_eq!(
        array(oid::BOOL_ARRAY, "{t,f,NULL}"),
        json!([true, false, null])
    );
    assert_eq!(
        array(
            oid::TIMESTAMPTZ_ARRAY,
            r#"{"2025-01-15 11:00:00.123+00",infinity,NULL}"#
        ),
        json!(["2025-01-15T11:00:00.123000Z", "infinity", null])
    );
    assert_eq!(
        array(oid::FLOAT8_ARRAY, "{1.5,NaN,-Infinity}"),
        json!([1.5, "NaN", "-Infinity"])
    );
    assert_eq!(
        array(oid::UUID_ARRAY, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
        json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
    );
}

#[test]
fn box_arrays_use_semicolons() {
    assert_eq!(
        array(oid::BOX_ARRAY, "{(1,1),(0,0);(2,2),(1,1)}"),
        json!(["(1,1),(0,0)", "(2,2),(1,1)"])
    );
}

#[test]
fn custom_array_type_from_catalog() {
    // E.g. an enum array the caller resolved through the catalog.
    let ty = ValueType::Array {
        element: 70_000,
        delimiter: b',',
    };
    assert_eq!(text_to_json(ty, "{happy,sad}"), json!(["happy", "sad"]));
}

#[test]
fn malformed_arrays_are_text() {
    for text in [
        "",
        "{",
        "}",
        "{1,2",
        "{1,2}}",
        "{1,,2}",
        "{1,2,}",
        "{,}",
        "{{1},2}",
        "{1,{2}}",
        r#"{"unterminated}"#,
        r#"{a"b}"#,
        "{1} trailing",
        "[0:1]{1,2}",
        "[x]={1}",
        "1,2",
        "{{{{{{{1}}}}}}}",
        r"{abc\",
    ] {
        assert_eq!(array(oid::INT4_ARRAY, text), json!(text), "{text}");
    }
    // Six dimensions is Postgres' maximum and still parses.
    assert_eq!(
        array(oid::INT4_ARRAY, "{{{{{{1}}}}}}"),
        json!([[[[[[1]]]]]])
    );
}

#[test]
fn never_panics_on_odd_input() {
    let types = [
        ValueType::Scalar(oid::TIMESTAMPTZ),
        ValueType::Scalar(oid::BYTEA),
        ValueType::Scalar(oid::INT8),
        ValueType::Scalar(oid::FLOAT8),
        ValueType::Scalar(oid::JSONB),
        ValueType::Array {
            element: oid::TEXT,
            delimiter: b',',
        },
        ValueType::Array {
            element: oid::INT4,
            delimiter: 0xE9, // a non-ASCII delimiter byte
        },
    ];
    let samples = [
        "",
        "\\",
        "\\x",
        "{",
        "[",
        "[1",
        "[1:",
        "=",
        "{\"",
        "{\\",
        "é",
        "2025-",
        "{{{{{{{{",
        "9".repeat(400).leak(),
        "\u{0}",
    ];
    for ty in types {
        for text in samples {
            let _ = text_to_json(ty, text);
        }
    }
}
