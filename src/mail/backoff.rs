//! When a failed mail is tried again: exponential backoff with jitter,
//! capped, so that the default 12 attempts span about an hour.

use std::time::Duration;

/// The first retry's delay; each later one doubles, up to the cap.
const BASE: Duration = Duration::from_secs(5);
/// Each delay is drawn from the top 20% below its nominal value, so
/// replicas do not retry in lockstep and the cap stays a cap.
const JITTER: f64 = 0.2;

/// The nominal delay after `attempts` failed attempts: 5 s, 10 s, 20 s …
/// doubling up to `max`.
fn ceiling(attempts: u32, max: Duration) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    BASE.saturating_mul(1 << exponent).min(max)
}

/// The delay after `attempts` failed attempts, jittered, at most `max`.
pub fn delay(attempts: u32, max: Duration) -> Duration {
    let ceiling = ceiling(attempts, max);
    let floor = ceiling.mul_f64(1.0 - JITTER);
    floor + (ceiling - floor).mul_f64(rand::random::<f64>())
}

/// How long a mail that keeps failing is retried before it becomes a dead
/// letter after `max_attempts`: the shortest and the longest sum of delays.
pub fn retry_span(max_attempts: u32, max: Duration) -> (Duration, Duration) {
    let longest = (1..max_attempts)
        .map(|attempts| ceiling(attempts, max))
        .fold(Duration::ZERO, Duration::saturating_add);
    (longest.mul_f64(1.0 - JITTER), longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = 15 * MINUTE;
        assert_eq!(ceiling(1, max), Duration::from_secs(5));
        assert_eq!(ceiling(2, max), Duration::from_secs(10));
        assert_eq!(ceiling(9, max), max);
        for attempts in 1..40 {
            let nominal = ceiling(attempts, max);
            let delay = delay(attempts, max);
            assert!(
                delay >= nominal.mul_f64(0.8) && delay <= nominal,
                "{attempts}: {delay:?}"
            );
            assert!(delay <= max);
        }
    }

    #[test]
    fn twelve_attempts_capped_at_fifteen_minutes_ride_out_about_an_hour() {
        let (shortest, longest) = retry_span(12, 15 * MINUTE);
        // 5 s … 640 s, then 900 s three times: 3,975 s nominal.
        assert_eq!(longest, Duration::from_secs(3975));
        assert!(shortest >= 50 * MINUTE, "{shortest:?}");
        assert!(longest <= 70 * MINUTE, "{longest:?}");
        assert_eq!(retry_span(1, 15 * MINUTE), (Duration::ZERO, Duration::ZERO));
    }
}
