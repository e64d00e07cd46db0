/**
 * The fault matrix of the README ("What happens when things break"): one test per row. Each
 * checks the outcome users get (message, exit code) and that nothing was lost: earlier backups
 * intact, no partial file counted, no snapshot left after the next run, no unrelated VM touched.
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkManifest } from '../../runtime/storage/manifest.js';
import { parseBackupFileName, partialFileName } from '../../runtime/storage/naming.js';
import { formatWriterTag, processStart, thisProcess } from '../../runtime/storage/writer.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';
import { VMBACKUP, httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';

const run = promisify(execFile);

const vm = (name: string, power: 'Running' | 'Halted' = 'Running', mib = 3) => ({
  name_label: name,
  power_state: power,
  disks: [{ device: 'xvda', size_mib: mib, fill: 'pattern' as const }],
  vifs: [],
});

function pool(vms: PoolSpecInput['vms']): PoolSpecInput {
  return {
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'xcp1' }, { name_label: 'xcp2' }],
    srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
    // `bystander` is never selected: nothing may touch it.
    vms: [...vms, { ...vm('bystander'), other_config: { owner: 'someone else' } }],
  };
}

let sims: Simulator[] = [];
afterEach(async () => {
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});
async function sim(vms: PoolSpecInput['vms']): Promise<Simulator> {
  const s = await httpsSim(pool(vms));
  sims.push(s);
  return s;
}

/** What is on disk: file → sha256, for "earlier backups intact". */
async function snapshotDir(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const folder of await readdir(dir).catch(() => [])) {
    const sub = path.join(dir, folder);
    for (const name of await readdir(sub).catch(() => [])) {
      out.set(`${folder}/${name}`, createHash('sha256').update(await readFile(path.join(sub, name))).digest('hex'));
    }
  }
  return out;
}

/** Complete sets per VM folder, as prune counts them (valid manifest). */
async function completeSets(dir: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const folder of await readdir(dir).catch(() => [])) {
    const sets: string[] = [];
    for (const name of await readdir(path.join(dir, folder)).catch(() => [])) {
      const info = parseBackupFileName(name);
      if (info?.kind === 'manifest' && (await checkManifest(path.join(dir, folder), name)).valid) sets.push(info.stamp);
    }
    out.set(folder, sets.sort());
  }
  return out;
}

interface Before {
  files: Map<string, string>;
  bystander: Record<string, unknown>;
}

/** A good backup of `vmName` first, so there is something that must survive. */
async function earlierBackup(s: Simulator, ws: Workspace, vmName: string): Promise<Before> {
  const r = await vmbackup([...ws.args(s), '-e', vmName]);
  expect(r.code).toBe(0);
  await new Promise((resolve) => setTimeout(resolve, 1100)); // the next run gets a new stamp
  return { files: await snapshotDir(ws.exports), bystander: bystanderState(s) };
}

function bystanderState(s: Simulator): Record<string, unknown> {
  const { name_label, power_state, other_config, blocked_operations, snapshots, VBDs } = s.state.vm('bystander');
  return { name_label, power_state, other_config, blocked_operations, snapshots, VBDs };
}

/** Nothing lost: earlier files byte for byte, no partial counted, no snapshot, bystander untouched. */
async function nothingLost(s: Simulator, ws: Workspace, before: Before, opts: { killedSessions?: number } = {}): Promise<void> {
  const now = await snapshotDir(ws.exports);
  for (const [file, digest] of before.files) expect(now.get(file), file).toBe(digest);
  for (const [folder, stamps] of await completeSets(ws.exports)) {
    for (const stamp of stamps) {
      // every complete set's data files exist whole (the manifest check above) and no
      // .partial is part of one
      const names = await readdir(path.join(ws.exports, folder));
      expect(names.filter((n) => n.includes(stamp) && n.endsWith('.partial')), `${folder} ${stamp}`).toEqual([]);
    }
  }
  expect(s.state.snapshots().filter((v) => (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined)).toEqual([]);
  expect(s.state.vdis().filter((v) => v.is_a_snapshot === true && (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined)).toEqual([]);
  expect(bystanderState(s)).toEqual(before.bystander);
  // A process killed with SIGKILL cannot log out; XAPI expires such sessions itself.
  expect(s.state.liveSessions()).toBe(opts.killedSessions ?? 0);
}

describe('fault matrix', () => {
  it('connection reset mid-export: exit 1, the VM retried once from a new snapshot, others backed up', async () => {
    const s = await sim([vm('web1', 'Running', 6), vm('db1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    s.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'reset', after_bytes: 2 << 20 } });
    const r = await vmbackup([...ws.args(s), '-x', 'bystander']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ERROR: .*web1.*export failed/);
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(1);
    expect((await completeSets(ws.exports)).get('db1')).toHaveLength(1);
    await nothingLost(s, ws, before);
  });

  it('HTTP 500 from the export handler: exit 1, nothing written for that VM', async () => {
    const s = await sim([vm('web1'), vm('db1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    s.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'http-500' } });
    const r = await vmbackup([...ws.args(s), '-x', 'bystander', '--json']);
    expect(r.code).toBe(1);
    const summary = JSON.parse(r.stdout) as { jobs: { name: string; status: string; error?: { code: string; message: string } }[] };
    expect(summary.jobs.find((j) => j.name === 'web1')).toMatchObject({ status: 'error', error: { code: 'HTTP_500' } });
    expect(summary.jobs.find((j) => j.name === 'db1')).toMatchObject({ status: 'success' });
    await nothingLost(s, ws, before);
  });

  it('task failure after the bytes arrived: the file is not kept, exit 1', async () => {
    const s = await sim([vm('web1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    s.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['Device I/O errors'] } });
    const r = await vmbackup([...ws.args(s), '-e', 'web1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('VDI_IO_ERROR(Device I/O errors)');
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(1);
    await nothingLost(s, ws, before);
  });

  it('SR_FULL on snapshot: the VM fails at once (no retry), the others are backed up', async () => {
    const s = await sim([vm('web1'), vm('db1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const snapshotsBefore = s.state.rpcCalls().byMethod['Async.VM.snapshot'] ?? 0;
    s.faults.add({ rpc: 'VM.snapshot', vm: 'web1', always: true, action: { kind: 'sr-full' } });
    const r = await vmbackup([...ws.args(s), '-x', 'bystander']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/ERROR: .*web1.*SR_FULL/);
    // Sizes for people, in XAPI's order [requested, maximum]: never raw byte counts.
    expect(r.stderr).toMatch(/SR_FULL\(\d+\.\d [KMG]iB requested, 100\.0 GiB maximum\)/);
    expect(r.stdout).toMatch(/ERROR: vm-export web1: .*SR_FULL\(\d+\.\d [KMG]iB requested, 100\.0 GiB maximum\)\n/);
    expect(r.stdout + r.stderr).not.toMatch(/SR_FULL\(\d+,/);
    // db1 is running too: exactly one more snapshot attempt each, SR_FULL is not retried.
    expect((s.state.rpcCalls().byMethod['Async.VM.snapshot'] ?? 0) - snapshotsBefore).toBe(2);
    expect((await completeSets(ws.exports)).get('db1')).toHaveLength(1);
    await nothingLost(s, ws, before);
  });

  it('SESSION_INVALID mid-run (toolstack restart): the client logs in again and the run succeeds', async () => {
    const s = await sim([vm('web1'), vm('db1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    s.faults.add({ rpc: 'VM.snapshot', vm: 'db1', action: { kind: 'invalidate-sessions' } });
    const r = await vmbackup([...ws.args(s), '-x', 'bystander']);
    expect(r.code).toBe(0);
    expect(s.state.sessionStats().invalidated).toBeGreaterThan(0);
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(2);
    expect((await completeSets(ws.exports)).get('db1')).toHaveLength(1);
    await nothingLost(s, ws, before);
  });

  it('HOST_IS_SLAVE: given a pool member, vmbackup follows to the master', async () => {
    const s = await sim([vm('web1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const args = ws.args(s).map((a) => (a === s.url ? s.hosts[1]!.url : a));
    const r = await vmbackup([...args, '-e', 'web1']);
    expect(r.code).toBe(0);
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(2);
    await nothingLost(s, ws, before);
  });

  it('a stall longer than export_idle_timeout: the export is abandoned, exit 1', async () => {
    const s = await sim([vm('web1', 'Running', 4)]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const cfg = path.join(ws.base, 'idle.cfg');
    await writeFile(cfg, '[vmbackup]\nexport_idle_timeout = 5\nvm_retries = 0\n');
    // The stall has no end (no `ms`): the run ending at all, with the idle timeout's reason,
    // proves the export was abandoned by export_idle_timeout rather than waited for.
    s.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'stall', after_bytes: 1 << 20 } });
    const r = await vmbackup([...ws.args(s), '-c', cfg, '-e', 'web1']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no data for 5 s while writing /);
    await nothingLost(s, ws, before);
  });

  it('the backup filesystem full (ENOSPC): partial removed, earlier backups intact, exit 1', async () => {
    const s = await sim([vm('big', 'Running', 12), vm('small', 'Running', 1)]);
    const ws = await workspace();
    // A 8 MiB tmpfs as backup_dir, in a private mount namespace (as root, or as a user with
    // unprivileged user namespaces): the 12 MiB export cannot fit.
    const dir = path.join(ws.base, 'full');
    await mkdir(dir);
    const script = [
      'set -e',
      `mount -t tmpfs -o size=8m tmpfs '${dir}'`,
      `mkdir '${dir}/small' && printf old > '${dir}/small/keep-me.txt'`,
      `'${process.execPath}' '${VMBACKUP}' ${[...ws.args(s), '-d', dir, '-x', 'bystander', '--space-threshold', '1', '--concurrency', '1'].map((a) => `'${a}'`).join(' ')} > '${ws.base}/out.txt' 2> '${ws.base}/err.txt' || echo "exit=$?" > '${ws.base}/code.txt'`,
      `cd '${dir}' && find . -type f | sort > '${ws.base}/files.txt'`,
      `cat '${dir}/small/keep-me.txt' > '${ws.base}/kept.txt'`,
    ].join('\n');
    const unshare = process.getuid?.() === 0 ? ['--mount'] : ['--user', '--map-root-user', '--mount'];
    // Asynchronously: the simulator runs in this process and must keep answering.
    await run('unshare', [...unshare, 'bash', '-c', script], { env: { PATH: process.env.PATH ?? '' } });
    expect(await readFile(path.join(ws.base, 'code.txt'), 'utf8')).toBe('exit=1\n');
    expect(await readFile(path.join(ws.base, 'err.txt'), 'utf8')).toMatch(/the backup filesystem is full: cannot write .*big.*ENOSPC/);
    const files = (await readFile(path.join(ws.base, 'files.txt'), 'utf8')).trim().split('\n');
    expect(files.filter((f) => f.startsWith('./big/'))).toEqual([]); // nothing half-written left
    expect(files.filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect(files.filter((f) => f.startsWith('./small/backup_'))).toHaveLength(3);
    expect(await readFile(path.join(ws.base, 'kept.txt'), 'utf8')).toBe('old');
    expect(s.state.snapshots().filter((v) => (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined)).toEqual([]);
    expect(s.state.liveSessions()).toBe(0);
  });

  it('space_threshold is checked before each VM: the VM that would go below it is not backed up, exit 1', async () => {
    const s = await sim([vm('a', 'Running', 3), vm('b', 'Running', 3), vm('c', 'Running', 3)]);
    const ws = await workspace();
    // A 10 MiB tmpfs: after a and b (about 3 MiB each) it is about 40 % free, below 50 %.
    const dir = path.join(ws.base, 'small');
    await mkdir(dir);
    const script = [
      'set -e',
      `mount -t tmpfs -o size=10m tmpfs '${dir}'`,
      `'${process.execPath}' '${VMBACKUP}' ${[...ws.args(s), '-d', dir, '-x', 'bystander', '--space-threshold', '50', '--concurrency', '1'].map((a) => `'${a}'`).join(' ')} > '${ws.base}/out.txt' 2> '${ws.base}/err.txt' || echo "exit=$?" > '${ws.base}/code.txt'`,
      `cd '${dir}' && find . -type f | sort > '${ws.base}/files.txt'`,
    ].join('\n');
    const unshare = process.getuid?.() === 0 ? ['--mount'] : ['--user', '--map-root-user', '--mount'];
    await run('unshare', [...unshare, 'bash', '-c', script], { env: { PATH: process.env.PATH ?? '' } });
    expect(await readFile(path.join(ws.base, 'code.txt'), 'utf8')).toBe('exit=1\n');
    expect(await readFile(path.join(ws.base, 'err.txt'), 'utf8')).toMatch(/c: snapshot failed: .* has \d+\.\d% free, below space_threshold 50%: c not backed up/);
    const files = (await readFile(path.join(ws.base, 'files.txt'), 'utf8')).trim().split('\n');
    expect(files.filter((f) => f.startsWith('./a/backup_'))).toHaveLength(3);
    expect(files.filter((f) => f.startsWith('./b/backup_'))).toHaveLength(3);
    expect(files.filter((f) => f.startsWith('./c/'))).toEqual([]);
    expect(s.state.snapshots().filter((v) => (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined)).toEqual([]);
  });

  it('the command killed with SIGKILL mid-export, then run again: the next run cleans up and backs up', async () => {
    const s = await sim([vm('web1', 'Running', 8), vm('db1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const slow = s.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'slow', bytes_per_second: 2 << 20 } });
    const child = spawn(process.execPath, [VMBACKUP, ...ws.args(s), '-x', 'bystander'], { stdio: 'ignore', env: { PATH: process.env.PATH ?? '', HOME: os.tmpdir() } });
    // Under way on both ends: the simulator has sent a MiB (the socket's buffers can hold
    // that before the command reads a byte) and the command has its .partial open.
    const partialThere = async () => (await readdir(path.join(ws.exports, 'web1')).catch(() => [] as string[])).some((n) => n.endsWith('.partial'));
    await waitFor(async () => s.state.transfers('export').some((t) => t.status === 'running' && t.bytes > 1 << 20) && (await partialThere()), 20_000, 'export under way');
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    // What the crash left: a tagged snapshot, a stale lock, a .partial — none of it counts.
    expect(s.state.snapshots('web1').length).toBe(1);
    expect((await readdir(path.join(ws.exports, 'web1'))).some((n) => n.endsWith('.partial'))).toBe(true);
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(1);
    s.faults.remove(slow);
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const r = await vmbackup([...ws.args(s), '-x', 'bystander']);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('took over a stale lock');
    expect(r.stdout).toMatch(/destroyed leftover snapshot "web1 \(vmbackup \d{8}-\d{6}\)"/);
    expect((await completeSets(ws.exports)).get('web1')).toHaveLength(2);
    // The partial is named after its writer, a process now dead: removed at once, not after an hour.
    expect((await readdir(path.join(ws.exports, 'web1'))).filter((n) => n.endsWith('.partial'))).toEqual([]);
    await nothingLost(s, ws, before, { killedSessions: 1 });
  });

  it('partials: a dead writer’s go at once, a live writer’s stay (this host by pid, another host by heartbeat), old untagged ones keep the hour', async () => {
    const s = await sim([vm('web1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const sleeper = spawn('sleep', ['120'], { stdio: 'ignore' });
    await new Promise((resolve) => sleeper.once('spawn', resolve));
    try {
      const me = thisProcess();
      const here = (pid: number, start: string) => formatWriterTag({ ...me, pid, start, seq: 1 });
      const other = formatWriterTag({ host: 'ffffffff', pid: 77, start: '1', boot: '01234567', seq: 1 });
      const dir = path.join(ws.exports, 'web1');
      const pdir = path.join(ws.exports, 'POOL_DB');
      await mkdir(pdir);
      const hour = 3_600_000;
      const files = {
        liveHere: [dir, partialFileName('backup_20260101-000000.xva', here(sleeper.pid!, processStart(sleeper.pid!)!)), 48 * hour],
        reusedPid: [dir, partialFileName('backup_20260102-000000.xva', here(sleeper.pid!, '1')), 0],
        otherFresh: [dir, partialFileName('backup_20260103-000000.xva', other), 60_000],
        otherStale: [dir, partialFileName('backup_20260104-000000.xva', other), 11 * 60_000],
        oldStyleFresh: [dir, 'backup_20260105-000000.xva.partial', 60_000],
        poolDead: [pdir, partialFileName('metadata_20260106-000000.db', here(999_999, '1')), 0],
      } as const;
      for (const [folder, name, age] of Object.values(files)) {
        await writeFile(path.join(folder, name), 'x');
        const t = new Date(Date.now() - age);
        await utimes(path.join(folder, name), t, t);
      }
      const r = await vmbackup([...ws.args(s), '-e', 'web1', '-p']);
      expect(r.code, r.stderr).toBe(0);
      const left = new Set([...(await readdir(dir)), ...(await readdir(pdir))]);
      const present = Object.fromEntries(Object.entries(files).map(([k, [, name]]) => [k, left.has(name)]));
      expect(present).toEqual({ liveHere: true, reusedPid: false, otherFresh: true, otherStale: false, oldStyleFresh: true, poolDead: false });
      await nothingLost(s, ws, before);
    } finally {
      sleeper.kill('SIGKILL');
    }
  });

  it('a real VM named like the tool’s snapshots is backed up, never destroyed', async () => {
    const s = await sim([vm('web1'), vm('web1 (vmbackup 20250101-000000)', 'Halted'), vm('VMBACKUP_web1')]);
    const ws = await workspace();
    const before = await earlierBackup(s, ws, 'web1');
    const r = await vmbackup([...ws.args(s), '-x', 'bystander']);
    expect(r.code).toBe(0);
    expect(s.state.vm('web1 (vmbackup 20250101-000000)')).toBeDefined();
    expect(s.state.vm('VMBACKUP_web1')).toBeDefined();
    expect((await completeSets(ws.exports)).get('VMBACKUP_web1')).toHaveLength(1);
    await nothingLost(s, ws, before);
  });
});
