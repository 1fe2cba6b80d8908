//! The real servers the control-plane tests run against: a fresh
//! PostgreSQL database per test (dropped afterwards) and a SQLite file per
//! test. A server that does not answer fails the test, never skips it.

use std::path::PathBuf;

use sqlx::{Connection, Executor};
use stepd_store::Store;

/// The PostgreSQL server tests create their databases on
/// (`STEPD_TEST_PG_ADMIN_URL`, default the local trust-auth server).
pub fn pg_admin_url() -> String {
    std::env::var("STEPD_TEST_PG_ADMIN_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The RabbitMQ server tests use (`STEPD_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("STEPD_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database of its own for one test; dropped with [`TestDb::drop_now`].
pub struct TestDb {
    /// Where to connect.
    pub url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new, empty PostgreSQL database.
    pub async fn postgres() -> TestDb {
        let admin = pg_admin_url();
        let name = format!("stepd_t_{}", uuid_hex());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} must be running for the tests (.ci/run starts it): {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
        TestDb {
            url: format!("{base}/{name}"),
            name: Some(name),
            _dir: None,
        }
    }

    /// A new SQLite file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        TestDb {
            url: Store::sqlite_url(dir.path()),
            name: None,
            _dir: Some(dir),
        }
    }

    /// Both kinds, SQLite first.
    pub async fn both() -> Vec<TestDb> {
        vec![TestDb::sqlite(), TestDb::postgres().await]
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn kind(&self) -> &'static str {
        if self.name.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Open a store on it.
    pub async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {} store: {e}", self.kind()))
    }

    /// Drop the PostgreSQL database (connections first).
    pub async fn drop_now(self) {
        if let Some(name) = &self.name {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }

    /// The SQLite file's directory (None for PostgreSQL).
    pub fn dir(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().to_owned())
    }
}

fn uuid_hex() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{}",
        nanos,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
