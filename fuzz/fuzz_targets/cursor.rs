//! Cursor parsing: anything that parses prints back as the same cursor, and nothing panics.
#![no_main]

use deltarelay::log::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Cursor>() {
        Ok(cursor) => {
            let printed = cursor.to_string();
            assert_eq!(printed.parse::<Cursor>(), Ok(cursor));
        }
        Err(e) => {
            // The message quotes a bounded prefix of the input (100 characters, each at most
            // 10 bytes once escaped), never all of it.
            assert!(e.to_string().len() < 1200, "{} bytes", e.to_string().len());
        }
    }
});
