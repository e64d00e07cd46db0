/**
 * SIGTERM and SIGINT stop an embedded run (what systemd's and cron's timeouts rely on): the
 * export under way is aborted, its `.partial` removed and its snapshot destroyed; nothing is
 * retried and no VM, pool-db, host backup or prune starts after the signal; the lock is
 * released, the XAPI session logged out, the summary printed, and the command exits 1.
 * A second signal exits at once (128 + the signal) and says what it leaves behind.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkManifest } from '../../runtime/storage/manifest.js';
import { LOCK_FILE } from '../../runtime/storage/lock.js';
import { parseBackupFileName } from '../../runtime/storage/naming.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';
import { VMBACKUP, httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { CliResult } from '../helpers/cli.js';

const vm = (name: string, mib = 8) => ({
  name_label: name,
  power_state: 'Running' as const,
  disks: [{ device: 'xvda', size_mib: mib, fill: 'pattern' as const }],
  vifs: [],
});

const pool = (): PoolSpecInput => ({
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }, { name_label: 'xcp2' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [vm('PRD-db1'), vm('PRD-web1'), vm('PRD-web2')],
});

let sims: Simulator[] = [];
afterEach(async () => {
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

/** Every file under backup_dir (one level of folders) → sha256. */
async function filesIn(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const folder of await readdir(dir)) {
    const sub = path.join(dir, folder);
    for (const name of await readdir(sub).catch(() => [])) {
      out.set(`${folder}/${name}`, createHash('sha256').update(await readFile(path.join(sub, name))).digest('hex'));
    }
  }
  return out;
}

/** Complete sets per VM folder, as prune counts them (a valid manifest). */
async function completeSets(dir: string): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const folder of await readdir(dir)) {
    const names = await readdir(path.join(dir, folder)).catch(() => undefined);
    if (names === undefined) continue;
    const sets: string[] = [];
    for (const name of names) {
      const info = parseBackupFileName(name);
      if (info?.kind === 'manifest' && (await checkManifest(path.join(dir, folder), name)).valid) sets.push(info.stamp);
    }
    out[folder] = sets.sort();
  }
  return out;
}

const ourSnapshots = (s: Simulator) => [
  ...s.state.snapshots().filter((v) => (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined),
  ...s.state.vdis().filter((v) => v.is_a_snapshot === true && (v.other_config as Record<string, string>)['vmbackup:run'] !== undefined),
];

/** Starts `vmbackup` as cron would, and collects its output and exit. */
function spawnVmbackup(args: readonly string[]) {
  const child = spawn(process.execPath, [VMBACKUP, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '', HOME: os.tmpdir() } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<CliResult & { signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, exited };
}

describe('vmbackup: a signal stops the run', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('%s mid-export: export aborted and cleaned up, nothing more started, lock released, exit 1', async (signal) => {
    const s = await httpsSim(pool());
    sims.push(s);
    const ws = await workspace();
    // Earlier sets, so that a prune (max_backups 1) after the signal would delete something.
    expect((await vmbackup([...ws.args(s), '--max-backups', '1'])).code).toBe(0);
    const before = await filesIn(ws.exports);
    const setsBefore = await completeSets(ws.exports);
    expect(Object.values(setsBefore).map((sets) => sets.length)).toEqual([1, 1, 1]);
    const exportsBefore = s.state.transfers('export').length;
    const snapshotsBefore = s.state.rpcCalls().byMethod['Async.VM.snapshot'] ?? 0;
    await new Promise((resolve) => setTimeout(resolve, 1100)); // a new stamp

    // Every export stops sending after 2 MiB and never resumes: a run that waited for the export
    // under way would never end (the test's timeout), so its ending proves the stop aborted it.
    s.faults.add({ http: 'export', always: true, action: { kind: 'stall', after_bytes: 2 << 20 } });
    const run = spawnVmbackup([...ws.args(s), '--max-backups', '1', '--concurrency', '1']);
    const exporting = await waitFor(() => s.state.transfers('export').slice(exportsBefore).find((t) => t.status === 'running' && t.bytes > 1 << 20), 30_000, 'export under way');
    expect((await readdir(ws.exports)).includes(LOCK_FILE)).toBe(true);
    run.child.kill(signal);
    const r = await run.exited;

    expect(r.signal).toBeNull();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`WARNING: ${signal} received: stopping`);
    expect(r.stderr).not.toMatch(/backing up again|attempt 2/);
    // The summary says the run was stopped and counts the VMs as errors.
    // The stop is the run's, not a warning of the vm-export phase.
    expect(r.stdout).toMatch(new RegExp(`\nSTOPPED: the run was stopped by ${signal} at \\S+: 2 jobs not started, the jobs under way were stopped\n`));
    expect(r.stdout).not.toContain('WARNING: the run was stopped');
    expect(r.stdout).toMatch(/VmBackup vm-export Summary - S:0 W:0 E:3\n>> Error <</);

    // Only the export under way was ever started, and it was aborted; no new snapshot after it.
    const transfers = s.state.transfers('export').slice(exportsBefore);
    expect(transfers).toHaveLength(1);
    expect(transfers[0]!.id).toBe(exporting.id);
    expect(transfers[0]!.status).not.toBe('done');
    expect((s.state.rpcCalls().byMethod['Async.VM.snapshot'] ?? 0) - snapshotsBefore).toBe(1);
    expect(ourSnapshots(s)).toEqual([]);
    expect(s.state.liveSessions()).toBe(0);

    // On disk: the earlier sets byte for byte (no prune), no .partial, no new set counted.
    const after = await filesIn(ws.exports);
    for (const [file, digest] of before) expect(after.get(file), file).toBe(digest);
    expect([...after.keys()].filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect(await completeSets(ws.exports)).toEqual(setsBefore);
    expect(await readdir(ws.exports)).not.toContain(LOCK_FILE);

    // The lock is released: the next run starts at once (no stale lock to take over).
    s.faults.clear();
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const next = await vmbackup([...ws.args(s), '--max-backups', '2']);
    expect(next.code).toBe(0);
    expect(next.stderr).not.toContain('lock');
    expect(Object.values(await completeSets(ws.exports)).map((sets) => sets.length)).toEqual([2, 2, 2]);
  });

  it('the post-vm hooks of a VM whose pre-vm ran still run; a second SIGTERM exits at once (143), saying what it leaves', async () => {
    const s = await httpsSim(pool());
    sims.push(s);
    const ws = await workspace();
    const hooks = path.join(ws.base, 'hooks');
    await mkdir(hooks);
    const script = async (name: string, body: string) => {
      const file = path.join(hooks, name);
      await writeFile(file, `#!/bin/sh\n${body}\n`);
      await chmod(file, 0o755);
      return file;
    };
    // pre-vm hangs until the stop kills it; post-vm records how it was called, then never ends
    // (a second SIGTERM that waited for it would be the test's timeout).
    const pre = await script('pre.sh', 'touch "$(dirname "$0")/pre-started"\nexec sleep 10');
    const post = await script('post.sh', 'echo $$ > "$(dirname "$0")/post-pid"\necho "$VMBACKUP_STATUS $VMBACKUP_FAILED_PHASE $VMBACKUP_ERROR_CODE" > "$(dirname "$0")/post-ran"\nexec sleep 3600');
    const cfg = path.join(ws.base, 'hooks.cfg');
    await writeFile(cfg, `[vmbackup]\nhook_command_pre_vm = ${pre}\nhook_command_post_vm = ${post}\nhook_timeout = 60\n`);

    const run = spawnVmbackup([...ws.args(s), '-c', cfg, '--concurrency', '1']);
    await waitFor(() => readdir(hooks).then((names) => names.includes('pre-started')), 30_000, 'pre-vm hook running');
    run.child.kill('SIGTERM');
    const postRan = await waitFor(() => readFile(path.join(hooks, 'post-ran'), 'utf8').catch(() => undefined), 10_000, 'post-vm hook after the stop');
    expect(postRan).toBe('failed pre-hook STOPPED\n');
    run.child.kill('SIGTERM');
    const r = await run.exited;
    try {
      process.kill(Number(await readFile(path.join(hooks, 'post-pid'), 'utf8')), 'SIGKILL');
    } catch {
      // already gone with vmbackup's process group
    }

    expect(r.code).toBe(143);
    expect(r.stderr).toContain(
      `ERROR: SIGTERM again: exiting at once (exit 143), leaving the lock ${path.join(ws.exports, LOCK_FILE)} (the next run takes it over), any snapshot of run `,
    );
    expect(r.stderr).toContain('any *.partial file (never counted as a backup; pruned by a later run), the XAPI session (the pool expires it)');
    expect(s.state.rpcCalls().byMethod['Async.VM.snapshot'] ?? 0).toBe(0); // stopped before its snapshot

    // What it left is cleaned up by the next run.
    const next = await vmbackup(ws.args(s));
    expect(next.code).toBe(0);
    expect(next.stderr).toContain('took over a stale lock');
    expect(Object.values(await completeSets(ws.exports)).map((sets) => sets.length)).toEqual([1, 1, 1]);
  });
});
