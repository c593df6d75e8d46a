//! A small pool of ordinary connections for writes (never the replication connection).

use super::super::tls::PgTls;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, GenericClient, Statement};

/// Prepared statements kept per connection; beyond this many the cache starts over.
const MAX_STATEMENTS: usize = 256;

/// A connection's prepared statements by SQL text: each statement is parsed once per
/// connection, not once per use.
#[derive(Default)]
pub struct Statements(HashMap<String, Statement>);

impl Statements {
    pub async fn get(
        &mut self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql).await?;
        if self.0.len() >= MAX_STATEMENTS {
            self.0.clear();
        }
        self.0.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// After a schema change a cached plan may no longer fit: parse everything again.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Session settings that make every value's text form the one the read side maps
/// (`values`), for `current` rows and returned keys, and that input parses in.
const SESSION_SETUP: &str = "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'";

pub struct Pool {
    config: tokio_postgres::Config,
    tls: PgTls,
    idle: Mutex<Vec<(Client, Statements)>>,
    slots: Semaphore,
}

/// A connection taken from the pool. It goes back only when marked [`Conn::reusable`]: one
/// dropped halfway through a transaction is closed (Postgres then rolls it back).
pub struct Conn<'a> {
    client: Option<(Client, Statements)>,
    pool: &'a Pool,
    reusable: bool,
    _slot: SemaphorePermit<'a>,
}

impl Pool {
    pub fn new(mut config: tokio_postgres::Config, tls: PgTls, size: usize) -> Pool {
        config.application_name("deltarelay_writes");
        Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1)),
        }
    }

    pub async fn get(&self) -> Result<Conn<'_>, tokio_postgres::Error> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|(c, _)| !c.is_closed())
        };
        let client = match idle {
            Some(client) => client,
            None => {
                let client = super::super::catalog::connect_tls(&self.config, &self.tls).await?;
                client.batch_execute(SESSION_SETUP).await?;
                (client, Statements::default())
            }
        };
        Ok(Conn {
            client: Some(client),
            pool: self,
            reusable: false,
            _slot: slot,
        })
    }
}

impl Conn<'_> {
    pub fn client(&self) -> &Client {
        &self.client.as_ref().expect("present until dropped").0
    }

    /// The client and its prepared statements.
    pub fn parts(&mut self) -> (&mut Client, &mut Statements) {
        let (client, statements) = self.client.as_mut().expect("present until dropped");
        (client, statements)
    }

    /// Outside any transaction again: may serve the next request.
    pub fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.reusable && !client.0.is_closed() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
    }
}
