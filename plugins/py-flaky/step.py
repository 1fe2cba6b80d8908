"""py-flaky: flaky in Python — fails with ``Retry`` on the first
``inputs.failAttempts`` attempts (default 1), then succeeds and writes
``inputs.path`` (default ``flaky.txt``). Every attempt told a retry context
logs it (``retry context: <class> after "<summary>" (<strategy>)``).
"""

import stepd


@stepd.step
def run(ctx: stepd.Context):
    fail_attempts = ctx.input("failAttempts", int, 1)
    told = ctx.retry_context
    if told is not None:
        stepd.log(f'retry context: {told.failure_class} after "{told.failure_summary}" ({told.strategy})')
    if ctx.attempt <= fail_attempts:
        raise stepd.Retry(f"temporary failure on attempt {ctx.attempt} (connection reset by upstream)")
    path = ctx.input("path", str, "flaky.txt")
    stepd.workspace(path).write_text(f"succeeded on attempt {ctx.attempt}\n")
    return f"succeeded on attempt {ctx.attempt}"
