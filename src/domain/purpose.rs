/// What a request and its tokens are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Reset,
    SignUp,
}

impl Purpose {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Reset => "reset",
            Purpose::SignUp => "sign_up",
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        match raw {
            "reset" => Some(Purpose::Reset),
            "sign_up" => Some(Purpose::SignUp),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        for purpose in [Purpose::Reset, Purpose::SignUp] {
            assert_eq!(Purpose::from_stored(purpose.as_str()), Some(purpose));
        }
        assert_eq!(Purpose::from_stored("other"), None);
    }
}
