//! STARTTLS toward a server (client mode): the plaintext opening a protocol needs before
//! its TLS handshake, as a pure dialogue — bytes from the server in, bytes to send out.
//! No I/O and no clock; the caller applies the per-step timeout.
//!
//! | protocol | what tlsfront does |
//! |---|---|
//! | smtp | waits for the 220 greeting, `EHLO`, requires `250-STARTTLS`/`250 STARTTLS`, `STARTTLS`, expects 220 |
//! | imap | waits for `* OK`, `a1 CAPABILITY`, requires `STARTTLS` in it, `a2 STARTTLS`, expects `a2 OK` |
//! | pop3 | waits for `+OK`, `STLS`, expects `+OK` |
//! | ftp | waits for the 220 greeting, `AUTH TLS`, expects 234 |
//! | postgres | sends SSLRequest, expects `S` (`N`: the server refuses) |
//! | ldap | sends the StartTLS extended request (OID 1.3.6.1.4.1.1466.20037), expects resultCode 0 |
//! | xmpp | opens the stream to the server name, requires `<starttls>` in the features, sends `<starttls/>`, expects `<proceed/>` |
//! | chat | the configured expect/send steps |
//!
//! A server that sends anything after agreeing to switch (before the TLS handshake) is
//! refused: those bytes would be injected into the TLS session's plaintext
//! (CVE-2011-0411-style command injection).

/// Longest line or message accepted before TLS.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// A protocol whose opening tlsfront speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
    Ftp,
    Postgres,
    Ldap,
    Xmpp,
    /// Generic: the steps in order.
    Chat(Vec<ChatStep>),
}

impl Protocol {
    /// The names `starttls = ".."` accepts (chat is configured with its steps).
    pub const NAMES: &'static [&'static str] = &[
        "smtp", "imap", "pop3", "ftp", "postgres", "ldap", "xmpp", "chat",
    ];

    pub fn parse(name: &str) -> Option<Protocol> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "smtp" => Protocol::Smtp,
            "imap" => Protocol::Imap,
            "pop3" => Protocol::Pop3,
            "ftp" => Protocol::Ftp,
            "postgres" | "postgresql" => Protocol::Postgres,
            "ldap" => Protocol::Ldap,
            "xmpp" => Protocol::Xmpp,
            _ => return None,
        })
    }
}

/// One step of a chat script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatStep {
    /// Wait until the server's bytes (since the last expect) contain this.
    Expect(Vec<u8>),
    /// Send these bytes.
    Send(Vec<u8>),
}

/// Turns `\r`, `\n`, `\t`, `\\` and `\xHH` escapes into bytes.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let b = u8::from_str_radix(&hex, 16)
                    .map_err(|_| format!("bad escape \\x{hex} in {text:?}"))?;
                out.push(b);
            }
            other => return Err(format!("bad escape \\{} in {text:?}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send these bytes to the server, then ask again with [`Dialogue::received`] (`&[]`
    /// if nothing new arrived).
    Send(Vec<u8>),
    /// Read more from the server.
    NeedMore,
    /// The server agreed: start the TLS handshake now.
    Done,
    /// The server does not offer or refused STARTTLS, or broke the protocol.
    Fail(String),
}

/// One STARTTLS opening in progress.
#[derive(Debug)]
pub struct Dialogue {
    protocol: Protocol,
    /// The name sent where a protocol wants one (EHLO, the XMPP stream's `to`).
    name: String,
    step: usize,
    /// Server bytes not yet consumed.
    buf: Vec<u8>,
    /// SMTP/IMAP: STARTTLS was seen in the capabilities.
    offered: bool,
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const LDAP_STARTTLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

fn ldap_request() -> Vec<u8> {
    // LDAPMessage ::= SEQUENCE { messageID 1, extendedReq [APPLICATION 23] {
    //     requestName [0] OID } }
    let mut name = vec![0x80, LDAP_STARTTLS_OID.len() as u8];
    name.extend_from_slice(LDAP_STARTTLS_OID);
    let mut ext = vec![0x77, name.len() as u8];
    ext.extend_from_slice(&name);
    let mut body = vec![0x02, 0x01, 0x01];
    body.extend_from_slice(&ext);
    let mut msg = vec![0x30, body.len() as u8];
    msg.extend_from_slice(&body);
    msg
}

impl Dialogue {
    pub fn new(protocol: Protocol, name: &str) -> Dialogue {
        Dialogue {
            protocol,
            name: name.to_owned(),
            step: 0,
            buf: Vec::new(),
            offered: false,
        }
    }

    /// Feeds what the server sent (possibly nothing) and says what to do next.
    pub fn received(&mut self, bytes: &[u8]) -> Next {
        self.buf.extend_from_slice(bytes);
        let next = match self.protocol.clone() {
            Protocol::Smtp => self.smtp(),
            Protocol::Imap => self.imap(),
            Protocol::Pop3 => self.pop3(),
            Protocol::Ftp => self.ftp(),
            Protocol::Postgres => self.postgres(),
            Protocol::Ldap => self.ldap(),
            Protocol::Xmpp => self.xmpp(),
            Protocol::Chat(steps) => self.chat(&steps),
        };
        match next {
            Next::Done if !self.buf.is_empty() => Next::Fail(format!(
                "the server sent {} byte(s) after agreeing to start TLS",
                self.buf.len()
            )),
            Next::NeedMore if self.buf.len() > MAX_MESSAGE => {
                Next::Fail("server reply too long".into())
            }
            other => other,
        }
    }

    /// Takes one complete line (without CRLF) from the buffer.
    fn line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line);
        Some(text.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Takes one complete numeric reply (multi-line `NNN-` … `NNN `): its code, and whether
    /// any of its lines (after the code) satisfies `look`. `None` until it is complete.
    fn numeric_reply(
        &mut self,
        look: impl Fn(&str) -> bool,
    ) -> Option<Result<(u16, bool), String>> {
        // The reply ends with the first line whose code is not followed by '-'.
        let mut end = 0;
        loop {
            let newline = end + self.buf[end..].iter().position(|&b| b == b'\n')?;
            let last = self.buf.get(end + 3) != Some(&b'-');
            end = newline + 1;
            if last {
                break;
            }
        }
        let reply: Vec<u8> = self.buf.drain(..end).collect();
        let (mut code, mut seen) = (0, false);
        for line in String::from_utf8_lossy(&reply).lines() {
            let line = line.trim_end_matches('\r');
            match line.get(..3).and_then(|c| c.parse::<u16>().ok()) {
                Some(c) => code = c,
                None => return Some(Err(format!("not a numeric reply: {line:?}"))),
            }
            seen |= look(line.get(4..).unwrap_or(""));
        }
        Some(Ok((code, seen)))
    }

    fn smtp(&mut self) -> Next {
        match self.step {
            0 => match self.numeric_reply(|_| false) {
                None => Next::NeedMore,
                Some(Ok((220, _))) => {
                    self.step = 1;
                    Next::Send(format!("EHLO {}\r\n", self.name).into_bytes())
                }
                Some(Ok((code, _))) => Next::Fail(format!("SMTP greeting {code}")),
                Some(Err(e)) => Next::Fail(e),
            },
            1 => match self.numeric_reply(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("STARTTLS"))
            }) {
                None => Next::NeedMore,
                Some(Ok((250, true))) => {
                    self.step = 2;
                    Next::Send(b"STARTTLS\r\n".to_vec())
                }
                Some(Ok((250, false))) => {
                    Next::Fail("the SMTP server does not offer STARTTLS".into())
                }
                Some(Ok((code, _))) => Next::Fail(format!("EHLO answered {code}")),
                Some(Err(e)) => Next::Fail(e),
            },
            _ => match self.numeric_reply(|_| false) {
                None => Next::NeedMore,
                Some(Ok((220, _))) => Next::Done,
                Some(Ok((code, _))) => Next::Fail(format!("STARTTLS answered {code}")),
                Some(Err(e)) => Next::Fail(e),
            },
        }
    }

    fn ftp(&mut self) -> Next {
        match self.step {
            0 => match self.numeric_reply(|_| false) {
                None => Next::NeedMore,
                Some(Ok((220, _))) => {
                    self.step = 1;
                    Next::Send(b"AUTH TLS\r\n".to_vec())
                }
                Some(Ok((code, _))) => Next::Fail(format!("FTP greeting {code}")),
                Some(Err(e)) => Next::Fail(e),
            },
            _ => match self.numeric_reply(|_| false) {
                None => Next::NeedMore,
                Some(Ok((234, _))) => Next::Done,
                Some(Ok((code, _))) => Next::Fail(format!("AUTH TLS answered {code}")),
                Some(Err(e)) => Next::Fail(e),
            },
        }
    }

    fn imap(&mut self) -> Next {
        loop {
            let Some(line) = self.line() else {
                return Next::NeedMore;
            };
            let upper = line.to_ascii_uppercase();
            match self.step {
                0 if upper.starts_with("* OK") => {
                    self.step = 1;
                    return Next::Send(b"a1 CAPABILITY\r\n".to_vec());
                }
                0 => return Next::Fail(format!("IMAP greeting {line:?}")),
                1 if upper.starts_with("* CAPABILITY") => {
                    self.offered |= upper.split_whitespace().any(|w| w == "STARTTLS");
                }
                1 if upper.starts_with("* ") => {}
                1 if upper.starts_with("A1 OK") && self.offered => {
                    self.step = 2;
                    return Next::Send(b"a2 STARTTLS\r\n".to_vec());
                }
                1 if upper.starts_with("A1 OK") => {
                    return Next::Fail("the IMAP server does not offer STARTTLS".into())
                }
                1 => return Next::Fail(format!("CAPABILITY answered {line:?}")),
                _ if upper.starts_with("A2 OK") => return Next::Done,
                _ if upper.starts_with("* ") => {}
                _ => return Next::Fail(format!("STARTTLS answered {line:?}")),
            }
        }
    }

    fn pop3(&mut self) -> Next {
        let Some(line) = self.line() else {
            return Next::NeedMore;
        };
        match (self.step, line.starts_with("+OK")) {
            (0, true) => {
                self.step = 1;
                Next::Send(b"STLS\r\n".to_vec())
            }
            (0, false) => Next::Fail(format!("POP3 greeting {line:?}")),
            (_, true) => Next::Done,
            (_, false) => Next::Fail(format!("STLS answered {line:?}")),
        }
    }

    fn postgres(&mut self) -> Next {
        if self.step == 0 {
            self.step = 1;
            return Next::Send(SSL_REQUEST.to_vec());
        }
        match self.buf.first() {
            None => Next::NeedMore,
            Some(b'S') => {
                self.buf.remove(0);
                Next::Done
            }
            Some(b'N') => Next::Fail("the PostgreSQL server refuses SSL".into()),
            Some(_) => Next::Fail("not an answer to SSLRequest".into()),
        }
    }

    fn ldap(&mut self) -> Next {
        if self.step == 0 {
            self.step = 1;
            return Next::Send(ldap_request());
        }
        // One BER LDAPMessage: 0x30, a length (short or long form), the body.
        let b = &self.buf;
        if b.len() < 2 {
            return Next::NeedMore;
        }
        if b[0] != 0x30 {
            return Next::Fail("not an LDAP message".into());
        }
        let (len, head) = match b[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n if (0x81..=0x84).contains(&n) => {
                let k = usize::from(n - 0x80);
                let Some(bytes) = b.get(2..2 + k) else {
                    return Next::NeedMore;
                };
                (
                    bytes.iter().fold(0usize, |a, &x| a << 8 | usize::from(x)),
                    2 + k,
                )
            }
            _ => return Next::Fail("bad LDAP length".into()),
        };
        if len > MAX_MESSAGE {
            return Next::Fail("LDAP reply too long".into());
        }
        let Some(body) = b.get(head..head + len) else {
            return Next::NeedMore;
        };
        // extendedResp [APPLICATION 24] { resultCode ENUMERATED, ... }: find the tag, then
        // its first element.
        let code = body.iter().position(|&t| t == 0x78).and_then(|i| {
            let rest = &body[i + 1..];
            let skip = match rest.first()? {
                n if *n < 0x80 => 1,
                n => 1 + usize::from(n - 0x80),
            };
            match rest.get(skip..skip + 3)? {
                [0x0a, 1, code] => Some(*code),
                _ => None,
            }
        });
        let total = head + len;
        self.buf.drain(..total);
        match code {
            Some(0) => Next::Done,
            Some(code) => Next::Fail(format!("LDAP StartTLS resultCode {code}")),
            None => Next::Fail("not an LDAP extended response".into()),
        }
    }

    fn xmpp(&mut self) -> Next {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        match self.step {
            0 => {
                self.step = 1;
                Next::Send(
                    format!(
                        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
                         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
                        self.name
                    )
                    .into_bytes(),
                )
            }
            1 => {
                let Some(end) = text.find("</stream:features>") else {
                    return Next::NeedMore;
                };
                let features = &text[..end];
                self.buf.drain(..end + "</stream:features>".len());
                if !features.contains("<starttls") {
                    return Next::Fail("the XMPP server does not offer STARTTLS".into());
                }
                self.step = 2;
                Next::Send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".to_vec())
            }
            _ => {
                if let Some(i) = text.find("<proceed") {
                    let Some(end) = text[i..].find("/>").map(|e| i + e + 2) else {
                        return Next::NeedMore;
                    };
                    self.buf.drain(..end);
                    Next::Done
                } else if text.contains("<failure") {
                    Next::Fail("the XMPP server refused STARTTLS".into())
                } else {
                    Next::NeedMore
                }
            }
        }
    }

    fn chat(&mut self, steps: &[ChatStep]) -> Next {
        loop {
            let Some(step) = steps.get(self.step) else {
                return Next::Done;
            };
            match step {
                ChatStep::Send(bytes) => {
                    self.step += 1;
                    return Next::Send(bytes.clone());
                }
                ChatStep::Expect(want) => {
                    let Some(at) = find(&self.buf, want) else {
                        return Next::NeedMore;
                    };
                    // Everything up to the end of the line holding the match is consumed.
                    let mut end = at + want.len();
                    if !want.ends_with(b"\n") {
                        match self.buf[end..].iter().position(|&b| b == b'\n') {
                            Some(nl) => end += nl + 1,
                            None => return Next::NeedMore,
                        }
                    }
                    self.buf.drain(..end);
                    self.step += 1;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a server transcript against a dialogue: each entry is what the server sends
    /// after the client's previous message; returns what the client sent and the end.
    fn play(protocol: Protocol, server: &[&[u8]]) -> (Vec<Vec<u8>>, Next) {
        let mut d = Dialogue::new(protocol, "gw.example");
        let mut sent = Vec::new();
        let mut replies = server.iter();
        let mut next = d.received(&[]);
        loop {
            match next {
                Next::Send(bytes) => {
                    sent.push(bytes);
                    next = d.received(&[]);
                }
                Next::NeedMore => match replies.next() {
                    Some(r) => next = d.received(r),
                    None => return (sent, Next::NeedMore),
                },
                end => return (sent, end),
            }
        }
    }

    #[test]
    fn smtp_needs_starttls_in_the_ehlo_reply() {
        let (sent, end) = play(
            Protocol::Smtp,
            &[
                b"220-mail.example ESMTP\r\n220 ready\r\n",
                b"250-mail.example\r\n250-SIZE 1000\r\n",
                b"250-STARTTLS\r\n250 8BITMIME\r\n",
                b"220 go ahead\r\n",
            ],
        );
        assert_eq!(end, Next::Done);
        assert_eq!(
            sent,
            [b"EHLO gw.example\r\n".to_vec(), b"STARTTLS\r\n".to_vec()]
        );

        let (_, end) = play(
            Protocol::Smtp,
            &[b"220 hi\r\n", b"250-mail\r\n250 PIPELINING\r\n"],
        );
        assert!(
            matches!(end, Next::Fail(ref m) if m.contains("does not offer")),
            "{end:?}"
        );
        let (_, end) = play(Protocol::Smtp, &[b"554 go away\r\n"]);
        assert!(matches!(end, Next::Fail(_)));
    }

    #[test]
    fn bytes_after_the_go_ahead_are_refused() {
        let (_, end) = play(
            Protocol::Smtp,
            &[
                b"220 hi\r\n",
                b"250 STARTTLS\r\n",
                b"220 go\r\n250 injected\r\n",
            ],
        );
        assert!(
            matches!(end, Next::Fail(ref m) if m.contains("after agreeing")),
            "{end:?}"
        );
    }

    #[test]
    fn imap_pop3_ftp() {
        let (sent, end) = play(
            Protocol::Imap,
            &[
                b"* OK IMAP4rev1 ready\r\n",
                b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK done\r\n",
                b"a2 OK Begin TLS\r\n",
            ],
        );
        assert_eq!(end, Next::Done);
        assert_eq!(sent[1], b"a2 STARTTLS\r\n");
        let (_, end) = play(
            Protocol::Imap,
            &[b"* OK hi\r\n", b"* CAPABILITY IMAP4rev1\r\na1 OK\r\n"],
        );
        assert!(matches!(end, Next::Fail(_)));

        let (sent, end) = play(Protocol::Pop3, &[b"+OK POP3 ready\r\n", b"+OK begin\r\n"]);
        assert_eq!((sent, end), (vec![b"STLS\r\n".to_vec()], Next::Done));
        let (_, end) = play(Protocol::Pop3, &[b"+OK\r\n", b"-ERR no\r\n"]);
        assert!(matches!(end, Next::Fail(_)));

        let (sent, end) = play(
            Protocol::Ftp,
            &[b"220-Welcome\r\n220 FTP\r\n", b"234 AUTH TLS ok\r\n"],
        );
        assert_eq!((sent, end), (vec![b"AUTH TLS\r\n".to_vec()], Next::Done));
    }

    #[test]
    fn postgres_ldap_xmpp() {
        let (sent, end) = play(Protocol::Postgres, &[b"S"]);
        assert_eq!((sent, end), (vec![SSL_REQUEST.to_vec()], Next::Done));
        let (_, end) = play(Protocol::Postgres, &[b"N"]);
        assert!(matches!(end, Next::Fail(_)));

        let (sent, end) = play(
            Protocol::Ldap,
            &[&[
                0x30, 0x0c, 0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
            ]],
        );
        assert_eq!(end, Next::Done);
        assert_eq!(sent[0].len(), 31);
        assert_eq!(&sent[0][..2], &[0x30, 29]);
        let (_, end) = play(
            Protocol::Ldap,
            &[&[
                0x30, 0x0c, 0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, 0x35, 0x04, 0x00, 0x04, 0x00,
            ]],
        );
        assert!(
            matches!(end, Next::Fail(ref m) if m.contains("53")),
            "{end:?}"
        );

        let (sent, end) = play(
            Protocol::Xmpp,
            &[
                b"<?xml version='1.0'?><stream:stream from='x' id='1' version='1.0'>",
                b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>",
                b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            ],
        );
        assert_eq!(end, Next::Done);
        assert!(String::from_utf8_lossy(&sent[0]).contains("to='gw.example'"));
    }

    #[test]
    fn chat_scripts_and_escapes() {
        let steps = vec![
            ChatStep::Expect(b"HELLO".to_vec()),
            ChatStep::Send(unescape("TLS please\\r\\n").unwrap()),
            ChatStep::Expect(b"OK".to_vec()),
        ];
        let (sent, end) = play(
            Protocol::Chat(steps.clone()),
            &[b"HEL", b"LO v1\r\n", b"OK go\r\n"],
        );
        assert_eq!((sent, end), (vec![b"TLS please\r\n".to_vec()], Next::Done));
        let (_, end) = play(Protocol::Chat(steps), &[b"HELLO\r\n", b"NO\r\n"]);
        assert_eq!(
            end,
            Next::NeedMore,
            "still waiting for OK (the caller's timeout ends it)"
        );
        assert_eq!(unescape("a\\x41\\t\\\\").unwrap(), b"aA\t\\");
        assert!(unescape("\\q").is_err() && unescape("\\xZZ").is_err());
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let transcript: &[u8] = b"220 hi\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n";
        for cut in 1..transcript.len() {
            let mut d = Dialogue::new(Protocol::Smtp, "gw");
            let mut sent = 0;
            let mut end = d.received(&transcript[..cut]);
            let mut rest = &transcript[cut..];
            loop {
                match end {
                    Next::Send(_) => {
                        sent += 1;
                        end = d.received(&[]);
                    }
                    Next::NeedMore if !rest.is_empty() => {
                        let (a, b) = rest.split_at(1);
                        rest = b;
                        end = d.received(a);
                    }
                    _ => break,
                }
            }
            assert_eq!((sent, end), (2, Next::Done), "cut at {cut}");
        }
    }
}
