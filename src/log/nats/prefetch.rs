//! The messages the active node itself published, kept for its own materializer so that it
//! need not fetch them back from the stream. Only acknowledged messages are kept (the stream
//! holds exactly these bytes at that sequence); past a size limit, or for a sequence not kept,
//! the materializer fetches from the stream as every other node does.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// At most this many payload bytes are kept.
const LIMIT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub(crate) struct Prefetched {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    messages: BTreeMap<u64, Bytes>,
    bytes: usize,
}

impl Prefetched {
    /// Keeps the acknowledged message at `sequence`, unless the limit is reached.
    pub fn keep(&self, sequence: u64, payload: Bytes) {
        let mut kept = self.lock();
        if kept.bytes + payload.len() <= LIMIT_BYTES {
            kept.bytes += payload.len();
            if let Some(old) = kept.messages.insert(sequence, payload) {
                kept.bytes -= old.len();
            }
        }
    }

    /// The kept message at `sequence`; drops it and any kept before it (applied already).
    pub fn take(&self, sequence: u64) -> Option<Bytes> {
        let mut kept = self.lock();
        let later = kept.messages.split_off(&(sequence + 1));
        let earlier = std::mem::replace(&mut kept.messages, later);
        kept.bytes -= earlier.values().map(Bytes::len).sum::<usize>();
        earlier.get(&sequence).cloned()
    }

    pub fn clear(&self) {
        *self.lock() = Kept::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_message_and_those_before_it_are_gone() {
        let prefetched = Prefetched::default();
        for seq in 1..=4 {
            prefetched.keep(seq, Bytes::from(vec![seq as u8; 10]));
        }
        assert_eq!(prefetched.take(3).as_deref(), Some(&[3u8; 10][..]));
        assert_eq!(prefetched.take(1), None);
        assert_eq!(prefetched.take(2), None);
        assert_eq!(prefetched.lock().bytes, 10);
        assert_eq!(prefetched.take(4).as_deref(), Some(&[4u8; 10][..]));
        assert_eq!(prefetched.lock().bytes, 0);
        assert_eq!(prefetched.take(5), None);
    }

    #[test]
    fn past_the_limit_nothing_more_is_kept() {
        let prefetched = Prefetched::default();
        let big = Bytes::from(vec![0u8; LIMIT_BYTES - 5]);
        prefetched.keep(1, big);
        prefetched.keep(2, Bytes::from(vec![0u8; 10]));
        assert!(prefetched.take(2).is_none());
        prefetched.clear();
        prefetched.keep(3, Bytes::from(vec![0u8; 10]));
        assert!(prefetched.take(3).is_some());
    }
}
