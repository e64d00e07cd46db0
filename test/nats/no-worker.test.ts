import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functions } from '../../functions/index.js';
import { startGatewayCommand } from '../gateway/gateway-command.js';
import type { GatewayCommand } from '../gateway/gateway-command.js';
import { vmbackup } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/**
 * Nothing waits in silence: with no worker consuming a run's jobs (none at all, or none
 * serving one function), the gateway's /readyz says not ready and names what nobody
 * consumes, its POST /v1/runs still accepts the run and says it waits, and `vmbackup run`
 * names the jobs on stderr and gives up after --wait-timeout without progress. A real
 * nats-server, real `vmbackup worker`, `vmbackup run` and `vmbackup gateway` processes.
 */
let rig: Rig;
let gw: GatewayCommand;
beforeAll(async () => {
  rig = await startRig(pool([vm('web1'), vm('big', 'Running', 24)]));
  gw = await startGatewayCommand([...rig.args('--listen', '127.0.0.1:0', '--no-auth')], {});
});
afterAll(async () => {
  gw?.child.kill('SIGTERM');
  await gw?.exited;
  await rig?.close();
});

type Ready = { status: string; unconsumed?: string[] };
async function readyz(): Promise<{ code: number; body: Ready }> {
  const res = await fetch(`${gw.url}/readyz`);
  return { code: res.status, body: (await res.json()) as Ready };
}
async function postRun(body: unknown): Promise<{ code: number; body: { runId: string; warning?: string; unconsumed?: string[] } }> {
  const res = await fetch(`${gw.url}/v1/runs`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  return { code: res.status, body: (await res.json()) as { runId: string; warning?: string; unconsumed?: string[] } };
}
async function runState(runId: string): Promise<{ run: { status: string }; outcome?: string }> {
  return (await (await fetch(`${gw.url}/v1/runs/${runId}`)).json()) as { run: { status: string }; outcome?: string };
}

const queuedRuns: string[] = [];

describe('no worker consumes the jobs', () => {
  it('/readyz is not ready and names the plan, the phases and the coordinator', async () => {
    const r = await readyz();
    expect(r.code).toBe(503);
    expect(r.body.status).toMatch(/^not ready: no worker is consuming plan, pre-hook, snapshot, export, .* jobs \(vmbackup\.jobs\.plan: 0 queued/);
    expect(r.body.status).toContain('no worker runs the coordinator');
    expect(r.body.unconsumed).toEqual(expect.arrayContaining(['plan', 'snapshot', 'export', 'meta', 'prune', 'coordinator']));
  });

  it('POST /v1/runs accepts the run and says that it waits for a worker', async () => {
    const r = await postRun({ vm_exports: ['web1'] });
    expect(r.code).toBe(202);
    expect(r.body.warning).toMatch(/^no worker is consuming plan, .* jobs \(vmbackup\.jobs\.plan: 1 queued/);
    expect(r.body.warning).toContain(`run ${r.body.runId} is queued and starts when one connects`);
    expect(r.body.unconsumed).toEqual(expect.arrayContaining(['plan', 'coordinator']));
    expect((await runState(r.body.runId)).run.status).toBe('planning');
    queuedRuns.push(r.body.runId);
  });

  it('vmbackup run names the plan jobs and the coordinator on stderr, then exits 2 after --wait-timeout', async () => {
    const r = await vmbackup(['run', ...rig.args('-e', 'web1', '--wait-timeout', '4')]);
    expect(r.code).toBe(2);
    const runId = /run (\S+): submitted/.exec(r.stdout)?.[1];
    expect(runId).toBeDefined();
    const lines = r.stderr.split('\n');
    const named = lines.findIndex((l) => l.startsWith('WARNING: no worker is consuming plan jobs (vmbackup.jobs.plan: ') && l.includes('no worker runs the coordinator') && l.includes('start `vmbackup worker`'));
    const gaveUp = lines.findIndex((l) => l.startsWith(`ERROR: run ${runId} made no progress for 4 s (--wait-timeout 4): no worker is consuming plan jobs`));
    expect(named, r.stderr).toBeGreaterThanOrEqual(0);
    expect(gaveUp, r.stderr).toBeGreaterThan(named);
    expect(r.stderr).toContain(`run ${runId} stays queued and goes on when a worker takes it`);
    expect((await runState(runId!)).run.status).toBe('planning');
    queuedRuns.push(runId!);
  });
  it('vmbackup invoke says that no worker serves the function, then gives up at --timeout', async () => {
    const input = JSON.stringify({ backupDir: '/nonexistent/vmbackup-invoke', folder: 'web1', maxBackups: 1, runId: 'adhoc-no-worker' });
    const r = await vmbackup(['invoke', 'prune', ...rig.args('--input', input, '--timeout', '5')]);
    expect(r.code).toBe(2);
    const named = r.stderr.indexOf('no worker is consuming prune jobs (vmbackup.jobs.prune: ');
    const gaveUp = r.stderr.indexOf('no outcome of prune within 5 s');
    expect(named, r.stderr).toBeGreaterThanOrEqual(0);
    expect(r.stderr).toContain('the prune job waits for it (--timeout 5)');
    expect(r.stderr).not.toContain('coordinator');
    expect(gaveUp, r.stderr).toBeGreaterThan(named);
  });
});

describe('a worker that serves every function but export', () => {
  it('/readyz names export only; vmbackup run names the export jobs nobody takes', async () => {
    await rig.worker('--functions', functions.map((f) => f.name).filter((n) => n !== 'export').join(','));
    const ready = await waitFor(async () => {
      const r = await readyz();
      return r.body.unconsumed?.length === 1 ? r : undefined;
    }, 20_000, 'readyz to name export alone');
    expect(ready.code).toBe(503);
    expect(ready.body.unconsumed).toEqual(['export']);
    expect(ready.body.status).toMatch(/^not ready: no worker is consuming export jobs \(vmbackup\.jobs\.export: \d+ queued\); start `vmbackup worker` \(serving export\)$/);

    const r = await vmbackup(['run', ...rig.args('-e', 'web1', '--wait-timeout', '4')]);
    expect(r.code).toBe(2);
    const runId = /run (\S+): submitted/.exec(r.stdout)?.[1];
    // The run got as far as its snapshot; the export job it queued is named.
    expect(r.stdout).toMatch(/^web1: snapshot done in /m);
    expect(r.stderr).toMatch(/^WARNING: no worker is consuming export jobs \(vmbackup\.jobs\.export: [1-9]\d* queued\); start `vmbackup worker` \(serving export\)/m);
    expect(r.stderr).not.toContain('plan jobs');
    expect(r.stderr).not.toContain('coordinator');
    expect(r.stderr).toContain(`ERROR: run ${runId} made no progress for 4 s (--wait-timeout 4): no worker is consuming export jobs`);
    queuedRuns.push(runId!);
  });
});

describe('once a worker serves export too', () => {
  it('/readyz is ready, the waiting runs finish, a new run gets no warning', async () => {
    await rig.worker('--functions', 'export');
    const ready = await waitFor(async () => {
      const r = await readyz();
      return r.code === 200 ? r : undefined;
    }, 20_000, 'readyz to say ready');
    expect(ready.body).toEqual({ status: 'ready' });
    for (const runId of queuedRuns) {
      const done = await waitFor(async () => {
        const s = await runState(runId);
        return s.run.status === 'finished' ? s : undefined;
      }, 90_000, `run ${runId} to finish`);
      expect(done.outcome, JSON.stringify(done)).toBe('success');
    }
    const r = await postRun({ vm_exports: ['web1'] });
    expect(r.code).toBe(202);
    expect(r.body.warning).toBeUndefined();
    expect(r.body.unconsumed).toBeUndefined();
  });

  it('--wait-timeout does not cut a long export short: a phase under way is progress', async () => {
    // About 6 s of export against a 2 s wait timeout.
    const fault = rig.sim.faults.add({ http: 'export', vm: 'big', always: true, action: { kind: 'slow', bytes_per_second: 4 << 20 } });
    try {
      const r = await vmbackup(['run', ...rig.args('-e', 'big', '--wait-timeout', '2')]);
      expect(r.stderr).not.toContain('no progress');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^big: exported /m);
    } finally {
      rig.sim.faults.remove(fault);
    }
  });
});
