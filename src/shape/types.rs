//! Column types as the catalog names them, and the comparison class each one belongs to.

use serde::{Deserialize, Serialize};

/// One column of a collection, as `/v1/collections` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The catalog's type name (`int4`, `text`, `timestamptz`, `_int4` for arrays, …).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// How values of a column compare in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Integers of this many bits (sent as numbers, or as strings beyond ±2^53): compared
    /// exactly.
    Integer(u8),
    /// `numeric` (sent as strings): compared exactly, `NaN` above everything.
    Numeric,
    /// `float4`/`float8`: literals are rounded to a double first, as Postgres casts them.
    Float,
    Bool,
    /// Text compared by code point.
    Text,
    /// `timestamp`/`timestamptz`, in time order.
    Timestamp,
    /// `date`, in calendar order.
    Date,
    /// No catalog type (Mongo): each value compares by its JSON kind.
    Dynamic,
    /// Any other type: only `IS [NOT] NULL`.
    Opaque,
}

impl Class {
    pub fn of(type_name: &str) -> Class {
        match type_name {
            "int2" => Class::Integer(16),
            "int4" => Class::Integer(32),
            "int8" => Class::Integer(64),
            "oid" => Class::Integer(33),
            "numeric" => Class::Numeric,
            "float4" | "float8" => Class::Float,
            "bool" => Class::Bool,
            "text" | "varchar" | "name" | "uuid" | "citext" | "char" => Class::Text,
            "timestamp" | "timestamptz" => Class::Timestamp,
            "date" => Class::Date,
            _ => Class::Opaque,
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, Class::Integer(_) | Class::Numeric | Class::Float)
    }
}
