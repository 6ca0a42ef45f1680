use std::net::IpAddr;

use super::FieldError;

/// The end user's connection as the calling service saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientContext {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

const MAX_USER_AGENT_BYTES: usize = 512;

impl ClientContext {
    pub fn parse(ip: &str, user_agent: &str) -> Result<Self, FieldError> {
        let ip = match ip.trim() {
            "" => None,
            raw => Some(
                raw.parse::<IpAddr>()
                    .map_err(|_| FieldError::new("client.ip", "must be an IPv4 or IPv6 address"))?,
            ),
        };
        let user_agent = match user_agent.trim() {
            "" => None,
            raw => {
                let mut end = raw.len().min(MAX_USER_AGENT_BYTES);
                while !raw.is_char_boundary(end) {
                    end -= 1;
                }
                Some(raw[..end].chars().filter(|c| !c.is_control()).collect())
            }
        };
        Ok(Self { ip, user_agent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_must_be_an_address() {
        assert!(ClientContext::parse("10.0.0.1", "").unwrap().ip.is_some());
        assert!(ClientContext::parse("::1", "").unwrap().ip.is_some());
        assert_eq!(
            ClientContext::parse("nope", "").unwrap_err().field,
            "client.ip"
        );
    }

    #[test]
    fn user_agent_is_truncated_on_a_char_boundary() {
        let ua = "é".repeat(400);
        let parsed = ClientContext::parse("", &ua).unwrap();
        let kept = parsed.user_agent.unwrap();
        assert!(kept.len() <= 512);
        assert!(ua.starts_with(&kept));
    }
}
