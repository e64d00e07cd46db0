import { spawn } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openNats } from '../../runtime/bus/nats-connect.js';
import type { NatsRuntime } from '../../runtime/bus/nats-connect.js';
import { testGateway, authJson } from '../../runtime/gateway/test-helpers.js';
import { silentLogger } from '../../runtime/log.js';
import { newRunHeader } from '../../runtime/run/reduce.js';
import type { JobState } from '../../runtime/run/state.js';
import { vmbackup } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';

/**
 * `vmbackup status` against a real nats-server whose run store holds finished runs: the run
 * id is taken wherever it stands among the options, and the outcome it shows is the one the
 * gateway shows for the same runs (one piece of code: runtime/run/outcome.ts).
 */
let nats: NatsServer;
let rt: NatsRuntime;
let config: string;
let base: string;

function job(jobId: string, status: JobState['status'], warnings: string[] = []): JobState {
  return {
    jobId,
    kind: 'vm',
    category: 'vm-export',
    label: jobId.slice(3),
    pipeline: ['snapshot', 'export', 'meta', 'prune'],
    phase: 'prune',
    status,
    try: 1,
    input: { runId: 'x', jobId, try: 1 },
    files: [],
    bytes: 0,
    warnings,
    phaseMs: {},
    ...(status === 'failed' ? { error: { name: 'Error', code: 'EIO', message: 'disk error', permanent: false, retryable: true } } : {}),
  };
}

async function seed(runId: string, at: string, jobs: JobState[] | 'running'): Promise<void> {
  const header = { ...newRunHeader(runId, new Date(at), { concurrency: 2, vmRetries: 0 }), trigger: 'cli' };
  await rt.store.create(header);
  if (jobs === 'running') return;
  const { revision } = (await rt.store.header(runId))!;
  const finishedAt = new Date(Date.parse(at) + 60_000).toISOString();
  expect(await rt.store.commit(runId, { ...header, status: 'finished', finishedAt, jobIds: jobs.map((j) => j.jobId), backupDir: '/backups' }, revision, jobs)).toBe(true);
}

beforeAll(async () => {
  nats = await startNatsServer();
  rt = await openNats({ nats_url: nats.url, concurrency: 2 }, silentLogger(), { name: 'status test' });
  base = await mkdtemp(path.join(os.tmpdir(), 'vmb-status-'));
  config = path.join(base, 'vmbackup.cfg');
  await writeFile(config, `[vmbackup]\nnats_url = ${nats.url}\n`);
  await seed('20261126-121153-292f', '2026-11-26T12:11:53Z', [job('vm.web1', 'success'), job('vm.db1', 'success', ['db1: a snapshot left by run r0 was removed'])]);
  await seed('20261126-100000-aaaa', '2026-11-26T10:00:00Z', [job('vm.web1', 'success')]);
  await seed('20261126-090000-bbbb', '2026-11-26T09:00:00Z', [job('vm.web1', 'success'), job('vm.db1', 'failed')]);
  await seed('20261126-130000-cccc', '2026-11-26T13:00:00Z', 'running');
}, 60_000);
afterAll(async () => {
  await rt?.close();
  await nats?.stop();
});

describe('vmbackup status', () => {
  it.each([
    ['after the options', ['-c', 'CONFIG', '-b', 'BASE', '20261126-121153-292f']],
    ['before them', ['20261126-121153-292f', '-c', 'CONFIG', '-b', 'BASE']],
    ['between them', ['-c', 'CONFIG', '20261126-121153-292f', '-b', 'BASE']],
  ])('takes the run id %s, and shows its outcome', async (_name, argv) => {
    const r = await vmbackup(['status', ...argv.map((a) => (a === 'CONFIG' ? config : a === 'BASE' ? base : a))]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('run 20261126-121153-292f  finished: warning (exit 0)');
    expect(r.stdout).toContain('WARNING: vm-export db1: db1: a snapshot left by run r0 was removed');
  });

  it('lists the runs with the outcome of each finished one — the gateway’s, for the same runs', async () => {
    const text = await vmbackup(['status', '-c', config, '-b', base]);
    expect(text.code).toBe(0);
    const states = Object.fromEntries(text.stdout.trim().split('\n').map((l) => l.split(/\s+/).slice(0, 2)));
    expect(states).toEqual({ '20261126-130000-cccc': 'planning', '20261126-121153-292f': 'warning', '20261126-100000-aaaa': 'success', '20261126-090000-bbbb': 'error' });

    const json = JSON.parse((await vmbackup(['status', '--json', '-c', config, '-b', base])).stdout) as { runId: string; outcome?: string; exitCode?: number }[];
    const fromStatus = json.map((r) => [r.runId, r.outcome, r.exitCode] as [string, string | undefined, number | undefined]);
    expect(fromStatus).toEqual([
      ['20261126-130000-cccc', undefined, undefined],
      ['20261126-121153-292f', 'warning', 0],
      ['20261126-100000-aaaa', 'success', 0],
      ['20261126-090000-bbbb', 'error', 1],
    ]);

    // The gateway over the same run store.
    const gw = testGateway({ store: rt.store });
    const res = await gw.app.request('/v1/runs', { headers: authJson() });
    expect(res.status).toBe(200);
    const runs = ((await res.json()) as { runs: { runId: string; outcome?: string; exitCode?: number }[] }).runs;
    expect(runs.map((r) => [r.runId, r.outcome, r.exitCode])).toEqual(fromStatus);
    for (const [runId, outcome, exitCode] of fromStatus) {
      const one = (await (await gw.app.request(`/v1/runs/${runId}`, { headers: authJson() })).json()) as { outcome?: string; exitCode?: number };
      expect([one.outcome, one.exitCode]).toEqual([outcome, exitCode]);
      const shown = JSON.parse((await vmbackup(['status', runId, '--json', '-c', config, '-b', base])).stdout) as { outcome?: string; exitCode?: number };
      expect([shown.outcome, shown.exitCode]).toEqual([outcome, exitCode]);
    }
  });

  it('ends quietly when its reader goes away (`vmbackup status | head -1`)', async () => {
    const child = spawn(process.execPath, [path.join(process.cwd(), 'bin/vmbackup.js'), 'status', '-c', config, '-b', base], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy(); // the reader is gone before the first line
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise((resolve) => child.on('exit', resolve));
    expect(stderr).not.toMatch(/EPIPE|Error/);
    expect(code).toBe(0);
  });

  it('a second run id is refused, naming the command', async () => {
    const r = await vmbackup(['status', '-c', config, 'a-run', 'another-run']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('vmbackup: unexpected argument "another-run": vmbackup status takes one RUN (see vmbackup status --help)\n');
  });
});
