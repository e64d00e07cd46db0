import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NEEDS, installLine, missingNeeds, provisionPlan } from './provision.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const isRoot = process.getuid?.() === 0;
/** Runs a command as root: ourselves when we are root, else root of a new user namespace. */
const AS_ROOT = isRoot ? [] : ['/usr/bin/unshare', '--user', '--map-root-user', '--'];
/** Runs a command as a user who is not root: `nobody` when we are root, else ourselves. */
const AS_USER = isRoot ? ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'] : [];

const need = (pkg: string) => NEEDS.filter((n) => n.pkg === pkg);

describe('provisionPlan: what is missing → what is done', () => {
  it.each([
    ['nothing missing, root', [], true, { action: 'none' }],
    ['nothing missing, a user', [], false, { action: 'none' }],
    ['xxhsum missing, root: install its package', need('xxhash'), true, { action: 'install', packages: ['xxhash'], missing: ['xxhsum'] }],
    ['xxhsum missing, a user: stop', need('xxhash'), false, { action: 'stop', packages: ['xxhash'], missing: ['xxhsum'] }],
    [
      'two tools of one package: the package once',
      [{ ...need('qemu-utils')[0]!, what: 'qemu-img' }, { ...need('qemu-utils')[0]!, what: 'qemu-nbd' }],
      true,
      { action: 'install', packages: ['qemu-utils'], missing: ['qemu-img', 'qemu-nbd'] },
    ],
  ] as const)('%s', (_name, missing, root, plan) => {
    expect(provisionPlan(missing, root)).toEqual(plan);
  });

  it('the line to run names every package', () => {
    expect(installLine(['qemu-utils', 'xxhash'])).toBe('apt-get install -y qemu-utils xxhash');
  });
});

describe('test/provision.ts, run as npm runs it, with a PATH where tools are absent', () => {
  let base: string;
  let bin: string;
  let tmp: string;
  /** The machine's own tools (`npm test` provided them), linked into `bin` unless hidden. */
  const real = new Map<string, string>();

  beforeAll(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'provision-'));
    tmp = path.join(base, 'tmp');
    await mkdir(tmp);
    // Reachable by `nobody` (the suite's temporary root lets others through, not list it).
    await chmod(base, 0o755);
    await chmod(tmp, 0o1777);
    for (const n of NEEDS) {
      if (n.what.startsWith('/')) continue;
      const found = systemCommand(n.what);
      if (found) real.set(n.what, found);
    }
  });
  afterAll(async () => {
    await rm(base, { recursive: true, force: true });
  });

  /**
   * A bin folder holding the machine's tools except `hidden`, and an `apt-get` that logs its
   * arguments and, on `install`, puts the hidden tools in place (a package manager that works).
   */
  async function pathWithout(name: string, hidden: string[], apt: { exit?: number } = {}): Promise<{ env: NodeJS.ProcessEnv; log: string }> {
    bin = path.join(base, name);
    await mkdir(bin);
    await chmod(bin, 0o755);
    for (const [cmd, at] of real) if (!hidden.includes(cmd)) await symlink(at, path.join(bin, cmd));
    const log = path.join(base, `${name}.apt.log`);
    const put = hidden.map((cmd) => `  /bin/ln -s /bin/true '${bin}/${cmd}'`).join('\n');
    await writeFile(
      path.join(bin, 'apt-get'),
      `#!/bin/sh\necho "uid=$(/usr/bin/id -u) DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> '${log}'\nif [ "$3" = install ]; then\n${put || '  :'}\nfi\nexit ${apt.exit ?? 0}\n`,
      { mode: 0o755 },
    );
    return { env: { PATH: bin, NATS_SERVER: path.join(bin, 'nats-server'), TMPDIR: tmp, HOME: tmp }, log };
  }

  function provisionScript(as: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
    const argv = [...as, process.execPath, '--import', 'tsx', path.join(ROOT, 'test/provision.ts')];
    return new Promise((resolve) => {
      execFile(argv[0]!, argv.slice(1), { cwd: ROOT, env }, (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
      });
    });
  }

  it('the check sees what the PATH lacks', async () => {
    const { env } = await pathWithout('check', ['nats-server', 'vhdiinfo', 'xxhsum']);
    expect(missingNeeds(env).map((n) => n.what)).toEqual(['nats-server', 'vhdiinfo', 'xxhsum']);
  });

  it('nothing missing: says nothing, installs nothing, exit 0', async () => {
    const { env, log } = await pathWithout('complete', []);
    const r = await provisionScript(AS_ROOT, env);
    expect(r).toEqual({ code: 0, stdout: '', stderr: '' });
    expect(existsSync(log)).toBe(false);
  });

  it('as a user who is not root: stops at once with the one apt-get line, runs nothing', async () => {
    const { env, log } = await pathWithout('user', ['nats-server', 'vhdiinfo', 'xxhsum']);
    const r = await provisionScript(AS_USER, env);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('the tests need nats-server, vhdiinfo, xxhsum, which are missing; as root, run:\n  apt-get install -y nats-server libvhdi-utils xxhash\n');
    expect(existsSync(log)).toBe(false);
    // The check ran as that user, not as root.
    if (isRoot) expect((await execAs(AS_USER, ['/usr/bin/id', '-u'], env)).trim()).toBe('65534');
  });

  it('as root: says which packages in one line, then apt-get update and install -y, non-interactive', async () => {
    const { env, log } = await pathWithout('root', ['nats-server', 'vhdiinfo', 'xxhsum']);
    const r = await provisionScript(AS_ROOT, env);
    expect(r.stderr).toBe('vmbackup tests: installing Debian packages nats-server libvhdi-utils xxhash (missing: nats-server, vhdiinfo, xxhsum)\n');
    expect(r.code).toBe(0);
    expect((await readFile(log, 'utf8')).split('\n')).toEqual([
      'uid=0 DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=600 update',
      'uid=0 DEBIAN_FRONTEND=noninteractive -o DPkg::Lock::Timeout=600 install -y nats-server libvhdi-utils xxhash',
      '',
    ]);
    // Installed: the next check finds everything.
    expect(missingNeeds(env)).toEqual([]);
  });

  it('as root, when apt-get fails: exit 1 naming the command', async () => {
    const { env } = await pathWithout('apt-fails', ['zstd'], { exit: 100 });
    const r = await provisionScript(AS_ROOT, env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vmbackup tests: installing Debian packages zstd \(missing: zstd\)\napt-get update failed \(exit 100\)\n$/);
  });
});

/** A command as Debian installs it (not a shim in root's home, which `nobody` cannot run). */
function systemCommand(cmd: string): string | undefined {
  return ['/usr/bin', '/usr/sbin', '/bin', '/sbin'].map((dir) => path.join(dir, cmd)).find((at) => existsSync(at));
}

function execAs(as: string[], argv: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const all = [...as, ...argv];
  return new Promise((resolve, reject) => {
    execFile(all[0]!, all.slice(1), { env }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}
