"""Drive the real gdb-multiarch and lldb in batch mode and collect each command's output.

Each command's output is captured separately (gdb: ``gdb.execute(..., to_string=True)``;
lldb: ``SBCommandInterpreter.HandleCommand``) and written to a JSON file, so tests compare
exact outputs instead of scraping one interleaved terminal stream. The debugger always detaches
at the end, leaving QEMU running for the next test.
"""

import json
import os
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GDB = "gdb-multiarch"
# lldb is started the way users are told to start it: through kheap's launcher, which puts the
# system's python3 first on PATH (lldb's embedded Python takes its prefix from the first python3
# there, so a pyenv shim or an activated venv on the caller's PATH would break it) and loads kheap.
LLDB = REPO / "bin" / "kheap-lldb"


def lldb_argv(*arguments, load=True):
    """argv for lldb through the launcher; ``load=False`` starts it without kheap."""
    return [str(LLDB)] + ([] if load else ["--no-kheap"]) + list(arguments)


@dataclass
class Step:
    command: str
    output: str
    error: str = ""


@dataclass
class Run:
    steps: list
    stdout: str
    stderr: str
    returncode: int

    def output(self, index):
        return self.steps[index].output

    def json(self, index):
        text = self.steps[index].output
        try:
            return json.loads(text)
        except ValueError as error:
            raise AssertionError(f"step {index} ({self.steps[index].command!r}) is not JSON: "
                                 f"{error}\n{text[:2000]}\n{self.steps[index].error}") from None


_GDB_SCRIPT = """
import gdb, json, traceback
results = []
for command in json.load(open({commands!r})):
    try:
        out = gdb.execute(command, to_string=True)
        results.append({{"command": command, "output": out, "error": ""}})
    except gdb.error as error:
        results.append({{"command": command, "output": "", "error": str(error)}})
    except Exception:
        results.append({{"command": command, "output": "", "error": traceback.format_exc()}})
json.dump(results, open({results!r}, "w"))
"""


def _drive(script_template, build_argv, commands, timeout):
    """Write the commands and a driver script, run the debugger, collect each step."""
    with tempfile.TemporaryDirectory(prefix="kheap-debugger-") as tmp:
        commands_file = os.path.join(tmp, "commands.json")
        results_file = os.path.join(tmp, "results.json")
        script = os.path.join(tmp, "drive.py")
        Path(commands_file).write_text(json.dumps(list(commands)))
        Path(script).write_text(script_template.format(commands=commands_file, results=results_file))
        proc = subprocess.run(build_argv(script), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        steps = []
        if os.path.exists(results_file):
            steps = [Step(r["command"], r["output"], r["error"])
                     for r in json.loads(Path(results_file).read_text())]
        return Run(steps, proc.stdout, proc.stderr, proc.returncode)


def run_gdb(elf, port, commands, *, connect=True, load=True, timeout=120, pre=(), post=("detach",)):
    """Run ``commands`` in one gdb session attached to QEMU's gdbstub on ``port``."""

    def argv(script):
        line = [GDB, "--batch", "-nx", "-iex", "set pagination off", "-iex", "set confirm off"]
        if load:
            line += ["-ex", f"source {REPO / 'gdbext' / 'gdbinit.py'}"]
        line += ["-ex", f"file {elf}"]
        for command in pre:
            line += ["-ex", command]
        if connect:
            line += ["-ex", f"target remote 127.0.0.1:{port}"]
        line += ["-ex", f"source {script}"]
        for command in post:
            line += ["-ex", command]
        return line

    return _drive(_GDB_SCRIPT, argv, commands, timeout)


_LLDB_SCRIPT = textwrap.dedent("""
import json, lldb
results = []
interp = lldb.debugger.GetCommandInterpreter()
for command in json.load(open({commands!r})):
    ret = lldb.SBCommandReturnObject()
    interp.HandleCommand(command, ret)
    results.append({{"command": command, "output": ret.GetOutput() or "",
                     "error": ret.GetError() or ""}})
json.dump(results, open({results!r}, "w"))
""")


def run_lldb(elf, port, commands, *, connect=True, load=True, timeout=120, pre=(),
             post=("process detach",)):
    """Run ``commands`` in one lldb session attached to QEMU's gdbstub on ``port``."""

    def argv(script):
        line = lldb_argv("--batch", "--no-lldbinit", "-o", f"target create {Path(elf).resolve()}",
                         load=load)
        for command in pre:
            line += ["-o", command]
        if connect:
            line += ["-o", f"gdb-remote 127.0.0.1:{port}"]
        line += ["-o", f"command script import {script}"]
        for command in post:
            line += ["-o", command]
        return line

    return _drive(_LLDB_SCRIPT, argv, commands, timeout)
