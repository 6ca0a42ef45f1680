//! Mail templates: one per kind and locale, each with a subject, a text and
//! an HTML part. They are embedded in the binary; lookup falls back from
//! "de-CH" to "de" to the default locale.

use minijinja::{AutoEscape, Environment, Output, State, Value};

use crate::domain::Locale;

/// Which mail to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    Reset,
    SignUp,
    AlreadyRegistered,
    PasswordChanged,
}

impl TemplateKind {
    fn name(self) -> &'static str {
        match self {
            TemplateKind::Reset => "reset",
            TemplateKind::SignUp => "sign_up",
            TemplateKind::AlreadyRegistered => "already_registered",
            TemplateKind::PasswordChanged => "password_changed",
        }
    }
}

/// A rendered mail body.
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

const DEFAULT_LOCALE: &str = "en";

macro_rules! embedded {
    ($locale:literal, $($kind:literal),+) => {
        [$(
            (concat!($locale, "/", $kind, ".subject"), include_str!(concat!("templates/", $locale, "/", $kind, ".subject"))),
            (concat!($locale, "/", $kind, ".txt"), include_str!(concat!("templates/", $locale, "/", $kind, ".txt"))),
            (concat!($locale, "/", $kind, ".html"), include_str!(concat!("templates/", $locale, "/", $kind, ".html"))),
        )+]
    };
}

const EMBEDDED: [(&str, &str); 12] = embedded!(
    "en",
    "reset",
    "sign_up",
    "already_registered",
    "password_changed"
);

/// The template set. `.html` templates auto-escape their values.
pub struct Templates {
    env: Environment<'static>,
}

/// A template that does not compile or render.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("mail template {name} does not compile")]
    Compile {
        name: &'static str,
        #[source]
        source: minijinja::Error,
    },
    #[error("mail template {name} does not render")]
    Render {
        name: String,
        #[source]
        source: minijinja::Error,
    },
}

impl Templates {
    /// Loads and compiles the embedded templates; a broken one fails start-up.
    pub fn embedded() -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_formatter(html_formatter);
        for (name, source) in EMBEDDED {
            env.add_template(name, source)
                .map_err(|source| TemplateError::Compile { name, source })?;
        }
        Ok(Self { env })
    }

    pub fn render(
        &self,
        kind: TemplateKind,
        locale: &Locale,
        context: Value,
    ) -> Result<RenderedMail, TemplateError> {
        let prefix = self.resolve(kind, locale);
        let part = |ext: &str| {
            let name = format!("{prefix}/{}.{ext}", kind.name());
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&context))
                .map_err(|source| TemplateError::Render { name, source })
        };
        Ok(RenderedMail {
            subject: part("subject")?.trim().to_owned(),
            text: part("txt")?,
            html: part("html")?,
        })
    }

    /// The most specific locale that has this kind, else the default.
    fn resolve<'a>(&self, kind: TemplateKind, locale: &'a Locale) -> &'a str {
        locale
            .fallbacks()
            .into_iter()
            .find(|candidate| {
                self.env
                    .get_template(&format!("{candidate}/{}.subject", kind.name()))
                    .is_ok()
            })
            .unwrap_or(DEFAULT_LOCALE)
    }
}

/// Escapes what HTML needs (`& < > " '`) and nothing more: minijinja's
/// default also writes `/` as `&#x2f;`, which makes a link look forged to
/// mail scanners and breaks naive clients.
fn html_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), minijinja::Error> {
    let text = match value.as_str() {
        Some(text) if state.auto_escape() == AutoEscape::Html && !value.is_safe() => text,
        _ => return minijinja::escape_formatter(out, state, value),
    };
    let mut rest = text;
    while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
        let (plain, special) = rest.split_at(at);
        out.write_str(plain)?;
        out.write_str(match special.as_bytes().first() {
            Some(b'&') => "&amp;",
            Some(b'<') => "&lt;",
            Some(b'>') => "&gt;",
            Some(b'"') => "&quot;",
            _ => "&#39;",
        })?;
        rest = special.get(1..).unwrap_or_default();
    }
    out.write_str(rest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn every_kind_renders_in_the_default_locale() {
        let templates = Templates::embedded().unwrap();
        for kind in [
            TemplateKind::Reset,
            TemplateKind::SignUp,
            TemplateKind::AlreadyRegistered,
            TemplateKind::PasswordChanged,
        ] {
            let mail = templates
                .render(
                    kind,
                    &Locale::default(),
                    context! { display_name => "Jane", email => "jane@example.com",
                    link => "https://app.example.com/reset?token=abc",
                    expires_in => "30m", changed_at => "2026-11-22T04:00:00Z" },
                )
                .unwrap();
            assert!(!mail.subject.is_empty());
            // A sign-up's name is the caller's text about a stranger's
            // address: it is not repeated in the mail.
            let greets_by_name = kind != TemplateKind::SignUp;
            assert_eq!(mail.text.contains("Jane"), greets_by_name, "{kind:?}");
            assert_eq!(mail.html.contains("Jane"), greets_by_name, "{kind:?}");
        }
    }

    #[test]
    fn unknown_locales_fall_back_to_the_default() {
        let templates = Templates::embedded().unwrap();
        let locale = Locale::parse("locale", "de-CH").unwrap();
        assert_eq!(templates.resolve(TemplateKind::Reset, &locale), "en");
    }

    #[test]
    fn html_escapes_values() {
        let templates = Templates::embedded().unwrap();
        let mail = templates
            .render(
                TemplateKind::Reset,
                &Locale::default(),
                context! { display_name => "<script>", email => "a@example.com",
                link => "https://x.example.com/?a=1&token=t", expires_in => "1h" },
            )
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
}
