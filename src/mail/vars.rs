//! What a template sees. Each kind gets a fixed set of variables, built
//! here for a real mail and for the sample that every template is rendered
//! with at start, so a template that passes the start renders at send time.
//!
//! | kind | variables |
//! |---|---|
//! | reset, already_registered | `display_name`, `email`, `link`, `expires_in` |
//! | sign_up | `email`, `link`, `expires_in` (and `display_name`, deliberately unused) |
//! | password_changed | `display_name`, `email`, `changed_at` |
//! | unknown_account | `email` |

use std::time::{Duration, SystemTime};

use minijinja::Value;

use super::templates::TemplateKind;

/// The values of one mail.
#[derive(Debug, Clone)]
pub struct MailVars {
    display_name: Option<String>,
    email: String,
    link: Option<String>,
    expires_in: Option<Duration>,
    changed_at: Option<SystemTime>,
}

impl MailVars {
    /// A mail carrying a link: reset, sign-up or already registered.
    pub fn link(display_name: &str, email: &str, link: String, expires_in: Duration) -> Self {
        Self {
            display_name: Some(display_name.to_owned()),
            email: email.to_owned(),
            link: Some(link),
            expires_in: Some(expires_in),
            changed_at: None,
        }
    }

    pub fn password_changed(display_name: &str, email: &str, changed_at: SystemTime) -> Self {
        Self {
            display_name: Some(display_name.to_owned()),
            email: email.to_owned(),
            link: None,
            expires_in: None,
            changed_at: Some(changed_at),
        }
    }

    pub fn unknown_account(email: &str) -> Self {
        Self {
            display_name: None,
            email: email.to_owned(),
            link: None,
            expires_in: None,
            changed_at: None,
        }
    }

    /// Sample values for `kind`, for the check at start and `preview-mail`.
    pub fn sample(kind: TemplateKind) -> Self {
        let (name, email) = ("Jane Doe", "jane.doe@example.com");
        let link = "https://app.example.com/reset?token=SAMPLE-TOKEN".to_owned();
        match kind {
            TemplateKind::Reset | TemplateKind::AlreadyRegistered => {
                Self::link(name, email, link, Duration::from_secs(30 * 60))
            }
            TemplateKind::SignUp => Self::link(name, email, link, Duration::from_secs(86_400)),
            TemplateKind::PasswordChanged => Self::password_changed(
                name,
                email,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_320_000),
            ),
            TemplateKind::UnknownAccount => Self::unknown_account(email),
        }
    }

    /// The template context, with durations in the words of `language`
    /// ("de", else English).
    pub(super) fn context(&self, language: &str) -> Value {
        let mut values = vec![("email", Value::from(self.email.as_str()))];
        if let Some(name) = &self.display_name {
            values.push(("display_name", Value::from(name.as_str())));
        }
        if let Some(link) = &self.link {
            values.push(("link", Value::from(link.as_str())));
        }
        if let Some(expires_in) = self.expires_in {
            values.push(("expires_in", Value::from(humanize(expires_in, language))));
            let minutes = (expires_in.as_secs() + 30) / 60;
            values.push(("expires_in_minutes", Value::from(minutes)));
        }
        if let Some(changed_at) = self.changed_at {
            values.push(("changed_at", Value::from(utc_minutes(changed_at))));
        }
        values.into_iter().collect()
    }
}

/// "2026-11-22 04:00 UTC".
fn utc_minutes(at: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    let minutes = rfc3339.get(..16).unwrap_or(&rfc3339).replacen('T', " ", 1);
    format!("{minutes} UTC")
}

/// "30 minutes", "24 hours", "3 days" (German: "30 Minuten", …): the
/// nearest whole unit.
pub fn humanize(duration: Duration, language: &str) -> String {
    let rounded = |unit_secs: u64| (duration.as_secs() + unit_secs / 2) / unit_secs;
    let (count, unit) = match rounded(60) {
        0 => (0, Unit::Minute),
        m if m < 60 => (m, Unit::Minute),
        _ if rounded(3600) < 48 => (rounded(3600), Unit::Hour),
        _ => (rounded(86_400), Unit::Day),
    };
    let german = language == "de";
    let word = match (unit, count == 1, german) {
        (_, _, false) if count == 0 => return "less than a minute".to_owned(),
        (_, _, true) if count == 0 => return "weniger als eine Minute".to_owned(),
        (Unit::Minute, true, false) => "minute",
        (Unit::Minute, false, false) => "minutes",
        (Unit::Hour, true, false) => "hour",
        (Unit::Hour, false, false) => "hours",
        (Unit::Day, true, false) => "day",
        (Unit::Day, false, false) => "days",
        (Unit::Minute, true, true) => "Minute",
        (Unit::Minute, false, true) => "Minuten",
        (Unit::Hour, true, true) => "Stunde",
        (Unit::Hour, false, true) => "Stunden",
        (Unit::Day, true, true) => "Tag",
        (Unit::Day, false, true) => "Tage",
    };
    format!("{count} {word}")
}

#[derive(Clone, Copy)]
enum Unit {
    Minute,
    Hour,
    Day,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        let en = |secs| humanize(Duration::from_secs(secs), "en");
        assert_eq!(en(30 * 60), "30 minutes");
        assert_eq!(en(24 * 3600), "24 hours");
        assert_eq!(en(29 * 60 + 59), "30 minutes");
        assert_eq!(en(24 * 3600 - 2), "24 hours");
        assert_eq!(en(3 * 86400), "3 days");
        assert_eq!(en(61), "1 minute");
        assert_eq!(en(10), "less than a minute");
    }

    #[test]
    fn durations_read_naturally_in_german() {
        let de = |secs| humanize(Duration::from_secs(secs), "de");
        assert_eq!(de(30 * 60), "30 Minuten");
        assert_eq!(de(3600), "1 Stunde");
        assert_eq!(de(2 * 3600), "2 Stunden");
        assert_eq!(de(3 * 86400), "3 Tage");
        assert_eq!(de(60), "1 Minute");
    }

    #[test]
    fn times_are_shown_to_the_minute_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_320_000);
        assert_eq!(utc_minutes(at), "2026-11-22 04:00 UTC");
    }
}
