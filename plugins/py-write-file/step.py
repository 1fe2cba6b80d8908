"""py-write-file: write-file in Python — writes the files named in its inputs
into the workspace.

Inputs: ``{"path": "a.txt", "text": "..."}`` for one file, or
``{"files": {"a.txt": "...", "docs/b.md": "..."}}`` for several;
``"delete": [...]`` removes files afterwards (a missing one is a contract
error). For the sandbox tests: ``"hang": "sleep"`` sleeps silently forever
(``time.sleep``), ``"hang": "spin"`` computes forever; ``"allocateMb": N``
first holds N MiB of memory; ``"crash": true`` raises a plain exception;
``"read": path`` logs a file's text first (its errors escape); ``"env":
name`` logs a granted variable.
"""

import time

import stepd


def check_relative(path: str) -> None:
    # The sandbox would refuse such a path anyway; this names the mistake.
    if path.startswith("/") or ".." in path.split("/"):
        raise stepd.Contract(f"path {path!r} must be relative to the workspace and must not contain ..")


@stepd.step
def run(ctx: stepd.Context):
    hold = bytearray(ctx.input("allocateMb", int, 0) << 20)
    if ctx.input("crash", bool, False):
        raise RuntimeError("the step crashed on purpose")
    if "read" in ctx.inputs:
        stepd.log(f"read: {stepd.workspace(ctx.input('read', str)).read_text(encoding='utf-8')}")
    if "env" in ctx.inputs:
        name = ctx.input("env", str)
        stepd.log(f"{name}={stepd.env(name) or '(unset)'}")
    hang = ctx.input("hang", str, "")
    if hang == "sleep":
        while True:
            time.sleep(3600)
    if hang == "spin":
        n = 0
        while True:
            n += 1
    if "files" in ctx.inputs:
        files = ctx.input("files", dict)
        for path, text in files.items():
            if not isinstance(text, str):
                raise stepd.Contract(f"inputs.files.{path} must be a string")
    elif "path" in ctx.inputs or "delete" not in ctx.inputs:
        files = {ctx.input("path", str): ctx.input("text", str)}
    else:
        files = {}
    deletes = ctx.input("delete", list, [])
    for path in list(files) + deletes:
        check_relative(path)
    for path, text in files.items():
        target = stepd.workspace(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        stepd.log(f"wrote {path} ({len(text.encode())} bytes)")
    for path in deletes:
        try:
            stepd.workspace(path).unlink()
        except OSError as e:
            raise stepd.Contract(f"deleting {path}: {e}") from None
        stepd.log(f"deleted {path}")
    summary = f"wrote {len(files)} file(s)"
    if deletes:
        summary += f", deleted {len(deletes)}"
    del hold
    return summary
