// Builds one JavaScript step into a component:
//   node build.mjs STEP_JS SDK_JS WIT_DIR WORLD OUT_WASM
// stepd plugin build (host/pluginbuild) runs it from the toolchain
// directory it installed with `npm ci`, where these imports resolve.
// rolldown bundles the step with its imports (`stepd` is SDK_JS; the
// world's `stepd:` and `wasi:` interfaces stay imports of the component),
// then componentize-js turns the bundle into a component. The component
// is written beside OUT_WASM and renamed over it, so a reader never sees
// it half-written.
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rolldown } from 'rolldown';
import { componentize } from '@bytecodealliance/componentize-js';

const [stepJs, sdkJs, witDir, world, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs STEP_JS SDK_JS WIT_DIR WORLD OUT_WASM');
  process.exit(2);
}
const scratch = await mkdtemp(join(tmpdir(), 'stepd-js-'));
try {
  const bundle = await rolldown({
    input: stepJs,
    platform: 'neutral',
    external: [/^(wasi|stepd):/],
    resolve: { alias: { stepd: sdkJs } },
    logLevel: 'warn',
  });
  const bundled = join(scratch, 'step.bundle.js');
  await bundle.write({ file: bundled, format: 'esm' });
  await bundle.close();
  const { component } = await componentize({ sourcePath: bundled, witPath: witDir, worldName: world });
  await writeFile(`${out}.tmp`, component);
  await rename(`${out}.tmp`, out);
} finally {
  await rm(scratch, { recursive: true, force: true });
}
