//! The built-in loopback echo backend used when no backend is configured (quick start).
//! Thread per connection on std sockets: it is a demo target, not part of the data path.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// Starts an echo server on 127.0.0.1 (ephemeral port) and returns its address.
pub fn spawn_echo() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::Builder::new()
        .name("echo-backend".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || echo(stream));
            }
        })?;
    Ok(addr)
}

/// Echoes until EOF, then half-closes its side so the peer sees the end.
fn echo(mut stream: TcpStream) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}
