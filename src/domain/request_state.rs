/// Where a reset or sign-up request stands. The precedence (used, then
/// revoked, then expired) decides which reason a caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Open,
    Used,
    Revoked,
    Expired,
}

impl RequestState {
    /// The state at `now` of a request with these timestamps (Unix ms).
    pub fn at(
        consumed_at: Option<i64>,
        revoked_at: Option<i64>,
        expires_at: i64,
        now: i64,
    ) -> Self {
        if consumed_at.is_some() {
            RequestState::Used
        } else if revoked_at.is_some() {
            RequestState::Revoked
        } else if expires_at <= now {
            RequestState::Expired
        } else {
            RequestState::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_beats_revoked_beats_expired() {
        assert_eq!(
            RequestState::at(Some(1), Some(1), 0, 10),
            RequestState::Used
        );
        assert_eq!(
            RequestState::at(None, Some(1), 0, 10),
            RequestState::Revoked
        );
        assert_eq!(RequestState::at(None, None, 10, 10), RequestState::Expired);
        assert_eq!(RequestState::at(None, None, 11, 10), RequestState::Open);
    }
}
