//! Update documents applied to a document, and the `updateDescription` a real server reports
//! for them: dotted paths in `updatedFields`/`removedFields`, appended array elements as
//! `arr.<index>`, arrays shortened from the end in `truncatedArrays`, and `disambiguatedPaths`
//! for paths whose numeric components are field names (shown with `showExpandedEvents`).

use super::commands::{bad, error};
use super::*;

/// The new document and, for operator updates, the `updateDescription`.
pub(super) fn apply_update(
    old: &Document,
    u: &Document,
) -> Result<(Document, Option<Document>), Document> {
    if !u.keys().any(|k| k.starts_with('$')) {
        let mut new = doc! {"_id": old.get("_id").cloned().unwrap_or(Bson::Null)};
        for (k, v) in u {
            if k != "_id" {
                new.insert(k.clone(), v.clone());
            }
        }
        if let Some(id) = u.get("_id") {
            new.insert("_id", id.clone());
        }
        return Ok((new, None));
    }
    let mut new = old.clone();
    let mut d = Description::default();
    for (op, fields) in u {
        let fields = fields
            .as_document()
            .ok_or_else(|| bad(format!("{op} needs a document")))?;
        for (path, value) in fields {
            let parts: Vec<&str> = path.split('.').collect();
            match op.as_str() {
                "$set" => {
                    if get(&new, &parts) != Some(value) {
                        set(&mut new, &parts, value.clone())?;
                        d.updated(&new, path, value.clone());
                    }
                }
                "$unset" => {
                    if unset(&mut new, &parts) {
                        d.removed(&new, path);
                    }
                }
                "$inc" => {
                    let sum = match (get(&new, &parts), value) {
                        (None, v) => v.clone(),
                        (Some(Bson::Int32(a)), Bson::Int32(b)) => Bson::Int32(a + b),
                        (Some(Bson::Int64(a)), Bson::Int64(b)) => Bson::Int64(a + b),
                        (Some(Bson::Int32(a)), Bson::Int64(b)) => Bson::Int64(*a as i64 + b),
                        (Some(Bson::Int64(a)), Bson::Int32(b)) => Bson::Int64(a + *b as i64),
                        (Some(Bson::Double(a)), Bson::Double(b)) => Bson::Double(a + b),
                        _ => return Err(error(14, "TypeMismatch", "cannot $inc a non-number")),
                    };
                    set(&mut new, &parts, sum.clone())?;
                    d.updated(&new, path, sum);
                }
                "$push" => match get(&new, &parts).cloned() {
                    None => {
                        let list = Bson::Array(vec![value.clone()]);
                        set(&mut new, &parts, list.clone())?;
                        d.updated(&new, path, list);
                    }
                    Some(Bson::Array(mut list)) => {
                        let index = list.len();
                        list.push(value.clone());
                        set(&mut new, &parts, Bson::Array(list))?;
                        // An append is reported as the new element's path.
                        d.updated(&new, &format!("{path}.{index}"), value.clone());
                    }
                    Some(_) => return Err(error(2, "BadValue", "$push on a non-array")),
                },
                "$pop" => {
                    let Some(Bson::Array(mut list)) = get(&new, &parts).cloned() else {
                        continue;
                    };
                    if list.is_empty() {
                        continue;
                    }
                    if value.as_i32() == Some(-1) || value.as_f64() == Some(-1.0) {
                        // Removing the first element shifts the rest: the whole array.
                        list.remove(0);
                        set(&mut new, &parts, Bson::Array(list.clone()))?;
                        d.updated(&new, path, Bson::Array(list));
                    } else {
                        list.pop();
                        let size = list.len() as i32;
                        set(&mut new, &parts, Bson::Array(list))?;
                        d.truncated
                            .push(Bson::Document(doc! {"field": path, "newSize": size}));
                    }
                }
                other => return Err(bad(format!("update operator {other} is not emulated"))),
            }
        }
    }
    Ok((new, Some(d.into_document())))
}

#[derive(Default)]
struct Description {
    updated: Document,
    removed: Vec<Bson>,
    truncated: Vec<Bson>,
    disambiguated: Document,
}

impl Description {
    fn updated(&mut self, doc: &Document, path: &str, value: Bson) {
        self.disambiguate(doc, path);
        self.updated.insert(path, value);
    }

    fn removed(&mut self, doc: &Document, path: &str) {
        self.disambiguate(doc, path);
        self.removed.push(Bson::String(path.to_string()));
    }

    /// A path is ambiguous when one of its numeric components names a field rather than an
    /// array index: the server then spells it out, indices as numbers, fields as strings.
    fn disambiguate(&mut self, doc: &Document, path: &str) {
        let mut parts = Vec::new();
        let mut ambiguous = false;
        let mut at = Some(Bson::Document(doc.clone()));
        for part in path.split('.') {
            let numeric = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            match at.take() {
                Some(Bson::Array(list)) if numeric => {
                    let index: usize = part.parse().unwrap_or(usize::MAX);
                    parts.push(Bson::Int32(index as i32));
                    at = list.get(index).cloned();
                }
                Some(Bson::Document(d)) => {
                    ambiguous |= numeric;
                    parts.push(Bson::String(part.to_string()));
                    at = d.get(part).cloned();
                }
                _ => parts.push(Bson::String(part.to_string())),
            }
        }
        if ambiguous {
            self.disambiguated.insert(path, parts);
        }
    }

    fn into_document(self) -> Document {
        doc! {
            "updatedFields": self.updated,
            "removedFields": self.removed,
            "truncatedArrays": self.truncated,
            "disambiguatedPaths": self.disambiguated,
        }
    }
}

fn get<'a>(doc: &'a Document, parts: &[&str]) -> Option<&'a Bson> {
    let (first, rest) = parts.split_first()?;
    let mut value = doc.get(*first)?;
    for part in rest {
        value = match value {
            Bson::Document(d) => d.get(*part)?,
            Bson::Array(list) => list.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Sets a dotted path, creating the documents on the way (as the server does); an array
/// element by index, padding with nulls past its end.
fn set(doc: &mut Document, parts: &[&str], value: Bson) -> Result<(), Document> {
    let (first, rest) = parts.split_first().ok_or_else(|| bad("empty field path"))?;
    if rest.is_empty() {
        doc.insert(*first, value);
        return Ok(());
    }
    let child = doc
        .entry(first.to_string())
        .or_insert_with(|| Bson::Document(Document::new()));
    set_in(child, rest, value)
}

fn set_in(at: &mut Bson, parts: &[&str], value: Bson) -> Result<(), Document> {
    match at {
        Bson::Document(d) => set(d, parts, value),
        Bson::Array(list) => {
            let index: usize = parts[0]
                .parse()
                .map_err(|_| error(28, "PathNotViable", "cannot use a field name in an array"))?;
            while list.len() <= index {
                list.push(Bson::Null);
            }
            if parts.len() == 1 {
                list[index] = value;
                return Ok(());
            }
            if !matches!(list[index], Bson::Document(_) | Bson::Array(_)) {
                list[index] = Bson::Document(Document::new());
            }
            set_in(&mut list[index], &parts[1..], value)
        }
        _ => Err(error(
            28,
            "PathNotViable",
            "cannot create a field in a scalar",
        )),
    }
}

/// Removes a dotted path; `true` if it existed. An array element becomes null, as on the server.
fn unset(doc: &mut Document, parts: &[&str]) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return doc.remove(*first).is_some();
    }
    match doc.get_mut(*first) {
        Some(Bson::Document(d)) => unset(d, rest),
        Some(Bson::Array(list)) => {
            let Ok(index) = rest[0].parse::<usize>() else {
                return false;
            };
            match (rest.len(), list.get_mut(index)) {
                (1, Some(slot)) => {
                    *slot = Bson::Null;
                    true
                }
                (_, Some(Bson::Document(d))) => unset(d, &rest[1..]),
                _ => false,
            }
        }
        _ => false,
    }
}
