//! The schema: versioned migrations under `host/store/migrations/<backend>/`,
//! embedded by `sqlx::migrate!` and applied by sqlx's migrator when a store
//! is opened. sqlx records each applied migration with a checksum in
//! `_sqlx_migrations`, so a migration edited after a database applied it
//! stops the store from opening instead of leaving two databases that
//! disagree about what version N means.
//!
//! SQLite and PostgreSQL spell a few column types apart (`BLOB`/`BYTEA`,
//! `REAL`/`DOUBLE PRECISION`, the serial key), so each backend has its own
//! directory with the same versions and names.
//!
//! Databases created before sqlx's migrator kept their versions in a
//! `stepd_migrations` table; [`bridge_legacy_versions`] moves them over once.

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::AnyConnection;
use sqlx::{Connection, Executor, Row};

use crate::StoreError;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The backend a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Backend {
    /// A SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server (scale-out).
    Postgres,
}

impl Backend {
    /// The migrations for this backend, oldest first.
    pub fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        }
    }

    /// Now in Unix milliseconds, as a SQL expression the database
    /// evaluates: one value for the whole statement, by the database's
    /// clock on PostgreSQL (see `Store::clock`), with no round trip of its
    /// own.
    pub(crate) fn now_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Whether a table of this name exists (in the current schema).
    async fn has_table(self, conn: &mut AnyConnection, table: &str) -> Result<bool, StoreError> {
        let query = match self {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let row = sqlx::query(query)
            .bind(table)
            .fetch_one(&mut *conn)
            .await
            .map_err(migrate_db("look for a table"))?;
        Ok(row.try_get::<i64, _>(0).map_err(migrate_db("look for a table"))? > 0)
    }
}

fn migrate_db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, source }
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database applied a migration whose text has changed since.
    #[error(
        "migration {0} was edited after this database applied it (its checksum in _sqlx_migrations differs); \
         restore host/store/migrations/*/{0:04}_*.sql as released and add a new migration instead"
    )]
    EditedMigration(i64),
    /// The database is newer than this binary.
    #[error("this database has migration {0}, which this stepd does not know: it was opened by a newer stepd")]
    UnknownMigration(i64),
    /// Anything else sqlx's migrator reported.
    #[error("{0}")]
    Migrate(#[source] MigrateError),
}

impl From<MigrateError> for SchemaError {
    fn from(e: MigrateError) -> Self {
        match e {
            MigrateError::VersionMismatch(v) => SchemaError::EditedMigration(v),
            MigrateError::VersionMissing(v) => SchemaError::UnknownMigration(v),
            other => SchemaError::Migrate(other),
        }
    }
}

/// Record in `_sqlx_migrations` the versions a database applied before
/// sqlx's migrator (from `stepd_migrations`), with the checksums of the
/// embedded migrations, and drop the old table — in one transaction, so a
/// crash leaves either the old bookkeeping or the new. The old code applied
/// the same statements as the embedded files, so their checksums describe
/// what the database holds.
pub(crate) async fn bridge_legacy_versions(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    if !backend.has_table(conn, "stepd_migrations").await? {
        return Ok(());
    }
    let migrator = backend.migrator();
    conn.ensure_migrations_table()
        .await
        .map_err(|e| StoreError::Schema(e.into()))?;
    let mut tx = conn.begin().await.map_err(migrate_db("bridge: begin"))?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM stepd_migrations ORDER BY version")
        .fetch_all(&mut *tx)
        .await
        .map_err(migrate_db("bridge: read stepd_migrations"))?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()
        .map_err(migrate_db("bridge: read stepd_migrations"))?;
    for version in applied {
        let migration = migrator
            .iter()
            .find(|m| m.version == version)
            .ok_or(StoreError::Schema(SchemaError::UnknownMigration(version)))?;
        // Idempotent, so two processes bridging one SQLite file at once
        // (no advisory lock there) both succeed.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
        )
        .bind(version)
        .bind(migration.description.as_ref())
        .bind(migration.checksum.to_vec())
        .execute(&mut *tx)
        .await
        .map_err(migrate_db("bridge: record a version"))?;
    }
    tx.execute("DROP TABLE IF EXISTS stepd_migrations")
        .await
        .map_err(migrate_db("bridge: drop stepd_migrations"))?;
    tx.commit().await.map_err(migrate_db("bridge: commit"))?;
    Ok(())
}
