//! A table as the writer sees it: columns (names, SQL types, value types) and key, from the
//! catalog. Only these catalog names ever become identifiers in the SQL the writer builds.

use super::super::catalog::{self, quote_ident, CatalogError, TypeCache};
use super::super::values::{text_to_json, ValueType};
use crate::record::Row;
use serde_json::Value;
use tokio_postgres::Client;

#[derive(Debug)]
pub struct Column {
    pub name: String,
    /// The quoted identifier.
    pub ident: String,
    /// `format_type` of the column: what parameters are cast to.
    pub sql_type: String,
    pub value_type: ValueType,
}

#[derive(Debug)]
pub struct Table {
    /// `"schema"."table"`.
    pub ident: String,
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in key order.
    pub key: Vec<usize>,
}

impl Table {
    /// The table `schema.table`, `None` when there is no such table (or view).
    pub async fn load(client: &Client, name: &str) -> Result<Option<Table>, CatalogError> {
        let Some(oid) = client
            .query_opt(
                "SELECT c.oid FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')",
                &[&catalog::quote_table(name)],
            )
            .await?
            .map(|row| row.get::<_, u32>(0))
        else {
            return Ok(None);
        };
        let rows = client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod), atttypid
                   FROM pg_attribute
                  WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                  ORDER BY attnum",
                &[&oid],
            )
            .await?;
        let mut types = TypeCache::default();
        let mut columns = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            columns.push(Column {
                ident: quote_ident(&name),
                name,
                sql_type: row.get(1),
                value_type: types.resolve(client, row.get(2)).await?,
            });
        }
        let mut key_names = catalog::primary_key(client, oid).await?;
        if key_names.is_empty() {
            key_names = catalog::replica_identity_index(client, oid).await?;
        }
        let key = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Ok(Some(Table {
            ident: catalog::quote_table(name),
            columns,
            key,
        }))
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn is_key(&self, index: usize) -> bool {
        self.key.contains(&index)
    }

    /// `"a"::text, "b"::text` of `columns`: the text forms the read side maps.
    pub fn select_text(&self, columns: &[usize]) -> String {
        columns
            .iter()
            .map(|&i| format!("{}::text", self.columns[i].ident))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The row of `columns` from text values read with [`Table::select_text`], as the read side
    /// maps it.
    pub fn row_from_text(&self, columns: &[usize], row: &tokio_postgres::Row) -> Row {
        let mut out = Row::new();
        for (at, &i) in columns.iter().enumerate() {
            let column = &self.columns[i];
            let text: Option<&str> = row.get(at);
            let value = text.map_or(Value::Null, |t| text_to_json(column.value_type, t));
            out.insert(column.name.clone(), value);
        }
        out
    }

    pub fn all_columns(&self) -> Vec<usize> {
        (0..self.columns.len()).collect()
    }
}
