//! A fast SMTP sink on tokio: one task per session, EHLO/HELO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT. It counts messages and, when asked, keeps
//! their recipient and body (for the tokens in sign-up mails).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::Result;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// A message as received: first recipient and raw body.
pub struct Received {
    pub to: String,
    pub raw: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    connections: AtomicU64,
    keep: AtomicBool,
    kept: Mutex<Vec<Received>>,
}

#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SmtpSink {
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                tokio::spawn(session(stream, accepting.clone()));
            }
        });
        Ok(Self { addr, shared })
    }

    /// Messages accepted since start.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// SMTP connections accepted since start: how well senders reuse them.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Whether to keep the messages from now on.
    pub fn keep_bodies(&self, keep: bool) {
        self.shared.keep.store(keep, Ordering::Relaxed);
    }

    /// The kept messages, handed over and forgotten.
    pub fn take_kept(&self) -> Vec<Received> {
        self.shared
            .kept
            .lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default()
    }
}

async fn session(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let mut line = Vec::with_capacity(256);
    let mut to = String::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb: String = line
            .iter()
            .take(4)
            .map(|b| b.to_ascii_uppercase() as char)
            .collect();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" | "MAIL" | "NOOP" => b"250 OK\r\n",
            "RSET" => {
                to.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                if to.is_empty() {
                    to = recipient(&line);
                }
                b"250 OK\r\n"
            }
            "DATA" => {
                if write.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let keep = shared.keep.load(Ordering::Relaxed);
                let Some(raw) = read_data(&mut read, keep).await else {
                    return;
                };
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if keep && let Ok(mut kept) = shared.kept.lock() {
                    kept.push(Received {
                        to: std::mem::take(&mut to),
                        raw,
                    });
                }
                to.clear();
                b"250 OK queued\r\n"
            }
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 not implemented\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// The address in `RCPT TO:<address>`.
fn recipient(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}

/// Reads up to the lone `.` line; the body (dot-unstuffed) when `keep`.
async fn read_data<R: AsyncBufReadExt + Unpin>(read: &mut R, keep: bool) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" || line == b".\n" {
            return Some(body);
        }
        if keep {
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            body.extend_from_slice(unstuffed);
        }
    }
}
