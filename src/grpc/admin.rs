use tonic::{Request, Response, Status};

use super::{
    caller_name, millis,
    pb::{self, admin_server::Admin},
    timestamp, to_status,
};
use crate::{
    domain::{FieldError, Purpose, RequestState, clock::millis_between},
    service::{
        ServiceContext, ServiceError,
        admin::{self, AuditQuery, MailView, PageRequest, RequestView},
    },
    store::{MailKind, MailStatus},
};

/// A filter's enum value, refused when this server does not know it (a
/// newer client's value would otherwise read as "no filter").
fn known<E: TryFrom<i32>>(raw: i32, field: &'static str) -> Result<E, Status> {
    E::try_from(raw).map_err(|_| {
        to_status(ServiceError::InvalidArgument(vec![FieldError::new(
            field,
            format!("{raw} is not one of its values"),
        )]))
    })
}

/// `rekey.v1.Admin`.
pub struct AdminService {
    ctx: ServiceContext,
}

impl AdminService {
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let message = request.into_inner();
        let purpose = match known(message.purpose, "purpose")? {
            pb::Purpose::Unspecified => None,
            pb::Purpose::Reset => Some(Purpose::Reset),
            pb::Purpose::SignUp => Some(Purpose::SignUp),
        };
        let state = match known(message.state, "state")? {
            pb::RequestState::Unspecified => None,
            pb::RequestState::Open => Some(RequestState::Open),
            pb::RequestState::Expired => Some(RequestState::Expired),
            pb::RequestState::Used => Some(RequestState::Used),
            pb::RequestState::Revoked => Some(RequestState::Revoked),
        };
        let page = PageRequest {
            page_size: message.page_size,
            page_token: message.page_token,
        };
        let listed = admin::list_requests(&self.ctx, purpose, state, page)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: listed.items.into_iter().map(request_view).collect(),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn revoke_request(
        &self,
        request: Request<pb::RevokeRequestRequest>,
    ) -> Result<Response<pb::RevokeRequestResponse>, Status> {
        let caller = caller_name(&request);
        let message = request.into_inner();
        let revoked = admin::revoke_request(&self.ctx, &message.request_id, caller.as_deref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RevokeRequestResponse {
            request: Some(request_view(revoked)),
        }))
    }

    async fn list_mail(
        &self,
        request: Request<pb::ListMailRequest>,
    ) -> Result<Response<pb::ListMailResponse>, Status> {
        let message = request.into_inner();
        let status = match known(message.status, "status")? {
            pb::MailStatus::Unspecified => None,
            pb::MailStatus::Pending => Some(MailStatus::Pending),
            pb::MailStatus::Sent => Some(MailStatus::Sent),
            pb::MailStatus::Dead => Some(MailStatus::Dead),
            pb::MailStatus::Skipped => Some(MailStatus::Skipped),
        };
        let kind = match known(message.kind, "kind")? {
            pb::MailKind::Unspecified => None,
            pb::MailKind::Reset => Some(MailKind::Reset),
            pb::MailKind::SignUp => Some(MailKind::SignUp),
            pb::MailKind::PasswordChanged => Some(MailKind::PasswordChanged),
            pb::MailKind::AlreadyRegistered => Some(MailKind::AlreadyRegistered),
        };
        let page = PageRequest {
            page_size: message.page_size,
            page_token: message.page_token,
        };
        let listed = admin::list_mail(&self.ctx, status, kind, page)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListMailResponse {
            mail: listed.items.into_iter().map(mail_view).collect(),
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn retry_mail(
        &self,
        request: Request<pb::RetryMailRequest>,
    ) -> Result<Response<pb::RetryMailResponse>, Status> {
        let caller = caller_name(&request);
        let message = request.into_inner();
        let retried = admin::retry_mail(&self.ctx, message.mail_id, caller.as_deref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RetryMailResponse {
            mail: Some(mail_view(retried)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let message = request.into_inner();
        let query = AuditQuery {
            account_id: message.account_id,
            kind: message.kind,
            since: message.since.map(|t| millis(&t)),
            until: message.until.map(|t| millis(&t)),
            page: PageRequest {
                page_size: message.page_size,
                page_token: message.page_token,
            },
        };
        let listed = admin::list_audit_events(&self.ctx, query)
            .await
            .map_err(to_status)?;
        let events = listed
            .items
            .into_iter()
            .map(|event| pb::AuditEvent {
                event_id: event.id,
                at: Some(timestamp(event.at)),
                kind: sea_orm::ActiveEnum::to_value(&event.kind),
                account_id: event.account_id.unwrap_or_default(),
                request_id: event.request_id.unwrap_or_default(),
                email_hint: event.email_hint.unwrap_or_default(),
                client_ip: event.ip.unwrap_or_default(),
                detail: event.detail.unwrap_or_default(),
                caller: event.caller.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token: listed.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let (stats, now) = admin::stats(&self.ctx).await.map_err(to_status)?;
        let count = |status| stats.mail_by_status.get(&status).copied().unwrap_or(0);
        let open = |purpose| stats.open_requests.get(&purpose).copied().unwrap_or(0);
        Ok(Response::new(pb::GetStatsResponse {
            mail_pending: count(MailStatus::Pending),
            mail_sent: count(MailStatus::Sent),
            mail_dead: count(MailStatus::Dead),
            mail_skipped: count(MailStatus::Skipped),
            oldest_pending_age: stats.oldest_pending.map(|oldest| {
                let age = millis_between(oldest, now.max(oldest));
                prost_types::Duration {
                    seconds: i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(age.subsec_nanos()).unwrap_or(0),
                }
            }),
            open_reset_requests: open(Purpose::Reset),
            open_sign_up_requests: open(Purpose::SignUp),
        }))
    }
}

fn request_view(view: RequestView) -> pb::AdminRequest {
    let RequestView {
        request,
        state,
        email_hint,
        mails_sent,
    } = view;
    pb::AdminRequest {
        request_id: request.id,
        purpose: pb::Purpose::from(request.purpose).into(),
        state: match state {
            RequestState::Open => pb::RequestState::Open,
            RequestState::Expired => pb::RequestState::Expired,
            RequestState::Used => pb::RequestState::Used,
            RequestState::Revoked => pb::RequestState::Revoked,
        }
        .into(),
        email_hint,
        account_id: request.account_id.unwrap_or_default(),
        created_at: Some(timestamp(request.created_at)),
        expires_at: Some(timestamp(request.expires_at)),
        mails_sent: u32::try_from(mails_sent).unwrap_or(u32::MAX),
    }
}

fn mail_view(view: MailView) -> pb::MailJob {
    let MailView {
        job,
        recipient_hint,
        last_error,
    } = view;
    pb::MailJob {
        mail_id: job.id,
        kind: match job.kind {
            MailKind::Reset => pb::MailKind::Reset,
            MailKind::SignUp => pb::MailKind::SignUp,
            MailKind::PasswordChanged => pb::MailKind::PasswordChanged,
            MailKind::AlreadyRegistered => pb::MailKind::AlreadyRegistered,
        }
        .into(),
        status: match job.status {
            MailStatus::Pending => pb::MailStatus::Pending,
            MailStatus::Sent => pb::MailStatus::Sent,
            MailStatus::Dead => pb::MailStatus::Dead,
            MailStatus::Skipped => pb::MailStatus::Skipped,
        }
        .into(),
        recipient_hint,
        attempts: u32::try_from(job.attempts).unwrap_or(0),
        next_attempt_at: (job.status == MailStatus::Pending)
            .then(|| timestamp(job.next_attempt_at)),
        last_error: last_error.unwrap_or_default(),
        created_at: Some(timestamp(job.created_at)),
        sent_at: job.sent_at.map(timestamp),
        request_id: job.request_id.unwrap_or_default(),
    }
}
