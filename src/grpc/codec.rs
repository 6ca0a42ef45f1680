//! The protobuf codec of every rekey service (`build.rs` sets it as the
//! generated code's `codec_path`). It is prost's, except that a message
//! that does not decode (a string that is not UTF-8, a malformed field) is
//! the caller's mistake, `INVALID_ARGUMENT` naming the field, where tonic's
//! own codec answers `INTERNAL`.

use std::{collections::HashMap, marker::PhantomData};

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};
use tonic_types::{ErrorDetails, StatusExt};

use super::ERROR_DOMAIN;

/// `ErrorInfo.reason` of a request that does not decode.
pub const MALFORMED_MESSAGE: &str = "MALFORMED_MESSAGE";

/// Encodes `T` and decodes `U` with prost.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = StrictEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        StrictEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct StrictEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for StrictEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so this cannot fail in practice.
        item.encode(buf)
            .map_err(|_| Status::internal("encoding a message"))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// `INVALID_ARGUMENT` for a message that does not decode: `ErrorInfo`
/// (`MALFORMED_MESSAGE`) and, when prost could tell which field was at
/// fault, a `BadRequest` violation naming it (`client.user_agent`). The
/// caller's bytes are never quoted.
pub fn malformed(error: &prost::DecodeError) -> Status {
    let (field, problem) = describe(error);
    let mut details = ErrorDetails::with_error_info(
        MALFORMED_MESSAGE,
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    let message = match &field {
        Some(field) => {
            details.add_bad_request_violation(field.as_str(), problem);
            format!("the request message does not decode: {field} {problem}")
        }
        None => format!("the request message does not decode: {problem}"),
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The field path and a short description, from prost's message
/// `failed to decode Protobuf message: Inner.field: Outer.field: cause`
/// (the innermost location first). Its fields are private; its text is
/// all there is.
fn describe(error: &prost::DecodeError) -> (Option<String>, &'static str) {
    let text = error.to_string();
    let rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    let mut cause = rest;
    while let Some((location, after)) = cause.split_once(": ") {
        match location.split_once('.') {
            Some((message, field)) if is_identifier(message) && is_identifier(field) => {
                fields.push(field.to_owned());
                cause = after;
            }
            _ => break,
        }
    }
    fields.reverse();
    let problem = if cause.contains("UTF-8") {
        "is not valid UTF-8"
    } else {
        "is malformed"
    };
    let field = (!fields.is_empty()).then(|| fields.join("."));
    (field, problem)
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !text.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::pb;

    fn decode<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Status {
        let error = M::decode(bytes).unwrap_err();
        malformed(&error)
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        // Field 1 (email), length-delimited, two bytes that are not UTF-8.
        let status = decode::<pb::RequestResetRequest>(&[0x0a, 0x02, 0xff, 0xfe]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, "email");
        assert_eq!(violation.description, "is not valid UTF-8");
        assert_eq!(details.error_info().unwrap().reason, MALFORMED_MESSAGE);
    }

    #[test]
    fn a_nested_field_is_named_by_its_path() {
        // client (4) { user_agent (2) = 0xc3 0x28 }
        let status = decode::<pb::RequestResetRequest>(&[0x22, 0x04, 0x12, 0x02, 0xc3, 0x28]);
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "client.user_agent"
        );
        assert!(status.message().contains("client.user_agent"));
    }

    #[test]
    fn truncated_protobuf_is_malformed() {
        // A length prefix promising more than there is.
        let status = decode::<pb::VerifyTokenRequest>(&[0x0a, 0x20, b'a']);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("is malformed"), "{status:?}");
        // A tag with wire type 7, which does not exist.
        let status = decode::<pb::VerifyTokenRequest>(&[0x0f]);
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
