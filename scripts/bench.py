#!/usr/bin/env python3
"""The measurements behind scripts/bench.sh (issue #14): one or more plugin binaries against the
agent simulator (`agent-sim --api`) on 127.0.0.1, nothing else contacted.

Every figure comes from outside the plugin: CPU time and peak RSS from wait4()'s rusage of the
plugin process (VmRSS sampled from /proc for the "flat" check), start-up from the simulator's
`client connected` log line (written when the OpenDataChannelInput frame has arrived and its
token checked) minus the moment before the plugin was spawned, keystroke echo under a real pty.
Timing noise: run it on an otherwise idle machine for figures worth comparing.

Standard library only. Usage: see scripts/bench.sh (it builds the binaries and calls this).
"""

import argparse
import base64
import datetime
import json
import os
import pty
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

MIB = 1024 * 1024
TARGET = "i-0123456789abcdef0"
PORT_DOC = "AWS-StartPortForwardingSession"
CHUNK = 64 * 1024
PATTERN = (bytes(range(251)) * (CHUNK // 251 + 2))[: 2 * CHUNK]  # not compressible, cheap


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The simulator


class Sim:
    """`agent-sim --api` with the given flags; ends when its stdin closes."""

    def __init__(self, binary, workdir, name, flags):
        self.log_path = os.path.join(workdir, f"sim-{name}.log")
        env = dict(os.environ, RUST_LOG="agent_sim=info", NO_COLOR="1")
        self.proc = subprocess.Popen(
            [binary, "--api", "--pty-start-delay-ms", "100", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "wb"),
            env=env,
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent-sim did not start; see {self.log_path}")
        info = json.loads(line)
        self.api_url = info["api_url"]

    def start_session(self, doc=None, params=None):
        body = {"Target": TARGET}
        if doc:
            body["DocumentName"] = doc
        if params:
            body["Parameters"] = {k: [v] for k, v in params.items()}
        req = urllib.request.Request(
            self.api_url,
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": "AmazonSSM.StartSession",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            resp = json.load(r)
        return resp, json.dumps(body)

    def connected_at(self, session_id, timeout=15.0):
        """Unix time of the simulator's `client connected` line for this session."""
        deadline = time.time() + timeout
        ansi = re.compile(r"\x1b\[[0-9;]*m")
        while time.time() < deadline:
            with open(self.log_path, "r", errors="replace") as f:
                for line in f:
                    line = ansi.sub("", line)
                    if "client connected" in line and session_id in line:
                        stamp = line.split()[0]
                        return parse_rfc3339(stamp)
            time.sleep(0.01)
        raise RuntimeError(f"no 'client connected' for {session_id} in {self.log_path}")

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def parse_rfc3339(s):
    # 2024-06-10T12:34:56.123456Z
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".", 1)
    else:
        head, frac = s, "0"
    dt = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc
    )
    return dt.timestamp() + float("0." + frac)


# ---------------------------------------------------------------------------------------------
# The plugin process


class Plugin:
    """One plugin process started as the AWS CLI starts it; `finish()` reaps it with rusage."""

    def __init__(self, binary, sim, resp, request, workdir, env_extra=None, tty=False):
        self.home = tempfile.mkdtemp(dir=workdir)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_REGION": "us-east-1",
            "TERM": "xterm-256color",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(env_extra or {})
        args = [binary, json.dumps(resp), "us-east-1", "StartSession", "", request, sim.api_url]
        self.master = None
        self.out = bytearray()
        self.lock = threading.Lock()
        err = open(os.path.join(self.home, "stderr"), "wb")
        self.spawned_at = time.time()
        if tty:
            master, slave = pty.openpty()
            import fcntl
            import termios

            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            self.proc = subprocess.Popen(
                args, stdin=slave, stdout=slave, stderr=err, env=env, start_new_session=True
            )
            os.close(slave)
            self.master = master
        else:
            self.spawned_at = time.time()
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
            threading.Thread(target=self._collect, daemon=True).start()
        self.pid = self.proc.pid
        self.rusage = None
        self.status = None
        # Peak RSS is the kernel's high-water mark of the plugin's own address space (VmHWM),
        # polled until it exits. Not wait4()'s ru_maxrss: Linux carries the high-water mark of
        # the forking process over exec, so that would report this Python process's size.
        self.hwm_kib = 0
        threading.Thread(target=self._watch_hwm, daemon=True).start()

    def _collect(self):
        while True:
            b = self.proc.stdout.read1(65536)
            if not b:
                return
            with self.lock:
                self.out += b

    def wait_stdout(self, pattern, timeout=20.0):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                m = rx.search(self.out.decode(errors="replace"))
            if m:
                return m
            time.sleep(0.01)
        raise RuntimeError(f"plugin stdout never matched {pattern!r}: {bytes(self.out)[-500:]!r}")

    def local_port(self, session_id):
        m = self.wait_stdout(r"Port (\d+) opened for sessionId " + re.escape(session_id))
        return int(m.group(1))

    def _watch_hwm(self):
        while self.rusage is None:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.hwm_kib = max(self.hwm_kib, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    def rss_kib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def finish(self, sig=signal.SIGINT, timeout=15.0):
        """Ends the plugin (signal unless already gone) and returns (cpu seconds, peak RSS KiB)."""
        if self.rusage is None and sig is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        return self.reap(timeout)

    def reap(self, timeout=15.0):
        deadline = time.time() + timeout
        while self.rusage is None:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.rusage, self.status = ru, status
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.time() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                deadline = time.time() + 5
            time.sleep(0.01)
        if self.master is not None:
            try:
                os.close(self.master)
            except OSError:
                pass
            self.master = None
        return self.rusage.ru_utime + self.rusage.ru_stime, self.hwm_kib


# ---------------------------------------------------------------------------------------------
# Destinations (what the simulated agent dials for a port session)


class Dest:
    """A TCP server on 127.0.0.1:0: `sink` (counts), `source` (sends n bytes), `echo`,
    `digest` (reads to EOF, answers `<count>`)."""

    def __init__(self, kind, nbytes=0):
        self.kind, self.nbytes = kind, nbytes
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.kind == "echo":
                while True:
                    b = c.recv(CHUNK)
                    if not b:
                        break
                    c.sendall(b)
            elif self.kind in ("sink", "digest"):
                n = 0
                while True:
                    b = c.recv(CHUNK)
                    if not b:
                        break
                    n += len(b)
                self.received.append(n)
                if self.kind == "digest":
                    c.sendall(f"{n}".encode())
                self.done.set()
            elif self.kind == "source":
                send_n(c, self.nbytes)
        except OSError:
            pass
        finally:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def close(self):
        self.sock.close()


def send_n(s, n):
    left = n
    view = memoryview(PATTERN)
    off = 0
    while left > 0:
        k = min(left, CHUNK)
        s.sendall(view[off : off + k])
        off = (off + k) % CHUNK
        left -= k


def recv_n(s, n):
    got = 0
    while got < n:
        b = s.recv(min(CHUNK * 4, n - got))
        if not b:
            break
        got += len(b)
    return got


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# ---------------------------------------------------------------------------------------------
# Measurements, each for one plugin binary


def port_session(ctx, sim, dest, frame_budget_off):
    resp, request = sim.start_session(PORT_DOC, {"portNumber": str(dest.port)})
    env = {"SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE": "0"} if frame_budget_off else {}
    p = Plugin(ctx.binary, sim, resp, request, ctx.workdir, env)
    port = p.local_port(resp["SessionId"])
    return p, port


def m_transfer(ctx, sim, direction, mib, limits):
    n = mib * MIB
    dest = Dest("sink" if direction == "upload" else "source", n)
    p, port = port_session(ctx, sim, dest, frame_budget_off=not limits)
    s = connect(port)
    t0 = time.time()
    if direction == "upload":
        send_n(s, n)
        s.shutdown(socket.SHUT_WR)
        if not dest.done.wait(3600):
            raise RuntimeError("upload never completed")
        got = dest.received[0]
    else:
        got = recv_n(s, n)
    secs = time.time() - t0
    s.close()
    cpu, rss = p.finish()
    dest.close()
    if got != n:
        raise RuntimeError(f"{direction}: {got} of {n} bytes arrived")
    return {"MBps": n / secs / 1e6, "seconds": secs, "cpu_s": cpu, "maxrss_kib": rss, "mib": mib}


def m_echo(ctx, sim, mib, sample=False, limits=False):
    """Echoes `mib` MiB through one connection; CPU, peak RSS and (sampled) RSS over time."""
    n = mib * MIB
    dest = Dest("echo")
    p, port = port_session(ctx, sim, dest, frame_budget_off=not limits)
    s = connect(port)
    samples = []
    progress = [0]

    def writer():
        send_n(s, n)

    w = threading.Thread(target=writer, daemon=True)
    stop = threading.Event()

    def sampler():
        while not stop.wait(0.2):
            samples.append((progress[0] / n, p.rss_kib()))

    t0 = time.time()
    w.start()
    if sample:
        threading.Thread(target=sampler, daemon=True).start()
    got = 0
    while got < n:
        b = s.recv(min(CHUNK * 4, n - got))
        if not b:
            break
        got += len(b)
        progress[0] = got
    secs = time.time() - t0
    stop.set()
    s.close()
    cpu, rss = p.finish()
    dest.close()
    if got != n:
        raise RuntimeError(f"echo: {got} of {n} bytes came back")
    r = {"mib": mib, "seconds": secs, "MBps": n / secs / 1e6, "cpu_s": cpu, "maxrss_kib": rss}
    if sample and samples:
        early = [k for f, k in samples if 0.05 <= f <= 0.15] or [samples[0][1]]
        late = [k for f, k in samples if f >= 0.85] or [samples[-1][1]]
        r["rss_at_10pct_kib"] = max(early)
        r["rss_at_90pct_kib"] = max(late)
        r["rss_sampled_max_kib"] = max(k for _, k in samples)
    return r


def m_small_beside_bulk(ctx, sim, rounds):
    """1 KiB uploads (answer: the byte count) on new connections while a 4 MiB upload runs on
    another, service limits on and the plugin's default frame budget: round trip of each."""
    dest = Dest("digest")
    p, port = port_session(ctx, sim, dest, frame_budget_off=False)
    smalls, bulks = [], []
    for _ in range(rounds):
        done = threading.Event()
        bulk_t = [None]

        def bulk():
            t0 = time.time()
            s = connect(port)
            send_n(s, 4 * MIB)
            s.shutdown(socket.SHUT_WR)
            s.recv(100)
            s.close()
            bulk_t[0] = time.time() - t0
            done.set()

        threading.Thread(target=bulk, daemon=True).start()
        time.sleep(0.8)
        while not done.is_set():
            t0 = time.time()
            s = connect(port)
            s.sendall(PATTERN[:1024])
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(100)
            s.close()
            if answer != b"1024":
                raise RuntimeError(f"small upload answer {answer!r}")
            if not done.is_set():
                smalls.append(time.time() - t0)
            done.wait(0.4)
        bulks.append(bulk_t[0])
    p.finish()
    dest.close()
    smalls.sort()
    return {
        "median_s": statistics.median(smalls),
        "max_s": smalls[-1],
        "samples": len(smalls),
        "bulk_4MiB_s": statistics.median(bulks),
    }


def m_startup(ctx, sim, runs):
    """exec -> OpenDataChannelInput at the simulator, port sessions, median of `runs`."""
    dest = Dest("echo")
    times = []
    for _ in range(runs):
        resp, request = sim.start_session(PORT_DOC, {"portNumber": str(dest.port)})
        p = Plugin(ctx.binary, sim, resp, request, ctx.workdir)
        at = sim.connected_at(resp["SessionId"])
        times.append(at - p.spawned_at)
        p.local_port(resp["SessionId"])
        p.finish()
    dest.close()
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": times[0] * 1e3,
        "max_ms": times[-1] * 1e3,
        "runs": runs,
    }


def read_until(fd, needle_fn, timeout, buf):
    deadline = time.time() + timeout
    while not needle_fn(buf):
        left = deadline - time.time()
        if left <= 0:
            raise RuntimeError(f"timed out; output so far {bytes(buf)[-300:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                b = os.read(fd, 65536)
            except OSError:
                raise RuntimeError(f"pty closed; output so far {bytes(buf)[-300:]!r}")
            if not b:
                raise RuntimeError("pty EOF")
            buf += b


PROMPT = re.compile(rb"[$#] $")


def m_shell(ctx, sim, keys):
    """A short shell session under a pty: prompt, `keys` keystrokes timed one by one (sent, then
    waited for until the remote echo shows), a command, idle, exit. Peak RSS of the whole run."""
    resp, request = sim.start_session()
    p = Plugin(ctx.binary, sim, resp, request, ctx.workdir, tty=True)
    fd = p.master
    buf = bytearray()
    read_until(fd, lambda b: PROMPT.search(bytes(b[-4:])) is not None, 20, buf)
    rtts = key_rtts(lambda data: os.write(fd, data), fd, buf, keys)
    os.write(fd, b"\x15echo bench-$((6*7))\r")
    read_until(fd, lambda b: b"bench-42" in b, 10, buf)
    time.sleep(1.0)
    os.write(fd, b"exit\r")
    try:
        read_until(fd, lambda b: False, 15, buf)
    except RuntimeError:
        pass
    cpu, rss = p.reap(15)
    return {"maxrss_kib": rss, "cpu_s": cpu, "rtt": summarize(rtts), "exit": p.proc.returncode}


def key_rtts(write, fd, buf, keys, read=None):
    rtts = []
    letters = b"abcdefghijklmnopqrstuvwxyz"
    for i in range(keys):
        c = letters[i % len(letters) : i % len(letters) + 1]
        start = len(buf)
        t0 = time.perf_counter()
        write(c)
        if read is None:
            read_until(fd, lambda b: c in b[start:], 10, buf)
        else:
            read(lambda b: c in b[start:], buf)
        rtts.append(time.perf_counter() - t0)
        time.sleep(0.02)
    return rtts


def summarize(xs):
    xs = sorted(xs)
    if not xs:
        return {}
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return {"p50_ms": statistics.median(xs) * 1e3, "p99_ms": p99 * 1e3, "n": len(xs)}


# ---------------------------------------------------------------------------------------------
# The same keystroke path without any plugin: a minimal data-channel client in this process,
# talking to the simulator's websocket directly (plain ws://, acks sent, digest computed).


class DirectChannel:
    def __init__(self, stream_url, token):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", stream_url)
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.s = socket.create_connection((host, port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            b = self.s.recv(4096)
            if not b:
                raise RuntimeError("websocket upgrade: connection closed")
            head += b
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket upgrade refused: {head[:100]!r}")
        self.rbuf = bytearray(head.split(b"\r\n\r\n", 1)[1])
        self.seq = 0
        self.send_ws(
            0x1,
            json.dumps(
                {
                    "MessageSchemaVersion": "1.0",
                    "RequestId": str(uuid.uuid4()),
                    "TokenValue": token,
                    "ClientId": str(uuid.uuid4()),
                    "ClientVersion": "1.2.764.0",
                }
            ).encode(),
        )
        # Nothing is sent before the shell's pty exists: the agent would not ack it, and this
        # client does not resend.

    def send_ws(self, opcode, data):
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.s.sendall(hdr + mask + masked)

    @staticmethod
    def message(mtype, seq, flags, ptype, payload):
        import hashlib

        mid = uuid.uuid4().bytes
        return (
            struct.pack("!I", 116)
            + mtype.encode().ljust(32, b" ")
            + struct.pack("!IQqQ", 1, int(time.time() * 1000), seq, flags)
            + mid[8:]
            + mid[:8]
            + hashlib.sha256(payload).digest()
            + struct.pack("!II", ptype, len(payload))
            + payload
        )

    def send_input(self, payload, payload_type=1):
        flags = 1 if self.seq == 0 else 0
        self.send_ws(0x2, self.message("input_stream_data", self.seq, flags, payload_type, payload))
        self.seq += 1

    def _frame(self, timeout):
        """One websocket frame (opcode, payload) or None on timeout."""
        deadline = time.time() + timeout
        while True:
            if len(self.rbuf) >= 2:
                b0, b1 = self.rbuf[0], self.rbuf[1]
                n, off = b1 & 0x7F, 2
                if n == 126 and len(self.rbuf) >= 4:
                    n, off = struct.unpack("!H", self.rbuf[2:4])[0], 4
                elif n == 127 and len(self.rbuf) >= 10:
                    n, off = struct.unpack("!Q", self.rbuf[2:10])[0], 10
                if (b1 & 0x7F) < 126 or off > 2:
                    if len(self.rbuf) >= off + n:
                        data = bytes(self.rbuf[off : off + n])
                        del self.rbuf[: off + n]
                        return b0 & 0x0F, data
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.s], [], [], left)
            if r:
                b = self.s.recv(65536)
                if not b:
                    raise RuntimeError("websocket closed")
                self.rbuf += b

    def read(self, pred, buf, timeout=10):
        """Appends agent output to `buf` (acking each message) until pred(buf)."""
        deadline = time.time() + timeout
        while not pred(buf):
            f = self._frame(max(0.0, deadline - time.time()))
            if f is None:
                raise RuntimeError(f"direct: timed out; output {bytes(buf)[-200:]!r}")
            op, data = f
            if op == 0x9:
                self.send_ws(0xA, data)
                continue
            if op != 0x2 or len(data) < 120:
                continue
            mtype = data[4:36].rstrip(b" ").decode()
            if mtype != "output_stream_data":
                continue
            seq = struct.unpack("!q", data[48:56])[0]
            mid = data[64:80]
            plen = struct.unpack("!I", data[116:120])[0]
            payload = data[120 : 120 + plen]
            ack = json.dumps(
                {
                    "AcknowledgedMessageType": "output_stream_data",
                    "AcknowledgedMessageId": str(uuid.UUID(bytes=mid[8:] + mid[:8])),
                    "AcknowledgedMessageSequenceNumber": seq,
                    "IsSequentialMessage": True,
                },
                separators=(",", ":"),
            ).encode()
            self.send_ws(0x2, self.message("acknowledge", 0, 3, 0, ack))
            if struct.unpack("!I", data[112:116])[0] == 1:
                buf += payload


def m_direct_rtt(sim, keys):
    resp, _ = sim.start_session()
    ch = DirectChannel(resp["StreamUrl"], resp["TokenValue"])
    buf = bytearray()
    ch.read(lambda b: PROMPT.search(bytes(b[-4:])) is not None, buf, timeout=20)
    rtts = key_rtts(ch.send_input, None, buf, keys, read=lambda pred, b: ch.read(pred, b))
    ch.send_input(b"\x15exit\r")
    try:
        ch.read(lambda b: False, buf, timeout=3)
    except RuntimeError:
        pass
    ch.s.close()
    return summarize(rtts)


# ---------------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, binary, workdir):
        self.binary, self.workdir = binary, workdir


def run_one(binary, sims, a, workdir):
    ctx = Ctx(binary, workdir)
    r = {"binary": binary, "size_bytes": os.path.getsize(binary)}
    q = a.quick
    step = lambda name: log(f"{os.path.basename(binary)}: {name}")

    step("start-up")
    r["startup"] = m_startup(ctx, sims["limits"], a.startup_runs)
    step("shell session (peak RSS, keystroke echo)")
    r["shell"] = m_shell(ctx, sims["limits"], a.keys)
    step("small echo beside a 4 MiB upload")
    r["small_beside_bulk"] = m_small_beside_bulk(ctx, sims["limits"], 1 if q else 2)
    for limits, mib in ((True, a.limited_mib), (False, a.mib)):
        key = "limits_on" if limits else "limits_off"
        sim = sims["limits" if limits else "nolimits"]
        for d in ("upload", "download"):
            step(f"{d} {mib} MiB, service limits {'on' if limits else 'off'}")
            r[f"{d}_{key}"] = m_transfer(ctx, sim, d, mib, limits)
    step(f"smux echo {a.flat_mib} MiB (RSS over time)")
    r["echo_smux"] = m_echo(ctx, sims["nolimits"], a.flat_mib, sample=True)
    step(f"smux echo {a.limited_mib} MiB, service limits on")
    r["echo_smux_limits_on"] = m_echo(ctx, sims["limits"], a.limited_mib, limits=True)
    step(f"basic echo {a.basic_mib} MiB")
    r["echo_basic"] = m_echo(ctx, sims["basic"], a.basic_mib)
    return r


def fmt_table(results, direct, a, meta):
    cols = [os.path.basename(os.path.dirname(r["binary"])) + "/" + os.path.basename(r["binary"])
            if len(results) > 1 else "value" for r in results]
    if len(results) > 1:
        cols = ["this plugin"] + [f"--against {r['binary']}" for r in results[1:]]
    rows = []

    def row(name, f):
        vals = []
        for r in results:
            try:
                vals.append(f(r))
            except (KeyError, TypeError):
                vals.append("n/a")
        rows.append("| " + name + " | " + " | ".join(vals) + " |")

    mb = lambda x: f"{x:.2f}"
    row(f"upload MB/s, service limits on ({a.limited_mib} MiB)", lambda r: mb(r["upload_limits_on"]["MBps"]))
    row(f"download MB/s, service limits on ({a.limited_mib} MiB)", lambda r: mb(r["download_limits_on"]["MBps"]))
    row(f"upload MB/s, limits off ({a.mib} MiB)", lambda r: mb(r["upload_limits_off"]["MBps"]))
    row(f"download MB/s, limits off ({a.mib} MiB)", lambda r: mb(r["download_limits_off"]["MBps"]))
    for d in ("upload", "download"):
        row(f"CPU s per 100 MiB, {d} (limits off)",
            lambda r, d=d: f"{r[f'{d}_limits_off']['cpu_s'] * 100 / a.mib:.2f}")
    row("CPU s per 16 MiB echoed, smux, service limits on",
        lambda r: f"{r['echo_smux_limits_on']['cpu_s'] * 16 / a.limited_mib:.2f}")
    row("CPU s per 16 MiB echoed, smux, limits off", lambda r: f"{r['echo_smux']['cpu_s'] * 16 / a.flat_mib:.2f}")
    row("CPU s per 16 MiB echoed, basic, limits off", lambda r: f"{r['echo_basic']['cpu_s'] * 16 / a.basic_mib:.2f}")
    row("peak RSS MB, short shell session", lambda r: f"{r['shell']['maxrss_kib'] / 1024:.1f}")
    row(f"peak RSS MB, smux port echo of {a.flat_mib} MiB",
        lambda r: f"{r['echo_smux']['maxrss_kib'] / 1024:.1f}")
    row(f"RSS MB at 10% / 90% of it (flat?)",
        lambda r: f"{r['echo_smux']['rss_at_10pct_kib'] / 1024:.1f} / {r['echo_smux']['rss_at_90pct_kib'] / 1024:.1f}")
    row(f"peak RSS MB, basic port echo of {a.basic_mib} MiB",
        lambda r: f"{r['echo_basic']['maxrss_kib'] / 1024:.1f}")
    row(f"start-up ms, exec -> OpenDataChannelInput (median of {a.startup_runs})",
        lambda r: f"{r['startup']['median_ms']:.1f} (min {r['startup']['min_ms']:.1f})")
    row(f"keystroke echo ms p50 / p99 ({a.keys} keys)",
        lambda r: f"{r['shell']['rtt']['p50_ms']:.2f} / {r['shell']['rtt']['p99_ms']:.2f}")
    if direct:
        row("  minus the same without a plugin (p50 / p99)",
            lambda r: f"{r['shell']['rtt']['p50_ms'] - direct['p50_ms']:+.2f} / {r['shell']['rtt']['p99_ms'] - direct['p99_ms']:+.2f}")
    row("small 1 KiB echo beside a 4 MiB upload, median / max s",
        lambda r: f"{r['small_beside_bulk']['median_s']:.3f} / {r['small_beside_bulk']['max_s']:.3f}")
    row("binary size MB", lambda r: f"{r['size_bytes'] / 1e6:.1f}")
    out = ["| figure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)] + rows
    if direct:
        out.append("")
        out.append(f"Keystroke echo without a plugin (a minimal data-channel client in the "
                   f"benchmark, same simulator): p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms.")
    out.append(meta)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--against", action="append", default=[])
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    a.limited_mib = 2 if a.quick else 16
    a.mib = 32 if a.quick else 100
    a.flat_mib = 128 if a.quick else 1024
    a.basic_mib = 16 if a.quick else 64
    a.startup_runs = 20
    a.keys = 20 if a.quick else 100

    workdir = tempfile.mkdtemp(prefix="ssm-bench-")
    sims = {}
    try:
        sims["limits"] = Sim(a.sim, workdir, "limits", ["--mux-half-close"])
        sims["nolimits"] = Sim(a.sim, workdir, "nolimits", ["--no-port-pacing", "--frame-rate-limit", "0"])
        sims["basic"] = Sim(a.sim, workdir, "basic", ["--agent-version", "3.0.0.0", "--no-port-pacing", "--frame-rate-limit", "0"])
        log("keystroke echo without a plugin")
        try:
            direct = m_direct_rtt(sims["limits"], a.keys)
        except Exception as e:  # the table then shows absolute figures only
            log(f"direct keystroke path failed: {e}")
            direct = None
        results = [run_one(os.path.abspath(b), sims, a, workdir) for b in [a.plugin, *a.against]]
    finally:
        for s in sims.values():
            s.close()
    load = os.getloadavg()
    meta = (f"\n{os.cpu_count()} CPUs, load average {load[0]:.2f} at the end; "
            f"{'--quick sizes' if a.quick else 'default sizes'}; {time.strftime('%Y-%m-%d')}.")
    table = fmt_table(results, direct, a, meta)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"quick": a.quick, "direct_keystroke": direct, "results": results,
                   "loadavg": load, "cpus": os.cpu_count()}, f, indent=2)
    log(f"JSON in {a.json}")


if __name__ == "__main__":
    main()
