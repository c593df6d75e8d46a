//! The pgoutput decoder and the row mapping behind it: the input is a sequence of messages,
//! each a u16 big-endian length and that many bytes. Relation messages define table shapes
//! (every column of a built-in type, the others text), row messages go through them and
//! the changes are serialized as the log would store them. Nothing may panic.
#![no_main]

mod common;

use bytes::Bytes;
use deltarelay::source::postgres::changes::TableShape;
use deltarelay::source::postgres::pgoutput::{self, PgOutputMessage};
use deltarelay::source::postgres::values::{builtin_value_type, oid, ValueType};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let mut tables: HashMap<u32, TableShape> = HashMap::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        let Ok(message) = pgoutput::decode(payload) else {
            continue;
        };
        let changes = match message {
            PgOutputMessage::Relation(relation) => {
                let types: Vec<ValueType> = relation
                    .columns
                    .iter()
                    .map(|c| builtin_value_type(c.type_oid).unwrap_or(ValueType::Scalar(oid::TEXT)))
                    .collect();
                // Like the catalog's answer: the first column is the primary key.
                let primary_key: Vec<String> = relation
                    .columns
                    .iter()
                    .take(1)
                    .map(|c| c.name.clone())
                    .collect();
                if let Ok(shape) = TableShape::new(&relation, &primary_key, types) {
                    tables.insert(relation.id, shape);
                }
                continue;
            }
            PgOutputMessage::Insert { relation_id, new } => tables
                .get(&relation_id)
                .map(|t| t.insert(&new).map(|c| vec![c])),
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => tables
                .get(&relation_id)
                .map(|t| t.update(old.as_ref(), &new).map(|c| vec![c])),
            PgOutputMessage::Delete { relation_id, old } => tables
                .get(&relation_id)
                .map(|t| t.delete(&old).map(|c| vec![c])),
            PgOutputMessage::Truncate { relation_ids, .. } => Some(Ok(relation_ids
                .iter()
                .filter_map(|id| tables.get(id))
                .map(TableShape::truncate)
                .collect())),
            PgOutputMessage::Begin { commit_time, .. }
            | PgOutputMessage::Commit { commit_time, .. } => {
                let _ = deltarelay::time::pg_micros_to_rfc3339(commit_time);
                continue;
            }
            _ => continue,
        };
        if let Some(Ok(changes)) = changes {
            changes.iter().for_each(common::check_change);
        }
    }
});
