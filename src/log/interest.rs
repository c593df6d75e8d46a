//! Which collections live shaped followers read. The writer reads a row's previous version
//! for their changes (which it otherwise skips when it can), so that a follower can tell
//! whether the row was in its shape before: a row that leaves the shape is a delete, a row
//! that was never in it is nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct ShapeInterest {
    counts: RwLock<HashMap<String, usize>>,
}

impl ShapeInterest {
    pub fn wants(&self, collection: &str) -> bool {
        match self.counts.read() {
            Ok(counts) => counts.contains_key(collection),
            Err(poisoned) => poisoned.into_inner().contains_key(collection),
        }
    }

    /// Counts a follower of `collection` while the guard lives.
    pub fn register(self: &Arc<Self>, collection: &str) -> InterestGuard {
        let mut counts = self.counts.write().unwrap_or_else(|p| p.into_inner());
        *counts.entry(collection.to_string()).or_default() += 1;
        InterestGuard {
            interest: self.clone(),
            collection: collection.to_string(),
        }
    }
}

pub struct InterestGuard {
    interest: Arc<ShapeInterest>,
    collection: String,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        let mut counts = self
            .interest
            .counts
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.collection) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.collection);
            }
        }
    }
}
