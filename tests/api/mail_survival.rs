//! Mail that survives: retries that ride out a long relay outage, dead
//! letters that say why, fenced leases, well-formed messages, the real kind
//! in the audit, and an SMTP password kept apart from the URL.

use std::time::Duration;

use rekey::{
    domain::{Clock, Purpose},
    grpc::pb,
    mail::worker::BUSY_SENDS,
    store::{
        AuditKind, MailKind, MailStatus,
        entities::{audit_event, mail_outbox, request},
        outbox::{self, MailIntent, MailJob},
        requests::{self, Request},
    },
    telemetry::load::BUSY_AT,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement, TransactionTrait,
};

use crate::{
    config::Run,
    flow_test,
    helpers::{
        AuthSink, Backend, RESET_PAGE, TestApp, captured_logs, eventually, eventually_within,
        postgres_url, spawn_app, spawn_app_with,
    },
};

async fn jobs(app: &TestApp) -> Vec<MailJob> {
    mail_outbox::Entity::find()
        .order_by_asc(mail_outbox::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
}

/// Moves the server's clock to each pending job's next attempt, whenever
/// no job is in flight, until `done` holds for the jobs; returns them.
/// Time moves only as far as the backoff asks, never past a live lease.
async fn skip_ahead_until(
    app: &TestApp,
    what: &str,
    done: impl Fn(&[MailJob]) -> bool,
) -> Vec<MailJob> {
    eventually_within(Duration::from_secs(60), what, || async {
        let jobs = jobs(app).await;
        if done(&jobs) {
            return Some(jobs);
        }
        let pending = jobs.iter().filter(|j| j.status == MailStatus::Pending);
        if pending.clone().all(|j| j.locked_until.is_none()) {
            let now = app.clock.now_millis();
            if let Some(due) = pending.map(|j| j.next_attempt_at).min() {
                let ahead = u64::try_from(due - now).unwrap_or(0);
                app.clock.advance(Duration::from_millis(ahead));
            }
        }
        None
    })
    .await
}

fn settled(jobs: &[MailJob]) -> bool {
    !jobs.is_empty() && jobs.iter().all(|j| j.status != MailStatus::Pending)
}

async fn a_relay_refusing_for_longer_than_the_old_limit_still_delivers(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // The old defaults gave up after 8 attempts, about four minutes.
    app.mailbox.refuse_next(10);

    app.sign_up("jane@example.com", "Jane").await.unwrap();

    let jobs = skip_ahead_until(&app, "the mail to be delivered", settled).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, MailStatus::Sent, "{jobs:?}");
    assert_eq!(jobs[0].attempts, 11, "ten refusals (451), then delivered");
    let mail = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);
    app.reset_password(&mail.token(), "a brand new passphrase")
        .await
        .unwrap();
}
flow_test!(a_relay_refusing_for_longer_than_the_old_limit_still_delivers);

async fn a_4xx_is_retried_until_the_attempts_run_out_and_a_5xx_is_buried_at_once(backend: Backend) {
    let mut app = spawn_app_with(backend, |figment| figment.merge(("mail_max_attempts", 3))).await;
    app.mailbox.reject_mailbox("gone@example.com");
    app.sign_up("gone@example.com", "").await.unwrap();
    let jobs = skip_ahead_until(&app, "the 5xx to be buried", settled).await;
    assert_eq!(jobs[0].status, MailStatus::Dead);
    assert_eq!(jobs[0].attempts, 1, "a 5xx is not retried");
    assert!(jobs[0].last_error.as_deref().unwrap().contains("550"));

    app.mailbox.refuse_next(100);
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let jobs = skip_ahead_until(&app, "the 4xx to run out of attempts", settled).await;
    assert_eq!(jobs[1].status, MailStatus::Dead, "{jobs:?}");
    assert_eq!(jobs[1].attempts, 3, "REKEY_MAIL_MAX_ATTEMPTS");
    let error = jobs[1].last_error.as_deref().unwrap();
    assert!(error.contains("451"), "{error}");
    assert!(!error.contains("jane@example.com"), "{error}");

    // A dead letter stays dead: no further attempt, whatever the time.
    app.mailbox.refuse_next(0);
    app.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = jobs_of(&app, MailStatus::Dead).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[1].attempts, 3);
    assert!(app.mailbox.all().is_empty());
}
flow_test!(a_4xx_is_retried_until_the_attempts_run_out_and_a_5xx_is_buried_at_once);

async fn jobs_of(app: &TestApp, status: MailStatus) -> Vec<MailJob> {
    jobs(app)
        .await
        .into_iter()
        .filter(|j| j.status == status)
        .collect()
}

async fn an_unreachable_relay_is_retried_not_buried(backend: Backend) {
    let mut app = spawn_app_with(backend, |figment| {
        // Nothing listens on port 1: every attempt fails to connect.
        figment.merge(("smtp_url", "smtp://127.0.0.1:1"))
    })
    .await;
    app.sign_up("jane@example.com", "Jane").await.unwrap();

    let jobs = skip_ahead_until(&app, "three failed attempts", |jobs| {
        jobs.first()
            .is_some_and(|j| j.attempts >= 3 && j.locked_until.is_none())
    })
    .await;
    assert_eq!(jobs[0].status, MailStatus::Pending, "{jobs:?}");
    assert!(jobs[0].last_error.is_some());
}
flow_test!(an_unreachable_relay_is_retried_not_buried);

async fn a_mail_whose_request_expired_before_the_send_is_a_dead_letter_saying_so(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.mailbox.refuse_next(1);
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    // The first attempt opens the request, then the relay refuses.
    eventually("the first attempt to fail", || async {
        let jobs = jobs(&app).await;
        jobs.first()
            .filter(|j| j.attempts == 1 && j.locked_until.is_none() && j.request_id.is_some())
            .map(drop)
    })
    .await;

    // The sign-up link lives 24 hours; the relay comes back later than that.
    app.clock.advance(Duration::from_secs(25 * 3600));

    let jobs = skip_ahead_until(&app, "the job to be buried", settled).await;
    assert_eq!(jobs[0].status, MailStatus::Dead, "{jobs:?}");
    assert_eq!(
        jobs[0].last_error.as_deref(),
        Some("the request expired before its mail could be sent")
    );
    assert!(app.mailbox.all().is_empty(), "no mail with a dead link");
}
flow_test!(a_mail_whose_request_expired_before_the_send_is_a_dead_letter_saying_so);

async fn each_mail_has_a_message_id_on_the_from_domain_a_date_and_a_plain_html_link(
    backend: Backend,
) {
    let mut app = spawn_app(backend).await;
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 1).await.remove(0);

    let message_id = mail.header("Message-ID").expect("a Message-ID header");
    let (local, domain) = message_id
        .strip_prefix('<')
        .and_then(|id| id.strip_suffix('>'))
        .and_then(|id| id.split_once('@'))
        .unwrap_or_else(|| panic!("not <id@domain>: {message_id}"));
    assert!(local.len() >= 16, "{message_id}");
    assert_eq!(domain, "rekey.test", "the From address's domain");
    let date = mail.header("Date").expect("a Date header");
    assert!(date.contains(" +0000") || date.contains("GMT"), "{date}");

    // The HTML link is the text link, with only `&` escaped as HTML wants.
    let html = mail.html();
    let href = html
        .split("href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no link in {html}"));
    assert!(!href.contains("&#x"), "{href}");
    assert_eq!(href.replace("&amp;", "&"), mail.link());
    assert!(mail.link().starts_with(RESET_PAGE));

    // A second mail gets its own id.
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    let mails = app.mailbox.wait_for("jane@example.com", 2).await;
    assert_ne!(mails[1].header("Message-ID"), Some(message_id));
}
flow_test!(each_mail_has_a_message_id_on_the_from_domain_a_date_and_a_plain_html_link);

async fn an_already_registered_mail_is_logged_and_audited_as_such(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.create_account("jane@example.com", "Jane").await;
    app.sign_up("jane@example.com", "Impostor").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "You already have an account");
    app.wait_for_outbox_drained().await;

    let kinds: Vec<_> = jobs(&app).await.iter().map(|j| j.kind).collect();
    assert_eq!(kinds, [MailKind::SignUp, MailKind::AlreadyRegistered]);
    let mailed: Vec<_> = audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::Mailed))
        .order_by_asc(audit_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail.unwrap_or_default())
        .collect();
    assert_eq!(mailed, ["sign_up", "already_registered"]);
    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|line| line.contains("kind=already_registered")
                && line.contains("mail accepted for delivery")),
        "no log line names the kind: {}",
        logs.lines()
            .filter(|l| l.contains("mail accepted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
flow_test!(an_already_registered_mail_is_logged_and_audited_as_such);

async fn a_lapsed_lease_can_neither_overwrite_a_newer_outcome_nor_release_the_new_lease(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let db = &app.db;
    // A day ahead of the server's worker, so that it leaves these jobs alone.
    let t = app.clock.now_millis() + 86_400_000;
    let intent = MailIntent::Reset {
        locale: "en".into(),
        reset_url: RESET_PAGE.into(),
    };
    let id = outbox::enqueue(db, "jane@example.com", &intent, t)
        .await
        .unwrap();

    let stale = outbox::claim_due(db, t, t + 1_000, 10, 12).await.unwrap();
    assert_eq!(stale.len(), 1);
    // The lease lapses (a slow send) and another worker claims the job.
    let fresh = outbox::claim_due(db, t + 2_000, t + 60_000, 10, 12)
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    assert_ne!(stale[0].lease_token, fresh[0].lease_token);
    let (stale, fresh) = (&stale[0], &fresh[0]);

    // The stale worker can neither record an outcome nor release the lease.
    assert!(
        !outbox::retry_later(db, stale, t + 5_000, "451")
            .await
            .unwrap()
    );
    assert!(!outbox::postpone(db, stale, t + 5_000).await.unwrap());
    let stale_token = stale.lease_token.as_deref().unwrap();
    let link = [(id, "r", MailKind::Reset)];
    let linked = outbox::set_requests(db, stale_token, &link).await.unwrap();
    assert_eq!(linked, Vec::<i64>::new());
    let row = job(&app, id).await;
    assert_eq!(row.status, MailStatus::Pending);
    assert_eq!(row.locked_until, Some(t + 60_000), "the new lease holds");
    assert_eq!(row.lease_token, fresh.lease_token);
    assert_eq!(row.request_id, None);

    // The new holder's outcome lands, and the stale one cannot overwrite it.
    let fresh_token = fresh.lease_token.as_deref().unwrap();
    let (sent, reset) = (MailStatus::Sent, MailKind::Reset);
    let written = outbox::finish_many(db, fresh_token, &[id], sent, reset, t + 3_000).await;
    assert_eq!(written.unwrap(), vec![id]);
    assert!(!outbox::bury(db, stale, "timed out").await.unwrap());
    let stale_sent = outbox::finish_many(db, stale_token, &[id], sent, reset, t + 4_000).await;
    assert_eq!(stale_sent.unwrap(), Vec::<i64>::new());
    let row = job(&app, id).await;
    assert_eq!(row.status, MailStatus::Sent);
    assert_eq!(row.sent_at, Some(t + 3_000));
    assert_eq!((row.locked_until, row.lease_token), (None, None));
}
flow_test!(a_lapsed_lease_can_neither_overwrite_a_newer_outcome_nor_release_the_new_lease);

async fn job(app: &TestApp, id: i64) -> MailJob {
    mail_outbox::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
}

async fn a_job_whose_outcome_is_never_recorded_stops_at_the_attempt_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let db = &app.db;
    let t = app.clock.now_millis() + 86_400_000;
    let intent = MailIntent::Reset {
        locale: "en".into(),
        reset_url: RESET_PAGE.into(),
    };
    let id = outbox::enqueue(db, "jane@example.com", &intent, t)
        .await
        .unwrap();
    // Two workers in turn claim the job and die before recording anything.
    for attempt in 0..2 {
        let now = t + attempt * 10_000;
        assert_eq!(outbox::bury_exhausted(db, now, 2).await.unwrap(), 0);
        let claimed = outbox::claim_due(db, now, now + 5_000, 10, 2)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
    }
    // Out of attempts: not claimed again, but buried once the lease lapses.
    let now = t + 20_000;
    assert!(
        outbox::claim_due(db, now, now + 5_000, 10, 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        outbox::bury_exhausted(db, t + 12_000, 2).await.unwrap(),
        0,
        "still leased"
    );
    assert_eq!(outbox::bury_exhausted(db, now, 2).await.unwrap(), 1);
    let row = job(&app, id).await;
    assert_eq!(row.status, MailStatus::Dead);
    assert_eq!(row.attempts, 2);
    assert_eq!(row.last_error.as_deref(), Some(outbox::LEASE_LAPSED));
}
flow_test!(a_job_whose_outcome_is_never_recorded_stops_at_the_attempt_limit);

const SMTP_SECRET: &str = "smtp-pw-7d1f2c";

async fn the_smtp_password_logs_in_as_the_urls_user(backend: Backend) {
    let relay = AuthSink::start("apikey", SMTP_SECRET);
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("smtp_url", format!("smtp://apikey@{}", relay.addr)))
            .merge(("smtp_password", SMTP_SECRET))
    })
    .await;
    app.sign_up("jane@example.com", "Jane").await.unwrap();
    eventually("the relay to accept the mail", || async {
        (relay.accepted() == 1).then_some(())
    })
    .await;
    assert!(
        relay
            .logins()
            .iter()
            .all(|(user, password)| { user == "apikey" && password == SMTP_SECRET })
    );
    app.wait_for_outbox_drained().await;
    assert!(!captured_logs().contains(SMTP_SECRET));
}
flow_test!(the_smtp_password_logs_in_as_the_urls_user);

#[test]
fn the_smtp_password_file_is_read_and_never_printed() {
    let run = Run::new();
    let relay = AuthSink::start("apikey", SMTP_SECRET);
    let secret_file = run.path().join("smtp-password");
    std::fs::write(&secret_file, format!("{SMTP_SECRET}\n")).unwrap();
    let url = format!("smtp://apikey@{}", relay.addr);
    let database = run.database_url();
    let vars = [
        ("REKEY_RESET_URL", RESET_PAGE),
        ("REKEY_DATABASE_URL", database.as_str()),
        ("REKEY_SMTP_URL", url.as_str()),
        ("REKEY_SMTP_PASSWORD_FILE", secret_file.to_str().unwrap()),
        ("REKEY_SMTP_TIMEOUT", "5s"),
    ];

    let out = run.rekey(&["check-config", "--connect"], &vars);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("smtp relay {}: ok", relay.addr)),
        "{out:?}"
    );
    assert_eq!(
        relay.logins(),
        [("apikey".to_owned(), SMTP_SECRET.to_owned())]
    );
    assert!(!out.everything().contains(SMTP_SECRET), "{out:?}");

    // A wrong password fails the check, naming neither password.
    std::fs::write(&secret_file, "wrong-pw-5e9a").unwrap();
    let out = run.rekey(&["check-config", "--connect"], &vars);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("FAILED"), "{out:?}");
    assert!(!out.everything().contains("wrong-pw-5e9a"), "{out:?}");
    assert!(!out.everything().contains(SMTP_SECRET), "{out:?}");
}

flow_test!(mail_in_hand_when_the_server_stops_is_sent_and_recorded_first);
async fn mail_in_hand_when_the_server_stops_is_sent_and_recorded_first(backend: Backend) {
    // Small batches: each outcome write claims the next batch, so the stop
    // finds batches in hand that were claimed beside an outcome.
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("mail_batch_size", 8))
            .merge(("mail_send_concurrency", 4))
    })
    .await;
    app.sign_up_at_once((0..60).map(|i| (format!("stopping{i}@example.com"), String::new())))
        .await;
    // Stop while the worker holds jobs: as soon as the first mail is out.
    eventually("a first mail", || async {
        (!app.mailbox.all().is_empty()).then_some(())
    })
    .await;
    app.stop().await.unwrap();

    let mailed: Vec<String> = app
        .mailbox
        .all()
        .iter()
        .flat_map(|mail| mail.to.clone())
        .collect();
    for job in jobs(&app).await {
        let was_mailed = mailed.iter().filter(|to| **to == job.recipient).count();
        match job.status {
            MailStatus::Sent => assert_eq!(was_mailed, 1, "job {} sent once", job.id),
            MailStatus::Pending => {
                assert_eq!(job.locked_until, None, "job {} left claimed", job.id);
                assert_eq!(was_mailed, 0, "job {} mailed but not recorded", job.id);
            }
            other => panic!("job {} ended {other:?}", job.id),
        }
    }
}

flow_test!(the_worker_sends_two_batches_worth_at_once_however_many_are_in_flight);
async fn the_worker_sends_two_batches_worth_at_once_however_many_are_in_flight(backend: Backend) {
    // Four batches of 4 in flight, 2 sends each: without the worker-wide
    // cap a slow relay would be receiving 8 mails at once.
    let app = spawn_app_with(backend, |figment| {
        figment
            .merge(("mail_batch_size", 4))
            .merge(("mail_send_concurrency", 2))
    })
    .await;
    app.mailbox.take_time(Duration::from_millis(30));
    app.sign_up_at_once((0..48).map(|i| (format!("slow-relay{i}@example.com"), String::new())))
        .await;
    eventually("48 mails", || async {
        (app.mailbox.all().len() >= 48).then_some(())
    })
    .await;
    assert_eq!(app.mailbox.most_at_once(), 4);
}

flow_test!(while_calls_are_busy_mail_goes_out_a_few_at_a_time_and_never_stops);
async fn while_calls_are_busy_mail_goes_out_a_few_at_a_time_and_never_stops(backend: Backend) {
    // Batches of 8, 8 sends each, so the worker alone sends 16 at once.
    let app = spawn_app_with(backend, |figment| {
        figment
            .merge(("mail_batch_size", 8))
            .merge(("mail_send_concurrency", 8))
            .merge(("hash_concurrency", 1))
            .merge(("hash_queue_depth", 2 * BUSY_AT))
    })
    .await;
    app.mailbox.take_time(Duration::from_millis(30));

    // The hashing thread held, `BUSY_AT` Authenticate calls wait for it:
    // that many calls in flight.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let slot = app.hasher.admit().unwrap();
    let holding = tokio::spawn(async move { slot.run_bounded(move || held.recv()).await });
    let waiting: Vec<_> = (0..BUSY_AT)
        .map(|i| {
            let mut accounts = app.accounts.clone();
            tokio::spawn(async move {
                accounts
                    .authenticate(pb::AuthenticateRequest {
                        email: format!("caller{i}@example.com"),
                        password: "not their password".into(),
                        client: None,
                    })
                    .await
            })
        })
        .collect();
    eventually("the calls waiting for the hashing thread", || async {
        (app.hasher.in_use() > BUSY_AT).then_some(())
    })
    .await;

    app.sign_up_at_once((0..24).map(|i| (format!("busy{i}@example.com"), String::new())))
        .await;
    eventually("24 mails while the calls wait", || async {
        (app.mailbox.all().len() >= 24).then_some(())
    })
    .await;
    assert_eq!(app.mailbox.most_at_once(), BUSY_SENDS);
    assert!(
        waiting.iter().all(|call| !call.is_finished()),
        "the mail went out while the calls were still in flight"
    );

    release.send(()).unwrap();
    holding.await.unwrap().unwrap().unwrap();
    for call in waiting {
        let refused = call.await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    app.sign_up_at_once((0..48).map(|i| (format!("quiet{i}@example.com"), String::new())))
        .await;
    eventually("48 more mails once the calls ended", || async {
        (app.mailbox.all().len() >= 72).then_some(())
    })
    .await;
    assert!(
        app.mailbox.most_at_once() > BUSY_SENDS,
        "the worker's other batches went again: {} at once",
        app.mailbox.most_at_once()
    );
}

/// A batch slower than its lease keeps it: the worker renews the lease
/// while the batch is sent, so no other claim takes its jobs and sends
/// them again.
async fn a_batch_slower_than_its_lease_keeps_it_while_it_is_sent(backend: Backend) {
    // Leases of 3 s renewed every second; batches of 4 sent one at a time,
    // two batches at once, 500 ms a mail: 12 mails take about 3 s.
    let app = spawn_app_with(backend, |figment| {
        figment
            .merge(("smtp_timeout", "1s"))
            .merge(("mail_lease", "3s"))
            .merge(("mail_batch_size", 4))
            .merge(("mail_send_concurrency", 1))
    })
    .await;
    app.mailbox.take_time(Duration::from_millis(500));
    app.sign_up_at_once((0..12).map(|i| (format!("slow{i}@example.com"), String::new())))
        .await;
    eventually("the first mail", || async {
        (!app.mailbox.all().is_empty()).then_some(())
    })
    .await;
    // The first leases now end about 2 s after their claims, before their
    // batches are sent; a lease not renewed is claimed again.
    app.clock.advance(Duration::from_secs(1));
    let finished = eventually("12 mails sent", || async {
        let jobs = jobs(&app).await;
        jobs.iter()
            .all(|job| job.status == MailStatus::Sent)
            .then_some(jobs)
    })
    .await;
    assert_eq!(finished.len(), 12);
    let claims: Vec<i32> = finished.iter().map(|job| job.attempts).collect();
    assert_eq!(claims, vec![1; 12]);
    assert_eq!(app.mailbox.all().len(), 12);
}
flow_test!(a_batch_slower_than_its_lease_keeps_it_while_it_is_sent);

/// An open reset request for jane, named `id`.
fn jane_reset(id: &str, now: i64) -> Request {
    Request {
        id: id.to_owned(),
        purpose: Purpose::Reset,
        email: "jane@example.com".to_owned(),
        account_id: None,
        display_name: "Jane".to_owned(),
        locale: "en".to_owned(),
        created_at: now,
        expires_at: now + 60_000,
        consumed_at: None,
        revoked_at: None,
    }
}

/// What a mail batch does to open jane's request `id`, in `tx`: hold the
/// opening, supersede her open request, open the new one. Returns the
/// addresses whose requests it revoked.
async fn open_janes_request(tx: &DatabaseTransaction, id: &str, now: i64) -> Vec<String> {
    let jane = "jane@example.com";
    requests::hold_openings(tx, &[(Purpose::Reset, jane)])
        .await
        .unwrap();
    let revoked = requests::revoke_open_of_emails(tx, Purpose::Reset, &[jane], now)
        .await
        .unwrap();
    requests::insert_many(tx, &[jane_reset(id, now)])
        .await
        .unwrap();
    revoked
}

/// Two mail batches opening a request for the same address at once (the
/// worker has two in flight): the second waits for the first to commit and
/// supersedes its request. It used to fail on the open requests' unique
/// index once the first committed, and its whole batch was written again
/// link by link.
async fn batches_opening_requests_for_one_address_take_turns(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = app.clock.now_millis();
    let first = app.db.begin().await.unwrap();
    assert!(open_janes_request(&first, "first", now).await.is_empty());
    let db = app.db.clone();
    let second = tokio::spawn(async move {
        let tx = db.begin().await.unwrap();
        let revoked = open_janes_request(&tx, "second", now).await;
        tx.commit().await.unwrap();
        revoked
    });
    if backend == Backend::Postgres {
        eventually("the second batch waits for the first", || async {
            (waiting_to_open_requests(&app).await > 0).then_some(())
        })
        .await;
    }
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), vec!["jane@example.com".to_owned()]);
    let open: Vec<String> = request::Entity::find()
        .filter(request::Column::RevokedAt.is_null())
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|request| request.id)
        .collect();
    assert_eq!(open, vec!["second".to_owned()]);
}
flow_test!(batches_opening_requests_for_one_address_take_turns);

/// PostgreSQL: transactions waiting for another's hold on opening requests
/// for an address.
async fn waiting_to_open_requests(app: &TestApp) -> i64 {
    app.db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_locks \
             WHERE locktype = 'advisory' AND NOT granted AND database = \
               (SELECT oid FROM pg_database WHERE datname = current_database())",
        ))
        .await
        .unwrap()
        .and_then(|row| row.try_get::<i64>("", "n").ok())
        .unwrap_or(0)
}

/// PostgreSQL: while the worker waits to open a request for an address
/// another holds (another replica's batch), calls' writes still commit:
/// the worker's writes have a lane of their own. In a lane shared with
/// calls, a call whose write joined the waiting lane waited as long as the
/// hold (with the lanes shared, call 3 did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_write_waiting_for_an_address_holds_up_no_call() {
    if postgres_url().await.is_none() {
        return;
    }
    let mut app = spawn_app(Backend::Postgres).await;
    app.create_account("held@example.com", "Held").await;
    app.wait_for_outbox_drained().await;
    let holder = app.db.begin().await.unwrap();
    requests::hold_openings(&holder, &[(Purpose::Reset, "held@example.com")])
        .await
        .unwrap();
    app.request_reset("held@example.com").await.unwrap();
    eventually("the worker waits for the held address", || async {
        (waiting_to_open_requests(&app).await > 0).then_some(())
    })
    .await;

    for n in 0..8 {
        let email = format!("caller{n}@example.com");
        tokio::time::timeout(Duration::from_secs(5), app.request_reset(&email))
            .await
            .unwrap_or_else(|_| panic!("RequestReset {n} waited for the mail worker's hold"))
            .unwrap();
    }
    assert_eq!(
        waiting_to_open_requests(&app).await,
        1,
        "the worker still waits"
    );
    holder.rollback().await.unwrap();
    // The sign-up link, then the reset link.
    let mail = app.mailbox.wait_for("held@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "Reset your password");
}
