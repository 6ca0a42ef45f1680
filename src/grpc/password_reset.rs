use tonic::{Request, Response, Status};

use super::{
    caller_name,
    pb::{self, password_reset_server::PasswordReset},
    timestamp, to_status,
};
use crate::service::{self, LinkRequestInput, ResetPasswordInput, ServiceContext};

/// `rekey.v1.PasswordReset`.
pub struct PasswordResetService {
    ctx: ServiceContext,
}

impl PasswordResetService {
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }
}

impl From<pb::RequestResetRequest> for LinkRequestInput {
    fn from(message: pb::RequestResetRequest) -> Self {
        let client = message.client.unwrap_or_default();
        Self {
            email: message.email,
            display_name: String::new(),
            locale: message.locale,
            reset_url: message.reset_url,
            client_ip: client.ip,
            client_user_agent: client.user_agent,
            caller: None,
        }
    }
}

impl From<pb::SignUpRequest> for LinkRequestInput {
    fn from(message: pb::SignUpRequest) -> Self {
        let without_name = pb::RequestResetRequest {
            email: message.email,
            locale: message.locale,
            reset_url: message.reset_url,
            client: message.client,
        };
        Self {
            display_name: message.display_name,
            ..without_name.into()
        }
    }
}

#[tonic::async_trait]
impl PasswordReset for PasswordResetService {
    async fn request_reset(
        &self,
        request: Request<pb::RequestResetRequest>,
    ) -> Result<Response<pb::RequestResetResponse>, Status> {
        let caller = caller_name(&request);
        let input = LinkRequestInput {
            caller,
            ..request.into_inner().into()
        };
        service::request_reset(&self.ctx, input)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RequestResetResponse {}))
    }

    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        let caller = caller_name(&request);
        let token = request.into_inner().token;
        let info = service::verify_token(&self.ctx, &token, caller.as_deref())
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::VerifyTokenResponse {
            purpose: pb::Purpose::from(info.purpose).into(),
            expires_at: Some(timestamp(info.expires_at)),
            email_hint: info.email_hint,
        }))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let caller = caller_name(&request);
        let message = request.into_inner();
        let account_id = service::reset_password(
            &self.ctx,
            ResetPasswordInput {
                token: message.token,
                new_password: message.new_password,
                caller,
            },
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::ResetPasswordResponse { account_id }))
    }

    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        let caller = caller_name(&request);
        let input = LinkRequestInput {
            caller,
            ..request.into_inner().into()
        };
        service::sign_up(&self.ctx, input)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SignUpResponse {}))
    }
}
