// js-write-file: write-file in JavaScript — writes the files named in its
// inputs into the workspace.
//
// Inputs: {"path": "a.txt", "text": "..."} for one file, or
// {"files": {"a.txt": "...", "docs/b.md": "..."}} for several;
// "delete": [...] removes files afterwards (a missing one is a contract
// error). For the sandbox tests: "hang": "sleep" or "spin" computes
// silently forever (JavaScript in a component has no blocking sleep);
// "allocateMb": N first holds N MiB of memory; "crash": true throws a
// plain Error; "read": path logs a file's text first (its errors escape);
// "env": name logs a granted variable.
import { step, log, env, workspace, Contract } from 'stepd';

function checkRelative(path) {
  // The sandbox would refuse such a path anyway; this names the mistake.
  if (path.startsWith('/') || path.split('/').includes('..')) {
    throw new Contract(`path ${JSON.stringify(path)} must be relative to the workspace and must not contain ..`);
  }
}

export const run = step((ctx) => {
  const hold = new Uint8Array(ctx.input('allocateMb', 'number', 0) * 1024 * 1024);
  hold.fill(1);
  if (ctx.input('crash', 'boolean', false)) throw new Error('the step crashed on purpose');
  if (Object.hasOwn(ctx.inputs, 'read')) log(`read: ${workspace.readText(ctx.input('read', 'string'))}`);
  if (Object.hasOwn(ctx.inputs, 'env')) {
    const name = ctx.input('env', 'string');
    log(`${name}=${env(name) ?? '(unset)'}`);
  }
  const hang = ctx.input('hang', 'string', '');
  if (hang === 'sleep' || hang === 'spin') {
    let n = 0;
    for (;;) n += 1;
  }
  let files = {};
  if (Object.hasOwn(ctx.inputs, 'files')) {
    files = ctx.input('files', 'object');
    for (const [path, text] of Object.entries(files)) {
      if (typeof text !== 'string') throw new Contract(`inputs.files.${path} must be a string`);
    }
  } else if (Object.hasOwn(ctx.inputs, 'path') || !Object.hasOwn(ctx.inputs, 'delete')) {
    files = { [ctx.input('path', 'string')]: ctx.input('text', 'string') };
  }
  const deletes = ctx.input('delete', 'array', []);
  for (const path of [...Object.keys(files), ...deletes]) checkRelative(path);
  for (const [path, text] of Object.entries(files)) {
    workspace.writeText(path, text);
    log(`wrote ${path} (${new TextEncoder().encode(text).length} bytes)`);
  }
  for (const path of deletes) {
    try {
      workspace.remove(path);
    } catch (e) {
      throw new Contract(`deleting ${path}: ${e.message}`);
    }
    log(`deleted ${path}`);
  }
  let summary = `wrote ${Object.keys(files).length} file(s)`;
  if (deletes.length) summary += `, deleted ${deletes.length}`;
  return summary;
});
