"""Streaming PSI: the in-memory result in bounded memory; blinded values only on disk, removed after."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedcustomer.errors import AccessDenied, ConfigError, DataError, IntegrityError
from fedcustomer.privacy.crypto.pseudonym import normalize_id
from fedcustomer.psi.bucket_files import RECORD, VALUE
from fedcustomer.psi.core import DOMAIN, run_psi_local
from fedcustomer.psi.stream import StreamingParty, run_psi_stream


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _collect() -> tuple[list[int], object]:
    rows: list[int] = []
    return rows, lambda arr: rows.extend(arr.tolist())


def _sets(n: int, shared: int) -> tuple[list[str], list[str]]:
    common = [f"CN{secrets.token_hex(6)}" for _ in range(shared)]
    a = common + [f"A{secrets.token_hex(6)}" for _ in range(n - shared)]
    b = [c.lower() for c in common] + [f"B{secrets.token_hex(6)}" for _ in range(n - shared)]
    rng = np.random.default_rng(7)
    return [a[k] for k in rng.permutation(n)], [b[k] for k in rng.permutation(n)]


def test_streaming_equals_in_memory_at_20k(tmp_path):
    a, b = _sets(20_000, 6_000)
    a = a + [x.lower() for x in a[:25]]  # duplicates: first row wins on both paths
    rows_a, sink_a = _collect()
    rows_b, sink_b = _collect()
    sa, sb = run_psi_stream(
        _batches(a, 5_000), _batches(b, 5_000), workers=2, workdir=tmp_path, sink_a=sink_a, sink_b=sink_b
    )
    ma, mb = run_psi_local(
        a, b, workers=2, labels_a=[str(k) for k in range(len(a))], labels_b=[str(k) for k in range(len(b))]
    )
    assert sa.size == sb.size == ma.size == 6_000
    assert sa.digest == sb.digest  # both sides agree on the alignment
    assert (sa.set_size, sa.duplicates_removed, sa.rows) == (ma.set_size, ma.duplicates_removed, len(a))
    assert (sb.set_size, sb.peer_set_size, sa.peer_set_size) == (mb.set_size, ma.set_size, mb.set_size)
    # same shared rows on each side as the in-memory protocol (the order depends on the session's secrets)
    assert sorted(rows_a) == sorted(int(x) for x in ma.local_ids)
    assert sorted(rows_b) == sorted(int(x) for x in mb.local_ids)
    # row k of both sides is the same customer
    assert [normalize_id(a[r]) for r in rows_a] == [normalize_id(b[r]) for r in rows_b]
    assert list(tmp_path.iterdir()) == []  # the private work directory is gone


def test_tiny_chunks_and_buckets_give_the_same_answer(tmp_path):
    a, b = _sets(600, 211)
    party_dirs: list[Path] = []
    a_party = StreamingParty("initiator", tmp_path, side="a", chunk=7, buckets=8)
    b_party = StreamingParty("responder", tmp_path, side="b", chunk=7, buckets=8)
    a_party.blind(_batches(a, 50))
    b_party.blind(_batches(b, 50))
    for party in (a_party, b_party):
        own = sorted(p.name for p in party.dir.iterdir())
        assert len(own) == 8 and all(n.startswith("own-") for n in own)  # every bucket used
        party_dirs.append(party.dir)
    a_party.accept(b_party.answer(a_party.outgoing()))
    b_party.accept(a_party.answer(b_party.outgoing()))
    rows_a, sink_a = _collect()
    rows_b, sink_b = _collect()
    ra, rb = a_party.finish(sink_a), b_party.finish(sink_b)
    assert ra.size == rb.size == 211 and ra.digest == rb.digest
    assert [normalize_id(a[r]) for r in rows_a] == [normalize_id(b[r]) for r in rows_b]
    # the digest is the core's: SHA-256 of the shared doubly-blinded values in sorted order
    assert len(ra.digest) == 64
    one_bucket = run_psi_stream(_batches(a, 600), _batches(b, 600), buckets=1, workdir=tmp_path)
    assert one_bucket[0].size == 211


def test_buckets_hold_blinded_values_and_rows_only(tmp_path):
    a, b = _sets(300, 100)
    parties = [
        StreamingParty("initiator", tmp_path, side="a", buckets=4),
        StreamingParty("responder", tmp_path, side="b", buckets=4),
    ]
    parties[0].blind(_batches(a, 64))
    parties[1].blind(_batches(b, 64))
    seen = _raw_forms(a + b)
    _assert_no_ids(tmp_path, seen, RECORD.itemsize)
    parties[0].accept(parties[1].answer(parties[0].outgoing()))
    parties[1].accept(parties[0].answer(parties[1].outgoing()))
    _assert_no_ids(tmp_path, seen, None)
    files = [p.name for p in tmp_path.rglob("*.bin")]
    assert any(n.startswith("mine-") for n in files) and any(n.startswith("peer-") for n in files)
    for path in tmp_path.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path  # owner-only
    parties[0].finish()
    assert not any(n.startswith(("mine-", "peer-")) for n in (p.name for p in (tmp_path / "a").iterdir()))


def _raw_forms(ids: list[str]) -> set[bytes]:
    forms = set()
    for i in ids:
        for text in (i, normalize_id(i), i.lower()):
            forms.add(text.encode())
            forms.add(hashlib.sha256(text.encode()).digest()[:16])
            forms.add(hashlib.sha512(text.encode()).digest()[:16])
            forms.add(hashlib.sha512(DOMAIN + text.encode()).digest()[:16])
    return forms


def _assert_no_ids(root: Path, forms: set[bytes], record_size: int | None) -> None:
    for path in root.rglob("*.bin"):
        data = path.read_bytes()
        if record_size is not None:
            assert len(data) % record_size == 0, path
        assert not any(f in data for f in forms), path


def test_work_directory_is_removed_after_a_failure(tmp_path):
    a, b = _sets(200, 50)
    bad = b[:120] + ["   "] + b[120:]
    with pytest.raises(DataError, match="row 120: customer id is empty"):
        run_psi_stream(_batches(a, 40), _batches(bad, 40), workers=2, chunk=16, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []

    def failing() -> Iterator[list[str]]:
        yield a[:100]
        raise DataError("the file went away")

    with pytest.raises(DataError, match="went away"):
        run_psi_stream(failing(), _batches(b, 40), workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_set_size_caps_and_bad_options(tmp_path):
    a, b = _sets(50, 10)
    with pytest.raises(DataError, match="more than this party's maximum of 40"):
        run_psi_stream(_batches(a, 20), _batches(b, 20), max_set_size=40, workdir=tmp_path)
    party = StreamingParty("responder", tmp_path, side="b", max_set_size=3)
    values = StreamingParty("initiator", tmp_path, side="a")
    values.blind([a[:5]])
    with pytest.raises(AccessDenied, match="maximum of 3"):
        list(party.answer(values.outgoing()))
    with pytest.raises(ConfigError, match="buckets"):
        StreamingParty("initiator", tmp_path, side="c", buckets=0)
    with pytest.raises(ConfigError, match="role"):
        StreamingParty("boss", tmp_path, side="d")
    with pytest.raises(ConfigError, match="work directory not found"):
        run_psi_stream([a], [b], workdir=tmp_path / "nope")


def test_corrupted_or_dishonest_peer_values_abort(tmp_path):
    a, b = _sets(40, 10)
    pa = StreamingParty("initiator", tmp_path, side="a", buckets=2)
    pa.blind([a])
    with pytest.raises(IntegrityError, match="not a whole number"):
        list(pa.answer([b"\x01" * 33]))
    with pytest.raises(IntegrityError, match="not a valid ristretto255 element"):
        list(StreamingParty("initiator", tmp_path, side="a2").answer([b"\xff" * 32]))
    with pytest.raises(IntegrityError, match="returned 39 doubly-blinded values for the 40"):
        pa.accept([b"".join(pa.outgoing())[: 39 * 32]])
    pb = StreamingParty("responder", tmp_path, side="b", buckets=2)
    pb.blind([b])
    pb.accept(pa.answer(pb.outgoing()))
    one = next(pb.outgoing())[:32]
    pr = StreamingParty("initiator", tmp_path, side="r", buckets=2)
    pr.blind([a])
    pr.accept(pb.answer(pr.outgoing()))
    list(pr.answer([one, one]))  # the same value twice: no honest peer sends that
    with pytest.raises(IntegrityError, match="repeats"):
        pr.finish()
    assert np.dtype(VALUE).itemsize == 32


def test_mask_keeps_the_size_and_order_and_only_selected_values_match(tmp_path):
    ids = [f"C{i:04d}" for i in range(300)]
    selected = np.array([i % 3 == 0 for i in range(300)] + [False])  # and a repeat of C0000, not selected
    a = StreamingParty("initiator", tmp_path, side="a", buckets=4)
    a.blind([ids + ["c0000"]])
    assert a.mask(selected) == 100  # the first row of C0000 wins: selected
    values = b"".join(a.outgoing())
    assert len(values) == 300 * 32 and a.set_size == 300 and a.duplicates_removed == 1
    packed = np.frombuffer(values, dtype=VALUE)
    assert bool((packed[1:] > packed[:-1]).all())  # still sorted: no position tells padding from values
    b = StreamingParty("responder", tmp_path, side="b", buckets=4)
    b.blind([ids])
    a.accept(b.answer(a.outgoing()))
    b.accept(a.answer(b.outgoing()))
    assert a.finish().size == b.finish().size == 100  # the random elements match nobody


def test_match_records_yields_the_peer_records_whose_values_we_got_back(tmp_path):
    from fedcustomer.psi.bucket_files import Buckets

    ids = [f"C{i:04d}" for i in range(200)]
    a = StreamingParty("initiator", tmp_path, side="a", buckets=8)
    b = StreamingParty("responder", tmp_path, side="b", buckets=8)
    a.blind([ids[:150]])
    b.blind([ids[100:]])
    a.accept_part(b"".join(b.answer(a.outgoing())), 0, ordered=False)  # a's values, raised by b
    theirs = Buckets(tmp_path, "theirs", 8, np.dtype([("v", VALUE), ("c", "u8")]))
    raised = np.frombuffer(b"".join(a.answer(b.outgoing(), keep=False)), dtype=VALUE)
    records = np.empty(len(raised), dtype=theirs.dtype)
    records["v"], records["c"] = raised, np.arange(len(raised))
    theirs.add(records)
    theirs.flush()
    matched = np.concatenate(list(a.match_records(theirs)))
    assert len(matched) == 50 and len(set(matched["c"].tolist())) == 50
    assert not any(theirs.path(k).exists() for k in range(8))  # each bucket goes once matched
