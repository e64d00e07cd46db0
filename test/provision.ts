import { spawnSync } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { NATS_SERVER } from './helpers/nats-server.js';

/**
 * One thing the tests run that Node does not bring: how to tell it is there, and the Debian
 * package that brings it.
 */
export interface Need {
  /** What a reader sees in messages: a command name or a file. */
  what: string;
  /** The Debian package that provides it. */
  pkg: string;
  /** Which tests use it, and for what. */
  why: string;
  /** Whether it is there, looked up in `env` (PATH, NATS_SERVER). */
  present(env: NodeJS.ProcessEnv): boolean;
}

/** A command, found as an executable on `env.PATH` (or at an absolute path). */
function command(name: string, pkg: string, why: string): Need {
  return { what: name, pkg, why, present: (env) => findCommand(name, env) !== undefined };
}

/** A file the tests read at a fixed place. */
function file(at: string, pkg: string, why: string): Need {
  return { what: at, pkg, why, present: () => canAccess(at, constants.R_OK) };
}

/**
 * Everything the test suite needs beyond Node and npm, checked before `npm test` (the
 * `pretest` script) and before any `vitest` run (the global setup). A test that starts
 * using a new tool adds one line here.
 */
export const NEEDS: readonly Need[] = [
  { what: 'nats-server', pkg: 'nats-server', why: 'the NATS JetStream server the NATS tests start on a free port', present: (env) => findCommand(env.NATS_SERVER ?? NATS_SERVER, env) !== undefined },
  command('python3', 'python3', 'Python tarfile, re and repr as independent checks of the XVA, tar, selection and .meta code'),
  file('/usr/lib/python3/dist-packages/os_xenapi/client/XenAPI.py', 'python3-os-xenapi', "Python's official XenAPI.py, a second client of the XAPI simulator"),
  command('qemu-img', 'qemu-utils', 'qemu-img check/convert: an independent reader of the VHDs we write and serve'),
  command('qemu-nbd', 'qemu-utils', 'an independent NBD server that checks vmbackup\'s NBD client'),
  command('vhdiinfo', 'libvhdi-utils', 'a second independent VHD reader'),
  command('xxhsum', 'xxhash', 'an independent XXH64 for XVA chunk checksums'),
  command('zstd', 'zstd', 'XAPI pipes exports through the zstd binary; the simulator and verify do too'),
  command('openssl', 'openssl', "the simulator's and the NATS tests' TLS certificates"),
  command('script', 'bsdutils', 'a pseudo-terminal for the command, to test its live progress lines'),
  file('/usr/bin/chromium', 'chromium', 'the browser that playwright-core drives through the gateway\'s status page'),
  command('promtool', 'prometheus', 'promtool check config / check rules / test rules on infra/prometheus and the series vmbackup writes'),
];

/** What to do about the missing needs: nothing, install their packages, or stop and say how. */
export type ProvisionPlan =
  | { action: 'none' }
  | { action: 'install'; packages: string[]; missing: string[] }
  | { action: 'stop'; packages: string[]; missing: string[] };

/**
 * The pure decision: given what is missing and whether we are root, what to do.
 *
 * @example
 *   provisionPlan(NEEDS.filter((n) => n.pkg === 'xxhash'), false)
 *   // → { action: 'stop', packages: ['xxhash'], missing: ['xxhsum'] }
 */
export function provisionPlan(missing: readonly Need[], root: boolean): ProvisionPlan {
  if (missing.length === 0) return { action: 'none' };
  const packages = [...new Set(missing.map((n) => n.pkg))];
  return { action: root ? 'install' : 'stop', packages, missing: missing.map((n) => n.what) };
}

/** The one line a user who is not root runs (as root) to get the packages. */
export function installLine(packages: readonly string[]): string {
  return `apt-get install -y ${packages.join(' ')}`;
}

/** The needs that are not there in `env`. */
export function missingNeeds(env: NodeJS.ProcessEnv = process.env, needs: readonly Need[] = NEEDS): Need[] {
  return needs.filter((n) => !n.present(env));
}

/** Raised when the tests cannot run: the message says what is missing and what to run. */
export class ProvisionError extends Error {
  override name = 'ProvisionError';
}

/** How long apt-get waits for another apt-get's lock before it gives up, in seconds. */
const APT_LOCK_WAIT_S = 600;

/**
 * Makes sure the tests' tools are there. Nothing missing: silent. Missing and root: says which
 * packages it installs (one line), runs `apt-get update` and `apt-get install -y`
 * non-interactively, then checks again. Missing and not root: throws a ProvisionError whose
 * message ends with the `apt-get install …` line to run, and installs nothing.
 */
export function provision(env: NodeJS.ProcessEnv = process.env, say: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): void {
  const plan = provisionPlan(missingNeeds(env), process.getuid?.() === 0);
  if (plan.action === 'none') return;
  if (plan.action === 'stop') {
    throw new ProvisionError(`the tests need ${plan.missing.join(', ')}, which are missing; as root, run:\n  ${installLine(plan.packages)}`);
  }
  say(`vmbackup tests: installing Debian packages ${plan.packages.join(' ')} (missing: ${plan.missing.join(', ')})`);
  if (findCommand('apt-get', env) === undefined) {
    throw new ProvisionError(`the tests need ${plan.missing.join(', ')}, which are missing, and there is no apt-get to install Debian packages ${plan.packages.join(' ')}`);
  }
  const aptEnv = { ...env, DEBIAN_FRONTEND: 'noninteractive' };
  // Two test runs started at once on a fresh machine both install: the second waits for the
  // first's dpkg lock (then finds the packages there) instead of failing at once.
  const wait = ['-o', `DPkg::Lock::Timeout=${APT_LOCK_WAIT_S}`];
  for (const args of [['update'], ['install', '-y', ...plan.packages]]) {
    const r = spawnSync('apt-get', [...wait, ...args], { env: aptEnv, stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new ProvisionError(`apt-get ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`})`);
  }
  const still = missingNeeds(env);
  if (still.length > 0) throw new ProvisionError(`still missing after apt-get install: ${still.map((n) => `${n.what} (${n.pkg})`).join(', ')}`);
}

/** The executable `name` resolves to on `env.PATH` (or `name` itself when it has a slash). */
function findCommand(name: string, env: NodeJS.ProcessEnv): string | undefined {
  if (name.includes('/')) return canAccess(name, constants.X_OK) ? name : undefined;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, name);
    if (canAccess(candidate, constants.X_OK)) return candidate;
  }
  return undefined;
}

function canAccess(at: string, mode: number): boolean {
  try {
    accessSync(at, mode);
    return statSync(at).isFile();
  } catch {
    return false;
  }
}

/** Vitest global setup: `npx vitest run <file>` checks (and as root provides) the same tools. */
export default function setup(): void {
  provision();
}

// `tsx test/provision.ts`: the `pretest` script, so `npm test` stops before the typecheck.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  try {
    provision();
  } catch (e) {
    if (!(e instanceof ProvisionError)) throw e;
    process.stderr.write(`${e.message}\n`);
    process.exitCode = 1;
  }
}
