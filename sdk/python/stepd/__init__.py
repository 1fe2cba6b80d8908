"""stepd: write a stepd step in Python.

A Python step is a directory holding ``step.py``; ``stepd plugin build DIR``
turns it into a WebAssembly component of the ``stepd:plugin/step`` world
(with componentize-py, pinned in ``sdk/python/requirements.txt``). The step
is one function, registered with :func:`step`::

    import stepd

    @stepd.step
    def run(ctx: stepd.Context):
        path = ctx.input("path", str)
        stepd.workspace(path).write_text(ctx.input("text", str))
        stepd.log(f"wrote {path}")
        return f"wrote {path}"

It returns a summary (``str``) or an :class:`Output`, or raises a
:class:`StepError` whose kind tells self-heal whether another attempt can
help (:class:`Retry`, :class:`Contract`, :class:`Policy`, :class:`Repo`,
:class:`Other`) — the same variants, with the same failure classes, as a
Rust step's ``StepError``. An ``OSError`` (or a ``UnicodeError``
reading a file that is not UTF-8) the step lets escape is an ``Other``
error (the host classifies its message), as ``?`` on an ``std::io::Error``
is in Rust. Any other exception is a crash: its
traceback goes to the step log and the attempt traps, as a Rust panic does.

The step sees only its workspace (:data:`WORKSPACE`), the variables and
secrets its job declares (:func:`env`, :func:`secret`), and its read-only
mounts. Everything it prints — with :func:`log`, or plain ``print`` — goes
to the step log and keeps the idle deadline from firing.
"""

import json
import pathlib
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Union

from componentize_py_types import Err
from wit_world.imports import environment, host
from wit_world.imports import stepd_plugin_types as types

#: Where the host mounts the step's workspace inside the sandbox.
WORKSPACE = "/workspace"

__all__ = [
    "WORKSPACE",
    "Context",
    "RetryContext",
    "Output",
    "StepError",
    "Retry",
    "Contract",
    "Policy",
    "Repo",
    "Other",
    "step",
    "log",
    "log_error",
    "progress",
    "workspace",
    "env",
    "secret",
]


class StepError(Exception):
    """A step's verdict on its own failure. Raise a subclass; its kind is
    the ``step-error`` variant the host acts on."""

    kind = "other"

    def __init__(self, message: str):
        message = str(message)
        super().__init__(message)
        self.message = message

    def _variant(self):
        return {
            "retry": types.StepError_Retry,
            "contract": types.StepError_Contract,
            "policy": types.StepError_Policy,
            "repo": types.StepError_Repo,
            "other": types.StepError_Other,
        }[self.kind](self.message)


class Retry(StepError):
    """This attempt failed, another may succeed (soft reset, then the
    no-progress rule, then a queue retry)."""

    kind = "retry"


class Contract(StepError):
    """The inputs or the step's own contract are wrong: never retried."""

    kind = "contract"


class Policy(StepError):
    """The step may not do what was asked: never retried."""

    kind = "policy"


class Repo(StepError):
    """The workspace is in a state the step cannot work with: never retried."""

    kind = "repo"


class Other(StepError):
    """Unclassified: the host classifies the message."""

    kind = "other"


_MISSING = object()


@dataclass(frozen=True)
class RetryContext:
    """What the host tells a retry about the failed attempt before it."""

    failure_summary: str
    failure_class: str
    failure_signature: str
    changed_files: List[str]
    diff_hash: Optional[str]
    strategy: str
    constraints: List[str]


@dataclass(frozen=True)
class Context:
    """Everything a step knows about the job it runs in."""

    job_id: str
    step_id: str
    #: 0-based position of the step in the task.
    step_index: int
    #: 1-based attempt number of this step.
    attempt: int
    objective: str
    title: str
    instructions: str
    #: The step's ``inputs`` object.
    inputs: dict
    #: ``None`` on a first attempt.
    retry_context: Optional[RetryContext]

    def input(self, name: str, kind: type = object, default: Any = _MISSING) -> Any:
        """``inputs[name]``, checked to be a ``kind`` (``str``, ``int``,
        ``list``, ...). A missing field without a default, or one of the
        wrong type, is the job's fault: a :class:`Contract` error naming
        it (``inputs.path must be a string``)."""
        if name not in self.inputs:
            if default is _MISSING:
                raise Contract(f"inputs.{name} is missing")
            return default
        value = self.inputs[name]
        if kind is not object and not _is(value, kind):
            raise Contract(f"inputs.{name} must be {_a(kind)}, not {_a(type(value))}")
        return value


@dataclass(frozen=True)
class Output:
    """A successful result: a summary line and optional JSON data."""

    summary: str
    data: Any = None


def _is(value: Any, kind: Any) -> bool:
    """``isinstance`` as JSON means it: a boolean is not a number, and an
    integer is a number (``3`` passes ``float``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if isinstance(value, bool) and k is not bool and k is not object:
            continue
        if k is float and isinstance(value, int):
            return True
        if isinstance(value, k):
            return True
    return False


def _a(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_a(k) for k in kind)
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def log(line: str) -> None:
    """Write a line to the step log (stdout). Resets the idle deadline."""
    host.emit(host.OutputStream.STDOUT, f"{line}\n")


def log_error(line: str) -> None:
    """Write a line to the step log's stderr stream."""
    host.emit(host.OutputStream.STDERR, f"{line}\n")


def progress(msg: str) -> None:
    """Say "alive and moving" without output: keeps the idle deadline from
    firing during long silent work."""
    host.progress(msg)


def workspace(relative: Union[str, pathlib.PurePath] = "") -> pathlib.Path:
    """The workspace root, or a path inside it. An absolute path or one
    with ``..`` is a :class:`Contract` error naming it: joined as is, it
    would point out of the workspace (where the sandbox refuses it)."""
    rel = pathlib.PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise Contract(f"path {str(relative)!r} must be relative to the workspace and must not contain ..")
    return pathlib.Path(WORKSPACE) / rel


def env(name: str) -> Optional[str]:
    """A variable the step was granted (``capabilities.env``), or ``None``.
    Read from the host at each call: ``os.environ`` is fixed when
    componentize-py builds the component, so it never holds the grants."""
    for key, value in environment.get_environment():
        if key == name:
            return value
    return None


def secret(name: str) -> str:
    """A secret the step was granted (``capabilities.secrets``), or a
    :class:`Contract` error naming it. The host redacts its value from
    everything it records; a step should still never print it."""
    value = env(name)
    if value is None:
        raise Contract(f"secret {name} was not granted: declare it in the step's capabilities.secrets")
    return value


_registered: Optional[Callable[[Context], Any]] = None


def step(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
    """Register ``fn`` as the step's ``run``. One per plugin."""
    global _registered
    if _registered is not None:
        raise RuntimeError(f"a step is already registered ({_registered.__name__}); a plugin has one")
    _registered = fn
    return fn


def _context(ctx: "types.StepContext") -> Context:
    try:
        inputs = json.loads(ctx.inputs) if ctx.inputs.strip() else {}
    except ValueError as e:
        raise Contract(f"inputs are not JSON: {e}") from None
    if not isinstance(inputs, dict):
        raise Contract("inputs must be a JSON object")
    told = ctx.retry_context
    return Context(
        job_id=ctx.job_id,
        step_id=ctx.step_id,
        step_index=ctx.step_index,
        attempt=ctx.attempt,
        objective=ctx.objective,
        title=ctx.title,
        instructions=ctx.instructions,
        inputs=inputs,
        retry_context=None if told is None else RetryContext(
            failure_summary=told.failure_summary,
            failure_class=told.failure_class,
            failure_signature=told.failure_signature,
            changed_files=list(told.changed_files),
            diff_hash=told.diff_hash,
            strategy=told.strategy,
            constraints=list(told.constraints),
        ),
    )


def _output(result: Any) -> "types.StepOutput":
    if isinstance(result, Output):
        try:
            data = None if result.data is None else json.dumps(result.data)
        except (TypeError, ValueError) as e:
            raise Contract(f"the step's output data is not JSON: {e}") from None
        return types.StepOutput(summary=str(result.summary), data=data)
    if result is None:
        return types.StepOutput(summary="done", data=None)
    return types.StepOutput(summary=str(result), data=None)


def _run_registered(ctx: "types.StepContext") -> "types.StepOutput":
    """The world's ``run``: the registered function, its result and its
    errors in the contract's shapes."""
    if _registered is None:
        raise Err(types.StepError_Contract("step.py registers no function: decorate one with @stepd.step"))
    try:
        return _output(_registered(_context(ctx)))
    except StepError as e:
        raise Err(e._variant()) from None
    except (OSError, UnicodeError) as e:
        # What `?` on an io::Error is in Rust (a file that is not UTF-8
        # included): the host classifies the message.
        raise Err(types.StepError_Other(str(e))) from None
    except Exception:
        # A crash, as a Rust panic is: the traceback to the log, then a trap.
        log_error(traceback.format_exc().rstrip())
        sys.stderr.flush()
        raise
