use std::time::Duration;

use super::*;

fn locale(tag: &str) -> Locale {
    Locale::parse("locale", tag).unwrap()
}

fn named(kind: TemplateKind) -> MailVars {
    match kind {
        TemplateKind::PasswordChanged => MailVars::password_changed(
            "Jane",
            "jane@example.com",
            std::time::UNIX_EPOCH + Duration::from_secs(1_795_320_000),
        ),
        TemplateKind::UnknownAccount => MailVars::unknown_account("jane@example.com"),
        _ => MailVars::link(
            "Jane",
            "jane@example.com",
            "https://app.example.com/reset?token=abc".to_owned(),
            Duration::from_secs(1800),
        ),
    }
}

#[test]
fn every_kind_renders_in_english_and_german() {
    let templates = Templates::embedded().unwrap();
    for tag in ["en", "de"] {
        for kind in TemplateKind::ALL {
            let mail = templates.render(kind, &locale(tag), &named(kind)).unwrap();
            assert_eq!(mail.locale, tag);
            assert!(!mail.subject.is_empty());
            assert!(mail.text.contains("jane@example.com"), "{kind:?} {tag}");
            // A sign-up's name is the caller's text about a stranger's
            // address: it is not repeated in the mail.
            let greets_by_name =
                !matches!(kind, TemplateKind::SignUp | TemplateKind::UnknownAccount);
            assert_eq!(mail.text.contains("Jane"), greets_by_name, "{kind:?} {tag}");
            assert_eq!(mail.html.contains("Jane"), greets_by_name, "{kind:?} {tag}");
        }
    }
}

#[test]
fn german_durations_in_german_mail() {
    let templates = Templates::embedded().unwrap();
    let mail = templates
        .render(
            TemplateKind::Reset,
            &locale("de"),
            &named(TemplateKind::Reset),
        )
        .unwrap();
    assert!(
        mail.text.contains("30 Minuten lang gültig"),
        "{}",
        mail.text
    );
}

#[test]
fn lookup_falls_back_to_the_language_then_english() {
    let templates = Templates::embedded().unwrap();
    assert_eq!(
        templates.resolve(TemplateKind::Reset, &locale("de-CH")),
        "de"
    );
    assert_eq!(
        templates.resolve(TemplateKind::Reset, &locale("DE_at")),
        "de"
    );
    assert_eq!(
        templates.resolve(TemplateKind::Reset, &locale("fr-CH")),
        "en"
    );
}

#[test]
fn kinds_parse_from_their_names() {
    assert_eq!("sign-up".parse(), Ok(TemplateKind::SignUp));
    assert_eq!("unknown_account".parse(), Ok(TemplateKind::UnknownAccount));
    let error = "signup".parse::<TemplateKind>().unwrap_err();
    assert!(error.contains("sign_up"), "{error}");
}

#[test]
fn html_escapes_values() {
    let templates = Templates::embedded().unwrap();
    let vars = MailVars::link(
        "<script>",
        "a@example.com",
        "https://x.example.com/?a=1&token=t".to_owned(),
        Duration::from_secs(3600),
    );
    let mail = templates
        .render(TemplateKind::Reset, &Locale::default(), &vars)
        .unwrap();
    assert!(!mail.html.contains("<script>"));
    assert!(mail.html.contains("&lt;script&gt;"));
    assert!(mail.text.contains("<script>"));
    // A link is an ordinary URL; only `&` is escaped, as HTML requires.
    assert!(
        mail.html
            .contains(r#"href="https://x.example.com/?a=1&amp;token=t""#),
        "{}",
        mail.html
    );
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).unwrap();
    }
    dir
}

#[test]
fn a_file_overrides_one_part_and_a_new_locale_needs_all_three() {
    let dir = dir_with(&[
        ("reset.en.subject", "Reset it, {{ display_name }}"),
        (".hidden", "ignored"),
    ]);
    let templates = Templates::load(Some(dir.path())).unwrap();
    let mail = templates
        .render(
            TemplateKind::Reset,
            &locale("en-GB"),
            &named(TemplateKind::Reset),
        )
        .unwrap();
    assert_eq!(mail.subject, "Reset it, Jane");
    assert!(
        mail.text.contains("open this link"),
        "the embedded text stays"
    );

    let dir = dir_with(&[("reset.fr.subject", "Réinitialiser")]);
    let error = Templates::load(Some(dir.path())).unwrap_err().to_string();
    assert!(error.contains("reset.fr.txt"), "{error}");
}

#[test]
fn a_broken_template_is_named_with_its_line() {
    let dir = dir_with(&[("sign_up.de.txt", "Hallo,\n\n{{ link }\n")]);
    let error = Templates::load(Some(dir.path())).unwrap_err().to_string();
    let file = dir.path().join("sign_up.de.txt");
    assert!(
        error.starts_with(&format!("mail template {}, line 3: ", file.display())),
        "{error}"
    );

    // A misspelt variable fails the check too, not the first real mail.
    let dir = dir_with(&[("reset.en.html", "<p>\n{{ lnk }}</p>")]);
    let error = Templates::load(Some(dir.path())).unwrap_err().to_string();
    assert!(
        error.contains("reset.en.html, line 2: undefined"),
        "{error}"
    );
}

#[test]
fn an_unknown_file_name_is_refused() {
    let dir = dir_with(&[("reset.en.subjet", "x")]);
    let error = Templates::load(Some(dir.path())).unwrap_err().to_string();
    assert!(
        error.contains("reset.en.subjet: is not a template name"),
        "{error}"
    );
}
