//! A real SMTP server on loopback that keeps what it receives: enough of RFC
//! 5321 (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT)
//! for a real client library to deliver to it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// A delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-unstuffed.
    pub data: String,
}

/// The running sink.
pub struct SmtpSink {
    /// `smtp://127.0.0.1:<port>`, for `SMTP_URL`.
    pub url: String,
    /// Everything delivered so far.
    inbox: Arc<Mutex<Vec<Delivery>>>,
    /// Woken on each delivery.
    delivered: Arc<Notify>,
}

impl SmtpSink {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the SMTP sink");
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let delivered = Arc::new(Notify::new());
        let (i, d) = (inbox.clone(), delivered.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, i.clone(), d.clone()));
            }
        });
        Self {
            url,
            inbox,
            delivered,
        }
    }

    /// Everything delivered so far.
    pub fn inbox(&self) -> Vec<Delivery> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits until at least `count` messages have arrived, or `within` passes.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.delivered.notified();
            let inbox = self.inbox();
            if inbox.len() >= count {
                return inbox;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inbox();
            }
        }
    }
}

async fn session(
    stream: TcpStream,
    inbox: Arc<Mutex<Vec<Delivery>>>,
    delivered: Arc<Notify>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" | "MAIL" | "NOOP" => b"250 OK\r\n",
            "RSET" => {
                to.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                to.push(
                    line[8..]
                        .trim()
                        .trim_matches(|c| c == '<' || c == '>')
                        .to_owned(),
                );
                b"250 OK\r\n"
            }
            "DATA" => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push_str("\r\n");
                }
                inbox.lock().unwrap().push(Delivery {
                    to: std::mem::take(&mut to),
                    data,
                });
                delivered.notify_waiters();
                b"250 OK queued\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 command not implemented\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

/// The token of the first `reset-password?token=` link in a message, with
/// quoted-printable soft breaks and escapes undone.
pub fn reset_token(message: &str) -> Option<String> {
    let unfolded = message.replace("=\r\n", "").replace("=3D", "=");
    let start = unfolded.find("reset-password?token=")? + "reset-password?token=".len();
    let token: String = unfolded[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!token.is_empty()).then_some(token)
}
