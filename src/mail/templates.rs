//! Mail templates: one per kind and locale, each with a subject, a text and
//! an HTML part. English and German are embedded in the binary; a template
//! directory (see `template_dir`) overrides any of them or adds locales.
//! Lookup falls back from "de-CH" to "de" to English. Every template is
//! rendered once with sample data when loaded, so a broken one stops the
//! start, naming its file and line.

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr};

use minijinja::{AutoEscape, Environment, Output, State, UndefinedBehavior, Value};

use super::{template_dir, vars::MailVars};
use crate::domain::Locale;

/// Which mail to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TemplateKind {
    Reset,
    SignUp,
    AlreadyRegistered,
    PasswordChanged,
    /// A reset asked for an address without an account (optional).
    UnknownAccount,
}

impl TemplateKind {
    pub const ALL: [TemplateKind; 5] = [
        TemplateKind::Reset,
        TemplateKind::SignUp,
        TemplateKind::AlreadyRegistered,
        TemplateKind::PasswordChanged,
        TemplateKind::UnknownAccount,
    ];

    /// The name in file names, logs and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::Reset => "reset",
            TemplateKind::SignUp => "sign_up",
            TemplateKind::AlreadyRegistered => "already_registered",
            TemplateKind::PasswordChanged => "password_changed",
            TemplateKind::UnknownAccount => "unknown_account",
        }
    }
}

impl FromStr for TemplateKind {
    type Err = String;

    /// A kind's name; `-` may stand for `_` ("sign-up").
    fn from_str(raw: &str) -> Result<Self, String> {
        let wanted = raw.trim().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown mail kind {raw:?}; one of {}", names.join(", "))
            })
    }
}

/// The three parts of a template, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    const ALL: [Part; 3] = [Part::Subject, Part::Text, Part::Html];

    pub(super) fn extension(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Text => "txt",
            Part::Html => "html",
        }
    }

    pub(super) fn from_extension(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|part| part.extension() == raw)
    }
}

/// A rendered mail body.
#[derive(Debug)]
pub struct RenderedMail {
    /// The locale whose templates were used, e.g. "de" for "de-CH".
    pub locale: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

const DEFAULT_LOCALE: &str = "en";

macro_rules! embedded {
    ($locale:literal: $($kind:literal),+) => {
        [$(
            ($locale, $kind, "subject", include_str!(concat!("templates/", $locale, "/", $kind, ".subject"))),
            ($locale, $kind, "txt", include_str!(concat!("templates/", $locale, "/", $kind, ".txt"))),
            ($locale, $kind, "html", include_str!(concat!("templates/", $locale, "/", $kind, ".html"))),
        )+]
    };
}

/// (locale, kind, part, source) of every embedded template.
const EMBEDDED: [[(&str, &str, &str, &str); 15]; 2] = [
    embedded!("en": "reset", "sign_up", "already_registered", "password_changed", "unknown_account"),
    embedded!("de": "reset", "sign_up", "already_registered", "password_changed", "unknown_account"),
];

/// A template that does not compile or render, or a template directory
/// that cannot be used. The message names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("mail template {origin}{}: {problem}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Broken {
        origin: String,
        line: Option<usize>,
        problem: String,
    },
    #[error("mail templates: {}: {problem}", path.display())]
    Directory {
        path: std::path::PathBuf,
        problem: String,
    },
}

/// The template set. `.html` templates escape their values.
pub struct Templates {
    env: Environment<'static>,
    /// Where each template came from, by its name in `env`.
    origins: BTreeMap<String, String>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("templates", &self.origins.len())
            .finish()
    }
}

/// A template's name in the environment: "de-ch/reset.txt".
fn key(locale: &str, kind: &str, part: &str) -> String {
    format!("{locale}/{kind}.{part}")
}

impl Templates {
    /// The embedded templates alone.
    pub fn embedded() -> Result<Self, TemplateError> {
        Self::load(None)
    }

    /// The embedded templates, overridden by those in `dir`, each checked
    /// by rendering it with sample data.
    pub fn load(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let mut sources = BTreeMap::new();
        for (locale, kind, part, source) in EMBEDDED.iter().flatten() {
            let origin = format!("embedded {locale}/{kind}.{part}");
            sources.insert(key(locale, kind, part), (origin, source.to_string()));
        }
        if let Some(dir) = dir {
            for file in template_dir::read(dir)? {
                let name = key(&file.locale, file.kind.name(), file.part.extension());
                sources.insert(name, (file.path.display().to_string(), file.source));
            }
        }
        let mut env = Environment::new();
        env.set_formatter(html_formatter);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // A misspelt variable fails the check at start instead of vanishing.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        let mut origins = BTreeMap::new();
        for (name, (origin, source)) in sources {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| broken(&origin, &e))?;
            origins.insert(name, origin);
        }
        let templates = Self { env, origins };
        templates.check(dir)?;
        Ok(templates)
    }

    /// Every locale has all three parts of each kind it has, and each
    /// renders with sample data.
    fn check(&self, dir: Option<&Path>) -> Result<(), TemplateError> {
        let mut locales: Vec<&str> = self
            .origins
            .keys()
            .filter_map(|name| name.split_once('/').map(|(locale, _)| locale))
            .collect();
        locales.dedup();
        for locale in locales {
            for kind in TemplateKind::ALL {
                let name = |part: Part| key(locale, kind.name(), part.extension());
                let missing: Vec<Part> = Part::ALL
                    .into_iter()
                    .filter(|part| !self.origins.contains_key(&name(*part)))
                    .collect();
                match missing.first() {
                    None => {}
                    Some(_) if missing.len() == Part::ALL.len() => continue,
                    Some(part) => {
                        let file = format!("{}.{locale}.{}", kind.name(), part.extension());
                        return Err(TemplateError::Directory {
                            path: dir.map_or_else(|| file.clone().into(), |d| d.join(&file)),
                            problem: format!(
                                "is missing: a locale with one part of a kind needs all three \
                                 ({0}.{locale}.subject, .txt and .html)",
                                kind.name()
                            ),
                        });
                    }
                }
                self.render_in(kind, locale, &MailVars::sample(kind))?;
            }
        }
        Ok(())
    }

    /// Renders `kind` in the most specific locale that has it.
    pub fn render(
        &self,
        kind: TemplateKind,
        locale: &Locale,
        vars: &MailVars,
    ) -> Result<RenderedMail, TemplateError> {
        self.render_in(kind, &self.resolve(kind, locale), vars)
    }

    fn render_in(
        &self,
        kind: TemplateKind,
        locale: &str,
        vars: &MailVars,
    ) -> Result<RenderedMail, TemplateError> {
        let language = locale.split('-').next().unwrap_or(locale);
        let context = vars.context(language);
        let part = |part: Part| {
            let name = key(locale, kind.name(), part.extension());
            let origin = self
                .origins
                .get(&name)
                .map_or(name.as_str(), String::as_str);
            self.env
                .get_template(&name)
                .and_then(|t| t.render(&context))
                .map_err(|e| broken(origin, &e))
        };
        Ok(RenderedMail {
            locale: locale.to_owned(),
            // One line, whatever the template's own line breaks.
            subject: part(Part::Subject)?
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            text: part(Part::Text)?,
            html: part(Part::Html)?,
        })
    }

    /// The most specific locale that has this kind, else the default.
    fn resolve(&self, kind: TemplateKind, locale: &Locale) -> String {
        locale
            .fallbacks()
            .into_iter()
            .map(str::to_ascii_lowercase)
            .find(|candidate| {
                self.origins
                    .contains_key(&key(candidate, kind.name(), Part::Subject.extension()))
            })
            .unwrap_or_else(|| DEFAULT_LOCALE.to_owned())
    }
}

/// The error of the template from `origin`, with its line and without
/// minijinja's internal template name.
fn broken(origin: &str, error: &minijinja::Error) -> TemplateError {
    let problem = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    TemplateError::Broken {
        origin: origin.to_owned(),
        line: error.line(),
        problem,
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
#[path = "templates_tests.rs"]
mod tests;
