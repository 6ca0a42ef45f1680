//! An SMTP server (mailin-embedded) in the test process that keeps what it
//! receives, can refuse like a relay in trouble, and can offer STARTTLS.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use mailin_embedded::{Handler, Response, Server, SslConfig, response};

use super::{Authority, eventually, install_ring_provider};

/// A message as the SMTP sink received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub raw: Vec<u8>,
}

impl ReceivedMail {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .unwrap()
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        self.parsed().body_text(0).unwrap().into_owned()
    }

    pub fn html(&self) -> String {
        self.parsed().body_html(0).unwrap().into_owned()
    }

    pub fn header_from(&self) -> String {
        let parsed = self.parsed();
        let from = parsed.from().unwrap().first().unwrap();
        format!(
            "{} <{}>",
            from.name().unwrap_or_default(),
            from.address().unwrap_or_default()
        )
    }

    /// A header's raw value, trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let parsed = self.parsed();
        parsed.header_raw(name).map(|value| value.trim().to_owned())
    }

    /// The link in the text part.
    pub fn link(&self) -> String {
        let text = self.text();
        text.split_whitespace()
            .find(|word| word.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in mail:\n{text}"))
            .to_owned()
    }

    /// The token carried by the link.
    pub fn token(&self) -> String {
        let link = url::Url::parse(&self.link()).unwrap();
        match link.query_pairs().find(|(k, _)| k == "token") {
            Some((_, token)) => token.into_owned(),
            None => link
                .path_segments()
                .unwrap()
                .next_back()
                .unwrap()
                .to_owned(),
        }
    }
}

/// An SMTP server (mailin-embedded) that keeps what it receives. It can be
/// told to refuse the next messages with a 451, like a relay in trouble,
/// or to take its time over each message, like a slow one.
#[derive(Clone)]
pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse_next: Arc<AtomicUsize>,
    unknown_mailboxes: Arc<Mutex<Vec<String>>>,
    receiving: Arc<Receiving>,
}

/// Messages being received at once, and the most seen so far.
#[derive(Default)]
struct Receiving {
    now: AtomicUsize,
    most: AtomicUsize,
    /// How long each message's end of data is held, in milliseconds.
    delay_millis: AtomicU64,
}

#[derive(Clone)]
struct SinkHandler {
    received: Arc<Mutex<Vec<ReceivedMail>>>,
    refuse_next: Arc<AtomicUsize>,
    unknown_mailboxes: Arc<Mutex<Vec<String>>>,
    receiving: Arc<Receiving>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for SinkHandler {
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        let refuse = self
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            response::INTERNAL_ERROR
        } else {
            response::OK
        }
    }

    fn rcpt(&mut self, to: &str) -> Response {
        if self
            .unknown_mailboxes
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == to)
        {
            response::NO_MAILBOX
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        let now = self.receiving.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.receiving.most.fetch_max(now, Ordering::SeqCst);
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let delay = self.receiving.delay_millis.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(delay));
        self.receiving.now.fetch_sub(1, Ordering::SeqCst);
        self.received.lock().unwrap().push(ReceivedMail {
            from: self.from.clone(),
            to: self.to.clone(),
            raw: std::mem::take(&mut self.data),
        });
        response::OK
    }
}

impl SmtpSink {
    pub fn start() -> Self {
        Self::start_with(SslConfig::None)
    }

    /// A relay offering STARTTLS with a certificate for `localhost` and
    /// 127.0.0.1 signed by `authority`.
    pub fn start_starttls(authority: &Authority) -> Self {
        let (cert, key) = authority.server();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        // mailin-embedded builds its TLS config on the default provider.
        install_ring_provider();
        // Read once, when the server is set up; the files may go after.
        Self::start_with(SslConfig::SelfSigned {
            cert_path: cert_path.to_str().unwrap().to_owned(),
            key_path: key_path.to_str().unwrap().to_owned(),
        })
    }

    fn start_with(ssl: SslConfig) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let refuse_next = Arc::new(AtomicUsize::new(0));
        let unknown_mailboxes = Arc::new(Mutex::new(Vec::new()));
        let receiving = Arc::new(Receiving::default());
        let handler = SinkHandler {
            received: received.clone(),
            refuse_next: refuse_next.clone(),
            unknown_mailboxes: unknown_mailboxes.clone(),
            receiving: receiving.clone(),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut server = Server::new(handler);
        server.with_ssl(ssl).unwrap();
        std::thread::spawn(move || {
            server
                .with_name("sink.rekey.test")
                // One thread per SMTP session, and rekey pools its connections.
                .with_num_threads(64)
                .with_tcp_listener(listener);
            let _ = server.serve();
        });
        Self {
            addr,
            received,
            refuse_next,
            unknown_mailboxes,
            receiving,
        }
    }

    /// Holds each message `delay` before accepting it.
    pub fn take_time(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap();
        self.receiving.delay_millis.store(millis, Ordering::SeqCst);
    }

    /// The most messages this sink has been receiving at once.
    pub fn most_at_once(&self) -> usize {
        self.receiving.most.load(Ordering::SeqCst)
    }

    /// Makes the next `count` messages fail at MAIL FROM with "451 local error".
    pub fn refuse_next(&self, count: usize) {
        self.refuse_next.store(count, Ordering::SeqCst);
    }

    /// Makes RCPT TO `mailbox` fail permanently with "550 mailbox unavailable".
    pub fn reject_mailbox(&self, mailbox: &str) {
        self.unknown_mailboxes
            .lock()
            .unwrap()
            .push(mailbox.to_owned());
    }

    pub fn all(&self) -> Vec<ReceivedMail> {
        self.received.lock().unwrap().clone()
    }

    pub fn to(&self, recipient: &str) -> Vec<ReceivedMail> {
        self.all()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == recipient))
            .collect()
    }

    /// Waits up to 10 s until `recipient` has `count` messages; returns them.
    pub async fn wait_for(&self, recipient: &str, count: usize) -> Vec<ReceivedMail> {
        let what = format!("{count} mails to {recipient}");
        eventually(&what, || async {
            let mails = self.to(recipient);
            (mails.len() >= count).then_some(mails)
        })
        .await
    }
}
