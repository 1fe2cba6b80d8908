//! The schema's migrations (host/store/migrations/) on real databases: a
//! database written before sqlx's migrator is bridged and brought up to
//! date with its jobs intact, and a migration edited after a database
//! applied it stops the store from opening with an error naming it.

use std::path::PathBuf;

use sqlx::{AnyConnection, Connection, Executor};
use stepd_store::{NewJob, Store};
use stepd_tests::services::TestDb;

/// The migration files of one backend, oldest first.
fn migration_files(kind: &str) -> Vec<(i64, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../host/store/migrations")
        .join(kind);
    let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_owned();
            let version = name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("version prefix");
            (version, std::fs::read_to_string(&path).expect("read migration"))
        })
        .collect();
    files.sort();
    files
}

async fn connect(db: &TestDb) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(&db.url).await.expect("connect")
}

/// A database as stepd left it before sqlx's migrator: migrations 1 to 3
/// applied, recorded in `stepd_migrations`, and one job stored.
async fn legacy_database(db: &TestDb) {
    let mut conn = connect(db).await;
    conn.execute(
        "CREATE TABLE stepd_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await
    .expect("old bookkeeping table");
    for (version, sql) in migration_files(db.kind()).into_iter().filter(|(v, _)| *v <= 3) {
        conn.execute(sql.as_str()).await.expect("apply an old migration");
        sqlx::query("INSERT INTO stepd_migrations (version, name, applied_at) VALUES ($1, 'old', 0)")
            .bind(version)
            .execute(&mut conn)
            .await
            .expect("record an old version");
    }
    sqlx::query(
        "INSERT INTO jobs (id, status, attempt, max_attempts, next_attempt_at, payload, live_control, created_at, updated_at) \
         VALUES ('old-job', 'succeeded', 1, 3, 0, '{\"type\":\"task\"}', '{\"paused\":false,\"takeover\":false,\"recovery\":null}', 0, 0)",
    )
    .execute(&mut conn)
    .await
    .expect("an old job");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_the_migrator_is_bridged_and_brought_up_to_date_with_its_jobs() {
    for db in TestDb::both().await {
        // Given a database that recorded migrations 1 to 3 the old way,
        legacy_database(&db).await;
        // when a store opens it,
        let store = db.open().await;
        // then every migration is recorded in sqlx's table (4 to 8 applied
        // now), the old table is gone, and the old job reads as before.
        assert_eq!(
            store.schema_versions().await.expect("versions"),
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            "{}",
            db.kind()
        );
        let job = store
            .get_job("old-job")
            .await
            .expect("read")
            .expect("the old job is still there");
        assert_eq!(job.status.as_str(), "succeeded");
        let mut conn = connect(&db).await;
        let old_table = conn.execute("SELECT version FROM stepd_migrations").await;
        assert!(old_table.is_err(), "{}: stepd_migrations should be dropped", db.kind());
        // Migration 5's column exists: a new job's attempts can be written.
        store
            .insert_job(&NewJob {
                id: "new-job".into(),
                payload: serde_json::json!({"type": "task", "task": {"steps": []}}),
                resolved: None,
                max_attempts: 1,
            })
            .await
            .expect("a new job after the bridge");
        // Opening again changes nothing.
        let again = db.open().await;
        assert_eq!(
            again.schema_versions().await.expect("versions"),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        conn.close().await.expect("close");
        store.close().await;
        again.close().await;
        db.drop_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_edited_after_it_was_applied_stops_the_store_and_is_named() {
    for db in TestDb::both().await {
        // Given a database at the current schema,
        db.open().await.close().await;
        // when migration 3's recorded checksum no longer matches its file
        // (as if the file had been edited after release),
        let mut conn = connect(&db).await;
        sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 3")
            .bind(vec![0u8; 48])
            .execute(&mut conn)
            .await
            .expect("tamper");
        conn.close().await.expect("close");
        // then opening the store fails and names the migration.
        let error = Store::open(&db.url)
            .await
            .expect_err("an edited migration must stop the store");
        let message = error.to_string();
        assert!(message.contains("migration 3 was edited"), "{}: {message}", db.kind());
        db.drop_now().await;
    }
}
