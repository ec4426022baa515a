//! The two database engines behind one small interface: SQLite (embedded, the default) and
//! PostgreSQL (shared by several replicas).
//!
//! Every operation of the store is written once, against [`Sql`]: statements in the SQL both
//! engines accept, with numbered placeholders `?1`, `?2`… (rewritten to `$1`, `$2`… for
//! PostgreSQL), parameters as [`Param`]s and rows read back as [`Row`]s of [`Val`]ues. The few
//! places where the dialects differ ask [`Sql::engine`].
//!
//! # Write transactions
//!
//! [`Conn::write`] runs a closure in a transaction that holds the database's write lock from its
//! first statement: `BEGIN IMMEDIATE` on SQLite; on PostgreSQL `BEGIN` followed by a transaction
//! advisory lock ([`WRITE_LOCK`]) that every replica takes. Writers are therefore serial across
//! every process sharing the database, on both engines, so a read-check-write (a vote, a claim,
//! an audit append, an expiry) never races another replica's. Reads outside a write transaction
//! take no lock.

use std::collections::HashMap;

use rusqlite::types::ValueRef;

use super::StoreError;

/// The advisory lock key every replica's write transaction takes on PostgreSQL ("mcpgate" in ASCII).
pub const WRITE_LOCK: i64 = 0x006d_6370_6761_7465;

/// Which engine runs a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A value read from or written to the database.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A value to bind, borrowed from the parameter: binding copies nothing on SQLite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValRef<'_> {
    pub fn to_owned_val(self) -> Val {
        match self {
            ValRef::Null => Val::Null,
            ValRef::Int(i) => Val::Int(i),
            ValRef::Real(f) => Val::Real(f),
            ValRef::Text(t) => Val::Text(t.to_owned()),
            ValRef::Blob(b) => Val::Blob(b.to_vec()),
        }
    }
}

/// What can be bound to a placeholder.
pub trait Param {
    fn val_ref(&self) -> ValRef<'_>;

    fn to_val(&self) -> Val {
        self.val_ref().to_owned_val()
    }
}

/// What a column can be read as.
pub trait FromVal: Sized {
    fn from_val(v: Val) -> Result<Self, ColumnError>;
}

/// Why a stored value cannot be read as the type asked for (a corrupt or foreign database).
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// The column holds another kind of value.
    #[error("expected {expected}, found {found:?}")]
    Kind { expected: &'static str, found: Val },
    /// An integer beyond the range of the type read.
    #[error("integer {value} out of range for {ty}")]
    Range { value: i64, ty: &'static str },
    /// Text that names no value of the type read.
    #[error("unknown {what} {value:?}")]
    Unknown { what: &'static str, value: String },
}

impl ColumnError {
    /// `found` where `expected` was asked for.
    pub fn kind(expected: &'static str, found: Val) -> ColumnError {
        ColumnError::Kind { expected, found }
    }
}

/// Parameters for a statement: `params![a, b, c]`.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub use crate::sql_params as params;

impl Param for Val {
    fn val_ref(&self) -> ValRef<'_> {
        match self {
            Val::Null => ValRef::Null,
            Val::Int(i) => ValRef::Int(*i),
            Val::Real(f) => ValRef::Real(*f),
            Val::Text(t) => ValRef::Text(t),
            Val::Blob(b) => ValRef::Blob(b),
        }
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn val_ref(&self) -> ValRef<'_> {
        (**self).val_ref()
    }
}
impl<T: Param> Param for Option<T> {
    fn val_ref(&self) -> ValRef<'_> {
        self.as_ref().map_or(ValRef::Null, Param::val_ref)
    }
}
impl Param for str {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Text(self)
    }
}
impl Param for String {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Text(self)
    }
}
impl Param for bool {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Int(i64::from(*self))
    }
}
impl Param for f64 {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Real(*self)
    }
}
impl Param for Vec<u8> {
    fn val_ref(&self) -> ValRef<'_> {
        ValRef::Blob(self)
    }
}
macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn val_ref(&self) -> ValRef<'_> {
                // Values beyond i64 (u64 near its top) are clamped; the store never writes one.
                ValRef::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
        impl FromVal for $t {
            fn from_val(v: Val) -> Result<Self, ColumnError> {
                match v {
                    Val::Int(i) => <$t>::try_from(i).map_err(|_| ColumnError::Range { value: i, ty: stringify!($t) }),
                    other => Err(ColumnError::kind("an integer", other)),
                }
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u16, u8);

impl FromVal for Val {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        Ok(v)
    }
}
impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Null => Ok(None),
            v => T::from_val(v).map(Some),
        }
    }
}
impl FromVal for String {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Text(s) => Ok(s),
            other => Err(ColumnError::kind("text", other)),
        }
    }
}
impl FromVal for bool {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Int(i) => Ok(i != 0),
            other => Err(ColumnError::kind("a boolean", other)),
        }
    }
}
impl FromVal for f64 {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Real(f) => Ok(f),
            // Exact for every integer the store keeps (counts, milliseconds).
            #[allow(clippy::cast_precision_loss)]
            Val::Int(i) => Ok(i as f64),
            other => Err(ColumnError::kind("a number", other)),
        }
    }
}
impl FromVal for Vec<u8> {
    fn from_val(v: Val) -> Result<Self, ColumnError> {
        match v {
            Val::Blob(b) => Ok(b),
            other => Err(ColumnError::kind("bytes", other)),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(Vec<Val>);

impl Row {
    /// Column `idx` as `T`; a missing column is [`StoreError::Corrupt`], a value that cannot be read
    /// as `T` [`StoreError::Column`].
    pub fn get<T: FromVal>(&self, idx: usize) -> Result<T, StoreError> {
        let v = self.0.get(idx).cloned().ok_or_else(|| StoreError::Corrupt(format!("no column {idx} in a row")))?;
        T::from_val(v).map_err(|source| StoreError::Column { index: idx, source })
    }
}

/// Statements on a connection or inside a transaction.
pub trait Sql {
    /// The engine, for the few statements written differently for each.
    fn engine(&self) -> Engine;

    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError>;

    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, StoreError>;

    /// Runs several statements without parameters (schema changes).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row of a query, which must exist.
    fn query_one(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::Corrupt(format!("no row for {}", first_line(sql))))
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}

/// Maps each row of `rows` with `f`.
pub fn map_rows<T>(rows: Vec<Row>, f: impl FnMut(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

impl dyn Sql + '_ {
    /// Every row mapped by `f`.
    pub fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        map_rows(self.query(sql, params)?, f)
    }
}

/// A connection of either engine.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Sqlite(_) => "Conn::Sqlite",
            Conn::Postgres(_) => "Conn::Postgres",
        })
    }
}

impl Conn {
    /// Runs `f` in a write transaction (see the module documentation) and commits it when `f`
    /// returns `Ok`; anything else rolls it back.
    pub fn write<T>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self {
            Conn::Sqlite(conn) => {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut open = SqliteTx(&tx);
                let value = f(&mut open)?;
                tx.commit()?;
                Ok(value)
            }
            Conn::Postgres(pg) => {
                let result = pg_write(pg, f);
                pg.note(&result);
                result
            }
        }
    }

    /// [`Conn::write`] for an operation with errors of its own: commits when `f` returns `Ok`,
    /// rolls back when it returns any error, which is handed back as it is.
    pub fn write_or_undo<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        // The transaction is rolled back by failing it; the operation's own error is kept aside.
        let mut refused = None;
        let done = self.write(|tx| {
            f(tx).map_err(|e| {
                refused = Some(e);
                StoreError::Aborted
            })
        });
        match (done, refused) {
            (_, Some(e)) => Err(e),
            (Ok(value), None) => Ok(value),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Runs `f` in a write transaction that is on disk when it returns (SQLite: with
    /// `synchronous = FULL` for this transaction; PostgreSQL commits are durable already).
    pub fn write_durable<T>(&mut self, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self {
            Conn::Sqlite(conn) => {
                conn.pragma_update(None, "synchronous", "FULL")?;
                let result = self.write(f);
                let restored = match self {
                    Conn::Sqlite(conn) => conn.pragma_update(None, "synchronous", "NORMAL"),
                    Conn::Postgres(_) => Ok(()),
                };
                let value = result?;
                restored?;
                Ok(value)
            }
            Conn::Postgres(_) => self.write(f),
        }
    }

    /// Rolls back a transaction left open (after a panic inside one).
    pub fn rollback_if_open(&mut self) {
        if let Conn::Sqlite(conn) = self
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }

    /// The statements of this connection, outside any transaction (each in its own).
    pub fn sql(&mut self) -> &mut dyn Sql {
        self
    }
}

impl Sql for Conn {
    fn engine(&self) -> Engine {
        match self {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Postgres(_) => Engine::Postgres,
        }
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        match self {
            Conn::Sqlite(conn) => sqlite_execute(conn, sql, params),
            Conn::Postgres(pg) => {
                let result = pg_statement(&mut pg.client, &mut pg.statements, sql)
                    .and_then(|stmt| Ok(pg.client.execute(&stmt, &refs(&pg_params(params)))?));
                pg.note(&result);
                result
            }
        }
    }

    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, StoreError> {
        match self {
            Conn::Sqlite(conn) => sqlite_query(conn, sql, params),
            Conn::Postgres(pg) => {
                let result = pg_statement(&mut pg.client, &mut pg.statements, sql)
                    .and_then(|stmt| pg_rows(pg.client.query(&stmt, &refs(&pg_params(params)))?));
                pg.note(&result);
                result
            }
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Conn::Postgres(pg) => {
                let result = pg.client.batch_execute(sql).map_err(StoreError::from);
                pg.note(&result);
                result
            }
        }
    }
}

/// An open SQLite transaction.
struct SqliteTx<'a>(&'a rusqlite::Transaction<'a>);

impl Sql for SqliteTx<'_> {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        sqlite_execute(self.0, sql, params)
    }
    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, StoreError> {
        sqlite_query(self.0, sql, params)
    }
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

/// A parameter bound to SQLite as it is, borrowed: no text or blob is copied to bind it.
struct Bound<'a>(&'a dyn Param);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(match self.0.val_ref() {
            ValRef::Null => ValueRef::Null,
            ValRef::Int(i) => ValueRef::Integer(i),
            ValRef::Real(f) => ValueRef::Real(f),
            ValRef::Text(t) => ValueRef::Text(t.as_bytes()),
            ValRef::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_params<'a>(params: &'a [&'a dyn Param]) -> impl Iterator<Item = Bound<'a>> {
    params.iter().map(|p| Bound(*p))
}

fn sqlite_execute(conn: &rusqlite::Connection, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.execute(rusqlite::params_from_iter(sqlite_params(params)))?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

fn sqlite_query(conn: &rusqlite::Connection, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(sqlite_params(params)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut cols = Vec::with_capacity(width);
        for i in 0..width {
            cols.push(match row.get_ref(i)? {
                ValueRef::Null => Val::Null,
                ValueRef::Integer(i) => Val::Int(i),
                ValueRef::Real(f) => Val::Real(f),
                ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Val::Blob(b.to_vec()),
            });
        }
        out.push(Row(cols));
    }
    Ok(out)
}

/// A PostgreSQL connection and its prepared statements, by their text as written (with `?N`).
pub struct PgConn {
    pub(crate) client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// A request failed for another reason than an error the server reported (the connection
    /// was reset or closed): the connection is not used again.
    broken: bool,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> PgConn {
        PgConn { client, statements: HashMap::new(), broken: false }
    }

    /// Whether the connection to the server is lost.
    pub fn is_closed(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// Takes note of a failure that is not the server's answer to a statement.
    fn note<T>(&mut self, result: &Result<T, StoreError>) {
        if let Err(StoreError::Postgres(e)) = result {
            // No answer from the server (reset, closed), or its last one: FATAL ends the session
            // (an administrator's command, a shutdown, a failover).
            let ended = match e.as_db_error() {
                None => true,
                Some(db) => matches!(
                    db.parsed_severity(),
                    Some(postgres::error::Severity::Fatal | postgres::error::Severity::Panic)
                ),
            };
            if ended {
                self.broken = true;
            }
        }
    }
}

fn pg_write<T>(pg: &mut PgConn, f: impl FnOnce(&mut dyn Sql) -> Result<T, StoreError>) -> Result<T, StoreError> {
    let PgConn { client, statements, .. } = pg;
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
    let mut open = PgTx { tx: &mut tx, statements };
    let value = f(&mut open)?;
    tx.commit()?;
    Ok(value)
}

/// An open PostgreSQL transaction.
struct PgTx<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    statements: &'a mut HashMap<String, postgres::Statement>,
}

impl Sql for PgTx<'_, '_> {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, StoreError> {
        let stmt = pg_statement(self.tx, self.statements, sql)?;
        Ok(self.tx.execute(&stmt, &refs(&pg_params(params)))?)
    }
    fn query(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, StoreError> {
        let stmt = pg_statement(self.tx, self.statements, sql)?;
        pg_rows(self.tx.query(&stmt, &refs(&pg_params(params)))?)
    }
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.tx.batch_execute(sql)?)
    }
}

fn pg_statement(
    client: &mut impl postgres::GenericClient,
    cache: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, StoreError> {
    if let Some(stmt) = cache.get(sql) {
        return Ok(stmt.clone());
    }
    let stmt = client.prepare(&postgres_placeholders(sql))?;
    cache.insert(sql.to_owned(), stmt.clone());
    Ok(stmt)
}

fn pg_params(params: &[&dyn Param]) -> Vec<PgVal> {
    params.iter().map(|p| PgVal(p.to_val())).collect()
}

fn refs(vals: &[PgVal]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect()
}

fn pg_rows(rows: Vec<postgres::Row>) -> Result<Vec<Row>, StoreError> {
    rows.iter()
        .map(|row| {
            (0..row.len()).map(|i| Ok(row.try_get::<_, PgVal>(i)?.0)).collect::<Result<Vec<_>, StoreError>>().map(Row)
        })
        .collect()
}

/// Rewrites SQLite's numbered placeholders `?N` to PostgreSQL's `$N`, outside quoted text.
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A value crossing the PostgreSQL boundary, converted to and from the column's own type.
#[derive(Debug)]
struct PgVal(Val);

impl postgres::types::ToSql for PgVal {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match (&self.0, ty) {
            (Val::Null, _) => Ok(postgres::types::IsNull::Yes),
            (Val::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Val::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Val::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Val::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            (Val::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Val::Int(i), _) => i.to_string().to_sql(&Type::TEXT, out),
            (Val::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Val::Real(f), _) => f.to_string().to_sql(&Type::TEXT, out),
            (Val::Text(s), &Type::INT8) => s.parse::<i64>()?.to_sql(ty, out),
            (Val::Text(s), _) => s.as_str().to_sql(&Type::TEXT, out),
            (Val::Blob(b), _) => b.as_slice().to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> postgres::types::FromSql<'a> for PgVal {
    fn from_sql(ty: &postgres::types::Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        Ok(PgVal(match *ty {
            Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Val::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Val::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Val::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Val::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Val::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::BYTEA => Val::Blob(<Vec<u8>>::from_sql(ty, raw)?),
            _ => Val::Text(String::from_sql(&Type::TEXT, raw)?),
        }))
    }

    fn from_sql_null(_: &postgres::types::Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgVal(Val::Null))
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
}

/// Whether `e` is a violation of a primary key or unique constraint.
pub fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        ),
        StoreError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}

/// The name of the constraint or index a unique violation broke, where the engine tells.
pub fn violated_constraint(e: &StoreError) -> Option<String> {
    match e {
        StoreError::Postgres(e) => e.as_db_error().and_then(|d| d.constraint()).map(str::to_owned),
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, msg)) => {
            msg.clone().or_else(|| Some(format!("sqlite error {}", f.extended_code)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_only() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?12, ?3)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($12, $3)"
        );
        assert_eq!(postgres_placeholders("SELECT '?' || ?1"), "SELECT '?' || $1");
    }

    #[test]
    fn rows_convert_to_the_asked_type_or_say_which_column_is_wrong() {
        let row = Row(vec![Val::Int(7), Val::Null, Val::Text("x".into())]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<String>>(1).unwrap(), None);
        assert_eq!(row.get::<String>(2).unwrap(), "x");
        let err = row.get::<i64>(2).unwrap_err();
        assert_eq!(err.to_string(), r#"corrupt store: column 2: expected an integer, found Text("x")"#);
        assert!(matches!(
            err,
            StoreError::Column { index: 2, source: ColumnError::Kind { expected: "an integer", found: Val::Text(_) } }
        ));
        let negative = Row(vec![Val::Int(-1)]);
        assert!(matches!(
            negative.get::<u32>(0),
            Err(StoreError::Column { index: 0, source: ColumnError::Range { value: -1, ty: "u32" } })
        ));
        assert!(matches!(row.get::<u8>(3), Err(StoreError::Corrupt(_))), "no column 3");
    }

    #[test]
    fn borrowed_parameters_bind_every_kind_as_its_value() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let text = String::from("é\u{0}x");
        let blob = vec![0u8, 255, 1];
        let none: Option<&str> = None;
        let rows = sqlite_query(
            &conn,
            "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8",
            params![none, 42i64, 1.5f64, text, "plain", blob, u64::MAX, true],
        )
        .unwrap();
        assert_eq!(
            rows[0].0,
            vec![
                Val::Null,
                Val::Int(42),
                Val::Real(1.5),
                Val::Text("é\u{0}x".into()),
                Val::Text("plain".into()),
                Val::Blob(vec![0, 255, 1]),
                Val::Int(i64::MAX),
                Val::Int(1),
            ]
        );
        // The owned form, used by PostgreSQL, matches the borrowed one.
        assert_eq!(Param::to_val(&text), Val::Text(text.clone()));
        assert_eq!(Param::to_val(&none), Val::Null);
    }
}
