"""A database in WAL mode: the switch, read-only opens, cutting the -wal file, consistent copies."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedcustomer.common.sqlite import connect, transaction
from fedcustomer.common.sqlite_wal import backup_database, connect_readonly, truncate_wal, use_wal


def _rollback_db(path: Path) -> sqlite3.Connection:
    con = connect(path)
    con.execute("CREATE TABLE t (x BLOB)")
    con.execute("INSERT INTO t VALUES (x'01')")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    return con


def _wal_table(path: Path) -> sqlite3.Connection:
    """A new database at ``path`` in WAL mode with one table ``t (x INTEGER)``."""
    con = connect(path)
    use_wal(con)
    con.execute("CREATE TABLE t (x INTEGER)")
    return con


def test_switches_a_rollback_file_once_and_syncs_every_commit_fully(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _rollback_db(path).close()
    con = connect(path)
    assert use_wal(con)
    assert con.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    con.close()
    other = connect(path)  # the mode is the file's: a new connection finds it
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert other.execute("SELECT x FROM t").fetchall() == [(b"\x01",)]
    assert use_wal(other)


def test_a_busy_file_stays_in_its_mode_until_a_later_open(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _rollback_db(path).close()
    reader = connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT x FROM t").fetchall()  # a read transaction holds the file
    con = connect(path, timeout=0.05)
    assert not use_wal(con)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    reader.execute("COMMIT")
    assert use_wal(con)


def test_a_commit_survives_sigkill_of_its_process(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = _wal_table(path)
    con.close()
    child = textwrap.dedent(
        f"""
        import os, signal
        from fedcustomer.common.sqlite import connect, transaction
        from fedcustomer.common.sqlite_wal import use_wal
        con = connect({str(path)!r})
        use_wal(con)
        with transaction(con):
            con.execute("INSERT INTO t VALUES (7)")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == -9
    assert Path(f"{path}-wal").stat().st_size > 0  # the commit is in the log, not checkpointed
    reader = connect_readonly(path)
    assert reader.execute("SELECT x FROM t").fetchall() == [(7,)]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see the syncs")
def test_a_commit_syncs_the_log_once_and_the_folder_when_the_log_is_started(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = _wal_table(path)
    con.close()
    assert not Path(f"{path}-wal").exists()  # the last connection's close checkpointed and removed it
    child = textwrap.dedent(
        f"""
        from fedcustomer.common.sqlite import connect, transaction
        from fedcustomer.common.sqlite_wal import use_wal
        con = connect({str(path)!r})
        use_wal(con)
        for x in range(3):
            with transaction(con):
                con.execute("INSERT INTO t VALUES (?)", (x,))
        os_exit = __import__("os")._exit
        os_exit(0)  # no close: the checkpoint at close is not what is counted
        """
    )
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-y", "-o", str(trace), "-e", "trace=fsync,fdatasync", sys.executable, "-c", child],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=True,
    )
    syncs = [line for line in trace.read_text().splitlines() if "sync(" in line]
    on_log = [s for s in syncs if f"<{path}-wal>" in s]
    on_folder = [s for s in syncs if f"<{tmp_path}>" in s]
    on_file = [s for s in syncs if f"<{path}>" in s]
    # the new log's header and first frames (2), its folder once, then one sync per later commit
    assert len(on_log) == 4 and len(on_folder) == 1 and not on_file, syncs
    assert syncs[1] in on_folder, syncs


def test_a_read_only_connection_sees_commits_not_yet_checkpointed(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = _wal_table(path)
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    shutil.copyfile(path, tmp_path / "alone.db")  # the file alone lacks the commit
    assert connect_readonly(path).execute("SELECT count(*) FROM t").fetchone() == (1,)
    with pytest.raises(sqlite3.OperationalError):
        connect_readonly(tmp_path / "alone.db").execute("SELECT count(*) FROM t").fetchone()
    with pytest.raises(sqlite3.OperationalError):
        connect_readonly(tmp_path / "missing.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_a_file_at_rest_in_a_folder_the_reader_cannot_write_is_read_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "mounted"
    folder.mkdir()
    con = connect(folder / "a.db")
    use_wal(con)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (5)")
    con.close()
    folder.chmod(0o555)
    try:
        assert connect_readonly(folder / "a.db").execute("SELECT x FROM t").fetchall() == [(5,)]
    finally:
        folder.chmod(0o755)


def test_truncate_cuts_the_log_to_nothing_and_keeps_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = connect(path)
    use_wal(con)
    con.execute("PRAGMA secure_delete = ON")
    con.execute("CREATE TABLE t (x BLOB)")
    secret = os.urandom(24)
    con.execute("INSERT INTO t VALUES (?)", (secret,))
    con.execute("DELETE FROM t")
    log = Path(f"{path}-wal")
    assert secret in log.read_bytes()  # the page as it was before the delete
    assert truncate_wal(con)
    assert log.stat().st_size == 0
    assert secret not in path.read_bytes()
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_truncate_reports_a_reader_on_an_older_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = connect(path, timeout=0.05)
    use_wal(con)
    con.execute("CREATE TABLE t (x INTEGER)")
    reader = connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchall()
    con.execute("INSERT INTO t VALUES (1)")
    assert not truncate_wal(con)
    assert Path(f"{path}-wal").stat().st_size > 0
    reader.execute("COMMIT")
    assert truncate_wal(con)


def test_backup_holds_what_the_log_holds_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = _wal_table(path)
    con.execute("INSERT INTO t VALUES (3)")  # kept open: the commit is only in the -wal file
    copy = tmp_path / "copy.db"
    backup_database(path, copy)
    assert not Path(f"{copy}-wal").exists()
    alone = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    assert alone.execute("SELECT x FROM t").fetchall() == [(3,)]  # the file alone is complete
    with pytest.raises(FileExistsError):
        backup_database(path, copy)


def test_a_large_transaction_does_not_keep_its_log_at_its_size(tmp_path: Path, monkeypatch) -> None:
    import fedcustomer.common.sqlite_wal as wal

    monkeypatch.setattr(wal, "WAL_SIZE_LIMIT", 16384)
    path = tmp_path / "a.db"
    con = connect(path)
    use_wal(con)
    con.execute("CREATE TABLE t (x BLOB)")
    with transaction(con):
        con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(400)])
    log = Path(f"{path}-wal")
    assert log.stat().st_size > 400_000
    assert con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    con.execute("INSERT INTO t VALUES (x'00')")  # restarts the log from its start, cut to the limit
    assert log.stat().st_size <= 16384 + 2 * 4096
