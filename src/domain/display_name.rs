use super::FieldError;

/// A display name: at most 128 characters, no control characters. May be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisplayName(String);

const MAX_LEN: usize = 128;

impl DisplayName {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.chars().count() > MAX_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_LEN} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_may_be_empty() {
        assert_eq!(
            DisplayName::parse("n", "  Jane  ").unwrap().as_str(),
            "Jane"
        );
        assert_eq!(DisplayName::parse("n", "").unwrap().as_str(), "");
    }

    #[test]
    fn control_characters_and_overlong_names_are_rejected() {
        assert!(DisplayName::parse("n", "Ja\nne").is_err());
        assert!(DisplayName::parse("n", &"x".repeat(129)).is_err());
        assert!(DisplayName::parse("n", &"é".repeat(128)).is_ok());
    }
}
