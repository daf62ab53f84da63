"""The node's supervisor with stand-in processes: the SuperNode's exit code passes through, a dying
executor is restarted a bounded number of times, and nothing is left running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedcustomer.deploy import node_supervisor as ns


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _node_waiting_for(flag: Path, exit_code: int) -> list[str]:
    """A stand-in SuperNode that ends (with ``exit_code``) once ``flag`` exists."""
    return _py(
        "import os, sys, time\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
        f"sys.exit({exit_code})"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_supernodes_exit_code_is_the_nodes_and_the_executor_is_stopped(tmp_path):
    pids = tmp_path / "executor.pid"
    flag = tmp_path / "stop"

    def executor(parent: int) -> list[str]:  # records itself, then tells the node to stop
        return _py(
            "import os, time\n"
            f"open({str(pids)!r}, 'w').write(str(os.getpid()))\n"
            f"open({str(flag)!r}, 'w').close()\n"
            "time.sleep(600)"
        )

    assert ns.supervise(_node_waiting_for(flag, 7), executor, check_s=0.05) == 7
    assert not _alive(int(pids.read_text()))


def test_an_executor_that_keeps_dying_is_restarted_then_stops_the_node(tmp_path):
    starts = tmp_path / "starts"
    parents = []

    def executor(parent: int) -> list[str]:
        parents.append(parent)
        return _py(f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(1)")

    code = ns.supervise(
        _node_waiting_for(tmp_path / "never", 0), executor, max_restarts=3, window_s=3600, check_s=0.05
    )
    assert code == ns.EXECUTOR_FAILED
    assert starts.read_text() == "x" * 4  # the first start and three restarts
    assert len(set(parents)) == 1 and not _alive(parents[0])  # always the same SuperNode, now stopped


def test_the_executor_command_names_the_supernode_it_serves(tmp_path):
    cmd = ns.executor_command("127.0.0.1:9101", tmp_path / "s", 4242)
    assert cmd[:3] == [sys.executable, "-m", "fedcustomer.deploy.warm_clientapp"]
    assert cmd[cmd.index("--runtime-api-address") + 1] == "127.0.0.1:9101"
    assert cmd[cmd.index("--secret-file") + 1] == str(tmp_path / "s")
    assert cmd[cmd.index("--parent-pid") + 1] == "4242"


def test_the_command_line_needs_a_supernode_command(capsys):
    assert ns.main(["--runtime-api-address", "127.0.0.1:1"]) == 2
    assert "SUPERNODE COMMAND" in capsys.readouterr().err
    assert ns.main(["--runtime-api-address", "127.0.0.1:1", "--"]) == 2
    assert "no SuperNode command" in capsys.readouterr().err


def test_the_supernode_rings_the_executor_through_the_bell_the_supervisor_made(tmp_path):
    """The SuperNode's environment names the bell's write end; the executor gets its read end (also
    when restarted), and a ring from one reaches the other."""
    heard, flag = tmp_path / "heard", tmp_path / "stop"
    node = _py(
        "import os, sys, time\n"
        "from fedcustomer.deploy import task_bell\n"
        "fd = task_bell.fd_from_env()\n"
        "assert fd is not None, 'no bell'\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    task_bell.ring(fd)\n"
        "    time.sleep(0.02)\n"
    )
    starts = []

    def executor(parent: int) -> list[str]:  # the first one exits at once (restarted); the second listens
        starts.append(parent)
        if len(starts) == 1:
            return _py("raise SystemExit(1)")
        return _py(
            "import sys\n"
            "from fedcustomer.deploy import task_bell\n"
            "args = sys.argv[1:]\n"
            "fd = task_bell.open_pipe_fd(args[args.index(task_bell.BELL_ARG) + 1])\n"
            "bell = task_bell.Bell(fd)\n"
            "while not bell.wait(600.0):\n"
            "    pass\n"
            f"open({str(heard)!r}, 'w').write('rang')\n"
            f"open({str(flag)!r}, 'w').close()\n"
            "import time\n"
            "time.sleep(600)  # until the supervisor ends it: exiting first would count as a crash\n"
        )

    assert ns.supervise(node, executor, check_s=0.05) == 0
    assert heard.read_text() == "rang" and len(starts) == 2


def test_a_coordinators_executor_gets_the_reply_bell_not_the_task_bell(tmp_path):
    """The SuperLink's environment names the reply bell's write end; the executor (and so each job's
    grid it forks) finds the read end in its environment, and a ring from one reaches the other."""
    seen, heard, flag = tmp_path / "seen", tmp_path / "heard", tmp_path / "stop"
    node = _py(
        "import os, time\n"
        "from fedcustomer.common.pipe_bell import open_pipe_fd, ring\n"
        "from fedcustomer.deploy import reply_bell, task_bell\n"
        f"open({str(seen)!r}, 'w').write(str(task_bell.fd_from_env()))\n"
        "fd = open_pipe_fd(os.environ.get(reply_bell.ENV_FD))\n"
        "assert fd is not None, 'no reply bell'\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    ring(fd)\n"
        "    time.sleep(0.02)\n"
    )

    def executor(parent: int) -> list[str]:
        return _py(
            "import sys\n"
            f"open({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
            "from fedcustomer.apps.prompt_grid import reply_bell\n"
            "bell = reply_bell()\n"
            "assert bell is not None, 'no reply bell'\n"
            "while not bell.wait(600.0):\n"
            "    pass\n"
            f"open({str(heard)!r}, 'w').write('rang')\n"
            f"open({str(flag)!r}, 'w').close()\n"
            "import time\n"
            "time.sleep(600)\n"
        )

    assert ns.supervise(node, executor, check_s=0.05, kind=ns.SERVERAPP) == 0
    assert seen.read_text() == "None" and "--task-bell-fd" not in (tmp_path / "argv").read_text()
    assert heard.read_text() == "rang"
