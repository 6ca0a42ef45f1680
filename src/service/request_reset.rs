//! `RequestReset` and `SignUp`: validate, then queue one outbox row. The
//! account is resolved later by the mail worker, so a known and an unknown
//! email cost the same work here and get the same reply.

use sea_orm::TransactionTrait;

use super::{ServiceContext, ServiceError, Violations};
use crate::{
    domain::{ClientContext, DisplayName, EmailAddress, Locale},
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

pub async fn request_reset(
    ctx: &ServiceContext,
    input: LinkRequestInput,
) -> Result<(), ServiceError> {
    let mut violations = Violations::default();
    let email = violations.check(EmailAddress::parse("email", &input.email));
    let locale = violations.check(Locale::parse("locale", &input.locale));
    let page = violations.check(ctx.reset_page("reset_url", &input.reset_url));
    let client = violations.check(ClientContext::parse(
        &input.client_ip,
        &input.client_user_agent,
    ));
    violations.finish()?;
    let (Some(email), Some(locale), Some(page), Some(client)) = (email, locale, page, client)
    else {
        return Err(ServiceError::Internal("validated fields missing".into()));
    };
    let ip = client.ip.map(|ip| ip.to_string());
    let intent = MailIntent::Reset {
        locale: locale.as_str().to_owned(),
        reset_url: page.as_template(),
        ip: ip.clone(),
    };
    queue(ctx, &email, &intent, AuditKind::ResetRequested, ip).await
}

pub async fn sign_up(ctx: &ServiceContext, input: LinkRequestInput) -> Result<(), ServiceError> {
    let mut violations = Violations::default();
    let email = violations.check(EmailAddress::parse("email", &input.email));
    let name = violations.check(DisplayName::parse("display_name", &input.display_name));
    let locale = violations.check(Locale::parse("locale", &input.locale));
    let page = violations.check(ctx.reset_page("reset_url", &input.reset_url));
    let client = violations.check(ClientContext::parse(
        &input.client_ip,
        &input.client_user_agent,
    ));
    violations.finish()?;
    let (Some(email), Some(name), Some(locale), Some(page), Some(client)) =
        (email, name, locale, page, client)
    else {
        return Err(ServiceError::Internal("validated fields missing".into()));
    };
    let ip = client.ip.map(|ip| ip.to_string());
    let intent = MailIntent::SignUp {
        display_name: name.as_str().to_owned(),
        locale: locale.as_str().to_owned(),
        reset_url: page.as_template(),
        ip: ip.clone(),
    };
    queue(ctx, &email, &intent, AuditKind::SignUpRequested, ip).await
}

async fn queue(
    ctx: &ServiceContext,
    email: &EmailAddress,
    intent: &MailIntent,
    kind: AuditKind,
    ip: Option<String>,
) -> Result<(), ServiceError> {
    let now = now_millis();
    let tx = ctx.db.begin().await?;
    outbox::enqueue(&tx, email.as_str(), intent, now).await?;
    audit::record(
        &tx,
        kind,
        AuditEvent {
            email_hint: Some(email.masked()),
            ip,
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
