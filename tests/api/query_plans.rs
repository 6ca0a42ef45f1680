//! The plans the databases choose for the hot statements whose obvious plan
//! is not the only one: each must use the index it was written for, for any
//! values and with no statistics (PostgreSQL here runs without autovacuum).

use rekey::{
    domain::{Clock, Purpose, RequestState},
    store::{MailKind, MailStatus, accounts, admin, outbox, requests, token_reads},
};
use sea_orm::{
    ConnectionTrait, DbBackend, QueryResult, QueryTrait, Statement, TransactionTrait,
    sea_query::{PostgresQueryBuilder, QueryBuilder},
};

use crate::{
    flow_test,
    helpers::{Backend, TestApp, spawn_app},
};

/// Whether PostgreSQL may plan a sequential scan.
#[derive(Clone, Copy, PartialEq)]
enum SeqScans {
    /// Off: on a fresh, tiny table a scan would win anyway, and the
    /// question is which index is used.
    Off,
    /// Allowed: the statement must use its index even on a tiny table,
    /// whose generic plan a connection keeps as the table grows.
    Allowed,
}

/// How the database would run `statement` for any values: SQLite's
/// `EXPLAIN QUERY PLAN` with the values bound; a PostgreSQL generic plan
/// (values unknown), after `settings`, as the statement's caller sets them.
async fn plan(
    app: &TestApp,
    backend: Backend,
    statement: Statement,
    seq_scans: SeqScans,
    settings: &[&str],
) -> String {
    let values = statement.values.unwrap_or(sea_orm::Values(Vec::new()));
    match backend {
        Backend::Sqlite => {
            let explain = format!("EXPLAIN QUERY PLAN {}", statement.sql);
            let rows = app
                .db
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    explain,
                    values,
                ))
                .await
                .unwrap();
            let detail = |row: &QueryResult| row.try_get::<String>("", "detail").unwrap();
            rows.iter().map(detail).collect::<Vec<_>>().join("\n")
        }
        Backend::Postgres => {
            let args: Vec<String> = values
                .iter()
                .map(|v| PostgresQueryBuilder.value_to_string(v))
                .collect();
            let tx = app.db.begin().await.unwrap();
            tx.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan")
                .await
                .unwrap();
            if seq_scans == SeqScans::Off {
                tx.execute_unprepared("SET LOCAL enable_seqscan = off")
                    .await
                    .unwrap();
            }
            for setting in settings {
                tx.execute_unprepared(setting).await.unwrap();
            }
            tx.execute_unprepared(&format!("PREPARE planned AS {}", statement.sql))
                .await
                .unwrap();
            let explain = if args.is_empty() {
                "EXPLAIN EXECUTE planned".to_owned()
            } else {
                format!("EXPLAIN EXECUTE planned({})", args.join(", "))
            };
            let rows = tx
                .query_all_raw(Statement::from_string(DbBackend::Postgres, explain))
                .await
                .unwrap();
            let line = |row: &QueryResult| row.try_get::<String>("", "QUERY PLAN").unwrap();
            let plan = rows.iter().map(line).collect::<Vec<_>>().join("\n");
            // A prepared statement outlives the transaction; the pool keeps
            // the connection.
            tx.execute_unprepared("DEALLOCATE planned").await.unwrap();
            tx.rollback().await.unwrap();
            plan
        }
    }
}

/// Inserts `rows` rows into `into` (a table and its columns), each
/// selected by `select` from a row number `x` counting from 1.
async fn insert_rows(app: &TestApp, into: &str, rows: u32, select: &str) {
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO {into} \
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {rows}) \
             SELECT {select} FROM n"
        ))
        .await
        .unwrap();
}

/// `plan` uses `index` and reads no table whole: no `SCAN` of `table` on
/// SQLite, no `Seq Scan` at all on PostgreSQL.
fn assert_index_without_table_scan(plan: &str, backend: Backend, index: &str, table: &str) {
    assert!(plan.contains(index), "{plan}");
    let whole_table = match backend {
        Backend::Sqlite => format!("SCAN {table}"),
        Backend::Postgres => "Seq Scan".to_owned(),
    };
    assert!(!plan.contains(&whole_table), "{plan}");
}

/// `statement`, planned over a small table with sequential scans allowed,
/// uses `index` (SQLite's or PostgreSQL's, as `backend`) and reads no
/// table whole.
async fn assert_small_table_plan_uses(
    app: &TestApp,
    backend: Backend,
    statement: Statement,
    (sqlite_index, postgres_index): (&str, &str),
    table: &str,
) {
    let plan = plan(app, backend, statement, SeqScans::Allowed, &[]).await;
    let index = match backend {
        Backend::Sqlite => sqlite_index,
        Backend::Postgres => postgres_index,
    };
    assert_index_without_table_scan(&plan, backend, index, table);
}

/// A hundred open sign-up requests, `request-1` for `user1@example.com` on.
/// They expire only in 2255, so retention leaves them (and rows that point
/// at them) in place.
async fn insert_hundred_requests(app: &TestApp) {
    insert_rows(
        app,
        "requests (id, purpose, email, display_name, locale, created_at, expires_at)",
        100,
        "'request-' || x, 'sign_up', 'user' || x || '@example.com', 'User', 'en', 0, 9000000000000",
    )
    .await;
}

/// 64 strings, one per batch entry, as `name` makes them from 0 on.
fn batch_of(name: impl Fn(usize) -> String) -> Vec<String> {
    (0..64).map(name).collect()
}

/// The worker's claim reads the pending rows' due index in its order, never
/// the pending rows' `attempts` index (a bitmap scan of it visited every
/// dead entry on each claim).
async fn the_claim_reads_the_pending_rows_due_index(backend: Backend) {
    let app = spawn_app(backend).await;
    let due = outbox::due_jobs(app.clock.now_millis(), 32, 12);
    // Mail sent earlier: rows the pending indexes do not hold.
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, status, attempts, next_attempt_at, created_at)",
        20000,
        "'sign_up', 'a@example.com', '{}', 'sent', 1, x, x",
    )
    .await;
    let claim = app.db.get_database_backend().build(&due);
    let plan = plan(&app, backend, claim, SeqScans::Off, &[]).await;
    assert!(plan.contains("mail_outbox_pending_due"), "{plan}");
    assert!(!plan.contains("mail_outbox_pending_attempts"), "{plan}");
}
flow_test!(the_claim_reads_the_pending_rows_due_index);

/// With a backlog, the claim still reads the due index in its order and
/// stops after its batch: no scan of every due row and sort (PostgreSQL's
/// generic plan without statistics, without the claim's setting).
async fn a_claim_from_a_backlog_reads_only_its_batch_in_due_order(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, status, attempts, next_attempt_at, created_at)",
        20000,
        "'sign_up', 'a@example.com', '{}', 'pending', 0, x, x",
    )
    .await;
    let now = app.clock.now_millis();
    let claim = outbox::claiming(now, now + 60_000, 64, 12).build(app.db.get_database_backend());
    let plan = plan(
        &app,
        backend,
        claim,
        SeqScans::Allowed,
        &[outbox::CLAIM_PLAN],
    )
    .await;
    assert!(plan.contains("mail_outbox_pending_due"), "{plan}");
    for whole_backlog in [
        "Sort",
        "Bitmap",
        "Seq Scan",
        "SCAN mail_outbox",
        "TEMP B-TREE",
    ] {
        assert!(!plan.contains(whole_backlog), "{plan}");
    }
}
flow_test!(a_claim_from_a_backlog_reads_only_its_batch_in_due_order);

/// The jobs a claim holds leave the due range until their lease lapses, so
/// the next claim's ordered scan does not read them again only to skip
/// them (with four batches in flight it read 128 held rows per claim; on
/// PostgreSQL each also left dead index entries at the head of the range).
async fn the_next_claim_does_not_read_the_jobs_held(backend: Backend) {
    let app = spawn_app(backend).await;
    // A day ahead of the server's worker, so that it leaves these jobs alone.
    let day_ahead = app.clock.now_millis() + 86_400_000;
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, status, attempts, next_attempt_at, created_at)",
        200,
        &format!("'sign_up', 'a@example.com', '{{}}', 'pending', 0, {day_ahead} + x, x"),
    )
    .await;
    let now = day_ahead + 1_000;
    let lease_until = now + 60_000;
    let tx = app.db.begin().await.unwrap();
    let held = outbox::claim_due(&tx, now, lease_until, 64, 12)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(held.len(), 64);
    assert!(held.iter().all(|job| job.next_attempt_at == lease_until));

    let in_due_range = app
        .db
        .query_one_raw(Statement::from_string(
            app.db.get_database_backend(),
            format!(
                "SELECT COUNT(*) AS n FROM mail_outbox \
                 WHERE status = 'pending' AND next_attempt_at <= {now}"
            ),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(in_due_range, 136);

    if backend == Backend::Postgres {
        let next = app
            .db
            .get_database_backend()
            .build(&outbox::due_jobs(now, 64, 12));
        let tx = app.db.begin().await.unwrap();
        tx.execute_unprepared(outbox::CLAIM_PLAN).await.unwrap();
        let explain = Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("EXPLAIN (ANALYZE, COSTS OFF) {}", next.sql),
            next.values.unwrap_or(sea_orm::Values(Vec::new())),
        );
        let rows = tx.query_all_raw(explain).await.unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
            .collect();
        tx.rollback().await.unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("mail_outbox_pending_due"), "{plan}");
        assert!(!plan.contains("Rows Removed by Filter"), "{plan}");
    }

    // Once the lease lapses, the held jobs are due again.
    let later = lease_until + 1;
    let tx = app.db.begin().await.unwrap();
    let again = outbox::claim_due(&tx, later, later + 60_000, 200, 12)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again.len(), 200);
}
flow_test!(the_next_claim_does_not_read_the_jobs_held);

/// Consuming a request finds it by its primary key, not by scanning the
/// open requests' unique index (whose condition the statement also meets).
async fn consuming_a_request_looks_it_up_by_its_primary_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let consume = requests::consuming(
        "01a24cf2-0008-7249-9e63-4c673bd1be6a",
        app.clock.now_millis(),
    )
    .build(app.db.get_database_backend());
    let plan = plan(&app, backend, consume, SeqScans::Off, &[]).await;
    let by_primary_key = match backend {
        Backend::Sqlite => "USING INDEX sqlite_autoindex_requests_1 (id=?)",
        Backend::Postgres => "requests_pkey",
    };
    assert!(plan.contains(by_primary_key), "{plan}");
    assert!(
        !plan.contains("requests_one_open_per_email_purpose"),
        "{plan}"
    );
}
flow_test!(consuming_a_request_looks_it_up_by_its_primary_key);

/// The mail worker's revocation of the requests a batch supersedes looks
/// each address up in the open requests' unique index, even on a table of
/// a hundred rows, where a generic plan of `email IN (…)` scanned the table
/// (and kept scanning it as it grew: 52 ms a batch at 7,000 rows).
async fn superseding_a_batchs_requests_looks_each_address_up_in_its_index(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_hundred_requests(&app).await;
    let emails = batch_of(|i| format!("new{i}@example.com"));
    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
    let revoke = requests::revoking_open_of_emails(
        app.db.get_database_backend(),
        Purpose::SignUp,
        &emails,
        app.clock.now_millis(),
    );
    let open_index = "requests_one_open_per_email_purpose";
    assert_small_table_plan_uses(&app, backend, revoke, (open_index, open_index), "requests").await;
}
flow_test!(superseding_a_batchs_requests_looks_each_address_up_in_its_index);

/// The mail worker's lookup of a batch's accounts uses the unique email
/// index even on a table of a hundred accounts, where a generic plan of
/// `email IN (…)` scanned the table (and would keep scanning it as the
/// accounts grew).
async fn a_batchs_accounts_are_looked_up_in_the_email_index(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_rows(
        &app,
        "accounts (id, email, display_name, password_hash, status, locale, created_at, password_changed_at)",
        100,
        "'account-' || x, 'user' || x || '@example.com', 'User', 'hash', 'active', 'en', 0, 0",
    )
    .await;
    let emails = batch_of(|i| format!("user{i}@example.com"));
    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
    let find = accounts::finding_active_by_emails(app.db.get_database_backend(), &emails);
    let by_email = (
        "USING INDEX sqlite_autoindex_accounts_2 (email=?)",
        "accounts_email_key",
    );
    assert_small_table_plan_uses(&app, backend, find, by_email, "accounts").await;
}
flow_test!(a_batchs_accounts_are_looked_up_in_the_email_index);

/// The mail worker's read of a batch's earlier requests finds each one by
/// its primary key even on a table of a hundred rows, where a generic plan
/// of `id IN (…)` scanned the table (and would keep scanning it as the
/// requests grew).
async fn a_batchs_requests_are_looked_up_by_primary_key(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_hundred_requests(&app).await;
    let ids = batch_of(|i| format!("request-{i}"));
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let find = requests::finding_many(app.db.get_database_backend(), &ids);
    let by_id = ("sqlite_autoindex_requests_1 (id=?)", "requests_pkey");
    assert_small_table_plan_uses(&app, backend, find, by_id, "requests").await;
}
flow_test!(a_batchs_requests_are_looked_up_by_primary_key);

/// A batch of `VerifyToken` lookups on PostgreSQL finds each digest in
/// `request_tokens`' primary key and its request in `requests`', even over
/// tables of a hundred rows (SQLite reads one token at a time, directly).
#[tokio::test]
async fn a_batch_of_token_lookups_reads_both_primary_keys_on_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    insert_hundred_requests(&app).await;
    insert_rows(
        &app,
        "request_tokens (digest, request_id, created_at)",
        100,
        "'digest-' || x, 'request-' || x, 0",
    )
    .await;
    let digests = batch_of(|i| format!("digest-{i}"));
    let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
    let find = token_reads::finding_by_token_digests(&digests);
    let plan = plan(&app, Backend::Postgres, find, SeqScans::Allowed, &[]).await;
    for (index, table) in [
        ("request_tokens_pkey", "request_tokens"),
        ("requests_pkey", "requests"),
    ] {
        assert_index_without_table_scan(&plan, Backend::Postgres, index, table);
    }
}

/// The worker's link and outcome writes find a batch's jobs by primary key
/// even in an outbox of a hundred rows, where a generic plan of `id IN (…)`
/// scanned it (and would keep scanning it as the outbox grew).
async fn a_batchs_link_and_outcome_find_its_jobs_by_primary_key(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, status, attempts, next_attempt_at, created_at)",
        100,
        "'sign_up', 'a@example.com', '{}', 'pending', 0, x, x",
    )
    .await;
    let backend_of_db = app.db.get_database_backend();
    let ids: Vec<i64> = (1..=64).collect();
    let links: Vec<(i64, &str, MailKind)> = ids
        .iter()
        .map(|id| (*id, "request-1", MailKind::SignUp))
        .collect();
    let link = outbox::linking(backend_of_db, "lease", &links).unwrap();
    let finish = outbox::finishing(
        backend_of_db,
        "lease",
        &ids,
        MailStatus::Sent,
        MailKind::SignUp,
        app.clock.now_millis(),
    );
    let by_id = ("USING INTEGER PRIMARY KEY (rowid=?)", "mail_outbox_pkey");
    for statement in [link, finish] {
        assert_small_table_plan_uses(&app, backend, statement, by_id, "mail_outbox").await;
    }
}
flow_test!(a_batchs_link_and_outcome_find_its_jobs_by_primary_key);

/// Admin's count of the mails sent for a page of requests reads the sent
/// mail's index by request, even in an outbox of a hundred rows (a generic
/// plan made then is kept as the outbox grows), never the outbox whole.
async fn a_page_of_requests_counts_its_mail_in_the_sent_mail_index(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, request_id, status, attempts, next_attempt_at, created_at)",
        100,
        "'sign_up', 'a@example.com', '{}', 'request-' || x, 'sent', 1, x, x",
    )
    .await;
    let ids = batch_of(|i| format!("request-{i}"));
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let count = admin::counting_sent_mail(app.db.get_database_backend(), &ids);
    let index = "mail_outbox_sent_by_request";
    assert_small_table_plan_uses(&app, backend, count, (index, index), "mail_outbox").await;
}
flow_test!(a_page_of_requests_counts_its_mail_in_the_sent_mail_index);

/// A page of finished requests (used, revoked, expired), after a page key,
/// reads the requests' newest-first index in its order: no scan of every
/// request and sort (1.5 s for a page of used requests among a million, on
/// SQLite). Open requests, few as their lifetime bounds them, may be read
/// from their own index instead. PostgreSQL's choice between this and a
/// bitmap scan and sort rests on statistics a test's tiny table does not
/// have, so there it is asked whether the index serves the page in order.
async fn a_page_of_requests_reads_the_newest_first_index(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_hundred_requests(&app).await;
    let now = app.clock.now_millis();
    let after = Some((now, "request-50".to_owned()));
    for state in [
        RequestState::Used,
        RequestState::Revoked,
        RequestState::Expired,
        RequestState::Open,
    ] {
        for purpose in [None, Some(Purpose::SignUp)] {
            let filter = admin::RequestFilter { purpose, state };
            let page = admin::listing_requests(filter, after.clone(), 50, now)
                .build(app.db.get_database_backend());
            let in_order = [
                "SET LOCAL enable_bitmapscan = off",
                "SET LOCAL enable_sort = off",
            ];
            let plan = plan(&app, backend, page, SeqScans::Off, &in_order).await;
            assert!(!plan.contains("Seq Scan"), "{state:?}: {plan}");
            if state == RequestState::Open && plan.contains("requests_one_open_per_email_purpose") {
                continue;
            }
            assert!(plan.contains("requests_newest"), "{state:?}: {plan}");
            for whole_table in ["Sort", "TEMP B-TREE"] {
                assert!(!plan.contains(whole_table), "{state:?}: {plan}");
            }
        }
    }
}
flow_test!(a_page_of_requests_reads_the_newest_first_index);

/// The outbox gauges and `GetStats` count each status from that status's
/// partial index, never by reading the outbox whole (the sent mail of the
/// retention period).
async fn the_outbox_is_counted_by_status_from_each_statuss_index(backend: Backend) {
    let app = spawn_app(backend).await;
    insert_rows(
        &app,
        "mail_outbox (kind, recipient, payload, request_id, status, attempts, next_attempt_at, created_at)",
        100,
        "'sign_up', 'a@example.com', '{}', 'request-' || x, 'sent', 1, x, x",
    )
    .await;
    for (status, index) in [
        (MailStatus::Pending, "mail_outbox_pending_"),
        (MailStatus::Sent, "mail_outbox_sent_by_request"),
        (MailStatus::Skipped, "mail_outbox_skipped"),
        (MailStatus::Dead, "mail_outbox_dead"),
    ] {
        let count = admin::counting_status(status).build(app.db.get_database_backend());
        let plan = plan(&app, backend, count, SeqScans::Off, &[]).await;
        assert!(plan.contains(index), "{status:?}: {plan}");
        let reads_the_table = plan.lines().any(|line| {
            line.contains("Seq Scan") || (line.contains("SCAN") && !line.contains("INDEX"))
        });
        assert!(!reads_the_table, "{status:?}: {plan}");
    }
}
flow_test!(the_outbox_is_counted_by_status_from_each_statuss_index);
