"""A message's records carried as one object on the Deployment Engine ("packed" content).

Why: Flower 1.42 sends a message as a tree of objects (the message, its RecordDict, each record,
each array) and every object is its own HTTP request through the SuperLink: pushed by the sender,
pulled by the receiver, each over TLS and, at a node, signed with the node key. A two-party
vertical job is a chain of small messages of 6-11 objects each, so most of an exchange's time
went to these requests, not to the parties' work. Packed, a message is three objects (message,
RecordDict, one ConfigRecord holding the records' protobuf bytes): the same records, serialised
by Flower's own ``recorddict_to_proto``, restored exactly on the other side.

Only content up to Flower's array chunk size (5 MiB by default) is packed, so no packed object is
larger than Flower's own largest; bigger content goes as Flower sends it. A request is packed even
when it is one small record (three objects either way): its reply, often several records and
arrays, is packed because the request was, so a sender that does not pack (the in-process grid,
another ServerApp) gets replies it can read.

Packing is negotiated, so that one organisation may upgrade before the other: a sender's first
message to a node goes unpacked and asks (a :data:`FORMATS_RECORD` listing the formats the sender
reads); a node that can unpack says in its reply which formats it reads. A node that does not
answer the question (an older fedcustomer) is only ever sent unpacked messages.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from google.protobuf.message import DecodeError

from fedcustomer.errors import FederationError

PACKED_RECORD = "fedcustomer.packed"
FORMAT_KEY, RECORDS_KEY = "format", "records"
FORMAT = 1  # the format this release writes
READ_FORMATS = (FORMAT,)  # the formats this release reads
FORMATS_RECORD, FORMATS_KEY = "fedcustomer.packed-formats", "formats"
PACKING_ERROR_CODE = 4102  # Flower error code of a packed message a node cannot read
PACK_LIMIT_BYTES = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE


def is_packed(content: RecordDict) -> bool:
    """Whether ``content`` is a packed message's (one record under :data:`PACKED_RECORD`)."""
    return list(content.keys()) == [PACKED_RECORD]


def pack(content: RecordDict, limit: int = PACK_LIMIT_BYTES) -> RecordDict | None:
    """``content`` as one ConfigRecord of its protobuf bytes; None when empty, packed or over ``limit``."""
    if len(content) == 0 or is_packed(content):
        return None
    data = recorddict_to_proto(content).SerializeToString(deterministic=True)
    if len(data) > limit:
        return None
    return RecordDict({PACKED_RECORD: ConfigRecord({FORMAT_KEY: FORMAT, RECORDS_KEY: data})})


def add_formats(content: RecordDict) -> None:
    """Say in ``content`` which packed formats this side reads (the question, or its answer)."""
    content[FORMATS_RECORD] = ConfigRecord({FORMATS_KEY: list(READ_FORMATS)})


def take_formats(content: RecordDict) -> tuple[int, ...] | None:
    """Remove and return the formats ``content`` declares; None when it declares none.

    A malformed declaration (not a list of whole numbers) reads as declaring no format: the
    sender is then treated as one that cannot unpack.
    """
    record = content.pop(FORMATS_RECORD, None)
    if record is None:
        return None
    formats = record.get(FORMATS_KEY) if isinstance(record, ConfigRecord) else None
    if not isinstance(formats, list):
        return ()
    whole = tuple(f for f in formats if type(f) is int)
    return whole if len(whole) == len(formats) else ()


def unpack(content: RecordDict, here: str = "this node", there: str = "the coordinator") -> RecordDict:
    """The records a packed ``content`` carries (``content`` itself when it is not packed).

    ``here`` reads what ``there`` sent; an error says which of them to update, never the data.
    """
    if not is_packed(content):
        return content
    record = content[PACKED_RECORD]
    fmt = record.get(FORMAT_KEY) if isinstance(record, ConfigRecord) else None
    if fmt not in READ_FORMATS:
        reads = ", ".join(map(str, READ_FORMATS))
        if type(fmt) is int and fmt > max(READ_FORMATS):
            update = f"update fedcustomer on {here}"
        elif type(fmt) is int:
            update = f"update fedcustomer on {there}"
        else:
            update = "update fedcustomer on both sides to the same release"
        shown = fmt if type(fmt) is int else "unknown"
        raise FederationError(
            f"{there} sent a packed message ({PACKED_RECORD!r}) in format {shown}; "
            f"{here} reads format {reads}: {update}"
        )
    data = record.get(RECORDS_KEY)
    if not isinstance(data, bytes):
        raise FederationError(
            f"a packed message from {there} ({PACKED_RECORD!r}) has no {RECORDS_KEY!r} bytes: "
            "update fedcustomer on both sides to the same release"
        )
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except (DecodeError, ValueError) as exc:  # the type only: the bytes are the job's data
        raise FederationError(
            f"a packed message's records from {there} could not be decoded ({type(exc).__name__}): "
            "update fedcustomer on both sides to the same release"
        ) from None
