//! The COPY text-format row splitter: the first byte is the table width, the second where to
//! cut the input into chunks, the rest is COPY output. Rows must not depend on how the bytes
//! were chunked, and nothing may panic.
#![no_main]

use deltarelay::source::postgres::copy::TextRows;
use deltarelay::source::postgres::pgoutput::TupleValue;
use libfuzzer_sys::fuzz_target;

type Rows = Vec<Result<Vec<TupleValue>, String>>;

fn rows(chunks: &[&[u8]], width: usize) -> Rows {
    let mut parser = TextRows::default();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.push(chunk);
        loop {
            match parser.next_row(width) {
                Ok(Some(row)) => {
                    assert_eq!(row.len(), width);
                    out.push(Ok(row));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [width, cut, input @ ..] = data else {
        return;
    };
    let width = usize::from(width % 16);
    let whole = rows(&[input], width);
    let step = usize::from(*cut).max(1);
    let chunks: Vec<&[u8]> = input.chunks(step).collect();
    let chunked = rows(&chunks, width);
    // A row error stops the caller; compare up to and including the first one.
    let upto = |r: &Rows| -> Rows {
        let end = r.iter().position(Result::is_err).map_or(r.len(), |i| i + 1);
        r[..end].to_vec()
    };
    assert_eq!(upto(&whole), upto(&chunked));
});
