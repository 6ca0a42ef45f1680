//! Localized templates end to end: the request's locale, else the
//! account's; fallback from de-CH to de to English; an operator's template
//! directory; the check at start; `preview-mail`; the optional mail for a
//! reset asked for an address without an account.

use std::path::Path;

use rekey::{
    grpc::pb,
    store::{
        AuditKind, MailKind, MailStatus,
        entities::{audit_event, mail_outbox},
    },
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::{
    config::Run,
    flow_test,
    helpers::{Backend, PASSWORD, RESET_PAGE, TestApp, captured_logs, spawn_app, spawn_app_with},
};

async fn sign_up_in(app: &mut TestApp, email: &str, locale: &str) {
    app.reset
        .sign_up(pb::SignUpRequest {
            email: email.into(),
            display_name: "Jana".into(),
            locale: locale.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn request_reset_in(app: &mut TestApp, email: &str, locale: &str) {
    app.reset
        .request_reset(pb::RequestResetRequest {
            email: email.into(),
            locale: locale.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn de_ch_gets_german_mail_and_the_account_keeps_it(backend: Backend) {
    let mut app = spawn_app(backend).await;
    sign_up_in(&mut app, "jana@example.com", "de-CH").await;
    let mail = app.mailbox.wait_for("jana@example.com", 1).await.remove(0);
    assert_eq!(mail.subject(), "Bestätigen Sie Ihre E-Mail-Adresse");
    let text = mail.text();
    assert!(text.contains("24 Stunden lang gültig"), "{text}");
    // Like the English one, it does not repeat the caller's name.
    assert!(
        !text.contains("Jana") && !mail.html().contains("Jana"),
        "{text}"
    );
    assert!(mail.html().contains(r#"<html lang="de">"#));
    app.reset_password(&mail.token(), PASSWORD).await.unwrap();

    // A reset asked without a locale, and the notice of the new password,
    // follow the account's locale.
    app.request_reset("jana@example.com").await.unwrap();
    let reset = app.mailbox.wait_for("jana@example.com", 2).await.remove(1);
    assert_eq!(reset.subject(), "Passwort zurücksetzen");
    assert!(reset.text().contains("Hallo Jana,"), "{}", reset.text());
    assert!(reset.text().contains("30 Minuten lang gültig"));
    app.reset_password(&reset.token(), "another long passphrase")
        .await
        .unwrap();
    let notice = app.mailbox.wait_for("jana@example.com", 3).await.remove(2);
    assert_eq!(notice.subject(), "Ihr Passwort wurde geändert");

    // A locale in the request wins over the account's.
    request_reset_in(&mut app, "jana@example.com", "en-GB").await;
    let reset = app.mailbox.wait_for("jana@example.com", 4).await.remove(3);
    assert_eq!(reset.subject(), "Reset your password");
}
flow_test!(de_ch_gets_german_mail_and_the_account_keeps_it);

async fn an_unknown_locale_gets_english_mail(backend: Backend) {
    let mut app = spawn_app(backend).await;
    sign_up_in(&mut app, "jean@example.com", "fr").await;
    let mail = app.mailbox.wait_for("jean@example.com", 1).await.remove(0);
    assert_eq!(mail.subject(), "Confirm your email address");
    assert!(
        mail.text().contains("expires in 24 hours"),
        "{}",
        mail.text()
    );
}
flow_test!(an_unknown_locale_gets_english_mail);

fn template_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).unwrap();
    }
    dir
}

fn dir_str(dir: &Path) -> String {
    dir.to_str().unwrap().to_owned()
}

async fn a_template_directory_overrides_the_embedded_template(backend: Backend) {
    let dir = template_dir(&[
        ("reset.en.subject", "Example: new password for {{ email }}"),
        ("reset.fr.subject", "Réinitialisez votre mot de passe"),
        (
            "reset.fr.txt",
            "Bonjour,\n\n{{ link }}\n\nValable {{ expires_in_minutes }} minutes.\n",
        ),
        (
            "reset.fr.html",
            "<p><a href=\"{{ link }}\">Nouveau mot de passe</a></p>",
        ),
    ]);
    let path = dir_str(dir.path());
    let mut app = spawn_app_with(backend, |figment| figment.merge(("template_dir", path))).await;
    app.create_account("jane@example.com", "Jane").await;

    app.request_reset("jane@example.com").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "Example: new password for jane@example.com");
    // Only the subject was overridden: the text is still the embedded one.
    assert!(
        mail.text().contains("choose a new password"),
        "{}",
        mail.text()
    );

    // A locale the binary does not have, added by the directory.
    request_reset_in(&mut app, "jane@example.com", "fr-CA").await;
    let mail = app.mailbox.wait_for("jane@example.com", 3).await.remove(2);
    assert_eq!(mail.subject(), "Réinitialisez votre mot de passe");
    assert!(
        mail.text().contains("Valable 30 minutes."),
        "{}",
        mail.text()
    );
    app.reset_password(&mail.token(), "another long passphrase")
        .await
        .unwrap();
}
flow_test!(a_template_directory_overrides_the_embedded_template);

#[test]
fn a_broken_template_stops_the_start_naming_file_and_line() {
    let dir = template_dir(&[(
        "sign_up.de.txt",
        "Hallo,\n\n{{ link }}\n{% if expires_in %}gültig {{ expires_in }\n",
    )]);
    let run = Run::new();
    let database_url = run.database_url();
    let out = run.rekey(
        &[],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_DATABASE_URL", &database_url),
            ("REKEY_TEMPLATE_DIR", &dir_str(dir.path())),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    let file = dir.path().join("sign_up.de.txt");
    assert!(
        out.stderr.starts_with(&format!(
            "rekey: invalid configuration: mail template {}, line 4: syntax error",
            file.display()
        )),
        "{out:?}"
    );
    assert!(!out.everything().contains("rekey listening"), "{out:?}");

    // A misspelt variable is caught at start too, not at the first mail.
    let dir = template_dir(&[("reset.en.html", "<p>\n<a href=\"{{ lnik }}\">x</a></p>\n")]);
    let out = run.rekey(
        &["check-config"],
        &[
            ("REKEY_RESET_URL", RESET_PAGE),
            ("REKEY_TEMPLATE_DIR", &dir_str(dir.path())),
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("reset.en.html, line 2: undefined"),
        "{out:?}"
    );
}

#[test]
fn preview_mail_prints_subject_text_and_html_without_a_database() {
    let run = Run::new();
    // No reset page, no database: neither is needed.
    let out = run.rekey(
        &["preview-mail", "--kind", "reset", "--locale", "de-CH"],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let stdout = &out.stdout;
    assert!(
        stdout.starts_with("kind: reset\nlocale: de (asked for de-CH)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("==> subject <==\nPasswort zurücksetzen\n"),
        "{stdout}"
    );
    assert!(stdout.contains("==> text <==\nHallo Jane Doe,"), "{stdout}");
    assert!(stdout.contains("30 Minuten lang gültig"), "{stdout}");
    assert!(stdout.contains("==> html <==\n<!doctype html>"), "{stdout}");
    assert!(
        stdout.contains(r#"href="https://app.example.com/reset?token=SAMPLE-TOKEN""#),
        "{stdout}"
    );
    assert!(!run.path().join("var").exists(), "nothing written");

    // The template directory is respected.
    let dir = template_dir(&[("unknown_account.en.subject", "Nobody here: {{ email }}")]);
    let out = run.rekey(
        &["preview-mail", "--kind", "unknown-account"],
        &[("REKEY_TEMPLATE_DIR", &dir_str(dir.path()))],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("==> subject <==\nNobody here: jane.doe@example.com\n"),
        "{out:?}"
    );

    // A kind that does not exist is a usage error naming the kinds.
    let out = run.rekey(&["preview-mail", "--kind", "welcome"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("unknown_account"), "{out:?}");
}

async fn mailed_details(app: &TestApp) -> Vec<String> {
    audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditKind::Mailed))
        .order_by_asc(audit_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

async fn an_unknown_address_gets_a_notice_when_that_is_on(backend: Backend) {
    let mut app = spawn_app_with(backend, |figment| {
        figment.merge(("notify_unknown_recipients", true))
    })
    .await;
    request_reset_in(&mut app, "nobody@example.com", "de-CH").await;
    let mail = app
        .mailbox
        .wait_for("nobody@example.com", 1)
        .await
        .remove(0);
    assert_eq!(
        mail.subject(),
        "Passwort-Zurücksetzung für eine Adresse ohne Konto"
    );
    assert!(
        mail.text().contains("nobody@example.com"),
        "{}",
        mail.text()
    );
    assert!(
        !mail.text().contains("https://"),
        "no link: {}",
        mail.text()
    );
    app.wait_for_outbox_drained().await;

    // Queued as any reset; the audit names the mail sent.
    let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].kind, jobs[0].status),
        (MailKind::Reset, MailStatus::Sent)
    );
    assert_eq!(mailed_details(&app).await, ["unknown_account"]);
    assert!(
        captured_logs()
            .lines()
            .any(|line| line.contains("kind=unknown_account")
                && line.contains("mail accepted for delivery")),
        "no log line names the mail"
    );

    // An address with an account still gets its link.
    app.create_account("jane@example.com", "Jane").await;
    app.request_reset("jane@example.com").await.unwrap();
    let mail = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    assert_eq!(mail.subject(), "Reset your password");
}
flow_test!(an_unknown_address_gets_a_notice_when_that_is_on);

async fn an_unknown_address_gets_nothing_by_default(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.request_reset("nobody@example.com").await.unwrap();
    app.wait_for_outbox_drained().await;
    assert!(app.mailbox.all().is_empty());
    let jobs = mail_outbox::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(
        (jobs[0].kind, jobs[0].status),
        (MailKind::Reset, MailStatus::Skipped)
    );
    assert!(mailed_details(&app).await.is_empty());
}
flow_test!(an_unknown_address_gets_nothing_by_default);
