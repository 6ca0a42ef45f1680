use std::{fmt, time::Duration};

/// At most `count` events per `period`, written `3/15m`. Enforced as GCRA:
/// events are spaced `period / count` apart, with a burst of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    count: u32,
    period: Duration,
}

impl RateLimit {
    /// Parses `N/duration` (e.g. `30/5m`); `off` gives `None`.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let shape = || format!("{raw:?} is not N/duration (e.g. 3/15m) or off");
        let (count, period) = raw.split_once('/').ok_or_else(shape)?;
        let count: u32 = count.trim().parse().map_err(|_| shape())?;
        let period = humantime::parse_duration(period.trim()).map_err(|_| shape())?;
        if count == 0 || period.as_millis() < u128::from(count) {
            return Err(format!("{raw:?} allows nothing; use off to turn it off"));
        }
        Ok(Some(Self { count, period }))
    }

    /// The spacing of events, in milliseconds.
    pub fn emission_millis(&self) -> i64 {
        i64::try_from(self.period.as_millis() / u128::from(self.count)).unwrap_or(i64::MAX)
    }

    /// How far ahead of now the schedule may run: a burst of `count`.
    pub fn tolerance_millis(&self) -> i64 {
        self.emission_millis()
            .saturating_mul(i64::from(self.count).saturating_sub(1))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_or_are_off() {
        let limit = RateLimit::parse("3/15m").unwrap().unwrap();
        assert_eq!(limit.emission_millis(), 5 * 60 * 1000);
        assert_eq!(limit.tolerance_millis(), 10 * 60 * 1000);
        assert_eq!(RateLimit::parse("off").unwrap(), None);
        for bad in ["3", "x/15m", "3/soon", "0/1m", ""] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
