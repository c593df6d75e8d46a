//! `_id` ordering like the server's.

use super::*;

/// A BSON value ordered like the server orders `_id`s (numbers, strings, objects, ObjectIds…;
/// numbers by value across types).
#[derive(Clone, Debug)]
pub(super) struct IdKey(pub(super) Bson);

pub(super) fn rank(b: &Bson) -> u8 {
    match b {
        Bson::Null => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        _ => 11,
    }
}

pub(super) fn number(b: &Bson) -> f64 {
    match b {
        Bson::Int32(n) => *n as f64,
        Bson::Int64(n) => *n as f64,
        Bson::Double(n) => *n,
        _ => 0.0,
    }
}

impl Ord for IdKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0, &other.0);
        rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
            (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
            _ if rank(a) == 2 => number(a).total_cmp(&number(b)),
            (Bson::String(x), Bson::String(y)) => x.cmp(y),
            (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
            (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
            (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
            _ => {
                let bytes = |v: &Bson| bson::to_vec(&doc! {"v": v.clone()}).unwrap_or_default();
                bytes(a).cmp(&bytes(b))
            }
        })
    }
}

impl PartialOrd for IdKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for IdKey {}
