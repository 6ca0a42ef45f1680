//! A bare SMTP relay that requires a login (AUTH PLAIN) over plaintext,
//! which mailin-embedded only offers after TLS. It records who logged in
//! and counts what it accepted.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::STANDARD};

#[derive(Clone)]
pub struct AuthSink {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    user: String,
    password: String,
    /// Every (user, password) a client tried.
    logins: Mutex<Vec<(String, String)>>,
    accepted: Mutex<usize>,
}

impl AuthSink {
    /// Accepts mail only after a login as `user` with `password`.
    pub fn start(user: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            user: user.to_owned(),
            password: password.to_owned(),
            logins: Mutex::new(Vec::new()),
            accepted: Mutex::new(0),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, &state);
                });
            }
        });
        Self { addr, state }
    }

    pub fn logins(&self) -> Vec<(String, String)> {
        self.state.logins.lock().unwrap().clone()
    }

    /// Messages accepted after a successful login.
    pub fn accepted(&self) -> usize {
        *self.state.accepted.lock().unwrap()
    }
}

fn session(stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut read_line = move || -> std::io::Result<Option<String>> {
        let mut line = String::new();
        Ok((reader.read_line(&mut line)? > 0).then_some(line))
    };
    out.write_all(b"220 auth-sink.rekey.test ESMTP\r\n")?;
    let mut logged_in = false;
    while let Some(line) = read_line()? {
        let command = line.trim_end().to_owned();
        let verb = command.to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
            b"250-auth-sink.rekey.test\r\n250 AUTH PLAIN\r\n"
        } else if verb.starts_with("AUTH PLAIN") {
            let mut response = command["AUTH PLAIN".len()..].trim().to_owned();
            if response.is_empty() {
                out.write_all(b"334 \r\n")?;
                response = read_line()?.unwrap_or_default().trim().to_owned();
            }
            let decoded = STANDARD.decode(response).unwrap_or_default();
            let mut parts = decoded.split(|b| *b == 0).skip(1);
            let mut next =
                || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let (user, password) = (next(), next());
            logged_in = user == state.user && password == state.password;
            state.logins.lock().unwrap().push((user, password));
            if logged_in {
                b"235 2.7.0 accepted\r\n"
            } else {
                b"535 5.7.8 bad credentials\r\n"
            }
        } else if verb.starts_with("MAIL") && !logged_in {
            b"530 5.7.0 authentication required\r\n"
        } else if verb.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            while let Some(data) = read_line()? {
                if data == ".\r\n" {
                    break;
                }
            }
            *state.accepted.lock().unwrap() += 1;
            b"250 2.0.0 queued\r\n"
        } else if verb.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else if ["MAIL", "RCPT", "RSET", "NOOP"]
            .iter()
            .any(|v| verb.starts_with(v))
        {
            b"250 ok\r\n"
        } else {
            b"500 unknown command\r\n"
        };
        out.write_all(reply)?;
    }
    Ok(())
}
