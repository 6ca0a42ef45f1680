//! A raw HTTP/2 client for bytes no well-behaved gRPC client would send:
//! any message bytes, cut-off frames, prefixes without bodies.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;

/// One HTTP/2 connection to the server.
pub struct RawConnection {
    addr: SocketAddr,
    client: SendRequest<Bytes>,
}

/// A call opened on a [`RawConnection`]: send bytes, then read the status.
pub struct RawCall {
    stream: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
}

/// `message` with gRPC's 5-byte prefix (uncompressed).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { addr, client }
    }

    /// Opens a call to `path` (`/rekey.v1.PasswordReset/SignUp`).
    pub async fn call(&mut self, path: &str) -> RawCall {
        let request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut client = self.client.clone().ready().await.unwrap();
        let (response, stream) = client.send_request(request, false).unwrap();
        RawCall { stream, response }
    }

    /// Sends `body` as the whole request and returns the call's status.
    pub async fn unary(&mut self, path: &str, body: Vec<u8>) -> tonic::Status {
        let mut call = self.call(path).await;
        call.send(body, true);
        call.status().await
    }

    /// Streams the server may open on this connection at once.
    pub fn max_streams(&self) -> usize {
        self.client.current_max_send_streams()
    }
}

impl RawCall {
    pub fn send(&mut self, bytes: Vec<u8>, end: bool) {
        self.stream.send_data(Bytes::from(bytes), end).unwrap();
    }

    /// The call's gRPC status, from the headers of a trailers-only answer or
    /// from the trailers after the messages (`OK` if the call succeeded).
    pub async fn status(self) -> tonic::Status {
        let response = self.response.await.unwrap();
        assert_eq!(response.status(), 200, "{response:?}");
        let (parts, mut body) = response.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            return status;
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.unwrap().expect("trailers");
        tonic::Status::from_header_map(&trailers).expect("grpc-status in the trailers")
    }
}
