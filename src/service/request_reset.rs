//! `RequestReset`: validate, then queue one outbox row. The account is
//! resolved later by the mail worker, so a known and an unknown email cost
//! the same work here and get the same reply. `SignUp` shares this path.

use sea_orm::{ActiveEnum, DatabaseTransaction};

use super::{
    ServiceContext, ServiceError, Violations,
    limits::{self, Refused},
    validated_field_missing,
};
use crate::{
    domain::{ClientContext, DisplayName, EmailAddress, Locale, Purpose, ResetUrl},
    store::{
        AuditKind, StoreContext,
        audit::{self, AuditEvent},
        group_commit::{Decision, Rows, WorkFuture},
        outbox::{self, MailIntent},
        rate_limits,
    },
};

/// The inputs of `RequestReset` and `SignUp` as the caller sent them.
#[derive(Debug, Default, Clone)]
pub struct LinkRequestInput {
    pub email: String,
    pub display_name: String,
    pub locale: String,
    pub reset_url: String,
    pub client_ip: String,
    pub client_user_agent: String,
    /// The calling service, for the audit trail.
    pub caller: Option<String>,
}

/// A link request whose fields all parsed.
pub(super) struct LinkRequest {
    pub email: EmailAddress,
    pub display_name: DisplayName,
    /// `None` when the caller named none: the mail worker then uses the
    /// account's, if there is one.
    pub locale: Option<Locale>,
    pub page: ResetUrl,
    pub ip: Option<String>,
    pub caller: Option<String>,
}

impl LinkRequest {
    /// The caller's locale, or "" for none (the worker decides).
    pub(super) fn locale_or_empty(&self) -> String {
        self.locale
            .as_ref()
            .map_or_else(String::new, |l| l.as_str().to_owned())
    }
}

pub(super) fn parse(
    ctx: &ServiceContext,
    input: &LinkRequestInput,
) -> Result<LinkRequest, ServiceError> {
    let mut violations = Violations::default();
    let email = violations.check(EmailAddress::parse("email", &input.email));
    let display_name = violations.check(DisplayName::parse("display_name", &input.display_name));
    let locale = violations.check(match input.locale.trim() {
        "" => Ok(None),
        raw => Locale::parse("locale", raw).map(Some),
    });
    let page = violations.check(ctx.reset_page("reset_url", &input.reset_url));
    let client = violations.check(ClientContext::parse(
        &input.client_ip,
        &input.client_user_agent,
    ));
    violations.finish()?;
    match (email, display_name, locale, page, client) {
        (Some(email), Some(display_name), Some(locale), Some(page), Some(client)) => {
            Ok(LinkRequest {
                email,
                display_name,
                locale,
                page,
                ip: client.ip.map(|ip| ip.to_string()),
                caller: input.caller.clone(),
            })
        }
        _ => Err(validated_field_missing()),
    }
}

pub async fn request_reset(
    ctx: &ServiceContext,
    input: LinkRequestInput,
) -> Result<(), ServiceError> {
    let request = parse(ctx, &input)?;
    let intent = MailIntent::Reset {
        locale: request.locale_or_empty(),
        reset_url: request.page.as_template(),
    };
    queue(ctx, &request, &intent, Purpose::Reset).await
}

/// Writes the outbox row and its audit event, counted against the rate
/// limits, in one group-committed write; then wakes the mail worker.
pub(super) async fn queue(
    ctx: &ServiceContext,
    request: &LinkRequest,
    intent: &MailIntent,
    purpose: Purpose,
) -> Result<(), ServiceError> {
    let kind = match purpose {
        Purpose::Reset => AuditKind::ResetRequested,
        Purpose::SignUp => AuditKind::SignUpRequested,
    };
    let email = &request.email;
    let now = ctx.clock.now_millis();
    let meters = ctx
        .limits
        .link_request(email, purpose, request.ip.as_deref());
    let charges = limits::charges(&meters);
    let event = AuditEvent {
        email_hint: Some(email.masked()),
        ip: request.ip.clone(),
        caller: request.caller.as_deref(),
        ..Default::default()
    };
    // The job and its audit row are inserted with the rest of the batch's.
    let rows = Rows::default()
        .mail(outbox::new_job(email.as_str(), intent, now).context("queueing the mail job")?)
        .audit(audit::row(kind, event, now));
    let over = if charges.is_empty() {
        ctx.writes.insert::<ServiceError>(rows).await?;
        Vec::new()
    } else {
        ctx.writes
            .write_then_insert(
                move |tx: &DatabaseTransaction| -> WorkFuture<'_, Vec<String>, ServiceError> {
                    Box::pin(async move {
                        let over = rate_limits::take(tx, &charges, now)
                            .await
                            .context("counting the call against its rate limits")?;
                        // Over a limit: nothing counted, nothing written.
                        Ok(if over.is_empty() {
                            Decision::Keep(over)
                        } else {
                            Decision::Discard(over)
                        })
                    })
                },
                rows,
            )
            .await?
    };
    if !over.is_empty() {
        let refused = Refused {
            email,
            ip: request.ip.clone(),
            caller: request.caller.as_deref(),
        };
        return Err(limits::refuse_spent(ctx, &meters, &over, refused, now).await);
    }
    ctx.mail_wake.notify_one();
    tracing::info!(email = %email.masked(), kind = %kind.to_value(), "mail queued");
    Ok(())
}
