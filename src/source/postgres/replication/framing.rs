//! Backend frames cut out of the read buffer, and server errors and notices read from them.

use super::*;

use bytes::BytesMut;
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, info, trace};

/// What sits at the head of the read buffer.
pub(super) enum Peek {
    /// A whole frame: its tag and total length (tag byte included).
    Ready { tag: u8, total: usize },
    /// An incomplete frame; at least this many more bytes are needed.
    Need(usize),
}

/// Looks at the frame at the head of `buf` without consuming it.
pub(super) fn peek_frame(buf: &[u8]) -> Result<Peek> {
    if buf.len() < 5 {
        return Ok(Peek::Need(5 - buf.len()));
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(ReplicationError::Protocol(format!(
            "{} has an invalid length {len}",
            message_name(tag)
        )));
    }
    if len > MAX_FRAME_LEN {
        return Err(ReplicationError::Protocol(format!(
            "{} of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit",
            message_name(tag)
        )));
    }
    let total = len + 1;
    if buf.len() < total {
        Ok(Peek::Need(total - buf.len()))
    } else {
        Ok(Peek::Ready { tag, total })
    }
}

/// A backend message as seen before streaming starts.
pub(super) enum Backend {
    /// `W`, which `postgres-protocol` does not parse.
    CopyBothResponse,
    Message(u8, Message),
}

/// The socket plus its read and write buffers.
pub(super) struct Framed {
    pub(super) socket: Socket,
    pub(super) read_buf: BytesMut,
    pub(super) write_buf: BytesMut,
}

impl Framed {
    pub(super) fn new(socket: Socket) -> Self {
        Framed {
            socket,
            read_buf: BytesMut::with_capacity(READ_BUF_SIZE),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Reads at least one more byte into the read buffer, growing it so that `want` more bytes
    /// fit. Cancel-safe: a cancelled read leaves the buffer as it was.
    pub(super) async fn fill(&mut self, want: usize) -> Result<()> {
        let need = want.max(MIN_READ_SPACE);
        if self.read_buf.capacity() - self.read_buf.len() < need {
            self.read_buf.reserve(need.max(READ_BUF_SIZE));
        }
        let n = self.socket.read_buf(&mut self.read_buf).await?;
        if n == 0 {
            return Err(ReplicationError::Closed);
        }
        trace!(bytes = n, "read from server");
        Ok(())
    }

    /// The next whole frame (tag byte and length included). Cancel-safe: bytes leave the
    /// buffer only once a complete frame is there.
    pub(super) async fn next_frame(&mut self) -> Result<(u8, BytesMut)> {
        loop {
            match peek_frame(&self.read_buf)? {
                Peek::Ready { tag, total } => return Ok((tag, self.read_buf.split_to(total))),
                Peek::Need(n) => self.fill(n).await?,
            }
        }
    }

    /// The next message that matters, skipping (and logging) ParameterStatus, BackendKeyData,
    /// NoticeResponse and NotificationResponse.
    pub(super) async fn recv(&mut self) -> Result<Backend> {
        loop {
            let (tag, mut frame) = self.next_frame().await?;
            if tag == b'W' {
                return Ok(Backend::CopyBothResponse);
            }
            let message = parse_message(tag, &mut frame)?;
            if !log_if_informational(&message) {
                return Ok(Backend::Message(tag, message));
            }
        }
    }

    /// Writes out everything in the write buffer. If cancelled, unsent bytes stay in the
    /// buffer and go out with the next flush, so the stream stays well framed.
    pub(super) async fn flush(&mut self) -> Result<()> {
        self.socket.write_all_buf(&mut self.write_buf).await?;
        self.socket.flush().await?;
        Ok(())
    }

    /// Sends Terminate and shuts the socket down, ignoring errors: we are leaving anyway.
    pub(super) async fn terminate(&mut self) {
        frontend::terminate(&mut self.write_buf);
        if let Err(e) = self.flush().await {
            debug!(error = %e, "could not send Terminate");
        }
        let _ = self.socket.shutdown().await;
    }
}

/// Parses one complete frame (not `W`) with `postgres-protocol`.
pub(super) fn parse_message(tag: u8, frame: &mut BytesMut) -> Result<Message> {
    match Message::parse(frame) {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(ReplicationError::Protocol(format!(
            "{} was cut short",
            message_name(tag)
        ))),
        Err(e) => Err(ReplicationError::Protocol(format!(
            "malformed {}: {e}",
            message_name(tag)
        ))),
    }
}

/// Logs messages the server may send at any time; returns true if `message` was one.
pub(super) fn log_if_informational(message: &Message) -> bool {
    match message {
        Message::ParameterStatus(body) => {
            let name = body.name().unwrap_or("?");
            let value = body.value().unwrap_or("?");
            debug!(name, value, "server parameter");
            true
        }
        Message::BackendKeyData(body) => {
            debug!(process_id = body.process_id(), "server backend");
            true
        }
        Message::NoticeResponse(body) => {
            let notice = fields_to_error(body.fields());
            info!(notice = %notice, "server notice");
            true
        }
        Message::NotificationResponse(_) => true,
        _ => false,
    }
}

/// Builds a `Server` error from ErrorResponse (or NoticeResponse) fields.
pub(super) fn fields_to_error(mut fields: ErrorFields<'_>) -> ReplicationError {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    loop {
        match fields.next() {
            Ok(Some(field)) => {
                // Early errors may predate client_encoding, so do not insist on UTF-8.
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    b'C' => code = value,
                    b'M' => message = value,
                    b'D' => detail = Some(value),
                    b'H' => hint = Some(value),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => {
                return ReplicationError::Protocol(format!("malformed ErrorResponse: {e}"));
            }
        }
    }
    ReplicationError::Server {
        code,
        message,
        detail,
        hint,
    }
}

/// A readable name for a backend message tag, for error messages.
pub(super) fn message_name(tag: u8) -> String {
    let name = match tag {
        b'R' => "Authentication",
        b'K' => "BackendKeyData",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'C' => "CommandComplete",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'G' => "CopyInResponse",
        b'H' => "CopyOutResponse",
        b'W' => "CopyBothResponse",
        b'D' => "DataRow",
        b'I' => "EmptyQueryResponse",
        b'E' => "ErrorResponse",
        b'n' => "NoData",
        b'N' => "NoticeResponse",
        b'A' => "NotificationResponse",
        b't' => "ParameterDescription",
        b'S' => "ParameterStatus",
        b'1' => "ParseComplete",
        b's' => "PortalSuspended",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        _ => "unknown message",
    };
    format!("{name} ({})", tag_char(tag))
}

pub(super) fn tag_char(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

pub(super) fn unexpected(tag: u8, expected: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("expected {expected}, got {}", message_name(tag)))
}
