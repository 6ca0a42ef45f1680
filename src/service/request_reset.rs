//! `RequestReset` and `SignUp`: validate, then queue one outbox row. The
//! account is resolved later by the mail worker, so a known and an unknown
//! email cost the same work here and get the same reply.

use sea_orm::TransactionTrait;

use super::{ServiceContext, ServiceError, Violations};
use crate::{
    domain::{ClientContext, DisplayName, EmailAddress, Locale, ResetUrl},
    store::{
        audit::{self, AuditEvent, AuditKind},
        now_millis,
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
}

/// A link request whose fields all parsed.
struct LinkRequest {
    email: EmailAddress,
    display_name: DisplayName,
    locale: Locale,
    page: ResetUrl,
    ip: Option<String>,
}

fn parse(ctx: &ServiceContext, input: &LinkRequestInput) -> Result<LinkRequest, ServiceError> {
    let mut violations = Violations::default();
    let email = violations.check(EmailAddress::parse("email", &input.email));
    let display_name = violations.check(DisplayName::parse("display_name", &input.display_name));
    let locale = violations.check(Locale::parse("locale", &input.locale));
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
            })
        }
        _ => Err(ServiceError::Internal("validated fields missing".into())),
    }
}

pub async fn request_reset(
    ctx: &ServiceContext,
    input: LinkRequestInput,
) -> Result<(), ServiceError> {
    let request = parse(ctx, &input)?;
    let intent = MailIntent::Reset {
        locale: request.locale.as_str().to_owned(),
        reset_url: request.page.as_template(),
    };
    queue(ctx, &request, &intent, AuditKind::ResetRequested).await
}

pub async fn sign_up(ctx: &ServiceContext, input: LinkRequestInput) -> Result<(), ServiceError> {
    let request = parse(ctx, &input)?;
    let intent = MailIntent::SignUp {
        display_name: request.display_name.as_str().to_owned(),
        locale: request.locale.as_str().to_owned(),
        reset_url: request.page.as_template(),
    };
    queue(ctx, &request, &intent, AuditKind::SignUpRequested).await
}

/// Writes the outbox row and its audit event in one transaction, then
/// wakes the mail worker.
async fn queue(
    ctx: &ServiceContext,
    request: &LinkRequest,
    intent: &MailIntent,
    kind: AuditKind,
) -> Result<(), ServiceError> {
    let email = &request.email;
    let now = now_millis();
    let tx = ctx.db.begin().await?;
    outbox::enqueue(&tx, email.as_str(), intent, now).await?;
    audit::record(
        &tx,
        kind,
        AuditEvent {
            email_hint: Some(email.masked()),
            ip: request.ip.clone(),
            ..Default::default()
        },
        now,
    )
    .await?;
    tx.commit().await?;
    ctx.mail_wake.notify_one();
    tracing::info!(email = %email.masked(), kind = kind.as_str(), "mail queued");
    Ok(())
}
