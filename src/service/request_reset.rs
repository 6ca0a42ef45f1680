//! `RequestReset`: validate, then queue one outbox row. The account is
//! resolved later by the mail worker, so a known and an unknown email cost
//! the same work here and get the same reply. `SignUp` shares this path.

use sea_orm::{ActiveEnum, TransactionTrait};

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
        outbox::{self, MailIntent},
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

/// Writes the outbox row and its audit event in one transaction, then
/// wakes the mail worker.
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
    let tx = ctx.db.begin().await.context("starting a transaction")?;
    let meters = ctx
        .limits
        .link_request(email, purpose, request.ip.as_deref());
    let refused = Refused {
        email,
        ip: request.ip.clone(),
        caller: request.caller.as_deref(),
    };
    let tx = limits::charge(ctx, tx, &meters, refused, now).await?;
    outbox::enqueue(&tx, email.as_str(), intent, now)
        .await
        .context("queueing the mail job")?;
    audit::record(
        &tx,
        kind,
        AuditEvent {
            email_hint: Some(email.masked()),
            ip: request.ip.clone(),
            caller: request.caller.as_deref(),
            ..Default::default()
        },
        now,
    )
    .await
    .context("auditing the request")?;
    tx.commit().await.context("committing the mail job")?;
    ctx.mail_wake.notify_one();
    tracing::info!(email = %email.masked(), kind = %kind.to_value(), "mail queued");
    Ok(())
}
