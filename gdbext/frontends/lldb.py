"""The lldb face: a thin adapter from LLDB's SB API to the shared command table.

The only module that imports ``lldb``. Commands are classes registered with
``command script add -c`` under a ``kheap`` container and take the process from the execution
context lldb hands them, not the selected one. lldb has no Python resume event, so the per-stop
Program is keyed by the process's stop id: a new stop means a new cache.
"""

import shlex

import lldb  # noqa: I001 - this face exists to talk to lldb

from gdbext.core.memory import MemoryFault
from gdbext.frontends import commands, describe
from gdbext.frontends.session import ADDRESS_OF_KINDS, CommandError, Session, StopPlace
from gdbext.targets import RemoteTarget, TargetError, parse_hostport

_MASK64 = (1 << 64) - 1
# lldb's type classes as the kinds of session.ADDRESS_OF_KINDS (what an ADDR argument means).
_KINDS = {lldb.eTypeClassArray: "array", lldb.eTypeClassFunction: "function", lldb.eTypeClassStruct: "struct",
          lldb.eTypeClassClass: "struct", lldb.eTypeClassUnion: "union"}


class LldbReader:
    """``read(address, size) -> bytes`` over ``SBProcess.ReadMemory``; SBError -> MemoryFault."""

    def __init__(self, process):
        self._process = process

    def read(self, address, size):
        error = lldb.SBError()
        data = self._process.ReadMemory(address, size, error)
        if error.Fail() or data is None:
            raise MemoryFault(address, size, error.GetCString() or "unreadable")
        if len(data) < size:
            raise MemoryFault(address + len(data), size - len(data), "short read")
        return bytes(data)


class LldbSession(Session):
    """Session state for one lldb debugger; ``bind`` points it at a command's context."""

    face = "lldb"

    def setting_spelling(self, name, value=None):
        """How an lldb user sets a kheap setting, for the hints and errors that name one: lldb
        has no 'set kheap' (gdb's parameters); kheap's settings are its 'kheap set' command."""
        return f"kheap set {name}" + ("" if value is None else f" {value}")

    @property
    def debug_hint(self):
        """What the shared "internal error" line tells an lldb user to turn on."""
        return self.setting_spelling("debug", "on")

    def __init__(self):
        super().__init__()
        self._context = None
        self._stop_key = None
        self._watch = None
        self._stub_answered = False    # the stub's stop reply just arrived: no probe needed
        self.in_command = False        # a kheap command is running (blame's stops are its own)

    def bind(self, exe_ctx, fresh_stop=False):
        """Use this command's execution context, dropping the cache if the target moved on.

        ``fresh_stop``: lldb is handling the stop reply the stub just sent (a stop hook), so the
        stub is alive and the liveness probe (a packet of its own) is skipped for that one use.
        """
        self._context = exe_ctx
        self._stub_answered = fresh_stop
        process = exe_ctx.GetProcess() if exe_ctx is not None else None
        key = None
        if process is not None and process.IsValid():
            key = (process.GetUniqueID(), process.GetStopID())
        if key != self._stop_key:
            self._stop_key = key
            self.invalidate()

    def color_wanted(self):
        setting = self.current_settings()["color"]
        if setting != "auto":
            return setting == "on"
        debugger = self._context.GetTarget().GetDebugger() if self._context is not None else None
        return bool(debugger is not None and debugger.IsValid() and debugger.GetUseColor())

    def _target(self):
        target = self._context.GetTarget() if self._context is not None else None
        if target is None or not target.IsValid():
            raise CommandError("no target: use 'target create kernel/build/<arch>/kernel.elf'")
        return target

    def _process(self):
        process = self._context.GetProcess() if self._context is not None else None
        if process is None or not process.IsValid():
            self._target()                       # no ELF either: say that first
            raise CommandError("no live target: connect first (kheap connect HOST:PORT)")
        state = process.GetState()
        if state in (lldb.eStateRunning, lldb.eStateStepping):
            raise CommandError("the target is running: interrupt it first (process interrupt)")
        if state in (lldb.eStateExited, lldb.eStateDetached, lldb.eStateInvalid,
                     lldb.eStateUnloaded, lldb.eStateCrashed):
            raise CommandError("the target is gone: reconnect with kheap connect HOST:PORT")
        return process

    def elf_path(self):
        spec = self._target().GetExecutable()
        if not spec.IsValid() or not spec.fullpath:
            raise CommandError("no kernel ELF: use 'target create kernel/build/<arch>/kernel.elf'")
        return spec.fullpath

    def reader(self):
        process = self._process()
        self._probe(process)
        return LldbReader(process)

    def check_alive(self, program):
        self._probe(self._process())

    def _probe(self, process):
        if self._stub_answered:
            return
        # After QEMU dies a stopped lldb still says "stopped" (it does not read its socket) and
        # serves ReadMemory from its own caches (code from the ELF file, data per stop), so ask
        # the stub itself: 'qC' is read-only and costs one round trip. (Not '?': its stop reply
        # leaves lldb 14 waiting for one more, and the next 'process continue' never returns.)
        interpreter = process.GetTarget().GetDebugger().GetCommandInterpreter()
        ret = lldb.SBCommandReturnObject()
        interpreter.HandleCommand("process plugin packet send qC", ret)
        # A live stub always answers 'qC' (QC<thread>); a dead link gives nothing.
        response = ""
        for line in (ret.GetOutput() or "").splitlines():
            if line.strip().startswith("response:"):
                response = line.split(":", 1)[1].strip()
        if not ret.Succeeded() or not response:
            raise CommandError("the target is gone: the gdbstub no longer answers "
                               "(reconnect with kheap connect HOST:PORT)")

    def evaluate(self, expression):
        try:
            return int(expression, 0)
        except ValueError:
            pass
        process = self._process()
        frame = self._context.GetFrame()
        if not frame.IsValid():
            frame = process.GetSelectedThread().GetSelectedFrame()

        def evaluate(text):
            value = frame.EvaluateExpression(text) if frame.IsValid() else self._target().EvaluateExpression(text)
            if not value.IsValid() or value.GetError().Fail():
                reason = value.GetError().GetCString() if value.IsValid() else "invalid expression"
                raise CommandError(f"cannot evaluate {expression!r}: {(reason or '').strip()}")
            return value

        value = evaluate(expression)
        if _KINDS.get(value.GetType().GetCanonicalType().GetTypeClass()) in ADDRESS_OF_KINDS:
            # An expression's result is a copy with no address: ask for the object's address.
            value = evaluate(f"&({expression})")
        return value.GetValueAsUnsigned() & _MASK64

    def blame_target(self):
        from gdbext.frontends.lldb_blame import LldbBlameTarget

        return LldbBlameTarget(self)

    def watch_controller(self):
        if self._watch is None:
            from gdbext.frontends.lldb_watch import WatchController

            self._watch = WatchController(self)
        return self._watch

    def stop_place(self, frame_limit=16):
        process = self._process()
        thread = self._context.GetThread()
        if not thread.IsValid():
            thread = process.GetSelectedThread()
        frames = []
        for frame, pc in _frames(thread, frame_limit):
            line = frame.GetLineEntry()
            source = ""
            if line.IsValid() and line.GetFileSpec().IsValid():
                source = f"{line.GetFileSpec().GetFilename()}:{line.GetLine()}"
            frames.append({"pc": pc, "function": frame.GetFunctionName() or "??", "source": source})
        return StopPlace(pc=frames[0]["pc"] if frames else None,
                         function=frames[0]["function"] if frames else None,
                         frames=frames, registers=_general_registers(thread),
                         thread=thread.GetIndexID())

    def core_states(self, frame_limit=64):
        """Every core (a thread of QEMU's gdbstub): general registers and frames with SP."""
        from gdbext.core.reach import CoreState

        process = self._process()
        cores = []
        for index in range(process.GetNumThreads()):
            thread = process.GetThreadAtIndex(index)
            frames = [{"pc": pc, "function": frame.GetFunctionName() or "??",
                       "sp": frame.GetSP() & _MASK64} for frame, pc in _frames(thread, frame_limit)]
            cores.append(CoreState(thread.GetIndexID(), _general_registers(thread), frames))
        return cores


def _frames(thread, limit):
    """(SBFrame, pc) for the newest ``limit`` frames, each pc as gdb gives it.

    A function inlined into another is a frame of its own in both debuggers, but lldb gives the
    frame it was inlined into the address of the call site, where gdb (and the hardware) has one
    pc for the whole physical frame. Frames above an inlined one get that pc here, so triage and
    the stack slots of leaks --scan/refs say the same in lldb as in gdb."""
    pc = None
    for index in range(min(thread.GetNumFrames(), limit)):
        frame = thread.GetFrameAtIndex(index)
        if pc is None or not thread.GetFrameAtIndex(index - 1).IsInlined():
            pc = frame.GetPC()
        yield frame, pc


def _general_registers(thread):
    """The newest frame's registers of lldb's "general" set, by name."""
    registers = {}
    if thread.GetNumFrames():
        for register_set in thread.GetFrameAtIndex(0).GetRegisters():
            if "general" not in (register_set.GetName() or "").lower():
                continue
            for register in register_set:
                registers[register.GetName()] = register.GetValueAsUnsigned() & _MASK64
    return registers


_SESSION = LldbSession()


def _emit(result, outcome):
    if outcome.is_error:
        result.SetError(outcome.text.rstrip("\n"))
    elif outcome.text:
        result.AppendMessage(outcome.text.rstrip("\n"))


def _keep_named(debugger, exe_ctx, named):
    """gdb's ``$_``/``$__`` in lldb's words: the segment a command named (Outcome.named) in the
    persistent variables ``$_`` (a pointer to its header, typed: ``p *$_``, ``p $_->next``) and
    ``$__`` (its payload, ``void *``: ``memory read $__``). Best effort: a failure changes
    nothing and says nothing (the command already answered)."""
    prog = _SESSION._program            # the command's own Program (no new read or probe)
    try:
        facts = prog.allocator.facts(prog).get("segment_type", {}) if prog is not None else {}
    except Exception:  # noqa: BLE001 - the variables are extra; never fail the command for them
        facts = {}
    names = describe.type_spellings([facts["name"]]) if facts.get("source") == "DWARF type" else []
    _set_variable(debugger, exe_ctx, "$_", [f"{name} *" for name in names] + ["void *"], named.header)
    _set_variable(debugger, exe_ctx, "$__", ["void *"], named.payload)


def _set_variable(debugger, exe_ctx, name, types, value):
    """``name = (type)value`` as an lldb persistent variable: assigned if it exists (lldb 14
    refuses to declare one twice), else declared with the first type lldb accepts."""
    quiet = "expression --ignore-breakpoints true --unwind-on-error true -- "
    for spelling in types:
        if _run(debugger, f"{quiet}(void)({name} = ({spelling})0x{value:x})", exe_ctx).Succeeded():
            return
        if _run(debugger, f"{quiet}{spelling}{name} = ({spelling})0x{value:x}", exe_ctx).Succeeded():
            return


class _KheapCommand:
    """Base of the generated ``kheap <name>`` classes; ``name`` is set per subclass."""

    name = ""

    def __init__(self, debugger, internal_dict):
        self._command = commands.command_named(self.name)

    def __call__(self, debugger, command, exe_ctx, result):
        _SESSION.bind(exe_ctx)
        try:
            argv = shlex.split(command)
        except ValueError as error:
            result.SetError(f"kheap {self.name}: {error}")
            return
        _SESSION.in_command = True
        try:
            outcome = commands.execute_to_text(_SESSION, self.name, argv)
        finally:
            _SESSION.in_command = False
        if outcome.named is not None:
            _keep_named(debugger, exe_ctx, outcome.named)
        if debugger.GetCommandInterpreter().WasInterrupted() and outcome.text:
            # lldb drops an interrupted command's result: what it saw goes to the output.
            stream = debugger.GetErrorFile() if outcome.is_error else debugger.GetOutputFile()
            if stream is not None and stream.IsValid():
                stream.Write((outcome.text.rstrip("\n") + "\n").encode())
                stream.Flush()
        _emit(result, outcome)

    def get_short_help(self):
        return self._command.summary

    def get_long_help(self):
        return commands.long_help(self._command)


_HOOK_CLASS = f"{__name__}.AutoCheckHook"


def _run(debugger, line, exe_ctx=None):
    """One lldb command through the interpreter; its SBCommandReturnObject."""
    ret = lldb.SBCommandReturnObject()
    interpreter = debugger.GetCommandInterpreter()
    if exe_ctx is not None:
        interpreter.HandleCommand(line, exe_ctx, ret)
    else:
        interpreter.HandleCommand(line, ret)
    return ret


def _auto_check_hooks(debugger, exe_ctx):
    """The ids of the target's stop hooks that run kheap's auto-check, as lldb lists them (so a
    hook deleted by hand, or left by an earlier import of kheap, is seen as it is)."""
    listing = _run(debugger, "target stop-hook list", exe_ctx).GetOutput() or ""
    ids, hook = [], None
    for line in listing.splitlines():
        words = line.replace(":", " ").split()
        if len(words) >= 2 and words[0] == "Hook" and words[1].isdigit():
            hook = int(words[1])
        elif hook is not None and _HOOK_CLASS in line:
            ids.append(hook)
            hook = None
    return ids


def set_auto_check(debugger, exe_ctx, value):
    """``kheap auto-check on|off`` (and ``kheap set auto-check``): exactly one stop hook while
    on, none while off, however often either is asked for. Returns the message to print."""
    target = exe_ctx.GetTarget() if exe_ctx is not None else None
    if target is None or not target.IsValid():
        target = debugger.GetSelectedTarget()
    if target is None or not target.IsValid():
        raise CommandError("kheap auto-check: no target: use 'target create "
                           "kernel/build/<arch>/kernel.elf' first")
    _SESSION.apply_setting("auto-check", value)
    on = _SESSION.auto_check
    context = lldb.SBExecutionContext(target)
    hooks = _auto_check_hooks(debugger, context)
    if on and not hooks:
        ret = _run(debugger, f"target stop-hook add -P {_HOOK_CLASS}", context)
        if not ret.Succeeded():
            _SESSION.apply_setting("auto-check", "off")
            raise CommandError(f"kheap auto-check: cannot add a stop hook: "
                               f"{(ret.GetError() or 'failed').strip()}")
    for hook in hooks[1:] if on else hooks:
        _run(debugger, f"target stop-hook delete {hook}", context)
    return f"kheap auto-check is {'on' if on else 'off'}"


class AutoCheckCommand:
    """``kheap auto-check on|off``: check the heap at every stop through a stop hook."""

    def __init__(self, debugger, internal_dict):
        pass

    def __call__(self, debugger, command, exe_ctx, result):
        words = command.split()
        if len(words) != 1 or words[0] not in ("on", "off"):
            result.SetError("usage: kheap auto-check on|off")
            return
        try:
            result.AppendMessage(set_auto_check(debugger, exe_ctx, words[0]))
        except CommandError as error:
            result.SetError(str(error))

    def get_short_help(self):
        return "Check the heap at every stop (on|off)."


class AutoCheckHook:
    """The scripted stop hook of ``kheap auto-check``: the one-line verdict at every stop.

    lldb 14 runs stop hooks when its event loop takes the stop event, before it prints the stop
    ("Process N stopped", the frame), so the verdict comes first; in a script or ``--batch`` the
    command's own "Process N resuming" comes after it too. lldb has no later hook (the stop's
    printout is not extensible short of rewriting the user's thread-stop-format).

    ``handle_stop`` returns True: "this thread votes to stop" (False would make lldb resume the
    target, and a user's breakpoint stop would vanish). It sends no packet of its own (the stop
    reply proves the stub alive), and it stays quiet at the stops a kheap command makes itself
    (kheap blame's watchpoint stops run the target under its own control).
    """

    def __init__(self, target, extra_args, internal_dict):
        pass

    def handle_stop(self, exe_ctx, stream):
        if not _SESSION.auto_check or _SESSION.in_command:
            return True
        _SESSION.bind(exe_ctx, fresh_stop=True)
        try:
            outcome = commands.execute_to_text(_SESSION, "check", ["--verdict"])
        finally:
            _SESSION._stub_answered = False
        stream.Print(outcome.text if outcome.text.endswith("\n") else outcome.text + "\n")
        return True


class ConnectCommand:
    """``kheap connect HOST:PORT``: ``gdb-remote`` that survives QEMU's greeting.

    When lldb 14 connects to a running QEMU, QEMU pauses the VM and sends an unsolicited stop
    reply (``T02thread:01;``) that lldb takes as the answer to its ``QStartNoAckMode``: it
    calls the handshake failed and hangs up. lldb does connect cleanly to a paused VM, so this
    command first pauses it with kheap's own read-only RSP client (which leaves the VM paused
    when it closes without detaching), then runs ``gdb-remote``.
    """

    def __init__(self, debugger, internal_dict):
        pass

    def __call__(self, debugger, command, exe_ctx, result):
        where = command.strip()
        try:
            host, port = parse_hostport(where)
            with RemoteTarget(host, port, detach=False):
                pass
        except TargetError as error:
            result.SetError(f"kheap connect: {error}")
            return
        ret = lldb.SBCommandReturnObject()
        debugger.GetCommandInterpreter().HandleCommand(f"gdb-remote {host}:{port}", ret)
        if ret.Succeeded():
            result.AppendMessage((ret.GetOutput() or "").rstrip("\n") or f"connected to {where}")
        else:
            result.SetError(f"kheap connect: {(ret.GetError() or 'failed').strip()}")

    def get_short_help(self):
        return "Connect to QEMU's gdbstub (gdb-remote that works with a running VM)."


class SettingsCommand:
    """``kheap set NAME VALUE`` / ``kheap show [NAME]``: the same settings as gdb's parameters."""

    show = False

    def __init__(self, debugger, internal_dict):
        pass

    def __call__(self, debugger, command, exe_ctx, result):
        words = command.split()
        names = [name for name, *_ in commands.SETTINGS]
        try:
            if self.show:
                current = _SESSION.current_settings()
                for name in (words or names):
                    if name not in current:
                        raise CommandError(f"no setting {name!r} (one of: {', '.join(names)})")
                    value = current[name]
                    shown = "auto" if value is None else ("on" if value is True else
                                                          "off" if value is False else value)
                    result.AppendMessage(f"kheap {name} is {shown}")
                return
            if len(words) != 2 or words[0] not in names:
                raise CommandError(f"usage: kheap set NAME VALUE (NAME: {', '.join(names)})")
            if words[0] == "auto-check":         # the setting is the stop hook: one way in
                set_auto_check(debugger, exe_ctx, words[1])
                return
            _SESSION.apply_setting(words[0], words[1])
        except CommandError as error:
            result.SetError(str(error))

    def get_short_help(self):
        return "Show kheap settings." if self.show else "Set a kheap setting: kheap set NAME VALUE."


class ShowSettingsCommand(SettingsCommand):
    show = True


class ShowCommand(_KheapCommand):
    """``kheap show``: lldb's settings (``kheap show [NAME]``, gdb's ``show kheap``) and the
    table's one-segment view (``kheap show ADDR``) share the word: no argument or a setting's
    name shows settings, anything else is an address."""

    name = "show"

    def __call__(self, debugger, command, exe_ctx, result):
        words = command.split()
        if not words or words[0] in {name for name, *_ in commands.SETTINGS}:
            ShowSettingsCommand(debugger, None)(debugger, command, exe_ctx, result)
            return
        super().__call__(debugger, command, exe_ctx, result)

    def get_short_help(self):
        return f"{self._command.summary} Without ADDR, or with a setting's name: the kheap settings."


def _summary(tag):
    describe = commands.struct_describer(tag)

    def summary(valobj, internal_dict):
        try:
            pointer = valobj.TypeIsPointerType()
            if pointer:
                # lldb hands a summary the pointers to its type too: describe what they point
                # to ("" is no summary; lldb would print None as "None").
                pointee = valobj.GetValueAsUnsigned()
                if pointee == 0:
                    return ""
                # Fresh from memory: Dereference() of a persistent variable ($_) keeps the
                # pointee it first saw, whatever the variable was assigned since.
                valobj = valobj.CreateValueFromAddress("*", pointee, valobj.GetType().GetPointeeType())
                if not valobj.IsValid() or valobj.GetError().Fail():
                    return "<unreadable>"
            process = valobj.GetProcess()
            _SESSION.bind(lldb.SBExecutionContext(process.GetSelectedThread().GetSelectedFrame())
                          if process.IsValid() else None)
            address = valobj.GetLoadAddress()
            error = lldb.SBError()
            raw = valobj.GetData().ReadRawData(error, 0, valobj.GetByteSize())
            if pointer and (error.Fail() or not raw):
                return "<unreadable>"
            return describe(_SESSION, address if address != lldb.LLDB_INVALID_ADDRESS else None,
                            bytes(raw or b""))
        except Exception as error:  # noqa: BLE001 - a summary must never break 'frame variable'
            return f"<kheap: {error}>"

    return summary


segment_summary = _summary("heap_segment")
page_summary = _summary("page")


def register(debugger):
    """Create the kheap container, its commands, type summaries and settings (once)."""
    module = __name__

    def run(line):
        ret = lldb.SBCommandReturnObject()
        debugger.GetCommandInterpreter().HandleCommand(line, ret)
        return ret

    if run("help kheap").Succeeded():
        return False
    # 'command script add -c' and 'type summary add -F' resolve dotted names in lldb's own
    # script namespace, so this module must be imported there, not only in lldbinit's.
    run(f"script import {module}")
    run(f"command container add -h '{commands.PREFIX_SUMMARY}' kheap")
    for command in commands.commands_for("lldb"):
        if command.name == "show":
            run(f"command script add -c {module}.ShowCommand kheap show")     # and the settings
            continue
        class_name = "Kheap_" + command.name.replace("-", "_")
        globals()[class_name] = type(class_name, (_KheapCommand,), {"name": command.name})
        run(f"command script add -c {module}.{class_name} kheap {command.name}")
    run(f"command script add -c {module}.AutoCheckCommand kheap auto-check")
    run(f"command script add -c {module}.ConnectCommand kheap connect")
    run(f"command script add -c {module}.SettingsCommand kheap set")
    for type_name in describe.type_spellings(describe.SEGMENT_TAGS):
        run(f"type summary add -F {module}.segment_summary '{type_name}'")
    for type_name in describe.type_spellings(describe.PAGE_TAGS):
        run(f"type summary add -F {module}.page_summary '{type_name}'")
    return True
