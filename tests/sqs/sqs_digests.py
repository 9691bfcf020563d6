"""SQS's MD5 digests, computed independently of the server, for the SQS test scripts."""

import hashlib
import struct


def md5_hex(data):
    """MD5OfMessageBody / MD5OfBody of a body's bytes."""
    return hashlib.md5(data).hexdigest()


def md5_of_attributes(attributes):
    """MD5OfMessageAttributes: per attribute in name order (by bytes), the length-prefixed name
    and data type, a transport byte (1 String and Number, 2 Binary), the length-prefixed value."""
    digest = hashlib.md5()
    for name in sorted(attributes, key=lambda n: n.encode()):
        value = attributes[name]
        for part in (name.encode(), value["DataType"].encode()):
            digest.update(struct.pack(">I", len(part)) + part)
        if value["DataType"].startswith("Binary"):
            data = value["BinaryValue"]
            digest.update(b"\x02" + struct.pack(">I", len(data)) + data)
        else:
            data = value["StringValue"].encode()
            digest.update(b"\x01" + struct.pack(">I", len(data)) + data)
    return digest.hexdigest()
