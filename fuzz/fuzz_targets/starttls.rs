//! The STARTTLS dialogues read what a peer sends before TLS: the client-side openings
//! (server bytes in), the server-side offer (client bytes in) and the backend greeting.
//! None may panic, whatever arrives and however it is split; a dialogue that says it is
//! done or failed stays so.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsfront::conn::starttls::{ChatStep, Dialogue, Next, Protocol};
use tlsfront::conn::starttls_offer::{Greeting, Offer, OfferDialogue, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks the protocol and the chunk size the input is fed in.
    let chunk = usize::from(selector >> 3).max(1);
    let protocols = [
        Protocol::Smtp,
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Ftp,
        Protocol::Postgres,
        Protocol::Ldap,
        Protocol::Xmpp,
        Protocol::Chat(vec![
            ChatStep::Expect(b"OK".to_vec()),
            ChatStep::Send(b"GO\r\n".to_vec()),
            ChatStep::Expect(b"\n".to_vec()),
        ]),
    ];
    let mut client = Dialogue::new(protocols[usize::from(selector & 7)].clone(), "gw");
    let offers = [Offer::Smtp, Offer::Imap, Offer::Pop3, Offer::Postgres];
    let offer = offers[usize::from(selector & 3)];
    let mut server = OfferDialogue::new(offer, "gw");
    let mut greeting = Greeting::new(offer);
    let (mut client_over, mut server_over) = (false, false);
    for piece in rest.chunks(chunk) {
        if !client_over {
            let mut next = client.received(piece);
            while let Next::Send(_) = next {
                next = client.received(&[]);
            }
            client_over = matches!(next, Next::Done | Next::Fail(_));
        }
        if !server_over {
            let mut step = server.received(piece);
            while let Step::Send(_) = step {
                step = server.received(&[]);
            }
            server_over = matches!(step, Step::StartTls(_) | Step::Close(..));
        }
        let _ = greeting.received(piece);
    }
});
