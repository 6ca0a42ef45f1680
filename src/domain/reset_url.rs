use url::Url;

use super::{FieldError, Token};

/// Where `{token}` in a page is replaced by the token.
const TOKEN_PLACEHOLDER: &str = "{token}";
/// Stand-in for the placeholder while parsing: braces would be percent-encoded.
const PLACEHOLDER_MARKER: &str = "rekey-token-placeholder";
const MAX_LEN: usize = 2048;

/// An absolute http(s) page that a mailed link may point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetUrl(Url);

impl ResetUrl {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let raw = raw.trim();
        if raw.len() > MAX_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_LEN} characters"),
            ));
        }
        let url = Url::parse(&raw.replace(TOKEN_PLACEHOLDER, PLACEHOLDER_MARKER))
            .map_err(|_| FieldError::new(field, "must be an absolute URL"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(FieldError::new(field, "must be an http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FieldError::new(field, "must not contain credentials"));
        }
        // The token goes only where rekey puts it: a caller-chosen `token`
        // parameter or a placeholder in a query (`?next=…/{token}`) could
        // shadow the real token or hand it to another site.
        if url.query_pairs().any(|(key, _)| key == "token") {
            return Err(FieldError::new(field, "must not carry a token parameter"));
        }
        if url.as_str().matches(PLACEHOLDER_MARKER).count()
            != url.path().matches(PLACEHOLDER_MARKER).count()
        {
            return Err(FieldError::new(field, "may hold {token} only in its path"));
        }
        Ok(Self(url))
    }

    /// The link to mail: the page with the token substituted for `{token}`,
    /// or else added as the `token` query parameter.
    pub fn link(&self, token: &Token) -> String {
        let page = self.0.as_str();
        if page.contains(PLACEHOLDER_MARKER) {
            return page.replace(PLACEHOLDER_MARKER, token.expose());
        }
        let mut url = self.0.clone();
        url.query_pairs_mut().append_pair("token", token.expose());
        url.into()
    }

    /// The page's host name, e.g. "app.example.com".
    pub fn host(&self) -> Option<String> {
        self.0.host_str().map(str::to_owned)
    }

    /// The page as configured, with `{token}` restored; safe to store and log.
    pub fn as_template(&self) -> String {
        self.0
            .as_str()
            .replace(PLACEHOLDER_MARKER, TOKEN_PLACEHOLDER)
    }
}

/// The pages links may point at (defends against link poisoning). A page
/// matches an entry on exact scheme, host and port, and a path that equals
/// the entry's path or continues it after a `/`. Never a raw string prefix.
/// Query parameters and a fragment only as the entry has them.
#[derive(Debug, Clone, Default)]
pub struct ResetUrlAllowList(Vec<ResetUrl>);

impl ResetUrlAllowList {
    pub fn new(entries: Vec<ResetUrl>) -> Self {
        Self(entries)
    }

    /// The allowed pages, in the order given.
    pub fn pages(&self) -> impl Iterator<Item = &ResetUrl> {
        self.0.iter()
    }

    pub fn allows(&self, page: &ResetUrl) -> bool {
        self.0.iter().any(|entry| {
            let (allowed, candidate) = (&entry.0, &page.0);
            allowed.scheme() == candidate.scheme()
                && allowed.host() == candidate.host()
                && allowed.port_or_known_default() == candidate.port_or_known_default()
                && path_within(allowed.path(), candidate.path())
                && query_within(allowed, candidate)
                && (candidate.fragment().is_none() || candidate.fragment() == allowed.fragment())
        })
    }
}

/// Every query parameter of the candidate is one the entry has, with the
/// same value: a caller cannot add `next=https://evil.example`.
fn query_within(allowed: &Url, candidate: &Url) -> bool {
    let entry: Vec<_> = allowed.query_pairs().collect();
    candidate.query_pairs().all(|pair| entry.contains(&pair))
}

fn path_within(allowed: &str, candidate: &str) -> bool {
    let allowed = allowed.trim_end_matches('/');
    match candidate.strip_prefix(allowed) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> ResetUrl {
        ResetUrl::parse("reset_url", raw).unwrap()
    }

    fn allow(entries: &[&str]) -> ResetUrlAllowList {
        ResetUrlAllowList::new(entries.iter().map(|e| url(e)).collect())
    }

    #[test]
    fn exact_origin_and_path_prefix_match() {
        let list = allow(&["https://app.example.com/reset"]);
        assert!(list.allows(&url("https://app.example.com/reset")));
        assert!(list.allows(&url("https://app.example.com/reset/")));
        assert!(list.allows(&url("https://app.example.com/reset/step")));
        assert!(list.allows(&url("https://app.example.com:443/reset")));
    }

    #[test]
    fn callers_cannot_add_query_parameters_or_a_fragment() {
        let list = allow(&["https://app.example.com/reset?lang=de#form"]);
        assert!(list.allows(&url("https://app.example.com/reset?lang=de")));
        assert!(list.allows(&url("https://app.example.com/reset?lang=de#form")));
        assert!(list.allows(&url("https://app.example.com/reset")));
        for page in [
            "https://app.example.com/reset?lang=de&next=https://evil.example",
            "https://app.example.com/reset?lang=en",
            "https://app.example.com/reset/step?x=1",
            "https://app.example.com/reset#elsewhere",
        ] {
            assert!(!list.allows(&url(page)), "{page}");
        }
    }

    #[test]
    fn look_alike_pages_do_not_match() {
        let list = allow(&["https://app.example.com/reset"]);
        for page in [
            "https://app.example.com.evil.com/reset",
            "http://app.example.com/reset",
            "https://app.example.com:8443/reset",
            "https://app.example.com/resetx",
            "https://app.example.com/",
            "https://evil.com/app.example.com/reset",
            "https://evil.example.com/reset",
        ] {
            assert!(!list.allows(&url(page)), "{page}");
        }
    }

    #[test]
    fn a_root_entry_allows_the_whole_origin() {
        let list = allow(&["https://app.example.com"]);
        assert!(list.allows(&url("https://app.example.com/anything")));
    }

    #[test]
    fn credentials_and_non_http_schemes_are_rejected() {
        assert!(ResetUrl::parse("f", "https://app.example.com@evil.com/reset").is_err());
        assert!(ResetUrl::parse("f", "javascript:alert(1)").is_err());
        assert!(ResetUrl::parse("f", "ftp://app.example.com/").is_err());
        assert!(ResetUrl::parse("f", "/relative").is_err());
    }

    #[test]
    fn callers_cannot_place_the_token_themselves() {
        for page in [
            "https://app.example.com/reset?token=attacker",
            "https://app.example.com/reset?next=https://evil.com/{token}",
            "https://app.example.com/reset#{token}",
        ] {
            assert!(ResetUrl::parse("f", page).is_err(), "{page}");
        }
    }

    #[test]
    fn token_is_added_as_query_parameter() {
        let token = Token::mint().unwrap();
        let link = url("https://app.example.com/reset?lang=de").link(&token);
        assert_eq!(
            link,
            format!(
                "https://app.example.com/reset?lang=de&token={}",
                token.expose()
            )
        );
    }

    #[test]
    fn token_replaces_the_placeholder() {
        let token = Token::mint().unwrap();
        let page = url("https://app.example.com/reset/{token}");
        assert_eq!(page.as_template(), "https://app.example.com/reset/{token}");
        assert_eq!(
            page.link(&token),
            format!("https://app.example.com/reset/{}", token.expose())
        );
    }
}
