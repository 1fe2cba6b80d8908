"""py-no-progress: no-progress in Python — fails the same way on every
attempt, the smoke test for the no-progress rule and the hard reset.

Optional inputs: ``show`` (paths whose content, or ``MISSING``, it logs
first), ``plant`` (a path it writes junk to), ``clobber`` (a path it
overwrites; the same bytes every time, so the failure stays identical),
``echo`` (a line it prints), ``message`` (its error text), ``kind`` (the
error's kind: ``retry`` by default, or ``contract``, ``policy``, ``repo``,
``other``).
"""

import stepd

KINDS = {"retry": stepd.Retry, "contract": stepd.Contract, "policy": stepd.Policy,
         "repo": stepd.Repo, "other": stepd.Other}


@stepd.step
def run(ctx: stepd.Context):
    for path in ctx.input("show", list, []):
        try:
            seen = stepd.workspace(path).read_text().rstrip()
        except OSError:
            seen = "MISSING"
        stepd.log(f"attempt {ctx.attempt} sees {path}: {seen}")
    if "plant" in ctx.inputs:
        stepd.workspace(ctx.input("plant", str)).write_text("planted by a failed attempt\n")
    if "clobber" in ctx.inputs:
        stepd.workspace(ctx.input("clobber", str)).write_text("clobbered by a failed attempt\n")
    if "echo" in ctx.inputs:
        stepd.log(ctx.input("echo", str))
    stepd.log("running lint")
    kind = ctx.input("kind", str, "retry")
    if kind not in KINDS:
        raise stepd.Contract(f"inputs.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    raise KINDS[kind](ctx.input("message", str, "lint failed: 3 problems in src/lib.rs"))
