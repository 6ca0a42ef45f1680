//! A request body that checks gRPC's framing as the bytes arrive, before
//! tonic buffers or decodes anything: each message's 5-byte prefix (a
//! compression flag and a length), the length against the size limit, and
//! that the stream does not end inside a message. Whatever it refuses
//! becomes the call's status: tonic answers with a `Status` found in a body
//! error as it is.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt};

use super::{ERROR_DOMAIN, codec::MALFORMED_MESSAGE};

/// `ErrorInfo.reason` of a message over the size limit.
pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";

/// Checks a message's bytes against its type, for services whose codec is
/// not rekey's (health, reflection); `None` when the codec does it.
pub type Validator = fn(&[u8]) -> Result<(), prost::DecodeError>;

/// What a request's body must look like.
#[derive(Clone, Copy)]
pub struct Expect {
    /// The largest message accepted, in bytes.
    pub max_message: usize,
    /// Whether the request declared a compression (`grpc-encoding`).
    pub compressed: bool,
    /// Whether a stream without any message is valid (client streaming).
    pub may_be_empty: bool,
    pub validator: Option<Validator>,
}

/// Where the parser stands in the stream of length-prefixed messages.
enum Position {
    /// Reading a prefix; `have` of its 5 bytes are in `prefix`.
    Prefix { prefix: [u8; 5], have: usize },
    /// Inside a message, `left` bytes to go.
    Message { left: usize },
}

/// Where a request body's refusal is kept for its response to report.
pub type Refusal = Arc<OnceLock<Status>>;

/// The body of a request, checked frame by frame.
pub struct CheckedBody {
    inner: Body,
    expect: Expect,
    refusal: Refusal,
    position: Position,
    /// The message being collected for `expect.validator`.
    message: Vec<u8>,
    messages: usize,
    done: bool,
}

impl CheckedBody {
    pub fn new(inner: Body, expect: Expect, refusal: Refusal) -> Self {
        Self {
            inner,
            expect,
            refusal,
            position: Position::Prefix {
                prefix: [0; 5],
                have: 0,
            },
            message: Vec::new(),
            messages: 0,
            done: false,
        }
    }

    /// Follows `data` through the framing; an error is the call's status.
    fn check(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            match &mut self.position {
                Position::Prefix { prefix, have } => {
                    let take = (5 - *have).min(data.len());
                    prefix[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data.advance(take);
                    if *have == 5 {
                        let [flag, length @ ..] = *prefix;
                        let length =
                            usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
                        self.start_message(flag, length)?;
                    }
                }
                Position::Message { left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    if self.expect.validator.is_some() {
                        self.message.extend_from_slice(&data[..take]);
                    }
                    data.advance(take);
                    if *left == 0 {
                        self.end_message()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_message(&mut self, flag: u8, length: usize) -> Result<(), Status> {
        match flag {
            0 => {}
            1 if self.expect.compressed => {}
            1 => {
                return Err(invalid(
                    "a message is marked compressed but no grpc-encoding was sent",
                ));
            }
            _ => return Err(invalid("a message prefix has an invalid compression flag")),
        }
        if length > self.expect.max_message {
            return Err(too_large(length, self.expect.max_message));
        }
        self.position = Position::Message { left: length };
        if length == 0 {
            self.end_message()?;
        }
        Ok(())
    }

    fn end_message(&mut self) -> Result<(), Status> {
        self.messages += 1;
        self.position = Position::Prefix {
            prefix: [0; 5],
            have: 0,
        };
        if let Some(validate) = self.expect.validator {
            let message = std::mem::take(&mut self.message);
            validate(&message).map_err(|e| super::codec::malformed(&e))?;
        }
        Ok(())
    }

    /// At the end of the stream: nothing cut off, and a message if one is due.
    fn finish(&self) -> Result<(), Status> {
        match self.position {
            Position::Prefix { have: 0, .. } => {}
            Position::Prefix { .. } | Position::Message { .. } => {
                return Err(invalid("the stream ended inside a message (truncated)"));
            }
        }
        if self.messages == 0 && !self.expect.may_be_empty {
            return Err(invalid("the request has no message"));
        }
        Ok(())
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        tracing::debug!(code = ?status.code(), reason = status.message(), "request refused");
        let _ = self.refusal.set(status.clone());
        Poll::Ready(Some(Err(status)))
    }
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = self.check(data)
                {
                    return self.fail(status);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                self.done = true;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Err(status) = self.finish() {
                    return self.fail(status);
                }
                self.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only once the end was seen and checked.
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A streaming response whose closing status is the request's refusal, if
/// there was one. Tonic's reflection service ends its stream with `OK` when
/// its request stream fails; the caller is owed the reason.
pub struct ReportedBody {
    inner: Body,
    refusal: Refusal,
}

impl ReportedBody {
    pub fn new(inner: Body, refusal: Refusal) -> Self {
        Self { inner, refusal }
    }
}

impl HttpBody for ReportedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(match (frame, self.refusal.get()) {
            (Some(Ok(frame)), Some(refusal)) if frame.is_trailers() => {
                let mut trailers = http::HeaderMap::new();
                Some(Ok(match refusal.add_header(&mut trailers) {
                    Ok(()) => Frame::trailers(trailers),
                    Err(_) => frame,
                }))
            }
            (frame, _) => frame,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `INVALID_ARGUMENT` for framing that is not gRPC's.
fn invalid(problem: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("malformed request: {problem}"),
        ErrorDetails::with_error_info(
            MALFORMED_MESSAGE,
            ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        ),
    )
}

/// `RESOURCE_EXHAUSTED` for a message over the limit, said before any of
/// it is read.
fn too_large(length: usize, limit: usize) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("the request message is {length} bytes; the limit is {limit} bytes"),
        ErrorDetails::with_error_info(
            MESSAGE_TOO_LARGE,
            ERROR_DOMAIN,
            std::collections::HashMap::from([("limit".to_owned(), limit.to_string())]),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            max_message: 16,
            compressed: false,
            may_be_empty: false,
            validator: None,
        }
    }

    fn body(expect: Expect) -> CheckedBody {
        CheckedBody::new(Body::empty(), expect, Refusal::default())
    }

    #[test]
    fn messages_split_anywhere_are_followed() {
        let mut body = body(expect());
        let stream = [
            &[0, 0, 0][..],
            &[0, 3, b'a'],
            &[b'b', b'c', 0, 0],
            &[0, 0, 0],
        ];
        for chunk in stream {
            body.check(chunk).unwrap();
        }
        assert_eq!(body.messages, 2);
        body.finish().unwrap();
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body() {
        let status = body(expect()).check(&[0, 0, 0, 0, 17]).unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, MESSAGE_TOO_LARGE);
        body(expect()).check(&[0, 0, 0, 0, 16]).unwrap();
    }

    #[test]
    fn a_cut_message_an_empty_unary_and_bad_flags_are_invalid() {
        let mut cut = body(expect());
        cut.check(&[0, 0, 0, 0, 4, b'a']).unwrap();
        assert_eq!(cut.finish().unwrap_err().code(), Code::InvalidArgument);
        let mut cut_prefix = body(expect());
        cut_prefix.check(&[0, 0]).unwrap();
        assert_eq!(
            cut_prefix.finish().unwrap_err().code(),
            Code::InvalidArgument
        );

        assert_eq!(
            body(expect()).finish().unwrap_err().code(),
            Code::InvalidArgument
        );
        let streaming = Expect {
            may_be_empty: true,
            ..expect()
        };
        body(streaming).finish().unwrap();

        for flag in [1, 2, 0xff] {
            let status = body(expect()).check(&[flag, 0, 0, 0, 1]).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
        }
        let compressed = Expect {
            compressed: true,
            ..expect()
        };
        body(compressed).check(&[1, 0, 0, 0, 1]).unwrap();
    }

    #[test]
    fn a_validator_sees_each_whole_message() {
        fn utf8_only(bytes: &[u8]) -> Result<(), prost::DecodeError> {
            use prost::Message as _;
            // A message with one string field: decoding checks its UTF-8.
            tonic_health::pb::HealthCheckRequest::decode(bytes).map(drop)
        }
        let validated = Expect {
            validator: Some(utf8_only),
            ..expect()
        };
        body(validated)
            .check(&[0, 0, 0, 0, 3, 0x0a, 1, b'x'])
            .unwrap();
        let mut split = body(validated);
        split.check(&[0, 0, 0, 0, 4, 0x0a]).unwrap();
        let status = split.check(&[2, 0xff, 0xfe]).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
