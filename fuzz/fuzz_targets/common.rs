//! Checks shared by the targets that produce changes.

use deltarelay::record::{key_text, Change, Op};
use serde_json::Value;

/// A change as the log stores it: every part serializes to JSON that parses back, and a key
/// is present unless the change is a truncate.
pub fn check_change(change: &Change) {
    if change.op != Op::Truncate {
        assert!(change.key.is_some(), "{change:?} has no key");
    }
    for row in [&change.key, &change.old_key, &change.after, &change.before]
        .into_iter()
        .flatten()
    {
        let text = key_text(row);
        let back: Value = serde_json::from_str(&text).expect("a row's JSON parses back");
        assert!(back.is_object());
    }
}
