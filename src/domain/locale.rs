use super::FieldError;

/// A BCP 47 language tag such as "de-CH", lower-cased language, as given
/// otherwise. Empty input means the default, "en".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale(String);

const MAX_LEN: usize = 35;

impl Default for Locale {
    fn default() -> Self {
        Self("en".to_owned())
    }
}

impl Locale {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let invalid = || FieldError::new(field, "must be a BCP 47 language tag such as \"de-CH\"");
        if raw.len() > MAX_LEN {
            return Err(invalid());
        }
        let mut subtags = raw.split(['-', '_']);
        let language = subtags.next().unwrap_or_default();
        if !(2..=3).contains(&language.len()) || !language.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(invalid());
        }
        let mut tag = language.to_ascii_lowercase();
        for subtag in subtags {
            if !(1..=8).contains(&subtag.len())
                || !subtag.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(invalid());
            }
            tag.push('-');
            tag.push_str(subtag);
        }
        Ok(Self(tag))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lookup order for templates: "de-CH" → "de-CH", "de".
    pub fn fallbacks(&self) -> Vec<&str> {
        let mut chain = vec![self.0.as_str()];
        let mut rest = self.0.as_str();
        while let Some((head, _)) = rest.rsplit_once('-') {
            chain.push(head);
            rest = head;
        }
        chain
    }
}

impl std::str::FromStr for Locale {
    type Err = FieldError;

    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Self::parse("locale", raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_english() {
        assert_eq!(Locale::parse("locale", "").unwrap().as_str(), "en");
    }

    #[test]
    fn tags_are_parsed_and_fall_back_to_the_language() {
        let locale = Locale::parse("locale", "DE_CH").unwrap();
        assert_eq!(locale.as_str(), "de-CH");
        assert_eq!(locale.fallbacks(), vec!["de-CH", "de"]);
    }

    #[test]
    fn malformed_tags_are_rejected() {
        for raw in ["e", "english", "de-", "de-CH-toolongsubtag", "d3", "../etc"] {
            assert!(Locale::parse("locale", raw).is_err(), "{raw}");
        }
    }
}
