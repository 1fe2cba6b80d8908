// js-no-progress: no-progress in JavaScript — fails the same way on every
// attempt, the smoke test for the no-progress rule and the hard reset.
//
// Optional inputs: show (paths whose content, or MISSING, it logs first),
// plant (a path it writes junk to), clobber (a path it overwrites; the same
// bytes every time, so the failure stays identical), echo (a line it
// prints), message (its error text), kind (the error's kind: retry by
// default, or contract, policy, repo, other).
import { step, log, workspace, Retry, Contract, Policy, Repo, Other } from 'stepd';

const KINDS = { retry: Retry, contract: Contract, policy: Policy, repo: Repo, other: Other };

export const run = step((ctx) => {
  for (const path of ctx.input('show', 'array', [])) {
    let seen = 'MISSING';
    try {
      seen = workspace.readText(path).trimEnd();
    } catch {}
    log(`attempt ${ctx.attempt} sees ${path}: ${seen}`);
  }
  if (Object.hasOwn(ctx.inputs, 'plant')) workspace.writeText(ctx.input('plant', 'string'), 'planted by a failed attempt\n');
  if (Object.hasOwn(ctx.inputs, 'clobber')) workspace.writeText(ctx.input('clobber', 'string'), 'clobbered by a failed attempt\n');
  if (Object.hasOwn(ctx.inputs, 'echo')) log(ctx.input('echo', 'string'));
  log('running lint');
  const kind = ctx.input('kind', 'string', 'retry');
  if (!Object.hasOwn(KINDS, kind)) throw new Contract(`inputs.kind must be one of ${Object.keys(KINDS).join(', ')}, not ${JSON.stringify(kind)}`);
  throw new KINDS[kind](ctx.input('message', 'string', 'lint failed: 3 problems in src/lib.rs'));
});
