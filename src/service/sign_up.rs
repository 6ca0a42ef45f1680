//! `SignUp`: validate, then queue one outbox row, exactly as `RequestReset`
//! does. The mail worker decides later between a sign-up link and "you
//! already have an account", so the reply cannot tell the two apart.

use super::{
    ServiceContext, ServiceError,
    request_reset::{LinkRequestInput, parse, queue},
};
use crate::{domain::Purpose, store::outbox::MailIntent};

pub async fn sign_up(ctx: &ServiceContext, input: LinkRequestInput) -> Result<(), ServiceError> {
    let request = parse(ctx, &input)?;
    let intent = MailIntent::SignUp {
        display_name: request.display_name.as_str().to_owned(),
        locale: request.locale_or_empty(),
        reset_url: request.page.as_template(),
    };
    queue(ctx, &request, &intent, Purpose::SignUp).await
}
