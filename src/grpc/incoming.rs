//! Accepted connections: plain TCP, or TLS with the current (reloadable)
//! certificate. Handshakes run off the accept loop, each bounded in time,
//! so a slow or silent client cannot hold up others; every connection is
//! closed once it has sent nothing for the idle timeout.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::idle::IdleTimeout;
use crate::security::tls::{ReloadingAcceptor, common_name};

/// What the request path may know about a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's subject CN (mTLS).
    pub certificate_cn: Option<String>,
}

/// A connection as the server sees it.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Connection::Plain(tcp) => PeerInfo {
                remote_addr: tcp.peer_addr().ok(),
                certificate_cn: None,
            },
            Connection::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                PeerInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    certificate_cn: session
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(common_name),
                }
            }
        }
    }
}

/// How accepted connections are set up.
#[derive(Clone)]
pub struct Accept {
    /// TLS with the current certificate, or plaintext.
    pub tls: Option<ReloadingAcceptor>,
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

/// Accepts connections until `stop` or until the returned stream is
/// dropped; then the listener closes, so new clients are refused at once.
pub fn accept(
    listener: TcpListener,
    accept: Accept,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<IdleTimeout<Connection>>> {
    let Accept {
        tls,
        handshake_timeout,
        idle_timeout,
    } = accept;
    let (ready, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => break,
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, keep serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = tls.as_ref().and_then(ReloadingAcceptor::current) else {
                let connection = IdleTimeout::new(Connection::Plain(tcp), idle_timeout);
                if ready.send(Ok(connection)).await.is_err() {
                    break;
                }
                continue;
            };
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let connection =
                            IdleTimeout::new(Connection::Tls(Box::new(tls)), idle_timeout);
                        let _ = ready.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Connection::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(tcp) => tcp.is_write_vectored(),
            Connection::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
