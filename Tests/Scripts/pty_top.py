#!/usr/bin/env python3
"""Runs `pmll top` on a pseudo-terminal as a person over ssh would: waits for two screens,
presses KEY (q, or ^C), or sends it SIGTERM (KEY sigterm), and reports whether top exited
within 3 s with the terminal restored (alternate screen left, cursor shown, the tty back in
canonical mode with echo). Prints what it saw as JSON; exits 1 naming the first problem.
Usage: pty_top.py KEY PMLL ARGS..."""
import json
import os
import pty
import select
import signal
import sys
import termios
import time


def main() -> int:
    key = {"q": b"q", "ctrl-c": b"\x03", "sigterm": None}[sys.argv[1]]
    argv = sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    output = b""

    def read_for(seconds):
        nonlocal output
        end = time.time() + seconds
        while time.time() < end:
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    return False
                if not chunk:
                    return False
                output += chunk
        return True

    deadline = time.time() + 15
    while output.count(b"pmll top") < 2 and time.time() < deadline:
        if not read_for(0.1):
            break
    screens = output.count(b"pmll top")
    mode_while_running = termios.tcgetattr(fd)[3]
    if key is None:
        os.kill(pid, signal.SIGTERM)
    else:
        os.write(fd, key)
    start = time.time()
    status = None
    while time.time() - start < 3:
        read_for(0.05)
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    took = time.time() - start
    try:
        canonical_after = bool(termios.tcgetattr(fd)[3] & termios.ICANON) and bool(termios.tcgetattr(fd)[3] & termios.ECHO)
    except termios.error:
        canonical_after = None
    if status is None:
        os.kill(pid, 9)
        print(json.dumps({"problem": "top did not exit within 3 s", "screens": screens}))
        return 1
    text = output.decode("utf-8", "replace")
    result = {
        "screens": screens,
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": round(took, 3),
        "enteredAlternateScreen": "\x1b[?1049h" in text,
        "restored": text.rstrip().endswith("\x1b[?25h\x1b[?1049l"),
        "rawWhileRunning": not (mode_while_running & termios.ICANON),
        "canonicalAfter": canonical_after,
        "text": text[-400:],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
