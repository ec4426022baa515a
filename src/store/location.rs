//! Where the store is: a file, memory, or a PostgreSQL server, as named in the configuration.

use std::path::PathBuf;

use super::{BUSY_TIMEOUT, StoreError};

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A private in-memory SQLite database (tests); each `open` gets a fresh one.
    Memory,
    /// An SQLite file; parent directories are created.
    File(PathBuf),
    /// A PostgreSQL database shared by every replica that names it.
    Postgres(DatabaseUrl),
}

/// What the database is, as messages name it (never with a password).
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Memory => f.write_str("in memory (lost when the process exits)"),
            Location::File(path) => write!(f, "SQLite {}", path.display()),
            Location::Postgres(url) => write!(f, "PostgreSQL {url}"),
        }
    }
}

/// A PostgreSQL connection URL (`postgres://user:password@host:port/db?...`; `[approvals]
/// database` takes this form, which [`DatabaseUrl::is_postgres`] tells from a file path). It may
/// hold a password: it is never logged or shown, only its host and database are.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks that `url` parses as a PostgreSQL connection string.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        url.parse::<postgres::Config>().map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        Ok(DatabaseUrl(url.to_owned()))
    }

    /// Whether `s` names a PostgreSQL database rather than an SQLite file.
    pub fn is_postgres(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    pub(super) fn config(&self) -> Result<postgres::Config, StoreError> {
        self.0.parse::<postgres::Config>().map_err(StoreError::Postgres)
    }

    /// Opens a new connection (no TLS: use a Unix socket, loopback or a private network).
    pub(crate) fn connect(&self) -> Result<postgres::Client, StoreError> {
        self.connect_as("mcp-gate")
    }

    /// [`DatabaseUrl::connect`], naming the connection `application_name` unless the string names it.
    pub(crate) fn connect_as(&self, application_name: &str) -> Result<postgres::Client, StoreError> {
        let mut config = self.config()?;
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.connect_timeout(BUSY_TIMEOUT);
        Ok(config.connect(postgres::NoTls)?)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Where the database is, without the user or password.
impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ok(config) = self.0.parse::<postgres::Config>() else { return f.write_str("postgres://(invalid)") };
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        write!(f, "postgres://{host}:{port}/{}", config.get_dbname().unwrap_or_default())
    }
}
