"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1:PORT.

    python3 smtp_server.py PORT [CERT KEY]

With CERT and KEY it offers STARTTLS and requires it before MAIL; without them it offers no
STARTTLS at all. Prints READY once listening, then one line per message received:
MESSAGE tls=<True|False> from=<sender> to=<recipients> bytes=<n>. Exits when stdin closes.
"""
import ssl
import sys

from aiosmtpd.controller import Controller


class Handler:
    async def handle_DATA(self, server, session, envelope):
        tls = session.ssl is not None
        rcpts = ",".join(envelope.rcpt_tos)
        size = len(envelope.original_content or b"")
        print(f"MESSAGE tls={tls} from={envelope.mail_from} to={rcpts} bytes={size}", flush=True)
        return "250 OK queued"


def main():
    port = int(sys.argv[1])
    kwargs = {}
    if len(sys.argv) > 3:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        kwargs = {"tls_context": ctx, "require_starttls": True}
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("READY", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
