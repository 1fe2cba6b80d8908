// stepd: write a stepd step in JavaScript.
//
// A JavaScript step is a directory holding `step.js`; `stepd plugin build
// DIR` bundles it (rolldown; `import ... from 'stepd'` is this file) and
// turns it into a WebAssembly component of the `stepd:plugin/step` world
// with componentize-js, both pinned in sdk/js/package.json. The step is
// one function, exported as `run` through `step`:
//
//     import { step, log, workspace } from 'stepd';
//
//     export const run = step((ctx) => {
//       const path = ctx.input('path', 'string');
//       workspace.writeText(path, ctx.input('text', 'string'));
//       log(`wrote ${path}`);
//       return `wrote ${path}`;
//     });
//
// It returns a summary (a string) or `{ summary, data }`, or throws a
// `StepError` whose kind tells self-heal whether another attempt can help
// (`Retry`, `Contract`, `Policy`, `Repo`, `Other`) — the same variants,
// with the same failure classes, as a Rust step's `StepError`. A
// filesystem error the step lets escape is an `Other` error (the host
// classifies its message). Any other exception is a crash: its stack goes
// to the step log and the attempt traps, as a Rust panic does.
//
// The step sees only its workspace (`workspace`, or `mount(path)` for a
// read-only mount), the variables and secrets its job declares (`env`,
// `secret`). JavaScript in a component has no `fs` module: `Dir` is the
// file API, over wasi:filesystem.

import { emit, progress as hostProgress } from 'stepd:plugin/host@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';
import { getEnvironment } from 'wasi:cli/environment@0.2.12';

/** Where the host mounts the step's workspace inside the sandbox. */
export const WORKSPACE = '/workspace';

/** A step's verdict on its own failure. Throw a subclass. */
export class StepError extends Error {
  constructor(message, kind = 'other') {
    super(message);
    this.kind = kind;
  }
}
/** This attempt failed, another may succeed. */
export class Retry extends StepError {
  constructor(message) { super(message, 'retry'); }
}
/** The inputs or the step's own contract are wrong: never retried. */
export class Contract extends StepError {
  constructor(message) { super(message, 'contract'); }
}
/** The step may not do what was asked: never retried. */
export class Policy extends StepError {
  constructor(message) { super(message, 'policy'); }
}
/** The workspace is in a state the step cannot work with: never retried. */
export class Repo extends StepError {
  constructor(message) { super(message, 'repo'); }
}
/** Unclassified: the host classifies the message. */
export class Other extends StepError {
  constructor(message) { super(message, 'other'); }
}

// The usual text of each wasi:filesystem error code: what a Rust or a
// Python step's error says for the same failure, so the host classifies
// an `FsError` that escapes a step as it does theirs.
const FS_MESSAGES = {
  'access': 'Permission denied',
  'not-permitted': 'Operation not permitted',
  'no-entry': 'No such file or directory',
  'exist': 'File exists',
  'is-directory': 'Is a directory',
  'not-directory': 'Not a directory',
  'not-empty': 'Directory not empty',
  'insufficient-space': 'No space left on device',
  'quota': 'Disk quota exceeded',
  'read-only': 'Read-only file system',
  'file-too-large': 'File too large',
  'name-too-long': 'File name too long',
  'invalid': 'Invalid argument',
  'io': 'I/O error',
  'loop': 'Too many levels of symbolic links',
  'bad-descriptor': 'Bad file descriptor',
  'busy': 'Device or resource busy',
  'would-block': 'Resource temporarily unavailable',
  'interrupted': 'Interrupted system call',
  'insufficient-memory': 'Out of memory',
  'cross-device': 'Cross-device link',
  'illegal-byte-sequence': 'Illegal byte sequence',
};

/** An error of a file operation: its wasi:filesystem code (`no-entry`, `exist`, ...) and what was asked. */
export class FsError extends Error {
  constructor(code, what) {
    super(`${what}: ${FS_MESSAGES[code] ?? code} (${code})`);
    this.code = code;
  }
}

function fsCall(what, call) {
  try {
    return call();
  } catch (e) {
    const code = e && e.payload !== undefined ? e.payload : e;
    throw new FsError(typeof code === 'string' ? code : String(code), what);
  }
}

// Close a wasi handle now rather than when the garbage collector gets to
// it: an attempt may hold only so many at once (its share of descriptors).
function close(handle) {
  if (handle && typeof handle[Symbol.dispose] === 'function') handle[Symbol.dispose]();
}

/** Write a line to the step log (stdout). Resets the idle deadline. */
export function log(line) {
  emit('stdout', `${line}\n`);
}

/** Write a line to the step log's stderr stream. */
export function logError(line) {
  emit('stderr', `${line}\n`);
}

/** Say "alive and moving" without output (keeps the idle deadline away). */
export function progress(msg) {
  hostProgress(msg);
}

/** A variable the step was granted (`capabilities.env`), or undefined. */
export function env(name) {
  const found = getEnvironment().find(([key]) => key === name);
  return found ? found[1] : undefined;
}

/** A secret the step was granted, or a `Contract` error naming it. */
export function secret(name) {
  const value = env(name);
  if (value === undefined) {
    throw new Contract(`secret ${name} was not granted: declare it in the step's capabilities.secrets`);
  }
  return value;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** A preopened directory (the workspace, or a mount) and the files under it. */
export class Dir {
  constructor(descriptor, path) {
    this.descriptor = descriptor;
    this.path = path;
  }

  #open(path, openFlags, flags) {
    return fsCall(`opening ${path}`, () =>
      this.descriptor.openAt({ symlinkFollow: false }, path, openFlags, flags));
  }

  /** The bytes of a file (a Uint8Array). */
  read(path) {
    const file = this.#open(path, {}, { read: true });
    const parts = [];
    try {
      const size = fsCall(`reading ${path}`, () => file.stat()).size;
      let offset = 0n;
      for (;;) {
        const [chunk, end] = fsCall(`reading ${path}`, () => file.read(size > 65536n ? size : 65536n, offset));
        parts.push(chunk);
        offset += BigInt(chunk.length);
        if (end || chunk.length === 0) break;
      }
    } finally {
      close(file);
    }
    const all = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
    let at = 0;
    for (const part of parts) {
      all.set(part, at);
      at += part.length;
    }
    return all;
  }

  /** A file's text (UTF-8; other bytes are an `FsError`, `illegal-byte-sequence`). */
  readText(path) {
    const bytes = this.read(path);
    try {
      return decoder.decode(bytes);
    } catch {
      throw new FsError('illegal-byte-sequence', `reading ${path} as UTF-8`);
    }
  }

  /** Write bytes (or text, as UTF-8) to a file, replacing it; its directory must exist (`mkdirs`). */
  write(path, data) {
    if (typeof data !== 'string' && !(data instanceof Uint8Array)) {
      throw new TypeError(`writing ${path}: data must be a string or a Uint8Array, not ${typeof data}`);
    }
    const bytes = typeof data === 'string' ? encoder.encode(data) : data;
    const file = this.#open(path, { create: true, truncate: true }, { write: true });
    try {
      let offset = 0;
      while (offset < bytes.length) {
        const wrote = fsCall(`writing ${path}`, () => file.write(bytes.subarray(offset), BigInt(offset)));
        if (wrote === 0n) throw new FsError('io', `writing ${path} (nothing written)`);
        offset += Number(wrote);
      }
    } finally {
      close(file);
    }
  }

  /** Write text (UTF-8) to a file, creating its directories. */
  writeText(path, text) {
    const parent = path.split('/').slice(0, -1).join('/');
    if (parent) this.mkdirs(parent);
    this.write(path, text);
  }

  /** Create a directory and its parents; an existing one is fine. */
  mkdirs(path) {
    let sofar = '';
    for (const part of path.split('/').filter(Boolean)) {
      sofar = sofar ? `${sofar}/${part}` : part;
      try {
        this.descriptor.createDirectoryAt(sofar);
      } catch (e) {
        const code = e && e.payload !== undefined ? e.payload : e;
        if (code !== 'exist') throw new FsError(String(code), `creating ${sofar}`);
      }
    }
  }

  /** Whether a path exists. */
  exists(path) {
    try {
      this.descriptor.statAt({ symlinkFollow: false }, path);
      return true;
    } catch {
      return false;
    }
  }

  /** Remove a file. */
  remove(path) {
    fsCall(`removing ${path}`, () => this.descriptor.unlinkFileAt(path));
  }

  /** The names in a directory ('' or '.' for this one), sorted. */
  list(path = '.') {
    const own = !(path === '.' || path === '');
    const dir = own ? this.#open(path, { directory: true }, { read: true }) : this.descriptor;
    const names = [];
    let entries;
    try {
      entries = fsCall(`listing ${path}`, () => dir.readDirectory());
      for (;;) {
        const entry = fsCall(`listing ${path}`, () => entries.readDirectoryEntry());
        if (!entry) break;
        names.push(entry.name);
      }
    } finally {
      close(entries);
      if (own) close(dir);
    }
    return names.sort();
  }
}

/** A preopened directory by its guest path (`/workspace`, or a mount's `guestPath`). */
export function mount(guestPath) {
  const found = getDirectories().find(([, path]) => path === guestPath);
  if (!found) throw new Contract(`${guestPath} is not mounted: declare it in the step's capabilities.mounts`);
  return new Dir(found[0], guestPath);
}

let workspaceDir;
/** The step's workspace. */
export const workspace = new Proxy({}, {
  get(_target, name) {
    workspaceDir ??= mount(WORKSPACE);
    const value = workspaceDir[name];
    return typeof value === 'function' ? value.bind(workspaceDir) : value;
  },
});

/** Everything a step knows about the job it runs in. */
class Context {
  constructor(raw) {
    this.jobId = raw.jobId;
    this.stepId = raw.stepId;
    /** 0-based position of the step in the task. */
    this.stepIndex = raw.stepIndex;
    /** 1-based attempt number of this step. */
    this.attempt = raw.attempt;
    this.objective = raw.objective;
    this.title = raw.title;
    this.instructions = raw.instructions;
    let inputs;
    try {
      inputs = raw.inputs.trim() ? JSON.parse(raw.inputs) : {};
    } catch (e) {
      throw new Contract(`inputs are not JSON: ${e.message}`);
    }
    if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
      throw new Contract('inputs must be a JSON object');
    }
    /** The step's `inputs` object. */
    this.inputs = inputs;
    /** undefined on a first attempt; else what the host tells the retry. */
    this.retryContext = raw.retryContext ?? undefined;
  }

  /**
   * `inputs[name]`, checked to be of `type` ('string', 'number', 'boolean',
   * 'object', 'array'). A missing field without a default, or one of the
   * wrong type, is a `Contract` error naming it.
   */
  input(name, type, fallback) {
    if (!Object.hasOwn(this.inputs, name)) {
      if (arguments.length < 3) throw new Contract(`inputs.${name} is missing`);
      return fallback;
    }
    const value = this.inputs[name];
    const actual = Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value;
    if (type && actual !== type) throw new Contract(`inputs.${name} must be ${article(type)}, not ${article(actual)}`);
    return value;
  }
}

function article(type) {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

function output(result) {
  if (result === undefined || result === null) return { summary: 'done', data: undefined };
  if (typeof result.then === 'function') {
    // A component's `run` returns before a promise settles: the work would
    // be lost, so an async step is refused rather than reported done.
    throw new Contract('run must be synchronous: it returned a Promise (a step cannot await)');
  }
  if (typeof result === 'object') {
    let data;
    try {
      data = result.data === undefined ? undefined : JSON.stringify(result.data);
    } catch (e) {
      throw new Contract(`the step's output data is not JSON: ${e.message}`);
    }
    return { summary: String(result.summary ?? 'done'), data };
  }
  return { summary: String(result), data: undefined };
}

/** Turn `fn(ctx)` into the world's `run`: export the result as `run`. */
export function step(fn) {
  return function run(raw) {
    try {
      return output(fn(new Context(raw)));
    } catch (e) {
      if (e instanceof StepError) throw { tag: e.kind, val: String(e.message) };
      if (e instanceof FsError) throw { tag: 'other', val: e.message };
      // A crash, as a Rust panic is: the stack to the log, then a trap.
      logError(e && e.stack ? `${e}\n${e.stack}` : String(e));
      throw e;
    }
  };
}
