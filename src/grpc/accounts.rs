use tonic::{Request, Response, Status};

use super::{
    caller_name,
    pb::{self, accounts_server::Accounts},
    timestamp, to_status,
};
use crate::service::{self, AuthenticateInput, ServiceContext};

/// `rekey.v1.Accounts`.
pub struct AccountsService {
    ctx: ServiceContext,
}

impl AccountsService {
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let caller = caller_name(&request);
        let message = request.into_inner();
        let (client_ip, client_user_agent) = message
            .client
            .map_or_else(Default::default, |c| (c.ip, c.user_agent));
        let account = service::authenticate(
            &self.ctx,
            AuthenticateInput {
                email: message.email,
                password: message.password,
                client_ip,
                client_user_agent,
                caller,
            },
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::AuthenticateResponse {
            account_id: account.account_id,
            display_name: account.display_name,
            password_changed_at: Some(timestamp(account.password_changed_at)),
        }))
    }
}
