"""Runs a command and reports, as JSON, what scripts/bench compares across systems: wall
seconds, CPU seconds (user + system, the process and any children it waited for) and peak
resident memory. The same wrapper measures orderfold, the ceiling and every peer, so the
figures differ only by what the systems do.

    python measure.py OUT.json -- COMMAND [ARGS...]

Exits with the command's status; OUT.json is written either way.
"""

import json
import os
import subprocess
import sys
import time


def main():
    out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    if sep != "--" or not cmd:
        sys.exit(__doc__)
    started = time.monotonic()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w") as f:
        json.dump({
            "command": cmd,
            "exit_code": code,
            "seconds": seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports KiB
        }, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
