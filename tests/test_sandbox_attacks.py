"""Real escape attempts, run from inside the sandbox, each asserted stopped.

Every attack runs under the default sandbox of this machine; the quick ones also run under the
weaker layers alone (bubblewrap without Landlock, util-linux ``unshare``, Landlock with no
namespaces) to show which wall stops what.  Each outcome is recorded; with
``FLASHEVOLVE_SECURITY_REPORT=path.json`` the records are written there and
``scripts/security_table.py`` renders docs/security.md's table from them.

Where a layer is missing, its test says so: it checks what the fallback really does (and
records "not stopped") and then skips with the reason, instead of passing silently.  The limits
below are the sandbox's own (1-3 s); nothing here measures the wall clock.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from flashevolve.sandbox import Protections, Sandbox, SandboxConfig, SandboxResult

REPORT_ENV = "FLASHEVOLVE_SECURITY_REPORT"
RECORDS: list[dict[str, Any]] = []
VARIANTS = {
    "default": {},
    "bwrap-without-landlock": {"isolation": "bwrap", "landlock": False},
    "unshare+landlock": {"isolation": "unshare"},
    "landlock-only": {"isolation": "none"},
}
QUICK = SandboxConfig(timeout_s=10, cpu_s=5)


@pytest.fixture(scope="module", autouse=True)
def security_report() -> Any:
    yield
    path = os.environ.get(REPORT_ENV)
    if path:
        machine = {name: _sandbox(name).protections().as_dict() for name in VARIANTS}
        Path(path).write_text(json.dumps({"machine": machine, "records": RECORDS}, indent=1))


def _sandbox(variant: str, **limits: Any) -> Sandbox:
    return Sandbox(QUICK, **(VARIANTS[variant] | limits))


def usable(variant: str) -> Sandbox:
    sandbox = _sandbox(variant)
    prot = sandbox.protections()
    wanted = VARIANTS[variant].get("isolation")
    missing = (wanted and prot.isolation != wanted) or not prot.isolated
    if missing or ("landlock" in variant and "without" not in variant and not prot.landlock):
        pytest.skip(f"variant {variant} is not available here: {'; '.join(prot.notes)}")
    return sandbox


#: Which protections each kind of attack relies on (any one of them is enough), and what to say
#: when a machine has none of them.
NEEDS = {
    "network": (
        lambda p: p.net_ns or (p.landlock and p.landlock_abi >= 4),
        "no network namespace and no Landlock TCP rules",
    ),
    "files": (lambda p: p.mount_ns or p.landlock, "no private filesystem view and no Landlock"),
    "signals": (
        lambda p: p.pid_ns or (p.landlock and p.landlock_abi >= 6) or p.unprivileged_uid,
        "no pid namespace, no Landlock signal scope and the program runs as root",
    ),
}


def record(
    attack: str,
    variant: str,
    sandbox: Sandbox,
    result: SandboxResult | None,
    stopped: bool,
    how: str,
) -> None:
    RECORDS.append(
        {
            "attack": attack,
            "variant": variant,
            "isolation": sandbox.protections().isolation,
            "stopped": stopped,
            "how": how,
            "status": result.status if result else None,
            "reason": result.reason if result else None,
        }
    )


def attempt(body: str) -> str:
    """A program that tries ``body`` and reports {"ok": True} or the exception it hit."""
    return (
        "import fe_llm\ntry:\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n    fe_llm.set_result({'ok': True})\n"
        "except BaseException as e:\n"
        "    fe_llm.set_result({'ok': False, 'error': f'{type(e).__name__}: {e}'})\n"
    )


def blocked(result: SandboxResult) -> str | None:
    """The error the attempt hit, or None if it went through."""
    assert result.ok and result.has_value, (result.status, result.reason, result.stderr[-800:])
    return None if result.value["ok"] else result.value["error"]


def wall_of(error: str, prot: Protections) -> str:
    """Which protection an error message points at, given what is active."""
    if "Errno 13" in error or "Permission denied" in error:
        return "Landlock" if prot.landlock else "file permissions of the sandbox uid"
    if "Errno 2]" in error or "No such file" in error:
        return "private filesystem view (the path does not exist inside)"
    if "Read-only file system" in error:
        return "read-only bind mount"
    if "Network is unreachable" in error or "Connection refused" in error:
        return "network namespace (only its own, empty loopback)"
    if "name resolution" in error or "gaierror" in error:
        if prot.net_ns:
            return "network namespace (no resolver, no route)"
        return "Landlock hides /etc/resolv.conf (UDP itself is open below Landlock ABI 10)"
    if "No such process" in error:
        return "pid namespace (the pid does not exist inside)"
    if "Operation not permitted" in error:
        return "Landlock signal scope" if prot.landlock_abi >= 6 else "unprivileged uid"
    return error


def run_attack(attack: str, variant: str, code: str, needs: str) -> tuple[Sandbox, str | None]:
    """Run the attempt, record what stopped it; where the protections it relies on are all
    missing and it went through, record the hole and skip with the reason."""
    sandbox = usable(variant)
    prot = sandbox.protections()
    result = sandbox.run_sync(code)
    error = blocked(result)
    how = wall_of(error, prot) if error else "NOT STOPPED"
    record(attack, variant, sandbox, result, error is not None, how)
    relies_on, missing = NEEDS[needs]
    if error is None and not relies_on(prot):
        pytest.skip(f"{attack}: {missing} on this machine ({variant}); it went through")
    return sandbox, error


def host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def kill_ours(pids: list[int]) -> None:
    """End processes this test started (found by their unique marker)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- network


@pytest.fixture()
def listener() -> Any:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def own_outside_address() -> str | None:
    """This machine's own non-loopback address (a UDP connect picks it; it sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


@pytest.mark.parametrize("variant", VARIANTS)
def test_tcp_to_a_real_server_on_loopback(variant: str, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = attempt(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)")
    _, error = run_attack(
        "TCP connect to a server on the host's 127.0.0.1", variant, code, "network"
    )
    assert error is not None
    assert_no_connection(listener)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tcp_to_an_outside_address(variant: str) -> None:
    address = own_outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to listen on")
    with socket.socket() as server:
        server.bind((address, 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        code = attempt(f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)")
        _, error = run_attack("TCP connect to an outside address", variant, code, "network")
        assert error is not None
        assert_no_connection(server)


@functools.cache
def host_resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, 443)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("variant", VARIANTS)
def test_dns_lookup(variant: str) -> None:
    if not host_resolves("pypi.org"):
        pytest.skip("the host itself cannot resolve pypi.org: a failure inside would prove nothing")
    sandbox = usable(variant)
    code = attempt("import socket; socket.getaddrinfo('pypi.org', 443)")
    _, error = run_attack("DNS lookup", variant, code, "network")
    if not sandbox.protections().net_ns and error is None:
        pytest.skip("without a network namespace DNS (UDP) is not blocked (Landlock ABI < 10)")
    assert error is not None


# ---------------------------------------------------------------------------- files


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A readable-by-anyone "run directory" holding a secret, as a run's output dir would."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "secret.txt").write_text("run-dir-secret-7d1f")
    for path in [run, *run.parents]:
        if str(path).startswith(str(tmp_path.parent.parent)):
            path.chmod(path.stat().st_mode | 0o755)
    (run / "secret.txt").chmod(0o644)
    return run


@pytest.mark.parametrize("variant", VARIANTS)
def test_read_a_file_in_the_run_directory(variant: str, run_dir: Path) -> None:
    code = attempt(f"print(open({str(run_dir / 'secret.txt')!r}).read())")
    sandbox, error = run_attack("read a file in the run directory", variant, code, "files")
    assert error is not None


@pytest.fixture()
def home_secret() -> Any:
    path = Path.home() / f".flashevolve-sandbox-probe-{uuid.uuid4().hex}"
    path.write_text("home-secret-93ac")
    path.chmod(0o644)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_read_a_file_in_the_users_home(variant: str, home_secret: Path) -> None:
    code = attempt(f"print(open({str(home_secret)!r}).read())")
    _, error = run_attack("read a file in the user's home", variant, code, "files")
    assert error is not None


@pytest.mark.parametrize("variant", VARIANTS)
def test_write_outside_the_scratch_directory(variant: str, run_dir: Path) -> None:
    targets = {
        "write into the run directory": run_dir / "pwned.txt",
        "write into /tmp": Path("/tmp") / f"fe-pwned-{uuid.uuid4().hex}",
        "write into the user's home": Path.home() / f".fe-pwned-{uuid.uuid4().hex}",
    }
    try:
        for attack, target in targets.items():
            code = attempt(f"open({str(target)!r}, 'w').write('pwned')")
            _, error = run_attack(attack, variant, code, "files")
            assert error is not None and not target.exists()
        code = attempt("import fe_llm; open('inside.txt', 'w').write('fine')")
        sandbox = usable(variant)
        assert sandbox.run_sync(code).value == {"ok": True}  # the scratch dir is writable
    finally:
        for target in targets.values():
            target.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- environment


@pytest.mark.parametrize("variant", VARIANTS)
def test_api_keys_in_the_environment(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("FLASHEVOLVE_DEMO_API_KEY", secret)
    sandbox = usable(variant)
    code = f"""
import fe_llm, os
found = {{k: v for k, v in os.environ.items() if k.endswith('_API_KEY') or {secret!r} in v}}
for pid in (os.getppid(), {os.getpid()}, 1):
    try:
        if {secret!r} in open(f'/proc/{{pid}}/environ').read():
            found[f'/proc/{{pid}}/environ'] = 'leaked'
    except OSError:
        pass
fe_llm.set_result(found)
"""
    result = sandbox.run_sync(code)
    assert result.ok and result.value == {}, result.value
    assert secret not in result.stdout + result.stderr
    how = "minimal environment (nothing inherited); /proc of other processes not readable"
    record(
        "read *_API_KEY from the environment (and /proc/*/environ)",
        variant,
        sandbox,
        result,
        True,
        how,
    )


# ---------------------------------------------------------------------------- processes


@pytest.mark.parametrize("variant", VARIANTS)
def test_signal_the_parent_process(variant: str) -> None:
    """Signal 0 to the test process (the sandbox's parent) probes permission without harm; a
    real SIGKILL goes to a stand-in process the test owns."""
    marker = f"fe-victim-{uuid.uuid4().hex}"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        code = attempt(
            f"import os, signal\nos.kill({os.getpid()}, 0)\nos.kill({victim.pid}, signal.SIGKILL)"
        )
        _, error = run_attack("signal the parent process", variant, code, "signals")
        assert error is not None
        assert victim.poll() is None  # still alive
    finally:
        victim.kill()
        victim.wait()


DAEMON = """
import os, sys, time, fe_llm
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}])
    os._exit(0)
time.sleep(0.2)
fe_llm.set_result('spawned')
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_daemon_does_not_outlive_the_run(variant: str) -> None:
    marker = f"fe-daemon-{uuid.uuid4().hex}"
    sandbox = usable(variant)
    result = sandbox.run_sync(DAEMON.format(marker=marker))
    assert result.ok and result.value == "spawned", result.stderr
    survivors = host_processes_with(marker)
    kill_ours(survivors)
    prot = sandbox.protections()
    how = "pid namespace: its end kills every process in it" if not survivors else "NOT STOPPED"
    record("a double-forked daemon outlives the run", variant, sandbox, result, not survivors, how)
    if not prot.pid_ns:
        assert survivors, "without a pid namespace a setsid daemon is expected to escape"
        pytest.skip(f"{variant}: no pid namespace, the daemon escaped (killed by the test)")
    assert survivors == []


FORK_BOMB = """
import os, sys, fe_llm
channel = fe_llm._channel._out.fileno()  # inherited across exec: the bomb reports on it
os.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {marker!r}, str(channel)])
"""
BOMB = """
import json, os, sys
made, reported = 0, False
while True:
    try:
        if os.fork() == 0:
            made, reported = 0, True
        else:
            made += 1
    except OSError as err:
        if not reported:
            value = {'forked': made, 'error': type(err).__name__ + ': ' + str(err)}
            os.write(int(sys.argv[2]), json.dumps({'kind': 'result', 'value': value}).encode() + b'\\n')
            reported = True
"""


def test_fork_bomb() -> None:
    sandbox = _sandbox("default", timeout_s=2, max_processes=32)
    prot = sandbox.protections()
    if not prot.nproc_limit:
        pytest.skip(
            "no process limit here (the program runs as host root, which RLIMIT_NPROC exempts): "
            "a fork bomb would only be stopped by the timeout, so it is not run"
        )
    marker = f"fe-bomb-{uuid.uuid4().hex}"
    # The bomb re-executes itself with a marker so the test can find any survivor.
    result = sandbox.run_sync(FORK_BOMB.format(bomb=BOMB, marker=marker))
    survivors = host_processes_with(marker)
    kill_ours(survivors)
    assert result.status in ("timeout", "cpu_limit"), result.reason
    assert result.has_value and result.value["forked"] < 32, result.value
    assert "Resource temporarily unavailable" in result.value["error"]
    assert survivors == []
    how = f"RLIMIT_NPROC: fork fails with EAGAIN at 32 processes; then the {result.status} kill"
    record("fork bomb", "default", sandbox, result, True, how)


def test_memory_bomb() -> None:
    sandbox = _sandbox("default", memory_mb=256)
    code = """
import fe_llm
chunks = []
try:
    while True:
        chunks.append(bytearray(32 * 1024 * 1024))
except MemoryError:
    got = len(chunks) * 32
    chunks.clear()
    try:
        bytearray(8 * 1024**3)
        big = 'allocated 8 GiB'
    except MemoryError:
        big = 'MemoryError'
    fe_llm.set_result({'mb': got, 'big': big})
"""
    result = sandbox.run_sync(code)
    assert result.ok and result.value["mb"] < 256 and result.value["big"] == "MemoryError"
    how = f"RLIMIT_AS: MemoryError after {result.value['mb']} MiB of a 256 MiB address space"
    record("memory bomb", "default", sandbox, result, True, how)


def test_cpu_spin() -> None:
    sandbox = _sandbox("default", cpu_s=1, timeout_s=60)
    result = sandbox.run_sync("while True:\n    pass\n")
    assert result.status == "cpu_limit" and result.signal == signal.SIGXCPU
    record("CPU spin", "default", sandbox, result, True, "RLIMIT_CPU: SIGXCPU after 1 s of CPU")


def test_sleep_forever() -> None:
    marker = f"fe-sleeper-{uuid.uuid4().hex}"
    sandbox = _sandbox("default", timeout_s=1)
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}])\n"
        "time.sleep(3600)\n"
    )
    result = sandbox.run_sync(code)
    survivors = host_processes_with(marker)
    kill_ours(survivors)
    assert result.status == "timeout" and survivors == []
    how = "wall-clock timeout: the process group (and pid namespace) killed, child included"
    record("sleep forever", "default", sandbox, result, True, how)


def test_output_flood() -> None:
    sandbox = _sandbox("default", max_output_bytes=1000, max_output_total_bytes=1_000_000)
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    result = sandbox.run_sync(code)
    assert result.status == "output_limit"
    assert len(result.stdout) == 1000 and result.stdout_truncated
    how = "output cap: first 1000 bytes kept, killed past 1 MB"
    record("flood of output", "default", sandbox, result, True, how)


def test_flood_of_the_model_channel() -> None:
    sandbox = _sandbox("default")
    code = "import fe_llm\nout = fe_llm._channel._out\nwhile True:\n    out.write(b'junk\\n'); out.flush()\n"
    result = sandbox.run_sync(code)
    assert result.status == "output_limit" and "more" in result.channel_errors[-1]
    record(
        "flood of the model channel", "default", sandbox, result, True, "channel error cap: killed"
    )
