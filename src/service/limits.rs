//! Rate limits as the use cases apply them: which keys a call counts
//! against, and the refusal when one is spent. The counting itself is one
//! statement in the call's transaction (`store::rate_limits`).

use sha2::{Digest, Sha256};

use super::{ServiceContext, ServiceError};
use crate::{
    domain::{EmailAddress, Purpose, RateLimit},
    store::{
        AuditKind, StoreContext,
        audit::{self, AuditEvent},
        group_commit::Rows,
        rate_limits::{self, Charge},
    },
};

/// The limits the use cases enforce; `None` is off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `RequestReset` / `SignUp` per normalized email and purpose.
    pub per_email: Option<RateLimit>,
    /// `RequestReset` / `SignUp` per end-user IP, when the caller gives one.
    pub per_ip: Option<RateLimit>,
    /// Failed `Authenticate` calls per normalized email.
    pub auth_failures: Option<RateLimit>,
}

/// One key a call is counted against, and which setting limits it.
pub(super) struct Meter {
    setting: &'static str,
    what: &'static str,
    limit: RateLimit,
    key: String,
}

impl Meter {
    fn new(setting: &'static str, what: &'static str, limit: RateLimit, key: &str) -> Self {
        Self {
            setting,
            what,
            limit,
            // A digest: the table never holds an address or an IP.
            key: hex::encode(Sha256::digest(key.as_bytes())),
        }
    }
}

impl Meter {
    /// The `limit` label of the rejection metric.
    fn label(&self) -> &'static str {
        match self.setting {
            "REKEY_RATE_LIMIT_PER_IP" => "per_ip",
            "REKEY_AUTH_FAILURE_LIMIT" => "auth_failure",
            _ => "per_email",
        }
    }
}

impl Limits {
    pub(super) fn link_request(
        &self,
        email: &EmailAddress,
        purpose: Purpose,
        ip: Option<&str>,
    ) -> Vec<Meter> {
        let mut meters = Vec::new();
        if let Some(limit) = self.per_email {
            let key = format!("email:{purpose:?}:{}", email.as_str());
            meters.push(Meter::new(
                "REKEY_RATE_LIMIT_PER_EMAIL",
                "per email address and purpose",
                limit,
                &key,
            ));
        }
        if let (Some(limit), Some(ip)) = (self.per_ip, ip) {
            let key = format!("ip:{ip}");
            meters.push(Meter::new(
                "REKEY_RATE_LIMIT_PER_IP",
                "per client IP",
                limit,
                &key,
            ));
        }
        meters
    }

    pub(super) fn auth_failures(&self, email: &EmailAddress) -> Option<Meter> {
        let limit = self.auth_failures?;
        let key = format!("auth:{}", email.as_str());
        Some(Meter::new(
            "REKEY_AUTH_FAILURE_LIMIT",
            "failed authentications per email address",
            limit,
            &key,
        ))
    }
}

/// What an audit row of a refused call says about it.
pub(super) struct Refused<'a> {
    pub email: &'a EmailAddress,
    pub ip: Option<String>,
    pub caller: Option<&'a str>,
}

/// The charges a call makes against its meters, counted in its write
/// (`store::rate_limits::take`, one statement).
pub(super) fn charges(meters: &[Meter]) -> Vec<Charge> {
    meters
        .iter()
        .map(|m| Charge {
            key: m.key.clone(),
            limit: m.limit,
        })
        .collect()
}

/// The refusal of a call whose write found the keys `over` spent (and was
/// undone): audited, naming the limit and when to retry.
pub(super) async fn refuse_spent(
    ctx: &ServiceContext,
    meters: &[Meter],
    over: &[String],
    refused: Refused<'_>,
    now: i64,
) -> ServiceError {
    let Some(spent) = meters.iter().find(|m| over.contains(&m.key)) else {
        return super::validated_field_missing();
    };
    let refusal = async {
        let retry_after = rate_limits::wait_for(&ctx.db, over, now)
            .await
            .context("reading when the rate limit frees")?;
        refuse(ctx, spent, refused, now).await?;
        Ok::<_, ServiceError>(rate_limited(spent, retry_after))
    };
    match refusal.await {
        Ok(refusal) | Err(refusal) => refusal,
    }
}

/// When the email is over its failed-authentication limit: the refusal,
/// audited, without any hash spent. Reads only.
pub(super) async fn check(
    ctx: &ServiceContext,
    meter: &Meter,
    refused: Refused<'_>,
    now: i64,
) -> Result<(), ServiceError> {
    let over = rate_limits::over_limit(&ctx.db, &meter.key, now)
        .await
        .context("reading the failed-authentication limit")?;
    let Some(retry_after) = over else {
        return Ok(());
    };
    refuse(ctx, meter, refused, now).await?;
    Err(rate_limited(meter, retry_after))
}

/// Counts one failure against `meter`, whatever its state.
pub(super) async fn count(
    ctx: &ServiceContext,
    meter: &Meter,
    now: i64,
) -> Result<(), ServiceError> {
    let charge = Charge {
        key: meter.key.clone(),
        limit: meter.limit,
    };
    rate_limits::take(&ctx.db, &[charge], now)
        .await
        .context("counting the failed authentication")?;
    Ok(())
}

async fn refuse(
    ctx: &ServiceContext,
    meter: &Meter,
    refused: Refused<'_>,
    now: i64,
) -> Result<(), ServiceError> {
    let event = AuditEvent {
        email_hint: Some(refused.email.masked()),
        ip: refused.ip,
        detail: Some(meter.setting),
        caller: refused.caller,
        ..Default::default()
    };
    let row = audit::row(AuditKind::RateLimited, event, now);
    // The refusal stands: its audit row waits for room rather than turn
    // it into a busy answer with a shorter retry.
    ctx.writes
        .waiting()
        .insert::<ServiceError>(Rows::default().audit(row))
        .await?;
    tracing::info!(email = %refused.email.masked(), limit = meter.setting, "rate limited");
    ctx.metrics.rate_limited(meter.label());
    Ok(())
}

fn rate_limited(meter: &Meter, retry_after: std::time::Duration) -> ServiceError {
    ServiceError::RateLimited {
        limit: meter.setting,
        description: format!("at most {} {}", meter.limit, meter.what),
        retry_after,
    }
}
