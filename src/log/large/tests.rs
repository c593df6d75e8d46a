use super::*;
use serde_json::json;

#[test]
fn marks_are_cut_out_and_spliced_back() {
    let marks = Marks::fixed(7);
    let big = "x".repeat(LARGE_VALUE_BYTES);
    let record = json!({"after": {"id": 1, "body": marks.mark(0), "notes": marks.mark(1)}});
    let json = serde_json::to_vec(&record).unwrap();
    let (stored, splices) = cut(&json, &marks, &["body", "notes"]).unwrap();
    assert_eq!(
        std::str::from_utf8(&stored).unwrap(),
        r#"{"after":{"id":1,"body":null,"notes":null}}"#
    );
    assert_eq!(
        splices,
        vec![Splice(24, "body".into()), Splice(37, "notes".into())]
    );
    let mut out = Vec::new();
    splice_into(&mut out, &stored, &splices, |column, out| {
        out.extend_from_slice(&serde_json::to_vec(&format!("{column}:{big}")).unwrap());
        Ok(true)
    })
    .unwrap();
    let back: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(back["after"]["body"], json!(format!("body:{big}")));
    assert_eq!(back["after"]["notes"], json!(format!("notes:{big}")));
    assert_eq!(back["after"]["id"], json!(1));
}

#[test]
fn a_mark_found_twice_is_refused() {
    let marks = Marks::fixed(7);
    let record = json!({"after": {"body": marks.mark(0), "title": marks.mark(0)}});
    let json = serde_json::to_vec(&record).unwrap();
    assert!(cut(&json, &marks, &["body"]).is_none());
    assert!(cut(b"{}", &marks, &["body"]).is_none());
    // A mark's text after an escaped quote inside another string is seen, and refused.
    let Value::String(text) = marks.mark(0) else {
        unreachable!()
    };
    let record = json!({"title": format!("a\"{text}"), "body": marks.mark(0)});
    let json = serde_json::to_vec(&record).unwrap();
    assert!(cut(&json, &marks, &["body"]).is_none());
    let record = json!({"title": format!("{text}7"), "body": marks.mark(0)});
    let json = serde_json::to_vec(&record).unwrap();
    assert!(cut(&json, &marks, &["body"]).is_none());
}

#[test]
fn a_damaged_splice_is_an_error_not_a_panic() {
    let splices = vec![Splice(3, "body".into())];
    let mut out = Vec::new();
    let err = splice_into(&mut out, b"{\"a\":1}", &splices, |_, _| Ok(true)).unwrap_err();
    assert!(err.to_string().contains("placeholder"), "{err}");
    let beyond = vec![Splice(usize::MAX, "body".into())];
    assert!(splice_into(&mut out, b"null", &beyond, |_, _| Ok(true)).is_err());
    let err = splice_into(&mut out, b"null", &[Splice(0, "b".into())], |_, _| {
        Ok(false)
    })
    .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(decode("[[1]]").is_err());
}

#[test]
fn long_texts_and_large_documents_are_large() {
    assert!(is_large(&json!("y".repeat(LARGE_VALUE_BYTES))));
    assert!(is_large(&json!("y".repeat(LARGE_VALUE_BYTES - 2))));
    assert!(!is_large(&json!("y".repeat(LARGE_VALUE_BYTES - 3))));
    assert!(!is_large(&json!("short")));
    assert!(!is_large(&json!(12)));
    let tags: Vec<String> = (0..400).map(|i| format!("tag{i}")).collect();
    assert!(is_large(&json!({"tags": tags})));
    assert!(!is_large(&json!({"tags": tags[..10]})));
    assert!(is_large(&json!([[["z".repeat(LARGE_VALUE_BYTES)]]])));
    // The bound never exceeds the real length, so nothing small is stored apart.
    for value in [
        json!({"a": [1, 2, {"b": null}], "c": "d"}),
        json!([]),
        json!({}),
    ] {
        let real = serde_json::to_vec(&value).unwrap().len();
        assert!(json_len_below(&value, usize::MAX).unwrap() <= real);
    }
}
