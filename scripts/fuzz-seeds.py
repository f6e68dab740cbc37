#!/usr/bin/env python3
"""Writes the seeds of the fuzz targets (fuzz/seeds/<target>/).

- client_frame, server_frame: every JSON frame docs/protocol.md shows (its ```json blocks and
  the example session), one file each: client frames and server frames apart.
- media_range: typical Range headers, each after an object size (8 bytes, little endian).
- upload_ticket, jwt: well-formed tokens signed with the targets' secret (`fuzz-secret`).

Idempotent: rewrites the files it generates and leaves other seeds alone.

    scripts/fuzz-seeds.py
"""
import base64
import hashlib
import hmac
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
CLIENT = {
    "hello", "sync", "send", "delivered", "read", "typing", "open_direct", "create_group",
    "add_members", "remove_member", "leave", "set_role", "history", "conversations",
    "members", "receipts", "last_seen", "subscribe_presence", "unsubscribe_presence", "ping",
}


def frames(text):
    """(client?, frame) for the JSON objects of the document's json blocks and its example
    session. Section 5 shows client frames, section 6 server frames; elsewhere the type says
    (`typing` and the answers named like their requests exist both ways)."""
    for section in re.split(r"^(?=## )", text, flags=re.M):
        side = {"## 5.": True, "## 6.": False}.get(section[:5])
        for block in re.findall(r"```json\n(.*?)```", section, re.S):
            for line in block.strip().splitlines():
                try:
                    frame = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(frame, dict) and "type" in frame:
                    yield (frame["type"] in CLIENT) if side is None else side, frame
        for block in re.findall(r"```jsonc\n(.*?)```", section, re.S):
            # `> ` starts a client frame, `< ` a server frame; continuation lines are indented.
            pattern = r"^([<>]) (.*?)(?=^[<>] |^\s*$|\Z)"
            for direction, frame in re.findall(pattern, block, re.S | re.M):
                yield direction == ">", json.loads(" ".join(frame.split()))


SECRET = b"fuzz-secret"
RANGES = [
    "bytes=0-9", "bytes=90-", "bytes=-10", "bytes=-500", "bytes=50-500", "bytes=100-",
    "bytes=-0", "bytes=0-1,5-6", "bytes=9-1", "items=0-1", "bytes=0-0", "bytes=0-",
    " bytes= 0 - 9 ", "bytes=0-18446744073709551615", "bytes=18446744073709551615-", "",
]
SIZES = [0, 1, 100, 2**63, 2**64 - 1]


def hs256(claims):
    """A JWT as jsonwebtoken encodes one: header `{"typ":"JWT","alg":"HS256"}`."""
    def part(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = part(b'{"typ":"JWT","alg":"HS256"}')
    payload = part(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{part(signature)}"


def write(target, name, data):
    directory = ROOT / "fuzz" / "seeds" / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def tokens():
    far, past = 4102444800, 1000000000  # 2100-01-01, 2001-09-09
    ticket = {"conv": "dm:alice:bob", "seq": 3, "sub": "alice", "size": 1234,
              "mime": "image/png", "exp_ms": far * 1000, "exp": far,
              "aud": "messenger-media-upload"}
    write("upload_ticket", "ticket.txt", hs256(ticket))
    write("upload_ticket", "ticket-sha256.txt", hs256(
        {**ticket, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}))
    write("upload_ticket", "ticket-expired.txt", hs256({**ticket, "exp_ms": past * 1000, "exp": past}))
    login = {"sub": "alice", "device": "phone", "exp": far}
    write("jwt", "token.txt", hs256(login))
    write("jwt", "token-iss-aud.txt", hs256({**login, "iss": "chat", "aud": "app"}))
    write("jwt", "token-aud-list.txt", hs256({**login, "iss": "chat", "aud": ["web", "app"]}))
    write("jwt", "token-expired.txt", hs256({**login, "exp": past, "iss": "chat", "aud": "app"}))
    write("jwt", "dev-token.txt", "alice:phone")


def ranges():
    for i, header in enumerate(RANGES):
        for size in SIZES:
            if size in (100, 2**64 - 1) or header in ("bytes=0-9", "bytes=-10", "bytes=0-"):
                write("media_range", f"range-{i:02}-{size}.bin", size.to_bytes(8, "little") + header.encode())


def main():
    text = DOC.read_text()
    out = {name: ROOT / "fuzz" / "seeds" / name for name in ("client_frame", "server_frame")}
    for directory in out.values():
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("doc-*.json"):
            old.unlink()
    written = 0
    for client, frame in frames(text):
        encoded = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(encoded.encode()).hexdigest()[:12]
        target = out["client_frame" if client else "server_frame"]
        (target / f"doc-{frame['type']}-{digest}.json").write_text(encoded)
        written += 1
    print(f"{written} frames from {DOC.relative_to(ROOT)}")
    ranges()
    tokens()


if __name__ == "__main__":
    main()
