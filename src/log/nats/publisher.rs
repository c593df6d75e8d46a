//! The active ingest node's writes to the log stream.
//!
//! Messages are pipelined: each is sent without waiting for the acknowledgement of the one
//! before it, fenced by `Nats-Expected-Last-Sequence` on the sequence that one gets once it
//! lands. So a message lands only right after its predecessor: if one fails, every later one
//! fails too, and a commit marker acknowledged means its whole block is in the stream. The
//! acknowledgements are settled, in order, when a caller needs the result (a commit) or when
//! too many are in flight. After a settle, a doorbell message (the last acknowledged sequence,
//! on a subject the stream does not hold) tells every node's materializer how far to read.

use super::cluster::{last_sequence, nats_error};
use super::prefetch::Prefetched;
use crate::log::LogError;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

/// At most this many messages wait for their acknowledgement (each at most
/// `MAX_MESSAGE_BYTES`): past it the oldest is settled before the next is sent.
const MAX_IN_FLIGHT: usize = 32;

pub(crate) struct Publisher {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    bell: String,
    pipeline: Mutex<Pipeline>,
    /// Acknowledged messages, for this node's own materializer.
    prefetched: Arc<Prefetched>,
    /// Why the stream refused this node as its writer, once it did (see [`Publisher::fenced`]).
    fenced: watch::Sender<Option<String>>,
}

struct Pipeline {
    /// The sequence the last message sent gets once it lands: the next one must follow it.
    last: u64,
    /// `last` is not known: a publish failed without an answer and the stream's end could not
    /// be read then either. The next publish reads it first. (Left as it was, `last` counted
    /// the messages that did not land; every later message was refused as out of sequence,
    /// which reads as another writer, and the active node stalled for good while it kept
    /// renewing its lease: found by `tests/it/chaos_nats.rs` after a NATS node was killed.)
    unknown: bool,
    /// Sent messages not settled yet, oldest first, with the sequence each must get.
    in_flight: VecDeque<InFlight>,
}

struct InFlight {
    sequence: u64,
    payload: Bytes,
    ack: PublishAckFuture,
}

impl Publisher {
    pub async fn new(
        js: jetstream::Context,
        stream: stream::Stream,
        subject: String,
        bell: String,
        prefetched: Arc<Prefetched>,
    ) -> Result<Publisher, LogError> {
        let last = last_sequence(&stream).await?;
        Ok(Publisher {
            js,
            stream,
            subject,
            bell,
            pipeline: Mutex::new(Pipeline {
                last,
                unknown: false,
                in_flight: VecDeque::new(),
            }),
            prefetched,
            fenced: watch::Sender::new(None),
        })
    }

    /// Makes this node write after the stream's end as it is now (once `caught_up` returns:
    /// the node applied everything published before it took the lease).
    pub async fn claim<F>(&self, caught_up: F) -> Result<(), LogError>
    where
        F: std::future::Future<Output = Result<(), LogError>>,
    {
        let mut pipeline = self.pipeline.lock().await;
        pipeline.in_flight.clear();
        self.prefetched.clear();
        self.fenced.send_replace(None);
        caught_up.await?;
        pipeline.last = last_sequence(&self.stream).await?;
        pipeline.unknown = false;
        tracing::debug!(last = pipeline.last, "claimed the stream");
        Ok(())
    }

    /// Resolves, with the reason, once the stream refused a message of this node because
    /// another node wrote it meanwhile: this node must stop writing (it steps down).
    pub async fn fenced(&self) -> String {
        let mut fenced = self.fenced.subscribe();
        let reason = match fenced.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Sends `payloads` in order after everything sent before. With `settle`, returns only once
    /// all of them (and everything before) are acknowledged: the result of a commit. Without,
    /// an error of these messages is reported by a later call (every later message fails too).
    pub async fn publish(&self, payloads: Vec<Vec<u8>>, settle: bool) -> Result<(), LogError> {
        let mut pipeline = self.pipeline.lock().await;
        let result = self.send(&mut pipeline, payloads, settle).await;
        if let Err(error) = &result {
            // Whatever is still in flight follows the failed message and fails with it. The
            // failed one may or may not have landed: go on from the stream's end; the next
            // `Begin` discards whatever part of the block landed.
            pipeline.in_flight.clear();
            if !matches!(error, LogError::ReadOnly(_)) {
                match last_sequence(&self.stream).await {
                    Ok(end) => pipeline.last = end,
                    Err(_) => pipeline.unknown = true,
                }
            }
        }
        result
    }

    async fn send(
        &self,
        pipeline: &mut Pipeline,
        payloads: Vec<Vec<u8>>,
        settle: bool,
    ) -> Result<(), LogError> {
        if pipeline.unknown {
            pipeline.last = last_sequence(&self.stream).await?;
            pipeline.unknown = false;
        }
        for payload in payloads {
            if pipeline.in_flight.len() >= MAX_IN_FLIGHT {
                self.settle(pipeline, 1).await?;
            }
            let payload = Bytes::from(payload);
            let message = PublishMessage::build()
                .payload(payload.clone())
                .expected_last_sequence(pipeline.last);
            let ack = self
                .js
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| nats_error("publishing to the log stream", e))?;
            pipeline.last += 1;
            pipeline.in_flight.push_back(InFlight {
                sequence: pipeline.last,
                payload,
                ack,
            });
        }
        if settle {
            self.settle(pipeline, pipeline.in_flight.len()).await?;
        }
        Ok(())
    }

    /// Waits for the acknowledgements of the `count` oldest messages in flight, then rings.
    async fn settle(&self, pipeline: &mut Pipeline, count: usize) -> Result<(), LogError> {
        let mut acked = None;
        for _ in 0..count {
            let Some(InFlight {
                sequence: expected,
                payload,
                ack,
            }) = pipeline.in_flight.pop_front()
            else {
                break;
            };
            match ack.await {
                Ok(ack) if ack.sequence == expected => {
                    self.prefetched.keep(expected, payload);
                    acked = Some(expected);
                }
                Ok(ack) => {
                    return Err(LogError::Nats(format!(
                    "the log stream stored a message at seq {} where this node expected {expected}",
                    ack.sequence
                )))
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    let reason = format!(
                        "another node wrote the log stream after seq {}: this node is no longer its writer",
                        expected - 1
                    );
                    self.fenced.send_replace(Some(reason.clone()));
                    return Err(LogError::ReadOnly(reason));
                }
                Err(e) => return Err(nats_error("publishing to the log stream", e)),
            }
        }
        if let Some(sequence) = acked {
            // A lost ring only delays the other nodes until they look at the stream anyway.
            let _ = self
                .js
                .client()
                .publish(self.bell.clone(), sequence.to_string().into())
                .await;
        }
        Ok(())
    }
}
