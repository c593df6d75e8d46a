//! MongoDB change events → changes: the input is a BSON document (first byte 0) or relaxed
//! Extended JSON text (otherwise), mapped by a source syncing every collection and by one
//! syncing a list, and fed through split-event reassembly. Nothing may panic.
#![no_main]

mod common;

use bson::{Bson, Document};
use deltarelay::source::mongo::FullDocumentMode;
use deltarelay::source::mongo::events::{Mapper, Reassembly};
use libfuzzer_sys::fuzz_target;

fn document(data: &[u8]) -> Option<Document> {
    let (first, rest) = data.split_first()?;
    if *first == 0 {
        return Document::from_reader(rest).ok();
    }
    let json: serde_json::Value = serde_json::from_slice(rest).ok()?;
    match Bson::try_from(json).ok()? {
        Bson::Document(d) => Some(d),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(event) = document(data) else {
        return;
    };
    let mappers = [
        Mapper {
            source: "m".into(),
            database: "app".into(),
            collections: None,
            pre_images: true,
            full_document: FullDocumentMode::UpdateLookup,
        },
        Mapper {
            source: "m".into(),
            database: "app".into(),
            collections: Some(["events".to_string(), "b".to_string()].into()),
            pre_images: false,
            full_document: FullDocumentMode::Required,
        },
    ];
    for mapper in &mappers {
        if let Ok(mapped) = mapper.map(event.clone()) {
            mapped.changes.iter().for_each(common::check_change);
        }
    }
    let mut reassembly = Reassembly::default();
    for _ in 0..3 {
        match reassembly.push(event.clone()) {
            Ok(Some(whole)) => {
                let _ = mappers[0].map(whole);
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
});
