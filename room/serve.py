"""The classroom server: ``./run room [--max-students=N] [--token=T] [VOILA OPTIONS]``.

Starts Voila on notebooks/lab.ipynb for a class, with

* a token (Jupyter Server's own, ``--token``): the address to hand out is printed,
  with the token in it; without it a browser gets the login page and no kernel.
  It is ``--token=T``, else $ROOM_TOKEN, else a new random one for this run;
* a ceiling, ``--max-students=N`` (else $ROOM_MAX_STUDENTS, else 30): at most N
  kernels at once, the preheated pool's included (room/voila.py); the next
  student gets the "room is full" page (HTTP 503);
* the settings README ("The app view, for a classroom") explains, each of which an
  option given here replaces (``--port=9000``, ``--pool_size=10``, ``--Voila.ip=...``).

A bad option is one line on stderr and exit 2.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOM = ROOT / "room"

# What the room costs, measured (README, "The app view, for a classroom";
# tests/test_room.py checks the sum stays under room_mib(N)): Voila's server
# process, and one kernel after it has run the lab.
SERVER_MIB = 150
KERNEL_MIB = 90
DEFAULT_STUDENTS = 30
PROBE = "voila/templates/lab/static/voila.js"
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.~-]{8,128}")

DEFAULTS = [
    "--port=8866", "--Voila.ip=0.0.0.0",
    "--preheat_kernel=True", "--pool_size=6", "--VoilaExecutor.iopub_timeout=60",
    "--MappingKernelManager.cull_idle_timeout=1200", "--MappingKernelManager.cull_interval=60",
]


class Usage(Exception):
    pass


def room_mib(students: int) -> int:
    """The memory ceiling of a room of ``students`` places, in MiB."""
    return SERVER_MIB + students * KERNEL_MIB


def given(name: str, args: list[str]) -> str | None:
    """The value ARGS give option NAME (--NAME=v or --Voila.NAME=v), '' for a bare
    --NAME, None if they do not give it."""
    name = name.removeprefix("--").removeprefix("Voila.")
    found = None
    for a in args:
        for form in (f"--{name}", f"--Voila.{name}"):
            if a == form:
                found = ""
            elif a.startswith(form + "="):
                found = a[len(form) + 1:]
    return found


def take(name: str, args: list[str]) -> tuple[str | None, list[str]]:
    """Remove option NAME from ARGS; its value (as ``given``) and the rest."""
    value = given(name, args)
    bare = name.removeprefix("--")
    rest = [a for a in args
            if not any(a == f or a.startswith(f + "=") for f in (f"--{bare}", f"--Voila.{bare}"))]
    return value, rest


def mem_total_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def plan(args: list[str], env: dict) -> tuple[list[str], dict, list[str]]:
    """Voila's command line, its environment and the banner for ``./run room ARGS``."""
    students, args = take("max-students", args)
    where = "--max-students"
    if students is None:
        students = env.get("ROOM_MAX_STUDENTS", str(DEFAULT_STUDENTS))
        where = "ROOM_MAX_STUDENTS" if "ROOM_MAX_STUDENTS" in env else where
    if not re.fullmatch(r"[0-9]{1,6}", students or "") or int(students) < 1:
        raise Usage(f"{where}: {students!r} is not a whole number of at least 1")
    students = int(students)
    total = mem_total_mib()
    if total is not None and room_mib(students) > total:
        raise Usage(f"--max-students={students}: the room would need about {room_mib(students)} MiB"
                    f" and this machine has {total} MiB")

    token, args = take("token", args)
    where = "--token"
    if not token:                       # not given, or the bare --token flag
        where = "ROOM_TOKEN"
        token = env.get("ROOM_TOKEN") or secrets.token_urlsafe(18)
    if not TOKEN_CHARS.fullmatch(token):
        raise Usage(f"{where}: use 8 to 128 letters, digits or - _ . ~ (it goes in a URL)")

    cmd = [sys.executable, "-m", "voila", "notebooks/lab.ipynb", "--no-browser"]
    cmd += [d for d in DEFAULTS if given(d.split("=")[0], args) is None]
    # The bare --token flag makes Jupyter Server's identity provider read the
    # token from $JUPYTER_TOKEN, so it is not on a command line others can see.
    cmd += [f"--Voila.config_file_paths={ROOM}", "--token",
            f"--RoomKernelManager.max_kernels={students}", *args]

    # The room's template (room/jupyter) is the app's (app/, ./run app's
    # kvm-lab: Voila's lab page without its CDN links) plus the full page.
    jupyter_path = [str(ROOM / "jupyter"), str(ROOT / "app"),
                    *filter(None, env.get("JUPYTER_PATH", "").split(os.pathsep))]
    voila_env = {**env, "JUPYTER_PATH": os.pathsep.join(jupyter_path), "JUPYTER_TOKEN": token}

    ip = given("ip", cmd) or ""
    port = given("port", cmd) or "8866"
    host = socket.gethostname() if ip in ("", "0.0.0.0", "::") else ip
    preheat = given("preheat_kernel", cmd) in ("True", "true", "1")
    pool = given("pool_size", cmd) or "0"
    if preheat and re.fullmatch(r"[0-9]+", pool) and int(pool) > students:
        # The pool is part of the ceiling: never more of it than places.
        cmd = [f"--pool_size={students}" if a == f"--pool_size={pool}" else a for a in cmd]
        pool = str(students)
    ahead = f", {pool} of them started ahead in Voila's pool" if preheat else ""
    banner = [
        f"The room: at most {students} students at once, about {room_mib(students)} MiB"
        f" ({students} kernels{ahead}).",
        "Hand out this address; the token in it is the room's password for this run:",
        f"    http://{host}:{port}/?token={token}",
    ]
    if host != ip:
        banner.append("(or this machine's IP address in place of the name)")
    return cmd, voila_env, banner


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kernels(pid: int) -> list[int]:
    """The kernels of the room's server ``pid``."""
    return [c for c in descendants(pid) if "ipykernel_launcher" in cmdline(c)]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` has used (user and system), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[float, list[float], float]:
    """The room's resident memory in MiB: its server, each kernel, and the sum
    over the server and every process below it."""
    return rss_mib(pid), [rss_mib(k) for k in kernels(pid)], \
        rss_mib(pid) + sum(rss_mib(c) for c in descendants(pid))


@contextlib.contextmanager
def running(args: list[str], log: Path, env: dict | None = None, timeout: float = 60):
    """The room (``./run room ARGS``) in the background, for the tests and the
    benchmark: yields (its process, the address it printed).  Its output goes to
    ``log`` (never a pipe nobody reads); it is stopped, kernels and all, at the end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the room exited ({log}):\n" + log.read_text(errors="replace")[-2000:])
            found = re.search(r"http://\S+/\?token=\S+", log.read_text(errors="replace"))
            if found:
                try:   # a file Voila serves without starting a kernel
                    urllib.request.urlopen(found.group(0).split("?")[0] + PROBE, timeout=2).close()
                    break
                except urllib.error.HTTPError:
                    break
                except OSError:
                    pass
            if time.time() > deadline:
                raise RuntimeError(f"the room did not answer within {timeout} s ({log})")
            time.sleep(0.3)
        yield proc, found.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cmd, env, banner = plan(args, dict(os.environ))
    except Usage as e:
        print(f"./run room: {e}", file=sys.stderr)
        return 2
    print("\n".join(banner), flush=True)
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    sys.exit(main())
