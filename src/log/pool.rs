//! A small pool of read-only log connections, used on the blocking thread pool.

use super::{LogError, LogReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Reads running at once (each holds a connection and a blocking thread). More wait their turn,
/// which bounds the memory of pages in flight however many clients there are.
const MAX_CONCURRENT_READS: usize = 8;

pub struct ReaderPool {
    dir: PathBuf,
    idle: Arc<Mutex<Vec<LogReader>>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    pub fn new(dir: PathBuf) -> ReaderPool {
        ReaderPool {
            dir,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)),
        }
    }

    /// Runs `read` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, read: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&LogReader) -> Result<T, LogError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LogError::Stopped)?;
        let idle = self.idle.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = idle.lock().expect("reader pool lock").pop();
            let reader = match pooled {
                Some(reader) => reader,
                None => LogReader::open(&dir)?,
            };
            let result = read(&reader);
            // A connection that failed may be in a bad state: drop it rather than reuse it.
            if result.is_ok() {
                let mut idle = idle.lock().expect("reader pool lock");
                if idle.len() < MAX_CONCURRENT_READS {
                    idle.push(reader);
                }
            }
            result
        })
        .await
        .map_err(|e| LogError::Invalid(format!("a log read failed: {e}")))?
    }
}
