//! The NIST SP 800-63B password policy (NFKC, length in code points, zxcvbn)
//! and email normalization (IDNA domains, NFC local parts).

use figment::Figment;
use rekey::{config::Settings, store::entities::account};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use secrecy::ExposeSecret;
use tonic_types::StatusExt;

use crate::{
    flow_test,
    helpers::{
        Backend, PASSWORD, RESET_PAGE, ReceivedMail, eventually, spawn_app, spawn_app_with,
        violated_fields,
    },
};

/// The `BadRequest` description of the one violated field, `field`.
fn violation(status: &tonic::Status, field: &str) -> String {
    assert_eq!(violated_fields(status), [field], "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations[0]
        .description
        .clone()
}

async fn a_password_set_in_one_form_authenticates_in_another(backend: Backend) {
    let mut app = spawn_app(backend).await;
    // Fullwidth letters and spaces, and a decomposed accent.
    let fullwidth = "Ｍｙ　ｆａｖｏｕｒｉｔｅ　ｃａｆｅ\u{301}　ｉｓ　ｏｐｅｎ";
    let composed = "My favourite caf\u{e9} is open";
    let decomposed = "My favourite cafe\u{301} is open";
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let account_id = app.reset_password(&token, fullwidth).await.unwrap();

    for form in [composed, decomposed, fullwidth] {
        let authenticated = app
            .authenticate("jane@example.com", form)
            .await
            .unwrap_or_else(|e| panic!("{form:?}: {e:?}"));
        assert_eq!(authenticated.account_id, account_id);
    }
    let status = app
        .authenticate("jane@example.com", "My favourite cafe is open")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // And the other way round, on a reset.
    app.request_reset("jane@example.com").await.unwrap();
    let reset = app.mailbox.wait_for("jane@example.com", 2).await.remove(1);
    app.reset_password(&reset.token(), decomposed)
        .await
        .unwrap();
    app.authenticate("jane@example.com", fullwidth)
        .await
        .unwrap();
}
flow_test!(a_password_set_in_one_form_authenticates_in_another);

async fn a_password_stored_before_normalization_still_authenticates(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let account_id = app.create_account("jane@example.com", "Jane").await;
    // As an earlier version stored it: hashed as typed, decomposed.
    let as_typed = "My favourite cafe\u{301} is open";
    let legacy = app.hasher.hash(as_typed).await.unwrap();
    let mut account: account::ActiveModel = account::Entity::find_by_id(account_id.clone())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    account.password_hash = Set(legacy.clone());
    account.update(&app.db).await.unwrap();

    app.authenticate("jane@example.com", as_typed)
        .await
        .unwrap();
    let stored = account::Entity::find_by_id(account_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert_ne!(stored, legacy, "rehashed in the normalized form");
    let normalized = rekey::domain::password::normalize(as_typed);
    let verified = app
        .hasher
        .verify(Some(stored), normalized.expose_secret())
        .await
        .unwrap();
    assert!(verified.matched);
    app.authenticate("jane@example.com", "My favourite caf\u{e9} is open")
        .await
        .unwrap();
}
flow_test!(a_password_stored_before_normalization_still_authenticates);

async fn a_guessable_password_is_refused_with_a_reason_that_does_not_contain_it(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let hashes_before = app.hasher.completed();

    for weak in ["password1234", "qwertyuiop123", "iloveyou2024!"] {
        let status = app.reset_password(&token, weak).await.unwrap_err();
        let reason = violation(&status, "new_password");
        assert!(reason.starts_with("is too easy to guess. "), "{reason}");
        // zxcvbn's feedback, in words: a warning or a suggestion.
        assert!(
            reason.contains("common") || reason.contains("Add another word"),
            "{reason}"
        );
        assert!(!reason.contains(weak), "{reason}");
        assert!(!status.message().contains(weak), "{}", status.message());
    }
    assert_eq!(
        app.hasher.completed(),
        hashes_before,
        "refused before hashing"
    );

    // The refusals left the token usable.
    app.reset_password(&token, PASSWORD).await.unwrap();
}
flow_test!(a_guessable_password_is_refused_with_a_reason_that_does_not_contain_it);

async fn the_users_name_and_address_count_against_a_password(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let email = "jane.whitfield@northwind.example";
    // Strong for a stranger, weak for this user.
    let personal = "whitfieldnorthwind";

    // A sign-up: the address and name come from the request.
    let token = app.sign_up_token(email, "Jane Whitfield").await;
    let status = app.reset_password(&token, personal).await.unwrap_err();
    let reason = violation(&status, "new_password");
    assert!(reason.contains("your name or email address"), "{reason}");
    assert!(!reason.to_lowercase().contains("whitfield"), "{reason}");
    app.reset_password(&token, PASSWORD).await.unwrap();

    // A reset: the account's name and address.
    app.request_reset(email).await.unwrap();
    let reset = app.mailbox.wait_for(email, 2).await.remove(1).token();
    let status = app.reset_password(&reset, personal).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["new_password"]);

    // The same password is fine for someone else.
    let other = app.sign_up_token("sam@example.org", "Sam").await;
    app.reset_password(&other, personal).await.unwrap();
}
flow_test!(the_users_name_and_address_count_against_a_password);

async fn the_minimum_length_counts_code_points(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let twelve = "雪山の赤い郵便箱と青い鳥";
    assert_eq!((twelve.chars().count(), twelve.len()), (12, 36));
    let eleven: String = twelve.chars().take(11).collect();

    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let status = app.reset_password(&token, &eleven).await.unwrap_err();
    assert_eq!(
        violation(&status, "new_password"),
        "must be at least 12 characters"
    );
    app.reset_password(&token, twelve).await.unwrap();
    app.authenticate("jane@example.com", twelve).await.unwrap();
}
flow_test!(the_minimum_length_counts_code_points);

async fn password_min_chars_still_sets_the_minimum_length(backend: Backend) {
    assert_eq!(PASSWORD.chars().count(), 28);
    let mut app =
        spawn_app_with(backend, |figment| figment.merge(("password_min_chars", 30))).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let status = app.reset_password(&token, PASSWORD).await.unwrap_err();
    assert_eq!(
        violation(&status, "new_password"),
        "must be at least 30 characters"
    );
    app.reset_password(&token, "correct horse battery staple, twice")
        .await
        .unwrap();

    let mut app = spawn_app_with(backend, |figment| {
        figment.merge(("password_min_length", 29))
    })
    .await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let status = app.reset_password(&token, PASSWORD).await.unwrap_err();
    assert_eq!(
        violation(&status, "new_password"),
        "must be at least 29 characters"
    );
}
flow_test!(password_min_chars_still_sets_the_minimum_length);

#[test]
fn setting_the_minimum_length_twice_differently_is_a_config_error() {
    let settings = |length: i64, chars: i64| {
        Settings::from_figment(
            Figment::new()
                .merge(("reset_url", RESET_PAGE))
                .merge(("password_min_length", length))
                .merge(("password_min_chars", chars)),
        )
    };
    let err = settings(14, 16).unwrap_err().to_string();
    assert!(err.contains("REKEY_PASSWORD_MIN_LENGTH"), "{err}");
    assert!(err.contains("REKEY_PASSWORD_MIN_CHARS"), "{err}");
    let agreed = settings(14, 14).unwrap();
    assert_eq!(agreed.passwords.policy.min_length, 14);
}

async fn the_minimum_score_is_configurable(backend: Backend) {
    // zxcvbn scores this passphrase 3: enough by default, not for 4.
    let fair = "whatever the password";
    let mut app = spawn_app_with(backend, |figment| figment.merge(("password_min_score", 4))).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    let status = app.reset_password(&token, fair).await.unwrap_err();
    let reason = violation(&status, "new_password");
    assert!(reason.starts_with("is too easy to guess. "), "{reason}");
    assert!(!reason.contains(fair), "{reason}");
    app.reset_password(&token, PASSWORD).await.unwrap();

    let mut app = spawn_app(backend).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    app.reset_password(&token, fair).await.unwrap();

    // 0 turns the check off; the length rule stays.
    let mut app = spawn_app_with(backend, |figment| figment.merge(("password_min_score", 0))).await;
    let token = app.sign_up_token("jane@example.com", "Jane").await;
    app.reset_password(&token, "password1234").await.unwrap();
}
flow_test!(the_minimum_score_is_configurable);

async fn a_unicode_domain_and_its_punycode_are_one_account(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let punycode = "jane@xn--bcher-kva.example";
    app.sign_up("Jane@Bücher.example", "Jane").await.unwrap();
    let mail = app.mailbox.wait_for(punycode, 1).await.remove(0);
    let account_id = app.reset_password(&mail.token(), PASSWORD).await.unwrap();

    // The same empty reply, but the mail says "you already have an account".
    app.sign_up(punycode, "Jane").await.unwrap();
    let second = app.mailbox.wait_for(punycode, 2).await.remove(1);
    assert_eq!(second.subject(), "You already have an account");

    for form in [
        "jane@bücher.example",
        punycode,
        "JANE@BU\u{308}CHER.EXAMPLE",
    ] {
        let authenticated = app.authenticate(form, PASSWORD).await.unwrap();
        assert_eq!(authenticated.account_id, account_id, "{form}");
    }
}
flow_test!(a_unicode_domain_and_its_punycode_are_one_account);

/// The mails the file transport wrote to `dir`, once there are `count`.
async fn mails_in(dir: &std::path::Path, count: usize) -> Vec<ReceivedMail> {
    eventually(&format!("{count} mails in {}", dir.display()), || async {
        let mails: Vec<ReceivedMail> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "eml"))
            .map(|entry| ReceivedMail {
                from: String::new(),
                to: Vec::new(),
                raw: std::fs::read(entry.path()).unwrap(),
            })
            .collect();
        (mails.len() >= count).then_some(mails)
    })
    .await
}

async fn nfc_and_nfd_local_parts_are_one_account(backend: Backend) {
    // The SMTP sink lacks SMTPUTF8, so these mails go to files.
    let mail_dir = tempfile::tempdir().unwrap();
    let mut app = spawn_app_with(backend, |figment| {
        figment
            .merge(("smtp_url", ""))
            .merge(("mail_dir", mail_dir.path().display().to_string()))
    })
    .await;
    let composed = "jos\u{e9}@example.com";
    let decomposed = "jose\u{301}@example.com";
    app.sign_up(decomposed, "José").await.unwrap();
    let mail = mails_in(mail_dir.path(), 1).await.remove(0);
    assert!(
        String::from_utf8_lossy(&mail.raw).contains(composed),
        "sent to the NFC form"
    );
    let account_id = app.reset_password(&mail.token(), PASSWORD).await.unwrap();

    app.sign_up(composed, "José").await.unwrap();
    let subjects: Vec<String> = mails_in(mail_dir.path(), 2)
        .await
        .iter()
        .map(ReceivedMail::subject)
        .collect();
    assert!(
        subjects.iter().any(|s| s == "You already have an account"),
        "{subjects:?}"
    );

    let authenticated = app.authenticate(decomposed, PASSWORD).await.unwrap();
    assert_eq!(authenticated.account_id, account_id);
}
flow_test!(nfc_and_nfd_local_parts_are_one_account);
