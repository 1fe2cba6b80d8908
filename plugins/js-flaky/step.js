// js-flaky: flaky in JavaScript — fails with Retry on the first
// inputs.failAttempts attempts (default 1), then succeeds and writes
// inputs.path (default flaky.txt). Every attempt told a retry context logs
// it (`retry context: <class> after "<summary>" (<strategy>)`).
import { step, log, workspace, Retry } from 'stepd';

export const run = step((ctx) => {
  const failAttempts = ctx.input('failAttempts', 'number', 1);
  const told = ctx.retryContext;
  if (told) log(`retry context: ${told.failureClass} after "${told.failureSummary}" (${told.strategy})`);
  if (ctx.attempt <= failAttempts) {
    throw new Retry(`temporary failure on attempt ${ctx.attempt} (connection reset by upstream)`);
  }
  const path = ctx.input('path', 'string', 'flaky.txt');
  workspace.writeText(path, `succeeded on attempt ${ctx.attempt}\n`);
  return `succeeded on attempt ${ctx.attempt}`;
});
