"""A signature-verification worker process (see ``signing.ProcessVerifier``).

Reads length-prefixed msgpack batches of ``[public, [candidate messages], signature]``
on stdin and answers each with the list of matching candidate indexes (-1 = invalid).
It holds no state and touches nothing but stdin and stdout.
"""

from __future__ import annotations

import struct
import sys

import msgspec

from satchel.signing import verify_index

_LEN = struct.Struct("<I")


def main() -> None:
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    decode = msgspec.msgpack.Decoder(list[tuple[bytes, list[bytes], bytes]]).decode
    encode = msgspec.msgpack.encode
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        (n,) = _LEN.unpack(head)
        batch = decode(inp.read(n))
        reply = encode([verify_index(pub, msgs, sig) for pub, msgs, sig in batch])
        out.write(_LEN.pack(len(reply)) + reply)
        out.flush()


if __name__ == "__main__":
    main()
