//! STARTTLS offered to clients (server mode, `starttls = ".."`), in front of a plaintext
//! server that cannot: tlsfront speaks the pre-TLS part of the protocol itself, as a pure
//! dialogue — client bytes in, bytes to send out — then the TLS handshake runs, and only
//! then is the backend connected, its greeting taken ([`Greeting`]) so that the client sees
//! one correct conversation.
//!
//! Before TLS only the few commands the protocol needs are accepted; anything that could
//! carry credentials (AUTH, LOGIN, USER, PASS, MAIL …) is refused, so nothing secret ever
//! crosses the network in plaintext.
//!
//! | protocol | before TLS | after TLS |
//! |---|---|---|
//! | smtp | `220` greeting; EHLO/HELO (EHLO advertises STARTTLS only), NOOP, RSET, QUIT; STARTTLS → `220`; others → `530 5.7.0 Must issue a STARTTLS command first` | the backend's 220 greeting is taken; the client's new EHLO goes to the backend |
//! | imap | `* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED]`; CAPABILITY, NOOP, LOGOUT; STARTTLS → `OK`; LOGIN/AUTHENTICATE → `NO [PRIVACYREQUIRED]`; others `BAD` | the backend's `* OK` greeting is taken |
//! | pop3 | `+OK` greeting; CAPA (STLS), NOOP, QUIT; STLS → `+OK`; others → `-ERR` | the backend's `+OK` greeting is taken |
//! | postgres | SSLRequest → `S` (GSSENCRequest → `N`); a StartupMessage without SSL → an error, closed | nothing to take: the client's StartupMessage goes to the backend |
//!
//! Bytes a client sends after its STARTTLS command and before the handshake are refused
//! (they would be read as if they came over TLS: the CVE-2011-0411 injection).

/// Longest command line accepted before TLS.
pub const MAX_LINE: usize = 1024;
/// Commands refused before a client is dropped.
pub const MAX_REFUSED: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Smtp,
    Imap,
    Pop3,
    Postgres,
}

impl Offer {
    pub const NAMES: &'static [&'static str] = &["smtp", "imap", "pop3", "postgres"];

    pub fn parse(name: &str) -> Option<Offer> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "smtp" => Offer::Smtp,
            "imap" => Offer::Imap,
            "pop3" => Offer::Pop3,
            "postgres" | "postgresql" => Offer::Postgres,
            _ => return None,
        })
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the client, then call [`OfferDialogue::received`] again with
    /// `&[]`.
    Send(Vec<u8>),
    /// Read more from the client.
    NeedMore,
    /// Send these bytes (possibly none), then start the TLS handshake.
    StartTls(Vec<u8>),
    /// Send these bytes (possibly none), then close: the client quit or misbehaved.
    Close(Vec<u8>, &'static str),
}

#[derive(Debug)]
pub struct OfferDialogue {
    offer: Offer,
    /// Our name in greetings.
    name: String,
    greeted: bool,
    buf: Vec<u8>,
    refused: u32,
}

const SSL_REQUEST_CODE: u32 = 80877103;
const GSSENC_REQUEST_CODE: u32 = 80877104;

impl OfferDialogue {
    pub fn new(offer: Offer, name: &str) -> OfferDialogue {
        OfferDialogue {
            offer,
            name: name.to_owned(),
            greeted: false,
            buf: Vec::new(),
            refused: 0,
        }
    }

    /// Feeds what the client sent (possibly nothing) and says what to do next.
    pub fn received(&mut self, bytes: &[u8]) -> Step {
        self.buf.extend_from_slice(bytes);
        if !self.greeted {
            self.greeted = true;
            let greeting = match self.offer {
                Offer::Smtp => format!("220 {} ESMTP ready\r\n", self.name),
                Offer::Imap => format!(
                    "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] {} ready\r\n",
                    self.name
                ),
                Offer::Pop3 => format!("+OK {} ready\r\n", self.name),
                Offer::Postgres => String::new(),
            };
            if !greeting.is_empty() {
                return Step::Send(greeting.into_bytes());
            }
        }
        if self.offer == Offer::Postgres {
            return self.postgres();
        }
        let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
            return if self.buf.len() > MAX_LINE {
                Step::Close(Vec::new(), "command line too long")
            } else {
                Step::NeedMore
            };
        };
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let step = match self.offer {
            Offer::Smtp => self.smtp(line),
            Offer::Imap => self.imap(line),
            Offer::Pop3 => self.pop3(line),
            Offer::Postgres => unreachable!("handled above"),
        };
        self.finish(step)
    }

    /// Refuses pipelined bytes after the go-ahead, and clients that keep being refused.
    fn finish(&mut self, step: Step) -> Step {
        match step {
            Step::StartTls(_) if !self.buf.is_empty() => Step::Close(
                Vec::new(),
                "bytes after the STARTTLS command, before the handshake",
            ),
            Step::Send(bytes) if self.refused >= MAX_REFUSED => {
                Step::Close(bytes, "too many commands refused before TLS")
            }
            other => other,
        }
    }

    fn refuse(&mut self, reply: String) -> Step {
        self.refused += 1;
        Step::Send(reply.into_bytes())
    }

    fn smtp(&mut self, line: &str) -> Step {
        let verb = first_word(line);
        match verb.as_str() {
            "EHLO" => Step::Send(format!("250-{}\r\n250 STARTTLS\r\n", self.name).into_bytes()),
            "HELO" => Step::Send(format!("250 {}\r\n", self.name).into_bytes()),
            "STARTTLS" => Step::StartTls(b"220 2.0.0 Ready to start TLS\r\n".to_vec()),
            "NOOP" | "RSET" => Step::Send(b"250 2.0.0 OK\r\n".to_vec()),
            "QUIT" => Step::Close(b"221 2.0.0 Bye\r\n".to_vec(), "client quit"),
            _ => self.refuse("530 5.7.0 Must issue a STARTTLS command first\r\n".to_owned()),
        }
    }

    fn imap(&mut self, line: &str) -> Step {
        let mut words = line.split_whitespace();
        let tag = words.next().unwrap_or("*").to_owned();
        let cmd = words.next().unwrap_or("").to_ascii_uppercase();
        match cmd.as_str() {
            "CAPABILITY" => Step::Send(
                format!(
                    "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n{tag} OK CAPABILITY completed\r\n"
                )
                .into_bytes(),
            ),
            "NOOP" => Step::Send(format!("{tag} OK NOOP completed\r\n").into_bytes()),
            "STARTTLS" => {
                Step::StartTls(format!("{tag} OK Begin TLS negotiation now\r\n").into_bytes())
            }
            "LOGOUT" => Step::Close(
                format!("* BYE logging out\r\n{tag} OK LOGOUT completed\r\n").into_bytes(),
                "client quit",
            ),
            "LOGIN" | "AUTHENTICATE" => {
                self.refuse(format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"))
            }
            _ => self.refuse(format!("{tag} BAD Use STARTTLS first\r\n")),
        }
    }

    fn pop3(&mut self, line: &str) -> Step {
        let verb = first_word(line);
        match verb.as_str() {
            "CAPA" => Step::Send(b"+OK Capability list follows\r\nSTLS\r\n.\r\n".to_vec()),
            "NOOP" => Step::Send(b"+OK\r\n".to_vec()),
            "STLS" => Step::StartTls(b"+OK Begin TLS negotiation\r\n".to_vec()),
            "QUIT" => Step::Close(b"+OK Bye\r\n".to_vec(), "client quit"),
            _ => self.refuse("-ERR Use STLS first\r\n".to_owned()),
        }
    }

    fn postgres(&mut self) -> Step {
        if self.buf.len() < 8 {
            return Step::NeedMore;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let code = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        match (len, code) {
            (8, SSL_REQUEST_CODE) => {
                self.buf.drain(..8);
                self.finish(Step::StartTls(b"S".to_vec()))
            }
            (8, GSSENC_REQUEST_CODE) => {
                self.buf.drain(..8);
                Step::Send(b"N".to_vec())
            }
            _ => Step::Close(
                postgres_error(
                    "28000",
                    "this server accepts TLS connections only (sslmode=require)",
                ),
                "PostgreSQL client without SSLRequest",
            ),
        }
    }
}

/// A command line's verb, upper-cased.
fn first_word(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// A PostgreSQL ErrorResponse with severity FATAL, the SQLSTATE `code` and `message`.
fn postgres_error(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Taking the backend's greeting once TLS is up (the client already had ours).
#[derive(Debug)]
pub struct Greeting {
    offer: Offer,
    buf: Vec<u8>,
}

/// What [`Greeting::received`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GreetingStep {
    NeedMore,
    /// The greeting is taken; these bytes came after it (to relay to the client).
    Taken(Vec<u8>),
    /// The backend refused (its greeting was not the expected one).
    Refused(String),
}

impl Greeting {
    pub fn new(offer: Offer) -> Greeting {
        Greeting {
            offer,
            buf: Vec::new(),
        }
    }

    /// Whether this protocol's backend greets first.
    pub fn expected(offer: Offer) -> bool {
        offer != Offer::Postgres
    }

    pub fn received(&mut self, bytes: &[u8]) -> GreetingStep {
        self.buf.extend_from_slice(bytes);
        let mut consumed = 0;
        loop {
            let Some(end) = self.buf[consumed..].iter().position(|&b| b == b'\n') else {
                return if self.buf.len() > 16 * 1024 {
                    GreetingStep::Refused("backend greeting too long".into())
                } else {
                    GreetingStep::NeedMore
                };
            };
            let line = String::from_utf8_lossy(&self.buf[consumed..consumed + end]).into_owned();
            consumed += end + 1;
            let ok = match self.offer {
                // Multi-line 220- continues; 220 ends it.
                Offer::Smtp if line.starts_with("220-") => continue,
                Offer::Smtp => line.starts_with("220"),
                Offer::Imap => line.starts_with("* OK") || line.starts_with("* PREAUTH"),
                Offer::Pop3 => line.starts_with("+OK"),
                Offer::Postgres => true,
            };
            if !ok {
                return GreetingStep::Refused(format!(
                    "backend greeting {:?}",
                    line.trim_end_matches('\r')
                ));
            }
            return GreetingStep::Taken(self.buf.split_off(consumed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays client lines against the dialogue; returns everything sent and the end.
    fn play(offer: Offer, client: &[&[u8]]) -> (String, Step) {
        let mut d = OfferDialogue::new(offer, "gw");
        let mut sent = Vec::new();
        let mut input = client.iter();
        let mut step = d.received(&[]);
        loop {
            match step {
                Step::Send(b) => {
                    sent.extend_from_slice(&b);
                    step = d.received(&[]);
                }
                Step::NeedMore => match input.next() {
                    Some(bytes) => step = d.received(bytes),
                    None => return (String::from_utf8_lossy(&sent).into_owned(), Step::NeedMore),
                },
                end => return (String::from_utf8_lossy(&sent).into_owned(), end),
            }
        }
    }

    #[test]
    fn smtp_offers_starttls_and_refuses_auth_and_mail_before_it() {
        let (sent, end) = play(
            Offer::Smtp,
            &[
                b"EHLO client\r\n",
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
                b"MAIL FROM:<a@b>\r\n",
                b"STARTTLS\r\n",
            ],
        );
        assert!(sent.starts_with("220 gw ESMTP"), "{sent}");
        assert!(sent.contains("250 STARTTLS\r\n"), "{sent}");
        assert_eq!(sent.matches("530 5.7.0").count(), 2, "{sent}");
        assert_eq!(
            end,
            Step::StartTls(b"220 2.0.0 Ready to start TLS\r\n".to_vec())
        );
        let (_, end) = play(Offer::Smtp, &[b"QUIT\r\n"]);
        assert!(matches!(end, Step::Close(ref b, _) if b.starts_with(b"221")));
    }

    #[test]
    fn pipelined_bytes_after_starttls_are_refused() {
        let (_, end) = play(Offer::Smtp, &[b"STARTTLS\r\nMAIL FROM:<x@y>\r\n"]);
        assert!(
            matches!(end, Step::Close(_, why) if why.contains("after the STARTTLS")),
            "{end:?}"
        );
        let (_, end) = play(Offer::Postgres, &[&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 9]]);
        assert!(matches!(end, Step::Close(..)), "{end:?}");
    }

    #[test]
    fn a_client_that_keeps_being_refused_is_dropped() {
        let lines: Vec<&[u8]> = vec![b"AUTH LOGIN\r\n"; 12];
        let (_, end) = play(Offer::Smtp, &lines);
        assert!(
            matches!(end, Step::Close(_, why) if why.contains("too many")),
            "{end:?}"
        );
    }

    #[test]
    fn imap_and_pop3() {
        let (sent, end) = play(
            Offer::Imap,
            &[
                b"a1 CAPABILITY\r\n",
                b"a2 LOGIN alice secret\r\n",
                b"a3 STARTTLS\r\n",
            ],
        );
        assert!(sent.contains("STARTTLS LOGINDISABLED"), "{sent}");
        assert!(sent.contains("a2 NO [PRIVACYREQUIRED]"), "{sent}");
        assert_eq!(
            end,
            Step::StartTls(b"a3 OK Begin TLS negotiation now\r\n".to_vec())
        );

        let (sent, end) = play(Offer::Pop3, &[b"CAPA\r\n", b"USER alice\r\n", b"STLS\r\n"]);
        assert!(
            sent.contains("STLS\r\n.\r\n") && sent.contains("-ERR"),
            "{sent}"
        );
        assert_eq!(
            end,
            Step::StartTls(b"+OK Begin TLS negotiation\r\n".to_vec())
        );
    }

    #[test]
    fn postgres_answers_ssl_and_gss_requests_and_refuses_plaintext() {
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let (sent, end) = play(Offer::Postgres, &[&gss, &ssl]);
        assert_eq!((sent.as_str(), end), ("N", Step::StartTls(b"S".to_vec())));
        let startup = [0, 0, 0, 9, 0, 3, 0, 0, 0];
        let (_, end) = play(Offer::Postgres, &[&startup]);
        assert!(
            matches!(end, Step::Close(ref b, _) if b[0] == b'E'),
            "{end:?}"
        );
    }

    #[test]
    fn backend_greetings_are_taken_whole() {
        let mut g = Greeting::new(Offer::Smtp);
        assert_eq!(
            g.received(b"220-mail.example\r\n220 ES"),
            GreetingStep::NeedMore
        );
        assert_eq!(g.received(b"MTP\r\n"), GreetingStep::Taken(Vec::new()));
        let mut g = Greeting::new(Offer::Imap);
        assert_eq!(
            g.received(b"* OK ready\r\nrest"),
            GreetingStep::Taken(b"rest".to_vec())
        );
        let mut g = Greeting::new(Offer::Pop3);
        assert!(matches!(
            g.received(b"-ERR busy\r\n"),
            GreetingStep::Refused(_)
        ));
        assert!(!Greeting::expected(Offer::Postgres));
    }
}
