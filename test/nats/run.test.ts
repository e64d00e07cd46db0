import { mkdir, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pipelines } from '../../functions/index.js';
import { RUNS_BUCKET } from '../../infra/nats/jetstream.js';
import { NatsRunStore } from '../../runtime/run/nats-store.js';
import { JobState } from '../../runtime/run/state.js';
import type { RunHeader } from '../../runtime/run/state.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/**
 * A whole run through NATS: `vmbackup run` against two real workers and a real nats-server,
 * compared with the embedded `vmbackup` on the same pool.
 */
let rig: Rig;
beforeAll(async () => {
  rig = await startRig(pool([vm('web1'), vm('web2', 'Running', 3), vm('db1', 'Halted'), vm('broken')]));
  await Promise.all([rig.worker(), rig.worker()]);
});
afterAll(async () => {
  await rig?.close();
});

/** The summary without what differs from one run to the next (ids, times, stamps). */
function normalize(s: RunSummary, dir: string) {
  return {
    ...s,
    runId: 'RUN',
    startedAt: 'T',
    finishedAt: 'T',
    backupDir: path.relative(dir, s.backupDir ?? ''),
    jobs: s.jobs
      .map((j) => ({
        ...j,
        durationMs: 0,
        // Verified after backup (XVA sets by default): how long it took varies.
        ...(j.verified !== undefined ? { verified: { ...j.verified, ms: 0 } } : {}),
        files: j.files.map((f) => ({
          ...f,
          // A manifest records its run id and timings: its size varies by a byte or two.
          size: f.format === 'manifest' ? (f.size > 0 ? 'SIZE' : 0) : f.size,
          path: path.relative(dir, f.path).replace(/\d{8}-\d{6}/, 'STAMP'),
        })),
      }))
      .sort((a, b) => a.name.localeCompare(b.name)),
  };
}

async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const folder of (await readdir(dir)).sort()) {
    for (const f of (await readdir(path.join(dir, folder))).sort()) out.push(`${folder}/${f.replace(/\d{8}-\d{6}/, 'STAMP')}`);
  }
  return out;
}

describe('vmbackup run through NATS with two workers', () => {
  it('backs up like the embedded run: same files, same summary, exit 0; status shows it from the KV bucket', async () => {
    const embeddedDir = path.join(rig.ws.base, 'embedded');
    const natsDir = path.join(rig.ws.base, 'nats');
    await mkdir(embeddedDir);
    await mkdir(natsDir);
    const select = ['-e', 'web1', '-e', 'web2', '-e', 'db1', '--json'];
    const embedded = await vmbackup([...rig.ws.args(rig.sim), '-d', embeddedDir, ...select]);
    expect(embedded.code).toBe(0);
    const r = await vmbackup(['run', ...rig.args('-d', natsDir, ...select)]);
    expect(r.stderr).not.toMatch(/ERROR/);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as RunSummary;
    expect(normalize(summary, natsDir)).toEqual(normalize(JSON.parse(embedded.stdout) as RunSummary, embeddedDir));
    expect(summary.categories['vm-export']).toEqual({ S: 3, W: 0, E: 0 });
    expect(await tree(natsDir)).toEqual(await tree(embeddedDir));
    expect(await tree(natsDir)).toEqual(['db1/backup_STAMP.json', 'db1/backup_STAMP.meta', 'db1/backup_STAMP.xva', 'web1/backup_STAMP.json', 'web1/backup_STAMP.meta', 'web1/backup_STAMP.xva', 'web2/backup_STAMP.json', 'web2/backup_STAMP.meta', 'web2/backup_STAMP.xva']);
    // Each VM was exported once, by one of the workers, and no snapshot is left.
    const exported = rig.workers.flatMap((w) => w.output().match(/^\S+: exported .* → .*$/gm) ?? []);
    expect(exported.map((l) => l.split(':')[0]).sort()).toEqual(['db1', 'web1', 'web2']);
    expect(rig.sim.state.snapshots().filter((s) => String(s.name_label).includes('vmbackup'))).toEqual([]);

    // The run's state in the KV bucket: header under <runId>, each job under <runId>.<jobId>.
    const nc = await rig.client();
    const kv = await nc.jetstream().views.kv(RUNS_BUCKET, { bindOnly: true });
    const stored = (await kv.get(summary.runId))!.json<{ ids: { key: string; count: number } }>();
    expect(stored).toMatchObject({ ids: { count: 3 }, pendingRanges: [] });
    const header = (await (await NatsRunStore.open(nc.jetstream())).header(summary.runId))!.header;
    expect((await kv.get(stored.ids.key))!.json()).toEqual(header.jobIds);
    expect(header).toMatchObject({ runId: summary.runId, status: 'finished', remaining: 0, active: 0, pending: [], trigger: 'cli', backupDir: natsDir });
    expect(header.jobIds).toHaveLength(3);
    for (const jobId of header.jobIds) {
      const job = JobState.parse((await kv.get(`${summary.runId}.${jobId.replace('.', '/')}`))!.json());
      expect(job).toMatchObject({ status: 'success', try: 1, phase: pipelines.vm.at(-1) });
      expect(job.bytes).toBeGreaterThan(2 << 20);
      expect(Object.keys(job.phaseMs).sort()).toEqual([...pipelines.vm].sort());
      expect(job.files.map((f) => f.format).sort()).toEqual(['manifest', 'meta', 'xva']);
      expect(job.startedAt! <= job.finishedAt!).toBe(true);
    }

    // vmbackup status: the run on one line, then its jobs.
    const list = await vmbackup(['status', ...rig.args()]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^${summary.runId}  success\\s+\\S+\\s+\\d+\\.\\d s  3 jobs  pool pool  \\(cli\\)$`, 'm'));
    const one = await vmbackup(['status', summary.runId, ...rig.args()]);
    expect(one.code).toBe(0);
    expect(one.stdout).toContain(`run ${summary.runId}  finished: success (exit 0)  pool pool`);
    expect(one.stdout).toMatch(/^JOB\s+CATEGORY\s+STATUS\s+PHASE\s+TRY\s+SIZE\s+TIME\s+PHASES$/m);
    expect(one.stdout).toMatch(new RegExp(`^web2\\s+vm-export\\s+success\\s+${pipelines.vm.at(-1)}\\s+1\\s+3\\.0 MiB\\s+\\d+\\.\\d s\\s+pre-hook \\d+\\.\\d s, snapshot \\d+\\.\\d s, export`, 'm'));
    const json = JSON.parse((await vmbackup(['status', summary.runId, '--json', ...rig.args()])).stdout) as { header: RunHeader; jobs: JobState[]; summary: RunSummary };
    expect(json.header.runId).toBe(summary.runId);
    expect(json.jobs.map((j) => j.label).sort()).toEqual(['db1', 'web1', 'web2']);
    expect(json.summary.exitCode).toBe(0);
    const unknown = await vmbackup(['status', 'no-such-run', ...rig.args()]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no run no-such-run');
  });

  it('exits 1 when a backup failed, with the error in the summary', async () => {
    const fault = rig.sim.faults.add({ http: 'export', vm: 'broken', always: true, action: { kind: 'http-500' } });
    try {
      const r = await vmbackup(['run', ...rig.args('-e', 'broken', '-e', 'web1')]);
      expect(r.code).toBe(1);
      expect(r.stdout).toContain('VmBackup vm-export Summary - S:1 W:1 E:1');
      expect(r.stdout).toContain('>> Success with Errors <<');
      expect(r.stdout).toContain('ERROR: vm-export broken: GET /export answered HTTP 500');
      expect(r.stdout).toContain('WARNING: vm-export broken: export failed (GET /export answered HTTP 500); backing up again (attempt 2)');
      // Progress from the events, as they happen: each failed attempt.
      expect(r.stderr.match(/ERROR: broken: export failed \(\w+\): .*HTTP 500/g)).toHaveLength(2);
      expect(rig.sim.state.snapshots('broken')).toEqual([]);
    } finally {
      rig.sim.faults.remove(fault);
    }
  });

  it('exits 2 when the run cannot start, and when NATS is unreachable', async () => {
    const r = await vmbackup(['run', ...rig.args('--space-threshold', '99')]);
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/ERROR: the run could not start: backup_dir .* below space_threshold 99%/);
    // An embedded vmbackup holds backup_dir's lock (this test process stands for it).
    const lock = path.join(rig.ws.exports, '.vmbackup.lock');
    await writeFile(lock, JSON.stringify({ hostname: os.hostname(), pid: process.pid, runId: 'embedded-1', startedAt: new Date().toISOString() }));
    try {
      const locked = await vmbackup(['run', ...rig.args('-e', 'web1')]);
      expect(locked.code).toBe(2);
      expect(locked.stdout).toContain(`ERROR: the run could not start: another vmbackup run holds ${lock}: run embedded-1, pid ${process.pid} on ${os.hostname()}`);
      expect(rig.sim.state.snapshots('web1')).toEqual([]);
    } finally {
      await rm(lock, { force: true });
    }
    const down = await vmbackup(['run', ...rig.ws.args(rig.sim), '--nats', 'nats://127.0.0.1:9']);
    expect(down.code).toBe(2);
    expect(down.stderr).toContain('cannot reach NATS at nats://127.0.0.1:9');
    const none = await vmbackup(['run', ...rig.ws.args(rig.sim)]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('no NATS server: set nats_url');
  });

  it('the selection as the embedded run makes it: -e matching no VM is exit 2, a one-VM run keeps the config\'s MAX', async () => {
    const none = await vmbackup(['run', ...rig.args('-e', 'web1', '-e', 'nope')]);
    expect(none.code).toBe(2);
    expect(none.stdout).toContain('ERROR: the run could not start: nothing backed up: vm_exports: entry "nope" matches no VM of the pool');
    expect(rig.sim.state.snapshots('web1')).toEqual([]);

    const dir = path.join(rig.ws.base, 'nats-max');
    const folder = path.join(dir, 'db1');
    await mkdir(folder, { recursive: true });
    for (const stamp of ['01022024-030405', '02022024-030405', '03022024-030405']) {
      await writeFile(path.join(folder, `backup_${stamp}.xva`), stamp);
      await writeFile(path.join(folder, `backup_${stamp}.meta`), 'name_label=db1\n');
    }
    const old = new Date(Date.now() - 2 * 86_400_000);
    for (const name of await readdir(folder)) await utimes(path.join(folder, name), old, old);
    const cfg = path.join(rig.ws.base, 'nats-max.cfg');
    await writeFile(cfg, '[vmbackup]\nmax_backups = 1\nvm_exports = db1:7, web1\n');
    const r = await vmbackup(['run', ...rig.args('-c', cfg, '-d', dir, '-e', 'db1')]);
    expect(r.code).toBe(0);
    // Three earlier sets and this run's: db1:7 keeps them all (max_backups 1 would keep one).
    expect((await readdir(folder)).filter((n) => n.endsWith('.xva'))).toHaveLength(4);
  });

  it('vmbackup invoke runs one phase and prints its outcome; bad input is refused with the reasons', async () => {
    const dir = path.join(rig.ws.base, 'nats');
    const r = await vmbackup(['invoke', 'prune', ...rig.args('--input', JSON.stringify({ backupDir: dir, folder: 'web1', maxBackups: 1 }))]);
    expect(r.code).toBe(0);
    const event = JSON.parse(r.stdout) as { outcome: string; fn: string; runId: string; jobId: string; output: { kept: string[]; deleted: unknown[] } };
    expect(event).toMatchObject({ outcome: 'done', fn: 'prune', jobId: 'invoke.prune' });
    expect(event.runId).toMatch(/^adhoc-\d{8}-\d{6}-[0-9a-f]{4}$/);
    expect(event.output.kept).toHaveLength(1);

    // The same ids again: the phase runs, but its outcome repeats one already published.
    const again = { runId: event.runId, jobId: event.jobId, backupDir: dir, folder: 'web1', maxBackups: 1 };
    const repeat = await vmbackup(['invoke', 'prune', ...rig.args('--input', JSON.stringify(again))]);
    expect(repeat.code).toBe(2);
    expect(repeat.stderr).toContain(`prune ran, but its outcome event was dropped as a repeat: run ${event.runId}, job invoke.prune, try 1 reported the same outcome within the last 2 hours`);

    const bad = await vmbackup(['invoke', 'prune', ...rig.args('--input', JSON.stringify({ backupDir: dir, folder: '../x' }))]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('invalid input for prune');
    expect(bad.stderr).toContain('folder: folder must be one path component');
    expect(bad.stderr).toContain('maxBackups: Invalid input: expected number');
    const notJson = await vmbackup(['invoke', 'prune', ...rig.args('--input', '{nope')]);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain('--input is not JSON');
    const unknown = await vmbackup(['invoke', 'frobnicate', ...rig.args('--input', '{}')]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown function "frobnicate" \(functions: plan, snapshot, export/);

    const failed = await vmbackup(['invoke', 'snapshot', ...rig.args('--input', JSON.stringify({
      vm: { uuid: '00000000-0000-0000-0000-000000000000', name: 'ghost' }, mode: 'vm', disks: [], backupDir: dir, folder: 'ghost', stamp: '20261126-083000',
      maxBackups: 1, compress: 'none', format: 'raw', spaceThreshold: 1, haltedWithoutSnapshot: true, idleTimeoutS: 60,
    }))]);
    expect(failed.code).toBe(1);
    expect(JSON.parse(failed.stdout)).toMatchObject({ outcome: 'failed', fn: 'snapshot', attempt: 1, error: { code: 'VM_GONE', permanent: true } });
    expect(failed.stderr).toContain('snapshot failed (VM_GONE): VM ghost (00000000-0000-0000-0000-000000000000) no longer exists');
  });
});
