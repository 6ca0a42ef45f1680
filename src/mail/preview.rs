//! `rekey preview-mail`: a mail rendered with sample data, as text for a
//! terminal. No database, transport or link settings are involved.

use super::{
    templates::{TemplateError, TemplateKind, Templates},
    vars::MailVars,
};
use crate::domain::Locale;

/// Subject, text and HTML of `kind` in `locale`, each under a heading that
/// also says which locale's templates answered.
pub fn preview(
    templates: &Templates,
    kind: TemplateKind,
    locale: &Locale,
) -> Result<String, TemplateError> {
    let mail = templates.render(kind, locale, &MailVars::sample(kind))?;
    Ok(format!(
        "kind: {}\nlocale: {} (asked for {})\n\n\
         ==> subject <==\n{}\n\n==> text <==\n{}\n\n==> html <==\n{}\n",
        kind.name(),
        mail.locale,
        locale.as_str(),
        mail.subject,
        mail.text.trim_end(),
        mail.html.trim_end(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_shows_the_three_parts_in_the_fallback_locale() {
        let templates = Templates::embedded().unwrap();
        let locale = Locale::parse("locale", "de-CH").unwrap();
        let text = preview(&templates, TemplateKind::Reset, &locale).unwrap();
        assert!(
            text.starts_with("kind: reset\nlocale: de (asked for de-CH)\n"),
            "{text}"
        );
        assert!(
            text.contains("==> subject <==\nPasswort zurücksetzen\n"),
            "{text}"
        );
        assert!(text.contains("token=SAMPLE-TOKEN"), "{text}");
        assert!(text.contains("==> html <==\n<!doctype html>"), "{text}");
    }
}
