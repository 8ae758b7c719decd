"""A small IMAP and POP3 server with STARTTLS for the client-mode tests (asyncio, stdlib).

    python3 imap_pop3_server.py IMAP_PORT POP3_PORT CERT KEY

IMAP: `* OK` greeting; CAPABILITY (IMAP4rev1 STARTTLS LOGINDISABLED before TLS); STARTTLS;
after TLS, LOGIN answers `OK LOGIN completed over TLS`. POP3: `+OK` greeting; STLS; after
TLS, USER answers `+OK USER over TLS`. Before TLS, LOGIN/USER are refused. Prints READY once
both listen; exits when stdin closes.
"""
import asyncio
import ssl
import sys


def context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def imap(reader, writer, ctx):
    writer.write(b"* OK test IMAP ready\r\n")
    tls = False
    while line := await reader.readline():
        words = line.decode(errors="replace").split()
        tag, cmd = (words + ["*", ""])[:2]
        cmd = cmd.upper()
        if cmd == "CAPABILITY":
            caps = "IMAP4rev1" if tls else "IMAP4rev1 STARTTLS LOGINDISABLED"
            writer.write(f"* CAPABILITY {caps}\r\n{tag} OK done\r\n".encode())
        elif cmd == "STARTTLS" and not tls:
            writer.write(f"{tag} OK Begin TLS\r\n".encode())
            await writer.drain()
            await writer.start_tls(ctx)
            tls = True
        elif cmd == "LOGIN" and tls:
            writer.write(f"{tag} OK LOGIN completed over TLS\r\n".encode())
        elif cmd == "LOGOUT":
            writer.write(f"* BYE\r\n{tag} OK\r\n".encode())
            await writer.drain()
            break
        else:
            writer.write(f"{tag} NO not now\r\n".encode())
        await writer.drain()
    writer.close()


async def pop3(reader, writer, ctx):
    writer.write(b"+OK test POP3 ready\r\n")
    tls = False
    while line := await reader.readline():
        cmd = (line.decode(errors="replace").split() or [""])[0].upper()
        if cmd == "STLS" and not tls:
            writer.write(b"+OK Begin TLS\r\n")
            await writer.drain()
            await writer.start_tls(ctx)
            tls = True
            continue
        if cmd == "USER" and tls:
            writer.write(b"+OK USER over TLS\r\n")
        elif cmd == "QUIT":
            writer.write(b"+OK bye\r\n")
            await writer.drain()
            break
        else:
            writer.write(b"-ERR not now\r\n")
        await writer.drain()
    writer.close()


async def main():
    imap_port, pop3_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ctx = context(cert, key)
    s1 = await asyncio.start_server(lambda r, w: imap(r, w, ctx), "127.0.0.1", imap_port)
    s2 = await asyncio.start_server(lambda r, w: pop3(r, w, ctx), "127.0.0.1", pop3_port)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    s1.close()
    s2.close()


if __name__ == "__main__":
    asyncio.run(main())
