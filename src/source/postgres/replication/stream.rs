//! The CopyBoth stream of `START_REPLICATION`: XLogData and keepalives in, status updates out.

use super::*;
use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::{debug, trace};

use super::super::Lsn;

/// The CopyBoth stream started by `START_REPLICATION`.
pub struct ReplicationStream {
    pub(super) framed: Framed,
    /// The server ended the copy (CopyDone or CommandComplete arrived).
    pub(super) ended: bool,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("buffered", &self.framed.read_buf.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The outcome of taking one frame off the buffer while streaming.
pub(super) enum Step {
    Message(ReplicationMessage),
    Skip,
    End,
}

impl ReplicationStream {
    /// Next message from the server; `Ok(None)` once the server ends the copy. Cancel-safe:
    /// partial frames stay in the buffer.
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            match peek_frame(&self.framed.read_buf)? {
                Peek::Need(n) => self.framed.fill(n).await?,
                Peek::Ready { tag, total } => match self.take_frame(tag, total)? {
                    Step::Message(message) => return Ok(Some(message)),
                    Step::Skip => {}
                    Step::End => self.ended = true,
                },
            }
        }
    }

    /// A complete CopyData message already in the read buffer, without touching the socket.
    /// Anything else at the head of the buffer is left for `next_message`.
    pub fn next_buffered(&mut self) -> Result<Option<ReplicationMessage>> {
        if self.ended {
            return Ok(None);
        }
        match peek_frame(&self.framed.read_buf)? {
            Peek::Ready { tag: b'd', total } => {
                parse_copy_data(self.framed.read_buf.split_to(total)).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub(super) fn take_frame(&mut self, tag: u8, total: usize) -> Result<Step> {
        let mut frame = self.framed.read_buf.split_to(total);
        if tag == b'd' {
            return parse_copy_data(frame).map(Step::Message);
        }
        match parse_message(tag, &mut frame)? {
            Message::CopyDone | Message::CommandComplete(_) | Message::ReadyForQuery(_) => {
                debug!(
                    "server ended the replication stream with {}",
                    message_name(tag)
                );
                Ok(Step::End)
            }
            Message::ErrorResponse(body) => Err(fields_to_error(body.fields())),
            message if log_if_informational(&message) => Ok(Step::Skip),
            _ => Err(unexpected(tag, "CopyData, CopyDone or ErrorResponse")),
        }
    }

    /// Standby status update (`r`): positions received, flushed and applied, the client clock,
    /// and whether the server should answer at once. Flushes the socket.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        let buf = &mut self.framed.write_buf;
        buf.put_u8(b'd');
        buf.put_u32(4 + 1 + 8 * 4 + 1);
        buf.put_u8(b'r');
        buf.put_u64(write.0);
        buf.put_u64(flush.0);
        buf.put_u64(apply.0);
        buf.put_i64(crate::time::pg_now_micros());
        buf.put_u8(u8::from(reply_requested));
        trace!(%write, %flush, %apply, "sending standby status");
        self.framed.flush().await
    }

    /// Sends CopyDone, lets the server finish (bounded by a short timeout), then hangs up.
    pub async fn close(mut self) -> Result<()> {
        frontend::copy_done(&mut self.framed.write_buf);
        self.framed.flush().await?;
        let drained = match tokio::time::timeout(CLOSE_TIMEOUT, self.drain()).await {
            Ok(result) => result,
            Err(_) => {
                debug!("server did not finish the copy within {CLOSE_TIMEOUT:?}; closing anyway");
                Ok(())
            }
        };
        self.framed.terminate().await;
        drained
    }

    /// Discards the rest of the stream up to ReadyForQuery.
    pub(super) async fn drain(&mut self) -> Result<()> {
        loop {
            let (tag, mut frame) = match self.framed.next_frame().await {
                Ok(next) => next,
                Err(ReplicationError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            match tag {
                b'Z' => return Ok(()),
                b'd' | b'c' | b'C' | b'N' | b'S' => {}
                b'E' => match parse_message(tag, &mut frame)? {
                    Message::ErrorResponse(body) => return Err(fields_to_error(body.fields())),
                    _ => return Err(unexpected(tag, "ErrorResponse")),
                },
                _ => return Err(unexpected(tag, "the end of the replication stream")),
            }
        }
    }
}

/// Decodes one CopyData frame (`d`, length, payload) of the replication stream. The XLogData
/// payload is a slice of the frame, so no bytes are copied.
pub(super) fn parse_copy_data(mut frame: BytesMut) -> Result<ReplicationMessage> {
    frame.advance(5);
    match frame.first().copied() {
        Some(b'w') => {
            if frame.len() < XLOG_DATA_HEADER_LEN {
                return Err(ReplicationError::Protocol(format!(
                    "XLogData of {} bytes is shorter than its {XLOG_DATA_HEADER_LEN}-byte header",
                    frame.len()
                )));
            }
            frame.advance(1);
            let wal_start = Lsn(frame.get_u64());
            let wal_end = Lsn(frame.get_u64());
            let send_time = frame.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: frame.freeze(),
            })
        }
        Some(b'k') => {
            if frame.len() < KEEPALIVE_LEN {
                return Err(ReplicationError::Protocol(format!(
                    "primary keepalive of {} bytes is shorter than {KEEPALIVE_LEN} bytes",
                    frame.len()
                )));
            }
            frame.advance(1);
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(frame.get_u64()),
                send_time: frame.get_i64(),
                reply_requested: frame.get_u8() != 0,
            })
        }
        Some(other) => Err(ReplicationError::Protocol(format!(
            "CopyData starting with {} is neither XLogData ('w') nor primary keepalive ('k')",
            tag_char(other)
        ))),
        None => Err(ReplicationError::Protocol(
            "empty CopyData in the replication stream".into(),
        )),
    }
}
