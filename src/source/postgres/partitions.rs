//! Partitions attached to or detached from a synced partitioned table. Neither writes a row
//! change (the rows appear in or vanish from the root at once), so the relay watches each
//! root's leaf partitions and, when they change, copies the root again beside the stream; the
//! copy's sweep then deletes the rows the root no longer has (see `copy.rs`).
//!
//! The sets last copied are kept in the log (position key `<source>#partitions`), written once
//! the copy that covers them has finished, so a change seen while the relay was down, or
//! whose copy was cut short, is found again on the next start.

use super::catalog::{self, CatalogError};
use crate::log::{Log, LogError};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// How often the partitions of synced partitioned tables are compared.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Each synced partitioned table's leaf partitions (OIDs, sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionSets(pub BTreeMap<String, Vec<u32>>);

impl PartitionSets {
    pub fn key(source: &str) -> String {
        format!("{source}#partitions")
    }

    /// The partitioned tables among `tables`, with their partitions now.
    pub async fn read(client: &Client, tables: &[String]) -> Result<PartitionSets, CatalogError> {
        let mut sets = BTreeMap::new();
        for root in catalog::partitioned(client, tables).await? {
            let leaves = catalog::partitions(client, &root).await?;
            sets.insert(root, leaves);
        }
        Ok(sets.into())
    }

    /// The same roots' partitions now.
    pub async fn reread(&self, client: &Client) -> Result<PartitionSets, CatalogError> {
        let mut sets = BTreeMap::new();
        for root in self.0.keys() {
            sets.insert(root.clone(), catalog::partitions(client, root).await?);
        }
        Ok(sets.into())
    }

    /// What the log holds (empty before the first time).
    pub async fn stored(log: &Log, source: &str) -> Result<PartitionSets, LogError> {
        match log.position(&PartitionSets::key(source)).await? {
            None => Ok(PartitionSets::default()),
            Some(text) => serde_json::from_str(&text).map(PartitionSets).map_err(|e| {
                LogError::Corrupt(format!(
                    "the stored partitions {text:?} are unreadable: {e}"
                ))
            }),
        }
    }

    /// Stores these sets as copied.
    pub async fn store(&self, log: &Log, source: &str) -> Result<(), LogError> {
        let text = serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into());
        log.begin()
            .await?
            .commit(&PartitionSets::key(source), text)
            .await?;
        Ok(())
    }

    /// The roots whose partitions differ from `before` (a root `before` lacks is new, not
    /// changed: its own copy covers it).
    pub fn changed_since(&self, before: &PartitionSets) -> Vec<String> {
        self.0
            .iter()
            .filter(|(root, leaves)| before.0.get(*root).is_some_and(|old| old != *leaves))
            .map(|(root, _)| root.clone())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, Vec<u32>>> for PartitionSets {
    fn from(sets: BTreeMap<String, Vec<u32>>) -> PartitionSets {
        PartitionSets(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(entries: &[(&str, &[u32])]) -> PartitionSets {
        PartitionSets(
            entries
                .iter()
                .map(|(r, l)| (r.to_string(), l.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn only_roots_seen_before_with_other_partitions_changed() {
        let before = sets(&[("public.a", &[1, 2]), ("public.b", &[3])]);
        let now = sets(&[
            ("public.a", &[1, 2]),
            ("public.b", &[3, 4]),
            ("public.c", &[5]),
        ]);
        assert_eq!(now.changed_since(&before), vec!["public.b".to_string()]);
        assert!(now.changed_since(&now).is_empty());
    }
}
