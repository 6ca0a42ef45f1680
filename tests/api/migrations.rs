//! The migrations run both ways: rolling every one back leaves none of
//! rekey's tables, and applying them again gives the same schema, on a
//! database of its own (no server running beside it).

use rekey_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, QueryResult, Statement};

use crate::helpers::fresh_postgres_database;

/// Every table, column and index, one line each, sorted (the migrations'
/// own bookkeeping table left out).
async fn schema(db: &DatabaseConnection) -> Vec<String> {
    let query = match db.get_database_backend() {
        DbBackend::Sqlite => {
            "SELECT m.type || ' ' || m.name || ' ' || COALESCE(m.sql, '') AS line \
             FROM sqlite_master m WHERE m.name NOT LIKE 'seaql_%' \
             AND m.name NOT LIKE 'sqlite_%'"
        }
        _ => {
            "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type \
             || ' ' || is_nullable || ' ' || COALESCE(column_default, '') AS line \
             FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name NOT LIKE 'seaql_%' \
             UNION ALL SELECT 'index ' || indexdef FROM pg_indexes \
             WHERE schemaname = 'public' AND tablename NOT LIKE 'seaql_%'"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), query))
        .await
        .unwrap();
    let line = |row: &QueryResult| row.try_get::<String>("", "line").unwrap();
    let mut lines: Vec<String> = rows.iter().map(line).collect();
    lines.sort();
    lines
}

async fn every_migration_rolls_back_and_applies_again(db: &DatabaseConnection) {
    Migrator::up(db, None).await.unwrap();
    let current = schema(db).await;
    assert!(
        current
            .iter()
            .any(|l| l.contains("mail_outbox_pending_due")),
        "{current:#?}"
    );

    // The latest alone: PostgreSQL's audit caller column is unbounded, and
    // bounded again when rolled back, a longer name cut to fit (SQLite
    // declares no lengths, so nothing changes there).
    let caller_column = |lines: &[String]| {
        lines
            .iter()
            .find(|line| line.starts_with("column audit_events.caller "))
            .cloned()
            .unwrap_or_default()
    };
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    if postgres {
        assert!(caller_column(&current).contains(" text "), "{current:#?}");
        db.execute_unprepared(
            "INSERT INTO audit_events (at, kind, caller) VALUES (0, 'requested', repeat('x', 100))",
        )
        .await
        .unwrap();
    }
    Migrator::down(db, Some(1)).await.unwrap();
    let bounded_caller = schema(db).await;
    if postgres {
        assert!(
            caller_column(&bounded_caller).contains(" character varying "),
            "{bounded_caller:#?}"
        );
        let cut = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT length(caller) AS cut FROM audit_events",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cut.try_get::<i32>("", "cut").unwrap(), 64);
        db.execute_unprepared("DELETE FROM audit_events")
            .await
            .unwrap();
    } else {
        assert_eq!(bounded_caller, current);
    }

    // The one before: its indexes go, the others stay.
    let admin_reads = [
        "mail_outbox_sent_by_request",
        "mail_outbox_skipped",
        "requests_newest",
    ];
    for index in admin_reads {
        assert!(current.iter().any(|l| l.contains(index)), "{current:#?}");
    }
    Migrator::down(db, Some(1)).await.unwrap();
    let before_latest = schema(db).await;
    for index in admin_reads {
        assert!(
            !before_latest.iter().any(|l| l.contains(index)),
            "{before_latest:#?}"
        );
    }
    assert!(
        before_latest
            .iter()
            .any(|l| l.contains("mail_outbox_pending_due")),
        "{before_latest:#?}"
    );

    // The one before that: the indexes it replaced come back.
    Migrator::down(db, Some(1)).await.unwrap();
    let two_back = schema(db).await;
    assert!(
        two_back.iter().any(|l| l.contains("mail_outbox_due")),
        "{two_back:#?}"
    );
    assert!(
        !two_back
            .iter()
            .any(|l| l.contains("mail_outbox_pending_due")),
        "{two_back:#?}"
    );

    Migrator::down(db, None).await.unwrap();
    assert_eq!(schema(db).await, Vec::<String>::new());

    Migrator::up(db, None).await.unwrap();
    assert_eq!(schema(db).await, current);
}

#[tokio::test]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("rekey.db").display()
    );
    let db = Database::connect(&url).await.unwrap();
    every_migration_rolls_back_and_applies_again(&db).await;
}

#[tokio::test]
async fn on_postgres() {
    if crate::helpers::postgres_url().await.is_none() {
        return;
    }
    let database = fresh_postgres_database().await;
    let db = Database::connect(&database.url).await.unwrap();
    every_migration_rolls_back_and_applies_again(&db).await;
    db.close().await.unwrap();
}
