"""Helpers shared by the benchmark scripts in bench/: running a command, describing the machine."""
import os
import platform
import subprocess


def sh(cmd, **kw):
    """Runs `cmd`, fails on a non-zero exit, returns its stdout."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def machine():
    """CPU model, core count and kernel, for the header of every result."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"
