# The python zygote of elide-daemon (embedded in the daemon binary).
#
# Started as `python3 -u -c THIS CONTROL_FD REPORT_FD PRELOAD` with an empty
# environment, stdin /dev/null and cwd "/". It imports the preload set, says
# "ready" on the control socket, then serves fork requests one at a time.
# It never runs user code: only the forked children do.
#
# Control socket (SOCK_STREAM, daemon <-> zygote):
#   request:  8-byte big-endian body length, sent with SCM_RIGHTS
#             [stdout_w, stderr_w, go_r] (and a Landlock ruleset fd when
#             the sandbox has one), then a JSON body
#             {"argv": [...], "env": {...}, "cwd": "...", "file": "...",
#              "user": null or {"name", "uid", "gid", "groups"},
#              "sandbox": null or {"unshare_net", "landlock", "seccomp"}}
#   reply:    one JSON line: {"pid": N} or {"error": "..."}
# Report pipe (zygote -> daemon): one line per ended child, "PID exit CODE"
# or "PID signal SIGNO", written BEFORE the child is reaped, so the status is
# either in the pipe or the child is still unreaped (and, when the zygote
# dies, adopted by the daemon, which is a child subreaper and waits itself).
#
# A child blocks on go_r until the daemon writes a byte: the daemon does so
# only once it knows the child's pid, so a child whose pid never reached the
# daemon (the zygote died first) exits 127 without running anything.
#
# The zygote forks each child one request ahead: a spare child, forked and
# through python's after-fork hooks and its first copy-on-write faults,
# waits on a socketpair for the request the zygote will forward to it. A
# request is then answered with the spare's pid as soon as the spare has
# acknowledged it ("k"), and the next spare is forked after the reply. A
# spare that is gone (killed) when a request comes is replaced on the spot.
# A spare never runs user code before its request, and ends when its
# socketpair closes (the zygote died).

import os
import select
import signal
import socket
import struct
import sys
import json

CONTROL_FD = int(sys.argv[1])
REPORT_FD = int(sys.argv[2])
PRELOAD = [m for m in sys.argv[3].split(",") if m]

control = socket.socket(fileno=CONTROL_FD)


def send_line(obj):
    control.sendall(json.dumps(obj).encode() + b"\n")


for name in PRELOAD:
    try:
        __import__(name)
    except BaseException as e:  # noqa: BLE001 - any failure names the module
        send_line({"error": "preload module %r could not be imported: %s: %s"
                   % (name, type(e).__name__, e)})
        os._exit(3)

import ctypes  # noqa: E402  (after the preload, so a failing preload is named first)
import locale  # noqa: E402
import threading  # noqa: E402
import atexit  # noqa: E402
import types  # noqa: E402
import importlib.machinery  # noqa: E402
import gc  # noqa: E402

wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
children = set()
spare = None  # (pid, socket) of the child forked ahead of its request
SPARE_ACK_LIMIT = 5.0  # seconds a spare may take to acknowledge a request


def kill_children_and_exit(*_):
    # PDEATHSIG: the daemon is gone. Nothing of ours may run unsupervised.
    for pid in list(children) + ([spare[0]] if spare else []):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


signal.signal(signal.SIGTERM, kill_children_and_exit)
signal.signal(signal.SIGINT, signal.SIG_IGN)
if os.getppid() == 1:
    kill_children_and_exit()


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def report_ended():
    # Peek with WNOWAIT, report, then reap: an exit is never only in our memory.
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == 0:
            return
        pid = info.si_pid
        if pid in children:
            if info.si_code == os.CLD_EXITED:
                line = "%d exit %d\n" % (pid, info.si_status)
            else:
                line = "%d signal %d\n" % (pid, info.si_status)
            os.write(REPORT_FD, line.encode())
            children.discard(pid)
        # Adopted orphans of earlier executions are simply reaped.
        os.waitpid(pid, 0)


def serve():
    # Everything imported so far is the zygote's: moved out of the collector's
    # reach, a child's collections neither walk nor touch (and so copy) it.
    gc.freeze()
    send_line({"ready": True, "pid": os.getpid()})
    waiting = fork_spare()
    if waiting is not None:
        return run_spare(waiting)
    while True:
        report_ended()
        try:
            readable, _, _ = select.select([CONTROL_FD, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        if CONTROL_FD not in readable:
            continue
        try:
            header, fds, _, _ = socket.recv_fds(control, 8, 4)
        except OSError:
            os._exit(0)
        if not header:
            os._exit(0)  # the daemon closed the socket
        if len(header) < 8:
            header += recv_exact(control, 8 - len(header))
        (length,) = struct.unpack(">Q", header)
        body = recv_exact(control, length)
        if len(fds) not in (3, 4):
            for fd in fds:
                os.close(fd)
            send_line({"error": "expected 3 or 4 file descriptors, got %d" % len(fds)})
            continue
        pid = None
        while pid is None:
            if spare is None:
                waiting = fork_spare()
                if waiting is not None:
                    return run_spare(waiting)
            pid = hand_to_spare(header, body, fds)
        children.add(pid)
        for fd in fds:
            os.close(fd)
        send_line({"pid": pid})
        waiting = fork_spare()
        if waiting is not None:
            return run_spare(waiting)


def fork_spare():
    """Forks the next child ahead of its request. In the zygote: records it
    as the spare and returns None; in the child: returns its end of the
    socketpair the request will come on."""
    global spare
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        ours.close()
        return theirs
    theirs.close()
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it first
    spare = (pid, ours)
    return None


def hand_to_spare(header, body, fds):
    """Forwards a request to the spare; its pid once the spare has said it
    took the request, or None if the spare was gone (then it is killed and
    reaped like any orphan, and the caller forks another). The
    acknowledgement matters: a spare killed a moment before (the OOM killer,
    an operator) may still accept the bytes while it is being torn down."""
    global spare
    pid, sock = spare
    spare = None
    try:
        sock.settimeout(SPARE_ACK_LIMIT)
        socket.send_fds(sock, [header], fds)
        sock.sendall(body)
        if sock.recv(1) != b"k":
            raise ConnectionError("the spare ended before taking the request")
    except OSError:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        return None
    finally:
        sock.close()
    return pid


def run_spare(sock):
    """In a spare child: leave the zygote's state, warm up, then wait for the
    request and become that execution."""
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in (wake_r, wake_w, REPORT_FD):
        os.close(fd)
    control.close()
    warm_up()
    try:
        header, fds, _, _ = socket.recv_fds(sock, 8, 4)
        if not header:
            os._exit(0)  # the zygote is gone: this spare was never handed out
        if len(header) < 8:
            header += recv_exact(sock, 8 - len(header))
        (length,) = struct.unpack(">Q", header)
        request = json.loads(recv_exact(sock, length))
        sock.sendall(b"k")
    except (OSError, EOFError, ValueError):
        os._exit(0)
    sock.close()
    return run_child(request, fds)


def warm_up():
    """Walks the steps every execution takes, with values of its own, so the
    copy-on-write faults they cause are taken before the request, not after."""
    set_locale_as_python_startup_does()
    os.environ.clear()
    _text_out(1, "utf-8", "strict")
    open(0, "r", closefd=False, encoding="utf-8", errors="strict")
    types.ModuleType("__main__")
    compile(b"pass\n", "<warm-up>", "exec")


def run_child(request, fds):
    """In a spare child given its request: become the execution, then run its
    script."""
    stdout_w, stderr_w, go_r = fds[:3]
    ruleset = fds[3] if len(fds) > 3 else None
    if os.read(go_r, 1) != b"g":
        os._exit(127)
    os.close(go_r)
    sandbox = request.get("sandbox")
    if sandbox is not None and sandbox["unshare_net"]:
        # While still root: the network namespace needs CAP_SYS_ADMIN.
        sandbox_call(libc.unshare(ctypes.c_int(CLONE_NEWNET)), "unshare(CLONE_NEWNET)", stderr_w)
    if request.get("user") is not None:
        become_user(request["user"], stderr_w)

    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_w, 1)
    os.dup2(stderr_w, 2)
    for fd in (devnull, stdout_w, stderr_w):
        if fd > 2:
            os.close(fd)

    os.environ.clear()
    os.environ.update(request["env"])
    stdio_errors = set_locale_as_python_startup_does()
    encoding, _, errors = os.environ.get("PYTHONIOENCODING", "").partition(":")
    encoding = encoding or "utf-8"
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False, encoding=encoding,
                                     errors=errors or stdio_errors)
    sys.stdout = sys.__stdout__ = _text_out(1, encoding, errors or stdio_errors)
    sys.stderr = sys.__stderr__ = _text_out(2, encoding, "backslashreplace")

    path = request["file"]
    try:
        os.chdir(request["cwd"])
    except OSError as e:
        sys.stderr.write("elide: cannot enter the working directory: %s\n" % e)
        return 127
    if sandbox is not None:
        enter_sandbox(sandbox, ruleset, 2)
    sys.argv = list(request["argv"])
    show_command_line([sys.executable, "-u"] + sys.argv)
    sys.path[0] = os.path.dirname(path)

    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None
    main.__annotations__ = {}
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    try:
        with open(path, "rb") as f:
            source = f.read()
        code = compile(source, path, "exec")
        exec(code, main.__dict__)
    except SystemExit as e:
        return e
    except BaseException as e:  # noqa: BLE001 - what python does for any uncaught exception
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        if isinstance(e, KeyboardInterrupt):
            # python exits by SIGINT after an uncaught KeyboardInterrupt.
            threading._shutdown()
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        return 1
    return 0


PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
CLONE_NEWNET = 0x40000000
SYS_LANDLOCK_RESTRICT_SELF = 446  # the same on every architecture
libc = ctypes.CDLL(None, use_errno=True)


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def sandbox_call(rc, what, err_fd):
    """A failed sandbox step ends the child with 127 before any user code."""
    if rc != 0:
        e = ctypes.get_errno()
        os.write(err_fd, ("elide: cannot enter the sandbox: %s: %s\n"
                          % (what, os.strerror(e))).encode())
        os._exit(127)


def enter_sandbox(sandbox, ruleset, err_fd):
    """After the privilege drop, as a cold child does between fork and exec:
    no_new_privs, the daemon's Landlock ruleset, the daemon's seccomp filter
    (rules derived by the daemon; this only makes the system calls)."""
    sandbox_call(libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), *[ctypes.c_ulong(a) for a in (1, 0, 0, 0)]),
                 "no_new_privs", err_fd)
    if sandbox["landlock"]:
        if ruleset is None:
            sandbox_call(-1, "the Landlock ruleset was not passed", err_fd)
        sandbox_call(libc.syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_long(0)),
                     "landlock_restrict_self", err_fd)
        os.close(ruleset)
    rows = sandbox["seccomp"]
    if rows:
        program = (SockFilter * len(rows))(*[SockFilter(*row) for row in rows])
        fprog = SockFprog(len(rows), program)
        sandbox_call(libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog)),
                     "seccomp", err_fd)


def become_user(user, stderr_w):
    """Drops the zygote's root for the execution's user before anything of
    the request runs: supplementary groups, gid, uid, in that order (after
    setuid there is no way back to change the groups). Any failure ends the
    child with 127 and a line on its stderr; nothing of the user's runs."""
    try:
        os.setgroups(user["groups"])
        os.setgid(user["gid"])
        os.setuid(user["uid"])
        if user["uid"] != 0:
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise OSError("setuid(0) succeeded after dropping privileges")
        # The credential change made the process non-dumpable, which leaves
        # its /proc entries root's; an exec would have reset it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    except OSError as e:
        os.write(stderr_w, ("elide: cannot run as user %r: %s\n"
                            % (user["name"], e)).encode())
        os._exit(127)


def command_line_memory():
    """Where our argv strings live (fields 48 and 49 of /proc/self/stat,
    arg_start and arg_end), or None; a forked child has the same addresses."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # Index 0 here is field 3.
        return int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return None


COMMAND_LINE = command_line_memory()


def show_command_line(argv):
    """Rewrites our argv memory, so /proc/PID/cmdline (and ps) show the
    command a cold run has, `python3 -u FILE ARGS`, truncated to the room the
    zygote's own command line left (it holds this source, several KiB)."""
    if COMMAND_LINE is None:
        return
    start, end = COMMAND_LINE
    size = end - start
    title = b"".join(os.fsencode(a) + b"\0" for a in argv)[:size - 1]
    ctypes.memmove(start, title.ljust(size, b"\0"), size)


def set_locale_as_python_startup_does():
    """LC_CTYPE from the execution's environment, with python's C-locale
    coercion (PEP 538); returns the error handler python picks for stdio."""
    try:
        loc = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        loc = locale.setlocale(locale.LC_CTYPE, "C")
    if loc in ("C", "POSIX") and not os.environ.get("LC_ALL"):
        for target in ("C.UTF-8", "C.utf8", "UTF-8"):
            try:
                loc = locale.setlocale(locale.LC_CTYPE, target)
            except locale.Error:
                continue
            os.environ["LC_CTYPE"] = target
            break
    if loc in ("C", "POSIX", "C.UTF-8", "C.utf8", "UTF-8"):
        return "surrogateescape"
    return "strict"


def _text_out(fd, enc, errors):
    import io
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(raw, encoding=enc or "utf-8", errors=errors, write_through=True)


def end_child(outcome):
    """Ends a forked child as `python3 script.py` ends, without tearing the
    zygote's interpreter down: a full finalization walks every preloaded
    module and costs more CPU than the whole warm start. What a script can
    observe of its ending is kept, in python's order: the SystemExit message,
    non-daemon threads joined, atexit handlers, the script's own objects
    released (so their files flush and `__del__` runs), stdio flushed (exit
    120 if that fails, as python does). Not kept: the teardown of modules
    other than `__main__`, which python itself does not promise."""
    if isinstance(outcome, SystemExit):
        code = outcome.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            try:
                sys.stderr.write(str(code) + "\n")
            except Exception:  # noqa: BLE001
                pass
            status = 1
    else:
        status = outcome
    threading._shutdown()
    atexit._run_exitfuncs()
    main = sys.modules.get("__main__")
    if main is not None:
        main.__dict__.clear()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            status = 120
    os._exit(status & 0xFF)


# Only a forked child gets here.
end_child(serve())
