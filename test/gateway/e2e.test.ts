import { mkdir, mkdtemp, readdir, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functions, pipelines } from '../../functions/index.js';
import { answerSelectionChecks } from '../../functions/plan/check.js';
import type { Closer } from '../../runtime/bus/bus.js';
import { MemoryBus } from '../../runtime/bus/memory.js';
import { runEvents } from '../../runtime/events.js';
import { systemClock } from '../../runtime/function.js';
import { createGateway } from '../../runtime/gateway/app.js';
import { listen } from '../../runtime/gateway/server.js';
import type { ListeningGateway } from '../../runtime/gateway/server.js';
import { SECRET, TOKEN, alertmanagerPayload, authJson, defaultRunOptions } from '../../runtime/gateway/test-helpers.js';
import { signBody } from '../../runtime/gateway/webhook.js';
import { MemoryTriggerLog } from '../../runtime/gateway/trigger-log.js';
import { silentLogger } from '../../runtime/log.js';
import { startCoordinator } from '../../runtime/run/coordinator.js';
import { MemoryRunStore } from '../../runtime/run/store.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { serve } from '../../runtime/serve.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { startSimulator } from '../sim/server.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';

/**
 * The gateway in front of the in-process runtime (the same functions, coordinator and events
 * as on NATS) and the XAPI simulator: requests over a real socket lead to real backup files.
 */
let sim: Simulator;
let xapi: XapiClient;
let bus: MemoryBus;
let server: ListeningGateway;
let backupDir: string;
const finished: RunSummary[] = [];
let selectionChecks: Closer | undefined;
let runGateway: (defaults: Partial<Parameters<typeof createGateway>[0]['runDefaults']>, dir: string) => Promise<ListeningGateway>;
const events: { subject: string; data: { outcome?: string } }[] = [];

beforeAll(async () => {
  sim = await startSimulator({
    pool: {
      credentials: { user: 'root', password: 'secret' },
      hosts: [{ name_label: 'xcp1' }],
      srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
      vms: [
        { name_label: 'web1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern' }], vifs: [] },
        { name_label: 'db1', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' }], vifs: [] },
      ],
    },
  });
  const log = silentLogger();
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', log });
  backupDir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-e2e-'));
  bus = new MemoryBus();
  const store = new MemoryRunStore();
  await bus.subscribe(runEvents(), {}, async (subject, data) => {
    events.push({ subject, data: data as { outcome?: string } });
    if (subject.endsWith('.run.finished')) finished.push(data as RunSummary);
  });
  await startCoordinator(store, bus, systemClock, log);
  await serve(functions, { bus, log, xapi: async () => xapi, clock: systemClock, origin: { hostname: os.hostname(), pid: process.pid } }, { concurrency: () => 2 });
  // As a worker serving plan does: the gateway asks it whether a request's entries match the pool.
  selectionChecks = await answerSelectionChecks(bus, { xapi: async () => xapi, log });
  // Another gateway on the same runtime, with other settings.
  runGateway = (defaults, dir) =>
    listen(
      createGateway({
        bus,
        store,
        triggers: new MemoryTriggerLog(systemClock),
        backupDir: dir,
        tokens: [TOKEN],
        bodyLimit: 1 << 20,
        alertmanagerLabel: 'vm',
        webhookSecret: SECRET,
        runDefaults: { ...defaultRunOptions(dir), excludes: [], poolBackup: false, vmRetries: 0, ...defaults },
        clock: systemClock,
        log,
        ready: async () => true,
      }),
      { host: '127.0.0.1', port: 0 },
    );
  const app = createGateway({
    bus,
    store,
    triggers: new MemoryTriggerLog(systemClock),
    backupDir,
    tokens: [TOKEN],
    bodyLimit: 1 << 20,
    alertmanagerLabel: 'vm',
    runDefaults: { ...defaultRunOptions(backupDir), excludes: [], poolBackup: false, vmRetries: 0 },
    clock: systemClock,
    log,
    ready: async () => true,
  });
  server = await listen(app, { host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  await server?.close();
  await bus?.close();
  await xapi?.close();
  await sim?.close();
});

async function api<T = any>(method: string, url: string, body?: unknown, base = server.url): Promise<{ status: number; json: T }> {
  const res = await fetch(`${base}${url}`, { method, headers: authJson(), ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, json: (await res.json()) as T };
}

/** Waits until the run is finished (GET /v1/runs/{id}) and returns what the gateway shows. */
async function untilFinished(runId: string): Promise<{ run: { status: string; retries?: number }; summary: RunSummary }> {
  return waitFor(async () => {
    const r = await api(`GET`, `/v1/runs/${runId}`);
    return r.json.run?.status === 'finished' ? r.json : undefined;
  }, 60_000, `run ${runId} to finish`);
}

/** Runs of one second share a stamp (the set's name): start each run in a new second. */
async function nextSecond(): Promise<void> {
  await delay(1000 - (Date.now() % 1000) + 5);
}

describe('gateway + runtime + XAPI simulator', () => {
  it('POST /v1/runs leads to backup files, shown by GET /v1/runs/{id} and GET /v1/backups', async () => {
    await nextSecond();
    const submitted = await api('POST', '/v1/runs', { vm_exports: ['web1'], pool_backup: true });
    expect(submitted.status).toBe(202);
    const shown = await untilFinished(submitted.json.runId);
    expect(shown.summary).toMatchObject({ status: 'success', exitCode: 0, categories: { 'vm-export': { S: 1, E: 0 }, 'pool-db': { S: 1 } } });
    expect(shown.summary.jobs.map((j) => j.name).sort()).toEqual(['pool database', 'web1']);

    const files = (await readdir(path.join(backupDir, 'web1'))).sort();
    expect(files).toEqual([expect.stringMatching(/^backup_\d{8}-\d{6}\.json$/), expect.stringMatching(/\.meta$/), expect.stringMatching(/\.xva$/)]);
    expect(await readdir(path.join(backupDir, 'POOL_DB'))).toHaveLength(1);

    const backups = await api('GET', '/v1/backups?vm=web1');
    expect(backups.json.vms).toHaveLength(1);
    expect(backups.json.vms[0]).toMatchObject({ folder: 'web1', vm: { name: 'web1' } });
    expect(backups.json.vms[0].sets[0]).toMatchObject({ complete: true, mode: 'vm', formats: ['xva'], runId: submitted.json.runId });
    const list = await api('GET', '/v1/runs');
    expect(list.json.runs[0]).toMatchObject({ runId: submitted.json.runId, status: 'finished', trigger: 'gateway', jobs: 2 });
  });

  it('an Alertmanager delivery backs up the VM it names, and only that one', async () => {
    await nextSecond();
    const r = await api('POST', '/v1/hooks/alertmanager', alertmanagerPayload(['db1']));
    expect(r.status).toBe(202);
    const shown = await untilFinished(r.json.runId);
    expect(shown.summary.status).toBe('success');
    expect(shown.summary.jobs.map((j) => j.name)).toEqual(['db1']);
    expect((await readdir(path.join(backupDir, 'db1'))).filter((f) => f.endsWith('.xva'))).toHaveLength(1);
    // Delivered again (Alertmanager's repeat): the same run, nothing new.
    const again = await api('POST', '/v1/hooks/alertmanager', alertmanagerPayload(['db1']));
    expect(again).toMatchObject({ status: 200, json: { runId: r.json.runId, duplicate: true } });
  });

  it('a run whose export failed is retried: the coordinator carries the job to the end and publishes a new summary', async () => {
    await nextSecond();
    sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'http-500' } });
    const submitted = await api('POST', '/v1/runs', { vm_exports: ['web1'] });
    const runId = submitted.json.runId as string;
    const first = await untilFinished(runId);
    expect(first.summary).toMatchObject({ status: 'error', exitCode: 1 });
    expect(first.summary.jobs[0]!.error).toBeDefined();
    expect(sim.state.snapshots('web1')).toEqual([]);

    const retry = await api('POST', `/v1/runs/${runId}/retry`);
    expect(retry).toMatchObject({ status: 202, json: { runId, retries: 1, jobs: [{ label: 'web1', phase: pipelines.vm[0], from: 'start' }] } });
    const second = await waitFor(async () => {
      const r = await api('GET', `/v1/runs/${runId}`);
      return r.json.run.status === 'finished' && r.json.run.retries === 1 ? r.json : undefined;
    }, 60_000, 'the retried run to finish');
    expect(second.summary).toMatchObject({ status: 'success', exitCode: 0, categories: { 'vm-export': { S: 1, E: 0 } } });
    expect(second.summary.jobs[0]).toMatchObject({ status: 'success', tries: 2 });
    // Two run.finished events for this run: the first summary and the new one.
    await waitFor(() => finished.filter((s) => s.runId === runId).length === 2, 5000, 'the second summary');
    expect(finished.filter((s) => s.runId === runId).map((s) => s.status)).toEqual(['error', 'success']);
    // The backup set of the run is complete now.
    const sets = (await api('GET', '/v1/backups?vm=web1')).json.vms[0].sets as { runId?: string; complete: boolean }[];
    expect(sets.find((s) => s.runId === runId)).toMatchObject({ complete: true });
    expect(sim.state.snapshots('web1')).toEqual([]);
    // Nothing left to retry.
    expect((await api('POST', `/v1/runs/${runId}/retry`)).status).toBe(409);
  });

  it('one phase on its own: prune for a VM', async () => {
    const before = (await api('GET', '/v1/backups?vm=web1')).json.vms[0].sets.filter((s: { complete: boolean }) => s.complete);
    expect(before.length).toBeGreaterThanOrEqual(2);
    const r = await api('POST', '/v1/functions/prune', { backupDir, folder: 'web1', maxBackups: 1 });
    expect(r.status).toBe(202);
    await waitFor(() => events.some((e) => e.subject === `vmbackup.events.${r.json.runId}.prune.done`), 10_000, 'prune done');
    const after = (await api('GET', '/v1/backups?vm=web1')).json.vms[0].sets;
    expect(after).toHaveLength(1);
    expect(after[0].stamp).toBe(before[0].stamp); // the newest is kept
    // An ad-hoc invocation has no run state.
    expect((await api('GET', `/v1/runs/${r.json.runId}`)).status).toBe(404);
  });
});

describe('gateway: selection and retention, against the pool', () => {
  it('vm_exports naming a VM the pool does not have: 422 naming the entry, nothing started', async () => {
    const before = (await api('GET', '/v1/runs')).json.runs.length as number;
    const r = await api('POST', '/v1/runs', { vm_exports: ['web1', 'nope'] });
    expect(r.status).toBe(422);
    expect(r.json).toMatchObject({ error: 'SELECTION', issues: [{ path: 'vm_exports.1', message: 'entry "nope" matches no VM of the pool' }] });
    expect(r.json.message).toBe('nothing started: vm_exports.1: entry "nope" matches no VM of the pool');
    const regex = await api('POST', '/v1/runs', { vdi_exports: ['db1'], excludes: ['web(('] });
    expect(regex.status).toBe(422);
    expect(regex.json.issues[0]).toMatchObject({ path: 'excludes.0', message: expect.stringContaining('invalid regex') });
    const alert = await api('POST', '/v1/hooks/alertmanager', alertmanagerPayload(['db1', 'ghost']));
    expect(alert.status).toBe(422);
    expect(alert.json.issues).toEqual([{ path: 'alerts: label vm="ghost"', message: 'entry "ghost" matches no VM of the pool' }]);
    expect((await api('GET', '/v1/runs')).json.runs).toHaveLength(before);
  });

  it('without a worker to check it, the run starts and its plan refuses it: fatal, exit 2, naming the entry', async () => {
    await selectionChecks!.close();
    try {
      const r = await api('POST', '/v1/runs', { vm_exports: ['nope'] });
      expect(r.status).toBe(202);
      const shown = await untilFinished(r.json.runId);
      expect(shown.summary).toMatchObject({ status: 'fatal', exitCode: 2 });
      expect(JSON.stringify(shown.summary)).toContain('vm_exports: entry \\"nope\\" matches no VM of the pool');
    } finally {
      selectionChecks = await answerSelectionChecks(bus, { xapi: async () => xapi, log: silentLogger() });
    }
  });

  it('a run for one VM keeps the MAX the configured entry gives it, not max_backups', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-max-'));
    const gw = await runGateway(
      { maxBackups: 1, selection: { requested: [], config: [{ list: 'vm_exports', entries: ['web1', 'db1:7'], where: '/etc/vmbackup.cfg line 3' }], maxBackups: '/etc/vmbackup.cfg line 2' } },
      dir,
    );
    try {
      const folder = path.join(dir, 'db1');
      await mkdir(folder);
      for (const stamp of ['01022024-030405', '02022024-030405', '03022024-030405']) {
        await writeFile(path.join(folder, `backup_${stamp}.xva`), stamp);
        await writeFile(path.join(folder, `backup_${stamp}.meta`), 'name_label=db1\n');
      }
      const old = new Date(Date.now() - 2 * 86_400_000);
      for (const name of await readdir(folder)) await utimes(path.join(folder, name), old, old);
      // A signed webhook naming a VM the pool does not have: 422, nothing started.
      const raw = JSON.stringify({ id: 'd-1', timestamp: new Date().toISOString(), vm_exports: ['db1', 'ghost:2'] });
      const hook = await fetch(`${gw.url}/v1/hooks/generic`, { method: 'POST', headers: { ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, raw) }, body: raw });
      expect(hook.status).toBe(422);
      expect(await hook.json()).toMatchObject({ error: 'SELECTION', issues: [{ path: 'vm_exports.1', message: 'entry "ghost:2" matches no VM of the pool' }] });
      await nextSecond();
      const r = await api('POST', '/v1/runs', { vm_exports: ['db1'] }, gw.url);
      expect(r.status).toBe(202);
      const shown = await untilFinished(r.json.runId);
      expect(shown.summary.status).toBe('success');
      // Three earlier sets and this run's: db1:7 keeps them all (max_backups 1 would keep one).
      expect((await readdir(folder)).filter((n) => n.endsWith('.xva'))).toHaveLength(4);
    } finally {
      await gw.close();
    }
  });
});
