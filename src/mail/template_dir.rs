//! The operator's template directory (`REKEY_TEMPLATE_DIR`): one file per
//! kind, locale and part, named `{kind}.{locale}.{part}`, e.g.
//! `reset.de-CH.subject`, `sign_up.fr.txt`, `password_changed.en.html`.
//! Names starting with `.` (and directories) are passed over, which leaves
//! the bookkeeping of a mounted Kubernetes ConfigMap alone; any other name
//! is an error, so that a misspelt file does not silently leave the
//! embedded template in force.

use std::path::{Path, PathBuf};

use super::templates::{Part, TemplateError, TemplateKind};
use crate::domain::Locale;

/// One template file that overrides or adds to the embedded set.
pub(super) struct TemplateFile {
    pub kind: TemplateKind,
    /// Normalized and lower-cased, as lookups are.
    pub locale: String,
    pub part: Part,
    pub path: PathBuf,
    pub source: String,
}

/// Every template file in `dir`.
pub(super) fn read(dir: &Path) -> Result<Vec<TemplateFile>, TemplateError> {
    let problem = |problem: String| TemplateError::Directory {
        path: dir.to_owned(),
        problem,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| problem(format!("cannot be read: {e}")))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let file_problem = |problem: String| TemplateError::Directory {
            path: path.clone(),
            problem,
        };
        let (kind, locale, part) = parse_name(&name).map_err(file_problem)?;
        let source = std::fs::read_to_string(&path)
            .map_err(|e| file_problem(format!("cannot be read as UTF-8 text: {e}")))?;
        files.push(TemplateFile {
            kind,
            locale,
            part,
            path,
            source,
        });
    }
    // A stable order gives the same first error on every start.
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// `reset.de-CH.subject` → (reset, "de-ch", subject).
fn parse_name(name: &str) -> Result<(TemplateKind, String, Part), String> {
    let expected = || {
        let kinds: Vec<_> = TemplateKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "is not a template name: use {{kind}}.{{locale}}.{{subject,txt,html}}, \
             e.g. reset.de-CH.subject, with kind one of {}",
            kinds.join(", ")
        )
    };
    let mut pieces = name.splitn(3, '.');
    let (Some(kind), Some(locale), Some(part)) = (pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(expected());
    };
    let kind = kind.parse::<TemplateKind>().map_err(|_| expected())?;
    let part = Part::from_extension(part).ok_or_else(expected)?;
    let locale = Locale::parse("locale", locale)
        .ok()
        .filter(|_| !locale.is_empty())
        .ok_or_else(expected)?;
    Ok((kind, locale.as_str().to_ascii_lowercase(), part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_kind_locale_and_part() {
        let (kind, locale, part) = parse_name("reset.de-CH.subject").unwrap();
        assert_eq!(
            (kind, locale.as_str(), part),
            (TemplateKind::Reset, "de-ch", Part::Subject)
        );
        let (kind, locale, part) = parse_name("unknown_account.en.html").unwrap();
        assert_eq!(
            (kind, locale.as_str(), part),
            (TemplateKind::UnknownAccount, "en", Part::Html)
        );
    }

    #[test]
    fn other_names_are_refused() {
        for name in [
            "reset.subject",
            "reset.en.subj",
            "rest.en.txt",
            "reset..txt",
            "reset.english.txt",
            "README.md",
            "reset.en.txt.bak",
        ] {
            let problem = parse_name(name).unwrap_err();
            assert!(problem.contains("{kind}.{locale}"), "{name}: {problem}");
        }
    }
}
