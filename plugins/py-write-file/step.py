"""py-write-file: write-file in Python — writes the files named in its inputs
into the workspace.

Inputs: ``{"path": "a.txt", "text": "..."}`` for one file, or
``{"files": {"a.txt": "...", "docs/b.md": "..."}}`` for several;
``"delete": [...]`` removes files afterwards (a missing one is a contract
error). For the sandbox tests: ``"hang": "sleep"`` sleeps silently forever
(``time.sleep``), ``"hang": "spin"`` computes forever; ``"allocateMb": N``
first holds N MiB of memory.
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
        target.write_text(text)
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
