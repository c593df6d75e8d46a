//! Startup, authentication (cleartext, MD5, SCRAM-SHA-256) and the replication commands.

use super::*;
use std::fmt;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    AuthenticationSaslBody, DataRowBody, Message, RowDescriptionBody,
};
use postgres_protocol::message::frontend;

use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, warn};

use super::super::tls::PgTls;
use super::super::Lsn;

/// A connection in replication mode, before streaming.
use crate::source::postgres::catalog::quote_ident;

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

    pub(super) async fn connect_one(
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

    pub(super) async fn startup(
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

    pub(super) async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<()> {
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
    pub(super) async fn scram_sha_256(
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
    pub(super) async fn wait_ready(&mut self) -> Result<()> {
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

    pub(super) async fn create_slot(
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

pub(super) fn require_password<'a>(password: Option<&'a [u8]>, method: &str) -> Result<&'a [u8]> {
    password.ok_or_else(|| {
        ReplicationError::Auth(format!(
            "the server asked for {method} authentication but no password was given"
        ))
    })
}

pub(super) fn auth_method_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationKerberosV5 => "Kerberos V5",
        Message::AuthenticationScmCredential => "SCM credentials",
        Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => "GSSAPI",
        Message::AuthenticationSspi => "SSPI",
        _ => "an unknown authentication method",
    }
}

pub(super) fn column_names(body: &RowDescriptionBody) -> Result<Vec<String>> {
    body.fields()
        .map(|field| Ok(field.name().to_string()))
        .collect()
        .map_err(|e| ReplicationError::Protocol(format!("malformed RowDescription: {e}")))
}

pub(super) fn row_text(body: &DataRowBody) -> Result<Vec<Option<String>>> {
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
pub(super) fn single_value<'a>(
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

pub(super) fn required<'a>(
    result: &'a QueryResult,
    column: &str,
    command: &str,
) -> Result<&'a str> {
    single_value(result, column, command)?
        .ok_or_else(|| ReplicationError::Protocol(format!("{command} returned NULL {column}")))
}

pub(super) fn parse_lsn(text: &str, what: &str) -> Result<Lsn> {
    text.parse()
        .map_err(|e| ReplicationError::Protocol(format!("{what}: {e}")))
}

pub(super) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
