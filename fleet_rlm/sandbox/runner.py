"""The program inside a local sandbox process. Standard library only; run as ``python -I -c``.

It speaks JSON lines with the host over private copies of stdin and stdout (fds 0 and 1
are then pointed at /dev/null, so code that writes to them cannot corrupt the protocol):

    host -> sandbox   {"type": "execute", "code", "variables", "tools", "output_fields"}
                      {"type": "tool_result", "id", "value"} | {"type": "tool_error", "id", "error"}
    sandbox -> host   {"type": "ready"}
                      {"type": "tool_request", "id", "name", "args", "kwargs"}
                      {"type": "result", "stdout", "truncated"}
                      {"type": "final", "value", "stdout", "truncated"}
                      {"type": "syntax_error" | "execution_error", "error", "stdout", "truncated"}

Before any submitted code runs, an audit hook confines it: files only inside the working
directory (reads also inside Python's own installation), no processes, no sockets, no
signals, no ctypes. The hook is a second wall; the first is the process's own user,
resource limits and network namespace, which the host sets before this program starts.
"""

import ast
import io
import json
import os
import sys
import traceback

OUTPUT_CAP = int(os.environ.get("FLEET_SANDBOX_OUTPUT_BYTES", "65536"))
WORKDIR = os.path.realpath(os.getcwd())
READ_ROOTS = tuple(
    os.path.realpath(p)
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__)}
) + ("/usr/lib/python3", "/usr/share/zoneinfo")
DEVICES = ("/dev/null", "/dev/urandom", "/dev/random")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DENIED_EVENTS = {
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "subprocess.Popen",
    "pty.spawn",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "socket.sendto",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.cdata",
    "os.chroot",
    "os.setuid",
    "os.setgid",
    "sys.remote_exec",
    "winreg.OpenKey",
    "os.chdir",
    "os.fchdir",
    "mmap.__new__",
}
PATH_EVENTS = {
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.chmod",
    "os.chown",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "os.listdir",
    "os.scandir",
}
DENIED_IMPORTS = {"_posixsubprocess", "_ctypes", "ctypes", "multiprocessing", "_socket"}


class Denied(PermissionError):
    pass


def _inside(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _resolve(path):
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return os.path.realpath(path)


def _check_open(path, mode, flags):
    if not isinstance(path, (str, bytes)):
        return  # an already-open descriptor
    real = _resolve(path)
    writing = bool(flags & WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
    if _inside(real, (WORKDIR,)) or real in DEVICES:
        return
    if not writing and _inside(real, READ_ROOTS):
        return
    verb = "writing" if writing else "reading"
    raise Denied(f"sandbox: {verb} {real} is outside the working directory")


def _audit(event, args):
    if event == "open":
        _check_open(*args[:3])
    elif event in DENIED_EVENTS or event.startswith("os.exec"):
        raise Denied(f"sandbox: {event} is not allowed")
    elif event in PATH_EVENTS:
        for arg in args:
            if isinstance(arg, (str, bytes)) and not _inside(_resolve(arg), (WORKDIR,)):
                if event in ("os.listdir", "os.scandir") and _inside(_resolve(arg), READ_ROOTS):
                    continue
                raise Denied(f"sandbox: {event} outside the working directory")
    elif event == "import" and args[0] in DENIED_IMPORTS:
        raise Denied(f"sandbox: importing {args[0]} is not allowed")


class CappedWriter(io.TextIOBase):
    def __init__(self, cap):
        self.cap = cap
        self.parts = []
        self.size = 0
        self.dropped = 0

    def write(self, text):
        room = self.cap - self.size
        if room > 0:
            piece = text[:room]
            self.parts.append(piece)
            self.size += len(piece)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def text(self):
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n... [{self.dropped} more characters of output dropped]"
        return out


class Submitted(BaseException):
    def __init__(self, value):
        self.value = value


class Channel:
    def __init__(self):
        self.inbox = os.fdopen(os.dup(0), "r", encoding="utf-8")
        self.outbox = os.fdopen(os.dup(1), "w", encoding="utf-8")
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        self.calls = 0

    def send(self, message):
        self.outbox.write(json.dumps(message, default=repr) + "\n")
        self.outbox.flush()

    def receive(self):
        line = self.inbox.readline()
        if not line:
            raise SystemExit(0)
        return json.loads(line)

    def call_tool(self, name, args, kwargs):
        self.calls += 1
        call_id = self.calls
        self.send(
            {
                "type": "tool_request",
                "id": call_id,
                "name": name,
                "args": list(args),
                "kwargs": kwargs,
            }
        )
        answer = self.receive()
        if answer.get("type") == "tool_error":
            raise RuntimeError(f"{name} failed: {answer.get('error')}")
        return answer.get("value")


def _tool(channel, name):
    def call(*args, **kwargs):
        return channel.call_tool(name, args, kwargs)

    call.__name__ = name
    return call


def _submit(field_names):
    def SUBMIT(*args, **kwargs):  # noqa: N802 - the name RLM prompts use
        if kwargs:
            value = dict(kwargs)
        elif len(args) == 1 and isinstance(args[0], dict) and set(args[0]) <= set(field_names):
            value = dict(args[0])
        elif field_names and len(args) == len(field_names):
            value = dict(zip(field_names, args, strict=True))
        else:
            value = args[0] if len(args) == 1 else list(args)
        raise Submitted(value)

    return SUBMIT


def _run(code, namespace):
    """Exec ``code``; if it ends in an expression, print its value like a REPL."""
    tree = ast.parse(code, "<sandbox>", "exec")
    tail = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        tail = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<sandbox>", "exec"), namespace)
    if tail is not None:
        value = eval(compile(tail, "<sandbox>", "eval"), namespace)
        if value is not None:
            print(repr(value))


def _describe(exc):
    """The exception and the submitted code's own frames (the runner's are left out)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != "<string>"]
    where = "".join(traceback.format_list(frames[-4:]))
    head = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return (f"{head}\n{where}" if where else head)[-4000:]


def _execute(channel, namespace, message):
    out = CappedWriter(OUTPUT_CAP)
    namespace.update(message.get("variables") or {})
    for name in message.get("tools") or []:
        namespace[name] = _tool(channel, name)
    fields = [f.get("name") for f in (message.get("output_fields") or []) if isinstance(f, dict)]
    namespace["SUBMIT"] = _submit(fields)
    sys.stdout = sys.stderr = out
    try:
        _run(message["code"], namespace)
        reply = {"type": "result"}
    except Submitted as done:
        reply = {"type": "final", "value": done.value}
    except SyntaxError as exc:
        reply = {"type": "syntax_error", "error": f"{exc.msg} (line {exc.lineno})"}
    except BaseException as exc:  # the code's own failure, whatever it is
        reply = {"type": "execution_error", "error": _describe(exc)}
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    reply["stdout"] = out.text()
    reply["truncated"] = bool(out.dropped)
    channel.send(reply)


def main():
    channel = Channel()
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    sys.addaudithook(_audit)
    channel.send({"type": "ready"})
    while True:
        message = channel.receive()
        if message.get("type") == "execute":
            _execute(channel, namespace, message)


main()
