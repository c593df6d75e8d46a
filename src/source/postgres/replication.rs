//! A Postgres connection in replication mode (`replication=database`), framed by hand.
//!
//! tokio-postgres cannot run `START_REPLICATION` (it answers with CopyBoth), so this module
//! speaks the wire protocol itself, using `postgres-protocol` to encode frontend messages and
//! to parse most backend messages. CopyBothResponse (`W`) and CopyData (`d`) frames are cut
//! out of the read buffer here: CopyData is the hot path, and its payload is handed out as a
//! zero-copy slice of the read buffer.

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    AuthenticationSaslBody, DataRowBody, ErrorFields, Message, RowDescriptionBody,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::Host;
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, info, trace, warn};

use super::tls::PgTls;
use super::Lsn;

pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// Initial size of the read buffer; reads are topped up to at least this much free space.
const READ_BUF_SIZE: usize = 128 * 1024;
/// Below this much free space the read buffer is grown before the next read.
const MIN_READ_SPACE: usize = 16 * 1024;
/// Largest frame accepted from the server (Postgres itself caps a field at 1 GiB).
const MAX_FRAME_LEN: usize = 1 << 30;
/// How long `close` waits for the server to finish the copy before hanging up anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// XLogData header after the `w` byte: WAL start, WAL end, send time.
const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Keepalive body including the `k` byte: WAL end, send time, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{code}: {message}{}{}", in_parens(.detail), after_space(.hint))]
    Server {
        /// SQLSTATE, e.g. `42704`.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("invalid connection configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server closed the connection")]
    Closed,
}

impl ReplicationError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

fn in_parens(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
}

fn after_space(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(" {t}")).unwrap_or_default()
}

/// The rows of a simple query's last result set, as text (`None` is SQL NULL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// The answer to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub consistent_point: Lsn,
    /// Only valid until this connection runs its next command.
    pub snapshot_name: Option<String>,
}

/// A message of the logical replication stream (the payload of one CopyData frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: a chunk of decoded WAL (one pgoutput message).
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// `k`: the server's heartbeat; answer with `send_status` when `reply_requested`.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// µs since 2000-01-01 UTC for "now" (client clock for status updates).
pub fn pg_now_micros() -> i64 {
    let unix_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_micros - PG_EPOCH_OFFSET_MICROS
}

// ---------------------------------------------------------------------------------------------
// Transport

/// The byte stream under the protocol.
enum Socket {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What sits at the head of the read buffer.
enum Peek {
    /// A whole frame: its tag and total length (tag byte included).
    Ready { tag: u8, total: usize },
    /// An incomplete frame; at least this many more bytes are needed.
    Need(usize),
}

/// Looks at the frame at the head of `buf` without consuming it.
fn peek_frame(buf: &[u8]) -> Result<Peek> {
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
enum Backend {
    /// `W`, which `postgres-protocol` does not parse.
    CopyBothResponse,
    Message(u8, Message),
}

/// The socket plus its read and write buffers.
struct Framed {
    socket: Socket,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl Framed {
    fn new(socket: Socket) -> Self {
        Framed {
            socket,
            read_buf: BytesMut::with_capacity(READ_BUF_SIZE),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Reads at least one more byte into the read buffer, growing it so that `want` more bytes
    /// fit. Cancel-safe: a cancelled read leaves the buffer as it was.
    async fn fill(&mut self, want: usize) -> Result<()> {
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
    async fn next_frame(&mut self) -> Result<(u8, BytesMut)> {
        loop {
            match peek_frame(&self.read_buf)? {
                Peek::Ready { tag, total } => return Ok((tag, self.read_buf.split_to(total))),
                Peek::Need(n) => self.fill(n).await?,
            }
        }
    }

    /// The next message that matters, skipping (and logging) ParameterStatus, BackendKeyData,
    /// NoticeResponse and NotificationResponse.
    async fn recv(&mut self) -> Result<Backend> {
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
    async fn flush(&mut self) -> Result<()> {
        self.socket.write_all_buf(&mut self.write_buf).await?;
        self.socket.flush().await?;
        Ok(())
    }

    /// Sends Terminate and shuts the socket down, ignoring errors: we are leaving anyway.
    async fn terminate(&mut self) {
        frontend::terminate(&mut self.write_buf);
        if let Err(e) = self.flush().await {
            debug!(error = %e, "could not send Terminate");
        }
        let _ = self.socket.shutdown().await;
    }
}

/// Parses one complete frame (not `W`) with `postgres-protocol`.
fn parse_message(tag: u8, frame: &mut BytesMut) -> Result<Message> {
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
fn log_if_informational(message: &Message) -> bool {
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
fn fields_to_error(mut fields: ErrorFields<'_>) -> ReplicationError {
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
fn message_name(tag: u8) -> String {
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

fn tag_char(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

fn unexpected(tag: u8, expected: &str) -> ReplicationError {
    ReplicationError::Protocol(format!("expected {expected}, got {}", message_name(tag)))
}

// ---------------------------------------------------------------------------------------------
// Connection

/// A connection in replication mode, before streaming.
pub struct ReplicationConnection {
    framed: Framed,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("buffered", &self.framed.read_buf.len())
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects using host/port/user/password/dbname/application_name/options from `config`,
    /// trying its hosts in order, with `replication=database` plus `params` in the startup
    /// message. Authenticates with trust, cleartext password, md5 or SCRAM-SHA-256.
    pub async fn connect(config: &tokio_postgres::Config, params: &[(&str, &str)]) -> Result<Self> {
        Self::connect_tls(config, &PgTls::from_config(config), params).await
    }

    /// [`ReplicationConnection::connect`] with TLS as `tls` says (SSLRequest, then a rustls
    /// handshake, on TCP connections; Unix sockets never use TLS, as with libpq).
    pub async fn connect_tls(
        config: &tokio_postgres::Config,
        tls: &PgTls,
        params: &[(&str, &str)],
    ) -> Result<Self> {
        let targets = targets(config)?;
        let mut last_error = None;
        for target in &targets {
            let attempt = Self::connect_one(config, tls, target, params);
            let result = match config.get_connect_timeout() {
                Some(limit) => match tokio::time::timeout(*limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {target} timed out after {limit:?}"),
                    )
                    .into()),
                },
                None => attempt.await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    warn!(target = %target, error = %e, "could not connect");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ReplicationError::Config("no host given".into())))
    }

    async fn connect_one(
        config: &tokio_postgres::Config,
        tls: &PgTls,
        target: &Target,
        params: &[(&str, &str)],
    ) -> Result<Self> {
        let socket = target.open(tls).await?;
        let mut conn = ReplicationConnection {
            framed: Framed::new(socket),
        };
        conn.startup(config, params).await?;
        debug!(target = %target, "replication connection ready");
        Ok(conn)
    }

    async fn startup(
        &mut self,
        config: &tokio_postgres::Config,
        params: &[(&str, &str)],
    ) -> Result<()> {
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Config("no user given".into()))?;
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", user),
            ("database", config.get_dbname().unwrap_or(user)),
            ("replication", "database"),
        ];
        if let Some(name) = config.get_application_name() {
            startup.push(("application_name", name));
        }
        if let Some(options) = config.get_options() {
            startup.push(("options", options));
        }
        // We decode all text as UTF-8, so ask for it unless the caller chose otherwise.
        if !params
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("client_encoding"))
        {
            startup.push(("client_encoding", "UTF8"));
        }
        startup.extend_from_slice(params);
        frontend::startup_message(startup.iter().copied(), &mut self.framed.write_buf)?;
        self.framed.flush().await?;

        self.authenticate(user, config.get_password()).await?;
        self.wait_ready().await
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<()> {
        loop {
            match self.framed.recv().await? {
                Backend::Message(_, Message::AuthenticationOk) => return Ok(()),
                Backend::Message(_, Message::AuthenticationCleartextPassword) => {
                    let password = require_password(password, "cleartext password")?;
                    frontend::password_message(password, &mut self.framed.write_buf)?;
                    self.framed.flush().await?;
                }
                Backend::Message(_, Message::AuthenticationMd5Password(body)) => {
                    let password = require_password(password, "md5")?;
                    let hash = md5_hash(user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.framed.write_buf)?;
                    self.framed.flush().await?;
                }
                Backend::Message(_, Message::AuthenticationSasl(body)) => {
                    let password = require_password(password, "SCRAM-SHA-256")?;
                    self.scram_sha_256(&body, password).await?;
                }
                Backend::Message(_, Message::ErrorResponse(body)) => {
                    return Err(fields_to_error(body.fields()))
                }
                Backend::Message(b'R', other) => {
                    return Err(ReplicationError::Auth(format!(
                        "the server asked for {}, which is not supported",
                        auth_method_name(&other)
                    )))
                }
                Backend::Message(tag, _) => {
                    return Err(unexpected(tag, "an authentication request"))
                }
                Backend::CopyBothResponse => {
                    return Err(unexpected(b'W', "an authentication request"))
                }
            }
        }
    }

    /// SCRAM-SHA-256 without channel binding (there is no TLS to bind to).
    async fn scram_sha_256(
        &mut self,
        offer: &AuthenticationSaslBody,
        password: &[u8],
    ) -> Result<()> {
        let mechanisms: Vec<&str> = offer
            .mechanisms()
            .collect()
            .map_err(|e| ReplicationError::Protocol(format!("malformed SASL offer: {e}")))?;
        if !mechanisms.contains(&SCRAM_SHA_256) {
            return Err(ReplicationError::Auth(format!(
                "the server offers SASL mechanisms {mechanisms:?}; only {SCRAM_SHA_256} is supported"
            )));
        }
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(
            SCRAM_SHA_256,
            scram.message(),
            &mut self.framed.write_buf,
        )?;
        self.framed.flush().await?;

        match self.framed.recv().await? {
            Backend::Message(_, Message::AuthenticationSaslContinue(body)) => scram
                .update(body.data())
                .map_err(|e| ReplicationError::Auth(format!("SCRAM exchange failed: {e}")))?,
            Backend::Message(_, Message::ErrorResponse(body)) => {
                return Err(fields_to_error(body.fields()))
            }
            Backend::Message(tag, _) => return Err(unexpected(tag, "AuthenticationSASLContinue")),
            Backend::CopyBothResponse => {
                return Err(unexpected(b'W', "AuthenticationSASLContinue"))
            }
        }
        frontend::sasl_response(scram.message(), &mut self.framed.write_buf)?;
        self.framed.flush().await?;

        match self.framed.recv().await? {
            Backend::Message(_, Message::AuthenticationSaslFinal(body)) => scram
                .finish(body.data())
                .map_err(|e| ReplicationError::Auth(format!("SCRAM server proof rejected: {e}"))),
            Backend::Message(_, Message::ErrorResponse(body)) => {
                Err(fields_to_error(body.fields()))
            }
            Backend::Message(tag, _) => Err(unexpected(tag, "AuthenticationSASLFinal")),
            Backend::CopyBothResponse => Err(unexpected(b'W', "AuthenticationSASLFinal")),
        }
    }

    /// Waits for the first ReadyForQuery after authentication.
    async fn wait_ready(&mut self) -> Result<()> {
        match self.framed.recv().await? {
            Backend::Message(_, Message::ReadyForQuery(_)) => Ok(()),
            Backend::Message(_, Message::ErrorResponse(body)) => {
                Err(fields_to_error(body.fields()))
            }
            Backend::Message(tag, _) => Err(unexpected(tag, "ReadyForQuery")),
            Backend::CopyBothResponse => Err(unexpected(b'W', "ReadyForQuery")),
        }
    }

    /// Runs `sql` with the simple-query protocol and returns the last result set as text.
    /// A server error is returned once the server is ready again, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult> {
        frontend::query(sql, &mut self.framed.write_buf)?;
        self.framed.flush().await?;

        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.framed.recv().await? {
                Backend::Message(_, Message::RowDescription(body)) => {
                    result.columns = column_names(&body)?;
                    result.rows.clear();
                }
                Backend::Message(_, Message::DataRow(body)) => result.rows.push(row_text(&body)?),
                Backend::Message(_, Message::CommandComplete(_) | Message::EmptyQueryResponse) => {}
                Backend::Message(_, Message::ErrorResponse(body)) => {
                    error = Some(fields_to_error(body.fields()))
                }
                Backend::Message(_, Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(result),
                    }
                }
                Backend::Message(tag, _) => {
                    return Err(unexpected(tag, "the result of a simple query"))
                }
                Backend::CopyBothResponse => {
                    return Err(unexpected(
                        b'W',
                        "the result of a simple query (use start_logical_replication)",
                    ))
                }
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let result = self.simple_query("IDENTIFY_SYSTEM").await?;
        let system_id = required(&result, "systemid", "IDENTIFY_SYSTEM")?.to_string();
        let timeline = required(&result, "timeline", "IDENTIFY_SYSTEM")?;
        let timeline = timeline.parse().map_err(|_| {
            ReplicationError::Protocol(format!("IDENTIFY_SYSTEM returned timeline {timeline:?}"))
        })?;
        let xlog_pos = parse_lsn(required(&result, "xlogpos", "IDENTIFY_SYSTEM")?, "xlogpos")?;
        let dbname = single_value(&result, "dbname", "IDENTIFY_SYSTEM")?.map(str::to_string);
        Ok(SystemIdentity {
            system_id,
            timeline,
            xlog_pos,
            dbname,
        })
    }

    /// `CREATE_REPLICATION_SLOT "slot" LOGICAL pgoutput (SNAPSHOT 'export'|'nothing')`.
    /// An exported snapshot lives only until this connection's next command.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot> {
        self.create_slot(slot, "", export_snapshot).await
    }

    /// A slot that disappears with this connection, created only for its exported snapshot:
    /// a consistent view to copy tables from while the permanent slot keeps streaming.
    pub async fn create_temporary_snapshot_slot(&mut self, slot: &str) -> Result<CreatedSlot> {
        self.create_slot(slot, " TEMPORARY", true).await
    }

    async fn create_slot(
        &mut self,
        slot: &str,
        temporary: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot> {
        let snapshot = if export_snapshot { "export" } else { "nothing" };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput (SNAPSHOT '{snapshot}')",
            quote_ident(slot)
        );
        let result = self.simple_query(&sql).await?;
        let point = required(&result, "consistent_point", "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot {
            consistent_point: parse_lsn(point, "consistent_point")?,
            snapshot_name: single_value(&result, "snapshot_name", "CREATE_REPLICATION_SLOT")?
                .map(str::to_string),
        })
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL X/Y ("name" 'value', ...)`, then streaming.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream> {
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start}",
            quote_ident(slot)
        );
        if !options.is_empty() {
            let list: Vec<String> = options
                .iter()
                .map(|(name, value)| format!("{} {}", quote_ident(name), quote_literal(value)))
                .collect();
            sql.push_str(&format!(" ({})", list.join(", ")));
        }
        debug!(%sql, "starting replication");
        frontend::query(&sql, &mut self.framed.write_buf)?;
        self.framed.flush().await?;

        match self.framed.recv().await? {
            Backend::CopyBothResponse => Ok(ReplicationStream {
                framed: self.framed,
                ended: false,
            }),
            Backend::Message(_, Message::ErrorResponse(body)) => {
                Err(fields_to_error(body.fields()))
            }
            Backend::Message(tag, _) => Err(unexpected(tag, "CopyBothResponse")),
        }
    }
}

fn require_password<'a>(password: Option<&'a [u8]>, method: &str) -> Result<&'a [u8]> {
    password.ok_or_else(|| {
        ReplicationError::Auth(format!(
            "the server asked for {method} authentication but no password was given"
        ))
    })
}

fn auth_method_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationKerberosV5 => "Kerberos V5",
        Message::AuthenticationScmCredential => "SCM credentials",
        Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => "GSSAPI",
        Message::AuthenticationSspi => "SSPI",
        _ => "an unknown authentication method",
    }
}

fn column_names(body: &RowDescriptionBody) -> Result<Vec<String>> {
    body.fields()
        .map(|field| Ok(field.name().to_string()))
        .collect()
        .map_err(|e| ReplicationError::Protocol(format!("malformed RowDescription: {e}")))
}

fn row_text(body: &DataRowBody) -> Result<Vec<Option<String>>> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    loop {
        match ranges.next() {
            Ok(Some(Some(range))) => {
                let text = buf.get(range).and_then(|b| std::str::from_utf8(b).ok());
                let text = text.ok_or_else(|| {
                    ReplicationError::Protocol("DataRow value is not valid UTF-8 text".into())
                })?;
                row.push(Some(text.to_string()));
            }
            Ok(Some(None)) => row.push(None),
            Ok(None) => return Ok(row),
            Err(e) => {
                return Err(ReplicationError::Protocol(format!(
                    "malformed DataRow: {e}"
                )))
            }
        }
    }
}

/// The value of `column` in a single-row result (NULL is `None`).
fn single_value<'a>(
    result: &'a QueryResult,
    column: &str,
    command: &str,
) -> Result<Option<&'a str>> {
    let row = match result.rows.as_slice() {
        [row] => row,
        rows => {
            return Err(ReplicationError::Protocol(format!(
                "{command} returned {} rows, expected 1",
                rows.len()
            )))
        }
    };
    let index = result
        .columns
        .iter()
        .position(|c| c == column)
        .ok_or_else(|| {
            ReplicationError::Protocol(format!(
                "{command} returned columns {:?}, expected one named {column:?}",
                result.columns
            ))
        })?;
    Ok(row.get(index).and_then(|v| v.as_deref()))
}

fn required<'a>(result: &'a QueryResult, column: &str, command: &str) -> Result<&'a str> {
    single_value(result, column, command)?
        .ok_or_else(|| ReplicationError::Protocol(format!("{command} returned NULL {column}")))
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn> {
    text.parse()
        .map_err(|e| ReplicationError::Protocol(format!("{what}: {e}")))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// Where to connect

enum Target {
    Tcp {
        host: String,
        port: u16,
        /// The name the server's certificate must carry (the host name, else the address).
        tls_name: String,
    },
    #[cfg(unix)]
    Unix { dir: std::path::PathBuf, port: u16 },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Target::Unix { dir, port } => write!(f, "{}", socket_path(dir, *port).display()),
        }
    }
}

#[cfg(unix)]
fn socket_path(dir: &Path, port: u16) -> std::path::PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

impl Target {
    async fn open(&self, tls: &PgTls) -> Result<Socket> {
        match self {
            Target::Tcp {
                host,
                port,
                tls_name,
            } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                // Status updates are small and latency matters more than packet count.
                stream.set_nodelay(true)?;
                match tls.client_config() {
                    None => Ok(Socket::Tcp(stream)),
                    Some(client) => start_tls(stream, client, tls, tls_name).await,
                }
            }
            #[cfg(unix)]
            Target::Unix { dir, port } => Ok(Socket::Unix(
                UnixStream::connect(socket_path(dir, *port)).await?,
            )),
        }
    }
}

/// SSLRequest, then the TLS handshake when the server agrees. A server without TLS is an error
/// unless the mode only prefers TLS.
async fn start_tls(
    mut stream: TcpStream,
    client: std::sync::Arc<rustls::ClientConfig>,
    tls: &PgTls,
    name: &str,
) -> Result<Socket> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {
            let name = super::tls::server_name(name).map_err(ReplicationError::Config)?;
            let stream = tokio_rustls::TlsConnector::from(client)
                .connect(name, stream)
                .await
                .map_err(|e| ReplicationError::Tls(e.to_string()))?;
            Ok(Socket::Tls(Box::new(stream)))
        }
        b'N' if !tls.mode.required() => Ok(Socket::Tcp(stream)),
        b'N' => Err(ReplicationError::Tls(format!(
            "the server does not accept TLS connections, but sslmode is {:?}",
            tls.mode
        ))),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {other:#x} to SSLRequest"
        ))),
    }
}

/// The hosts of `config` in order, paired with their ports (like libpq: one port for all, or
/// one per host; `hostaddr` wins over `host` for the address).
fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(ReplicationError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err(ReplicationError::Config("no host given".into()));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ReplicationError::Config(format!(
            "{count} hosts but {} ports",
            ports.len()
        )));
    }
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(addr), host) => Target::Tcp {
                host: addr.to_string(),
                port,
                tls_name: match host {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => addr.to_string(),
                },
            },
            (None, Some(Host::Tcp(host))) => Target::Tcp {
                host: host.clone(),
                port,
                tls_name: host.clone(),
            },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix {
                dir: dir.clone(),
                port,
            },
            (None, None) => return Err(ReplicationError::Config("no host given".into())),
        };
        targets.push(target);
    }
    Ok(targets)
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// The CopyBoth stream started by `START_REPLICATION`.
pub struct ReplicationStream {
    framed: Framed,
    /// The server ended the copy (CopyDone or CommandComplete arrived).
    ended: bool,
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
enum Step {
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

    fn take_frame(&mut self, tag: u8, total: usize) -> Result<Step> {
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
        buf.put_i64(pg_now_micros());
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
    async fn drain(&mut self) -> Result<()> {
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
fn parse_copy_data(mut frame: BytesMut) -> Result<ReplicationMessage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose server end is a Unix socket the test writes to.
    fn stream_pair() -> (ReplicationStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stream = ReplicationStream {
            framed: Framed::new(Socket::Unix(ours)),
            ended: false,
        };
        (stream, theirs)
    }

    fn xlog_frame(start: u64, data: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_u32((4 + XLOG_DATA_HEADER_LEN + data.len()) as u32);
        buf.put_u8(b'w');
        buf.put_u64(start);
        buf.put_u64(start + 100);
        buf.put_i64(42);
        buf.put_slice(data);
        buf.to_vec()
    }

    fn keepalive_frame(end: u64, reply: bool) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_u32((4 + KEEPALIVE_LEN) as u32);
        buf.put_u8(b'k');
        buf.put_u64(end);
        buf.put_i64(7);
        buf.put_u8(u8::from(reply));
        buf.to_vec()
    }

    #[tokio::test]
    async fn reassembles_frames_split_across_reads() {
        let (mut stream, mut server) = stream_pair();
        let mut bytes = xlog_frame(10, b"Bhello");
        bytes.extend(keepalive_frame(99, true));
        for chunk in bytes.chunks(3) {
            server.write_all(chunk).await.unwrap();
        }
        match stream.next_message().await.unwrap() {
            Some(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            }) => {
                assert_eq!((wal_start, wal_end, send_time), (Lsn(10), Lsn(110), 42));
                assert_eq!(&data[..], b"Bhello");
            }
            other => panic!("expected XLogData, got {other:?}"),
        }
        let keepalive = stream.next_message().await.unwrap();
        assert_eq!(
            keepalive,
            Some(ReplicationMessage::Keepalive {
                wal_end: Lsn(99),
                send_time: 7,
                reply_requested: true
            })
        );
    }

    #[tokio::test]
    async fn cancelled_reads_lose_no_bytes() {
        let (mut stream, mut server) = stream_pair();
        let frame = xlog_frame(1, b"Ixyz");
        server.write_all(&frame[..10]).await.unwrap();
        let timed_out =
            tokio::time::timeout(Duration::from_millis(50), stream.next_message()).await;
        assert!(timed_out.is_err(), "a half frame must not be returned");
        server.write_all(&frame[10..]).await.unwrap();
        match stream.next_message().await.unwrap() {
            Some(ReplicationMessage::XLogData { data, .. }) => assert_eq!(&data[..], b"Ixyz"),
            other => panic!("expected XLogData, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn next_buffered_only_returns_what_is_already_read() {
        let (mut stream, mut server) = stream_pair();
        let mut bytes = xlog_frame(1, b"B");
        bytes.extend(xlog_frame(2, b"C"));
        server.write_all(&bytes).await.unwrap();
        assert!(stream.next_message().await.unwrap().is_some());
        // The second frame arrived in the same read.
        assert!(matches!(
            stream.next_buffered().unwrap(),
            Some(ReplicationMessage::XLogData {
                wal_start: Lsn(2),
                ..
            })
        ));
        assert_eq!(stream.next_buffered().unwrap(), None);
    }

    #[tokio::test]
    async fn copy_done_ends_the_stream() {
        let (mut stream, mut server) = stream_pair();
        server.write_all(&[b'c', 0, 0, 0, 4]).await.unwrap();
        assert_eq!(stream.next_message().await.unwrap(), None);
        assert_eq!(stream.next_message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn rejects_oversized_frames_and_unknown_payloads() {
        let (mut stream, mut server) = stream_pair();
        server
            .write_all(&[b'd', 0x7f, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let err = stream.next_message().await.unwrap_err();
        assert!(matches!(err, ReplicationError::Protocol(_)), "{err}");

        let (mut stream, mut server) = stream_pair();
        server.write_all(&[b'd', 0, 0, 0, 5, b'x']).await.unwrap();
        let err = stream.next_message().await.unwrap_err();
        assert!(err.to_string().contains("'x'"), "{err}");
    }

    #[tokio::test]
    async fn eof_is_closed() {
        let (mut stream, server) = stream_pair();
        drop(server);
        let err = stream.next_message().await.unwrap_err();
        assert!(matches!(err, ReplicationError::Closed), "{err}");
    }

    #[test]
    fn server_error_display() {
        let err = ReplicationError::Server {
            code: "42704".into(),
            message: "replication slot \"x\" does not exist".into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        };
        assert_eq!(
            err.to_string(),
            "42704: replication slot \"x\" does not exist (d) h"
        );
        assert_eq!(err.sqlstate(), Some("42704"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn pg_epoch() {
        // 2000-01-01 was long ago, and the value is in microseconds.
        let now = pg_now_micros();
        assert!(now > 20 * 365 * 24 * 3600 * 1_000_000);
    }
}
