import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, NatsError } from 'nats';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import type { PlanInput } from '../../functions/plan/plan.js';
import { ConfigError, RetryLaterError } from '../errors.js';
import { newRunHeader } from '../run/reduce.js';
import type { JobState } from '../run/state.js';
import { MemoryRunStore } from '../run/store.js';
import { runOutcome } from '../run/outcome.js';
import { silentLogger } from '../log.js';
import { createGateway, gatewayRoutes } from './app.js';
import { RecordingBus, SECRET, TOKEN, OTHER_TOKEN, TestClock, alertmanagerPayload, authJson, defaultRunOptions, requestedSelection, testGateway } from './test-helpers.js';
import { MemoryTriggerLog } from './trigger-log.js';
import { signBody } from './webhook.js';
import { isPagePath } from './page.js';

type Gw = ReturnType<typeof testGateway>;

async function call(gw: Gw, method: string, url: string, opts: { body?: unknown; raw?: string | Uint8Array | ReadableStream; headers?: Record<string, string> } = {}) {
  const body = opts.raw ?? (opts.body !== undefined ? JSON.stringify(opts.body) : undefined);
  const withBody = body !== undefined && method !== 'GET';
  const res = await gw.app.request(url, { method, headers: opts.headers ?? authJson(), ...(withBody ? { body, duplex: 'half' } : {}) } as RequestInit);
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, headers: res.headers, text };
}

const planOf = (gw: Gw, i = 0) => gw.bus.enqueued.filter((e) => e.subject === 'vmbackup.jobs.plan')[i]!.data as PlanInput;

/** A concrete URL for each documented route. */
function concrete(p: string): string {
  return p.replace('{id}', '20261126-083000-abcd');
}

describe('auth: a bearer token on every route but health and the API document', () => {
  const gw = testGateway();
  // The status page signs in its own way (page.test.ts).
  const routes = gatewayRoutes(gw.app).filter((r) => !['/healthz', '/readyz', '/v1/openapi.json'].includes(r.path) && !isPagePath(r.path));

  it('covers every route of the app', () => {
    expect(routes.length).toBeGreaterThanOrEqual(12);
  });

  it.each(routes.map((r) => [r.method, r.path.replace(/:(\w+)/g, '{$1}')]))('%s %s: 401 without a token, 401 malformed, 403 with a wrong one; nothing sent', async (method, p) => {
    const url = concrete(p).replace('{name}', 'prune');
    const none = await call(gw, method, url, { headers: { 'Content-Type': 'application/json' }, body: {} });
    expect(none.status).toBe(401);
    expect(none.headers.get('WWW-Authenticate')).toMatch(/^Bearer realm="vmbackup"/);
    expect(none.json).toMatchObject({ error: 'UNAUTHORIZED' });
    const malformed = await call(gw, method, url, { headers: { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}`, 'Content-Type': 'application/json' }, body: {} });
    expect(malformed.status).toBe(401);
    expect(malformed.headers.get('WWW-Authenticate')).toContain('error="invalid_request"');
    const wrong = await call(gw, method, url, { headers: authJson('not-the-token-0123456789'), body: {} });
    expect(wrong.status).toBe(403);
    expect(wrong.json).toMatchObject({ error: 'FORBIDDEN' });
    expect(gw.bus.sent()).toBe(0);
    expect(await gw.store.list()).toEqual([]);
  });

  it('unknown paths under /v1 need a token too (routes are not revealed)', async () => {
    expect((await call(gw, 'GET', '/v1/nothing-here', { headers: {} })).status).toBe(401);
    expect((await call(gw, 'GET', '/v1/nothing-here')).status).toBe(404);
  });

  it('either configured token works', async () => {
    expect((await call(gw, 'GET', '/v1/runs', { headers: authJson(OTHER_TOKEN) })).status).toBe(200);
  });

  it('health and the document need no token', async () => {
    expect(await call(gw, 'GET', '/healthz', { headers: {} })).toMatchObject({ status: 200, json: { status: 'ok' } });
    expect(await call(gw, 'GET', '/readyz', { headers: {} })).toMatchObject({ status: 200, json: { status: 'ready' } });
    expect((await call(gw, 'GET', '/v1/openapi.json', { headers: {} })).json).toMatchObject({ openapi: '3.1.0' });
  });

  it('readyz is 503 when the bus is not reachable, or the check fails', async () => {
    expect((await call(testGateway({ ready: async () => false }), 'GET', '/readyz', { headers: {} })).status).toBe(503);
    expect((await call(testGateway({ ready: async () => Promise.reject(new Error('no NATS')) }), 'GET', '/readyz', { headers: {} })).status).toBe(503);
  });

  it('no token configured: refuses to start, unless told to run without authentication', async () => {
    expect(() => testGateway({ tokens: [] })).toThrow(ConfigError);
    const open = testGateway({ tokens: [], allowNoAuth: true });
    expect((await call(open, 'POST', '/v1/runs', { headers: {} })).status).toBe(202);
  });
});

describe('POST /v1/runs', () => {
  it('starts a run with the settings overridden by the body: 202, Location, plan queued', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/runs', { body: { vm_exports: ['web1'], max_backups: 2, compress: 'zstd' } });
    expect(r.status).toBe(202);
    expect(r.json.runId).toMatch(/^20261126-083000-[0-9a-f]{4}$/);
    expect(r.headers.get('Location')).toBe(`/v1/runs/${r.json.runId}`);
    expect(gw.bus.enqueued).toHaveLength(1);
    expect(gw.bus.enqueued[0]).toMatchObject({ subject: 'vmbackup.jobs.plan', id: `${r.json.runId}:plan:1:plan` });
    expect(planOf(gw)).toEqual({
      runId: r.json.runId,
      jobId: 'plan',
      try: 1,
      startedAt: '2026-11-26T08:30:00.000Z',
      options: { ...defaultRunOptions(), vmExports: ['web1'], vdiExports: [], maxBackups: 2, compress: 'zstd', selection: requestedSelection({ maxBackups: 'request (max_backups)' }) },
    });
    expect((await gw.store.header(r.json.runId))!.header).toMatchObject({ status: 'planning', trigger: 'gateway' });
  });

  it('an empty body (as from `curl -X POST`) runs with the settings alone', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/runs', { headers: { Authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(202);
    expect(planOf(gw).options).toEqual(defaultRunOptions());
  });

  it('Idempotency-Key: the same key gives the same run, started once', async () => {
    const gw = testGateway();
    const headers = { ...authJson(), 'Idempotency-Key': 'nightly-2026-11-26' };
    const first = await call(gw, 'POST', '/v1/runs', { headers, body: {} });
    gw.clock.advance(60_000);
    const again = await call(gw, 'POST', '/v1/runs', { headers, body: {} });
    expect(first.status).toBe(202);
    expect(again).toMatchObject({ status: 200, json: { runId: first.json.runId, duplicate: true } });
    expect(gw.bus.enqueued).toHaveLength(1);
    // The same key with another body: 422, nothing queued (IETF idempotency-key draft).
    const changed = await call(gw, 'POST', '/v1/runs', { headers, body: { vm_exports: ['web1'] } });
    expect(changed).toMatchObject({ status: 422, json: { error: 'IDEMPOTENCY_KEY_REUSED' } });
    expect(changed.json.message).toContain('asked for with other options');
    expect(gw.bus.enqueued).toHaveLength(1);
    const other = await call(gw, 'POST', '/v1/runs', { headers: { ...authJson(), 'Idempotency-Key': 'nightly-2026-11-27' }, body: {} });
    expect(other.status).toBe(202);
    expect(other.json.runId).not.toBe(first.json.runId);
  });

  it.each([
    ['malformed JSON', { raw: '{"vm_exports": ["web1"' }, 400, /malformed JSON in request body/],
    ['wrong types', { body: { max_backups: 'four', pool_backup: 'yes' } }, 400, /max_backups: Invalid input: expected number, received string; pool_backup: /],
    ['an unknown key', { body: { vm_export: ['web1'] } }, 400, /Unrecognized key: "vm_export"/],
    ['backup_dir', { body: { backup_dir: '/etc' } }, 400, /backup_dir/],
    ['an invalid selection entry', { body: { vm_exports: ['web1:0'] } }, 400, /vm_exports.0: invalid entry "web1:0"/],
    ['an invalid regex', { body: { excludes: ['PRD-(a'] } }, 422, /^nothing started: excludes.0: invalid entry "PRD-\(a": invalid regex/],
    ['JSON null', { raw: 'null' }, 400, /\(body\): Invalid input: expected object/],
    ['a JSON array', { raw: '["web1"]' }, 400, /expected object/],
    ['deeply nested JSON', { raw: `{"vm_exports": ${'['.repeat(100_000)}${']'.repeat(100_000)}}` }, 413, /larger than/],
    ['nested JSON within the limit', { raw: `{"vm_exports": ${'['.repeat(20_000)}${']'.repeat(20_000)}}` }, 400, /vm_exports.0/],
    ['a number too large', { raw: '{"max_backups": 1e400}' }, 400, /max_backups/],
    ['invalid UTF-8', { raw: new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]) }, 400, /Unrecognized key/],
    ['a body that is not JSON', { raw: 'vm_exports=web1', headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/x-www-form-urlencoded' } }, 415, /Content-Type: application\/json/],
    ['a body without Content-Type', { raw: new TextEncoder().encode('{}'), headers: { Authorization: `Bearer ${TOKEN}` } }, 415, /no Content-Type/],
    ['a JSON Content-Type and no body', { headers: authJson() }, 400, /malformed JSON in request body: Unexpected end of JSON input/],
    ['a bad Idempotency-Key', { body: {}, headers: { ...authJson(), 'Idempotency-Key': 'ä'.repeat(3) } }, 400, /Idempotency-Key/],
  ])('%s → %i with what is wrong; nothing queued', async (_name, req, status, message) => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/runs', req as never);
    expect(r.status).toBe(status);
    expect(r.json.message).toMatch(message);
    if (status === 400 && r.json.error === 'BAD_REQUEST' && r.json.issues !== undefined) expect(r.json.issues[0]).toHaveProperty('path');
    expect(gw.bus.sent()).toBe(0);
    expect(await gw.store.list()).toEqual([]);
  });
});

describe('body limit: 413, with and without Content-Length', () => {
  const big = JSON.stringify({ vm_exports: Array.from({ length: 10_000 }, (_, i) => `vm-${i}`) }); // > 64 KiB

  it('a Content-Length over the limit is refused before reading', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/runs', { raw: '{}', headers: { ...authJson(), 'Content-Length': String(10 << 20) } });
    expect(r).toMatchObject({ status: 413, json: { error: 'PAYLOAD_TOO_LARGE' } });
    expect(gw.bus.sent()).toBe(0);
  });

  it('a streamed body (no Content-Length) is cut when it passes the limit', async () => {
    const gw = testGateway();
    let pulled = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 16 * 1024;
        if (pulled > 10 << 20) controller.close();
        else controller.enqueue(new Uint8Array(16 * 1024).fill(0x20));
      },
    });
    const r = await call(gw, 'POST', '/v1/runs', { raw: stream });
    expect(r).toMatchObject({ status: 413, json: { error: 'PAYLOAD_TOO_LARGE' } });
    expect(pulled).toBeLessThan(1 << 20); // it stopped reading soon after the limit
    expect(gw.bus.sent()).toBe(0);
  });

  it.each(['/v1/runs', '/v1/functions/prune', '/v1/hooks/alertmanager', '/v1/hooks/generic'])('%s', async (url) => {
    const gw = testGateway();
    const r = await call(gw, 'POST', url, { raw: big });
    expect(r.status).toBe(413);
    expect(gw.bus.sent()).toBe(0);
  });
});

describe('GET /v1/runs and /v1/runs/{id}', () => {
  it('lists runs newest first and shows one', async () => {
    const gw = testGateway();
    const a = (await call(gw, 'POST', '/v1/runs', { body: {} })).json.runId;
    gw.clock.advance(1000);
    const b = (await call(gw, 'POST', '/v1/runs', { body: { pool_backup: false } })).json.runId;
    const list = await call(gw, 'GET', '/v1/runs');
    expect(list.status).toBe(200);
    expect(list.json.runs.map((r: { runId: string }) => r.runId)).toEqual([b, a]);
    expect(list.json.runs[0]).toMatchObject({ status: 'planning', trigger: 'gateway', jobs: 0, remaining: 0 });
    expect((await call(gw, 'GET', '/v1/runs?limit=1')).json.runs).toHaveLength(1);
    const one = await call(gw, 'GET', `/v1/runs/${a}`);
    expect(one).toMatchObject({ status: 200, json: { run: { runId: a, status: 'planning' }, jobs: [] } });
    expect(one.json.summary).toBeUndefined();
  });

  it('a finished run comes with its jobs (without their messages) and its summary', async () => {
    const gw = testGateway();
    await seedFinishedRun(gw.store, 'r-finished', [job('vm.a', 'success'), job('vm.b', 'failed')]);
    const r = await call(gw, 'GET', '/v1/runs/r-finished');
    expect(r.status).toBe(200);
    expect(r.json.jobs.map((j: JobState) => [j.jobId, j.status])).toEqual([['vm.a', 'success'], ['vm.b', 'failed']]);
    expect(r.json.jobs[1]).not.toHaveProperty('failedInput');
    expect(r.json.jobs[0]).not.toHaveProperty('input');
    expect(r.json.summary).toMatchObject({ runId: 'r-finished', status: 'error', exitCode: 1, categories: { 'vm-export': { S: 1, E: 1 } } });
  });

  it('a finished run shows its outcome and exit code, in the list and alone, as `vmbackup status` does', async () => {
    const gw = testGateway();
    await seedFinishedRun(gw.store, 'r-success', [job('vm.a', 'success')]);
    await seedFinishedRun(gw.store, 'r-warning', [job('vm.a', 'success', { warnings: ['a: snapshot left over from run r0 removed'] })]);
    await seedFinishedRun(gw.store, 'r-error', [job('vm.a', 'success'), job('vm.b', 'failed')]);
    const fatal = newRunHeader('r-fatal', new Date('2026-11-26T07:00:00Z'), { concurrency: 2, vmRetries: 0 });
    await gw.store.create(fatal);
    await gw.store.commit('r-fatal', { ...fatal, status: 'finished', finishedAt: '2026-11-26T07:00:01.000Z', fatal: { name: 'ConfigError', code: 'NO_SPACE', message: 'backup_dir below space_threshold', permanent: true, retryable: false } }, 1, []);
    const running = newRunHeader('r-running', new Date('2026-11-26T09:00:00Z'), { concurrency: 2, vmRetries: 0 });
    await gw.store.create(running);

    const list = await call(gw, 'GET', '/v1/runs');
    expect(list.status).toBe(200);
    const byId = Object.fromEntries(list.json.runs.map((r: { runId: string; status: string; outcome?: string; exitCode?: number }) => [r.runId, [r.status, r.outcome, r.exitCode]]));
    expect(byId).toEqual({
      'r-success': ['finished', 'success', 0],
      'r-warning': ['finished', 'warning', 0],
      'r-error': ['finished', 'error', 1],
      'r-fatal': ['finished', 'fatal', 2],
      'r-running': ['planning', undefined, undefined],
    });
    for (const r of list.json.runs) {
      const one = await call(gw, 'GET', `/v1/runs/${r.runId}`);
      expect([one.json.outcome, one.json.exitCode], r.runId).toEqual(byId[r.runId].slice(1));
      // The same code as the summary's (and so as `vmbackup status` and the exit code).
      if (one.json.summary !== undefined) expect([one.json.summary.status, one.json.summary.exitCode]).toEqual([one.json.outcome, one.json.exitCode]);
      expect(runOutcome((await gw.store.header(r.runId))!.header, await gw.store.allJobs(r.runId))).toEqual(r.outcome === undefined ? undefined : { outcome: r.outcome, exitCode: r.exitCode });
    }
    expect((await call(gw, 'GET', '/v1/runs/r-running')).json).not.toHaveProperty('outcome');
  });

  it.each([
    ['an unknown run', '/v1/runs/20991231-000000-ffff', 404, /no run 20991231-000000-ffff/],
    ['an ad-hoc invocation', '/v1/runs/adhoc-20261126-083000-abcd', 404, /ad-hoc function invocations are not tracked as runs/],
    ['an id with a dot', '/v1/runs/a.b', 400, /id: runId: letters, digits, - and _ only/],
    ['an id too long', `/v1/runs/${'a'.repeat(65)}`, 400, /invalid run id/],
    ['a percent-encoded id', '/v1/runs/%E2%9C%93', 400, /invalid run id/],
    ['a broken percent-encoding', '/v1/runs/%ZZ', 400, /invalid run id/],
    ['limit not a number', '/v1/runs?limit=many', 400, /limit: /],
    ['limit 0', '/v1/runs?limit=0', 400, /limit: /],
  ])('%s → %i', async (_name, url, status, message) => {
    const gw = testGateway();
    const r = await call(gw, 'GET', url);
    expect(r.status).toBe(status);
    expect(r.json.message).toMatch(message);
  });
});

function job(jobId: string, status: JobState['status'], over: Partial<JobState> = {}): JobState {
  return {
    jobId,
    kind: 'vm',
    category: 'vm-export',
    label: jobId.slice(3),
    pipeline: ['snapshot', 'export', 'meta', 'prune'],
    phase: status === 'failed' ? 'meta' : 'prune',
    status,
    try: 1,
    input: { runId: 'x', jobId, try: 1 },
    files: [],
    bytes: 0,
    warnings: [],
    phaseMs: {},
    ...(status === 'failed'
      ? { error: { name: 'Error', code: 'EIO', message: 'disk error', permanent: false, retryable: true }, failedInput: { runId: 'x', jobId, try: 1, meta: true } }
      : {}),
    ...over,
  };
}

async function seedFinishedRun(store: MemoryRunStore, runId: string, jobs: JobState[]) {
  const header = { ...newRunHeader(runId, new Date('2026-11-26T08:00:00Z'), { concurrency: 2, vmRetries: 0 }), trigger: 'gateway' };
  await store.create(header);
  await store.commit(runId, { ...header, status: 'finished', finishedAt: '2026-11-26T08:10:00.000Z', jobIds: jobs.map((j) => j.jobId), backupDir: '/backups' }, 1, jobs);
}

describe('POST /v1/runs/{id}/retry', () => {
  it('re-queues the failed jobs from their failed phase, reopens the run', async () => {
    const gw = testGateway();
    await seedFinishedRun(gw.store, 'r1', [job('vm.a', 'success'), job('vm.b', 'failed')]);
    const r = await call(gw, 'POST', '/v1/runs/r1/retry');
    expect(r.status).toBe(202);
    expect(r.json).toEqual({ runId: 'r1', retries: 1, jobs: [{ jobId: 'vm.b', label: 'b', phase: 'meta', from: 'failed-phase' }] });
    expect(gw.bus.enqueued).toEqual([{ subject: 'vmbackup.jobs.meta', data: { runId: 'x', jobId: 'vm.b', try: 2, meta: true }, id: 'r1:vm.b:2:meta' }]);
    expect((await gw.store.header('r1'))!.header).toMatchObject({ status: 'running', remaining: 1, retries: 1 });
    // Now running: a second retry is a conflict, and queues nothing.
    const again = await call(gw, 'POST', '/v1/runs/r1/retry');
    expect(again).toMatchObject({ status: 409, json: { error: 'NOT_FINISHED' } });
    expect(gw.bus.enqueued).toHaveLength(1);
  });

  it.each([
    ['an unknown run', async () => undefined, 404, 'NOT_FOUND'],
    ['a run with nothing failed', async (s: MemoryRunStore) => seedFinishedRun(s, 'r1', [job('vm.a', 'success')]), 409, 'NOTHING_FAILED'],
    ['a run still planning', async (s: MemoryRunStore) => void (await s.create(newRunHeader('r1', new Date(), { concurrency: 1, vmRetries: 0 }))), 409, 'NOT_FINISHED'],
  ])('%s → %i, nothing queued', async (_name, seed, status, code) => {
    const gw = testGateway();
    await seed(gw.store);
    const r = await call(gw, 'POST', '/v1/runs/r1/retry');
    expect(r).toMatchObject({ status, json: { error: code } });
    expect(gw.bus.sent()).toBe(0);
  });

  it('a run changed meanwhile (compare-and-set lost) → 409, nothing queued', async () => {
    const store = new MemoryRunStore();
    await seedFinishedRun(store, 'r1', [job('vm.b', 'failed')]);
    store.commit = async () => false;
    const gw = testGateway({ store });
    expect(await call(gw, 'POST', '/v1/runs/r1/retry')).toMatchObject({ status: 409, json: { error: 'CONFLICT' } });
    expect(gw.bus.sent()).toBe(0);
  });
});

describe('POST /v1/functions/{name}', () => {
  const prune = { backupDir: '/backups', folder: 'web1', maxBackups: 2 };

  it('validates with the function’s schema and queues it on its subject, ad hoc', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/functions/prune', { body: prune });
    expect(r.status).toBe(202);
    expect(r.json).toMatchObject({ runId: expect.stringMatching(/^adhoc-20261126-083000-[0-9a-f]{4}$/), jobId: 'adhoc', function: 'prune', subject: 'vmbackup.jobs.prune' });
    expect(gw.bus.enqueued).toEqual([{ subject: 'vmbackup.jobs.prune', data: { ...prune, runId: r.json.runId, jobId: 'adhoc', try: 1, protect: [], failedKeepDays: 30 }, id: r.json.dedupId }]);
    expect((await call(gw, 'GET', `/v1/runs/${r.json.runId}`)).status).toBe(404);
  });

  it('does not offer restore: it reads paths of the worker and creates VMs (CLI and NATS only)', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/functions/restore', { body: { file: '/etc/shadow' } });
    expect(r.status).toBe(404);
    expect(gw.bus.enqueued).toEqual([]);
  });

  it('keeps the ids it is given', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/functions/pool-db', { body: { runId: 'manual-1', jobId: 'pool-db', backupDir: '/backups', stamp: '20261126-083000', maxBackups: 3 } });
    expect(r.status).toBe(202);
    expect(gw.bus.enqueued[0]).toMatchObject({ subject: 'vmbackup.jobs.pool-db', data: { runId: 'manual-1', jobId: 'pool-db', idleTimeoutS: 300 } });
  });

  it('Idempotency-Key: a repeated request queues nothing new', async () => {
    const gw = testGateway();
    const headers = { ...authJson(), 'Idempotency-Key': 'prune-web1-once' };
    const a = await call(gw, 'POST', '/v1/functions/prune', { body: prune, headers });
    const b = await call(gw, 'POST', '/v1/functions/prune', { body: prune, headers });
    expect(a.status).toBe(202);
    expect(b).toMatchObject({ status: 200, json: { runId: a.json.runId, duplicate: true } });
    expect(gw.bus.enqueued).toHaveLength(1);
  });

  it.each([
    ['an unknown function', '/v1/functions/format-disk', prune, 404, /no function "format-disk" \(functions: plan, snapshot/],
    ['a missing field', '/v1/functions/prune', { backupDir: '/b', maxBackups: 2 }, 400, /folder: Invalid input/],
    ['a folder that is a path', '/v1/functions/prune', { ...prune, folder: '../etc' }, 400, /folder must be one path component/],
    ['a wrong type', '/v1/functions/prune', { ...prune, maxBackups: '2' }, 400, /maxBackups/],
    ['a bad runId', '/v1/functions/prune', { ...prune, runId: 'a b' }, 400, /runId: letters, digits/],
    ['an empty object', '/v1/functions/plan', {}, 400, /options: Invalid input/],
  ])('%s → %i; nothing queued', async (_name, url, body, status, message) => {
    const gw = testGateway();
    const r = await call(gw, 'POST', url, { body });
    expect(r.status).toBe(status);
    expect(r.json.message).toMatch(message);
    expect(gw.bus.sent()).toBe(0);
  });
});

describe('POST /v1/hooks/alertmanager', () => {
  it('backs up the VMs its firing alerts name, as exact names; other options from the settings', async () => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: alertmanagerPayload(['web1', 'web.2']) });
    expect(r.status).toBe(202);
    expect(r.json).toMatchObject({ runId: expect.any(String), vms: ['web1', 'web.2'] });
    expect(r.headers.get('Location')).toBe(`/v1/runs/${r.json.runId}`);
    expect(planOf(gw).options).toEqual({ ...defaultRunOptions(), vmExports: ['web1', 'web\\.2\\Z'], vdiExports: [], selection: requestedSelection({ alertLabel: 'vm' }) });
    expect((await gw.store.header(r.json.runId))!.header.trigger).toBe('alertmanager');
  });

  it('the same delivery twice: one run (the first run id again); after the window, a new run', async () => {
    const gw = testGateway();
    const payload = alertmanagerPayload(['web1']);
    const first = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: payload });
    gw.clock.advance(4 * 3600_000); // Alertmanager's repeat_interval
    const again = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: payload });
    expect(first.status).toBe(202);
    expect(again).toMatchObject({ status: 200, json: { runId: first.json.runId, duplicate: true } });
    expect(gw.bus.enqueued).toHaveLength(1);
    expect(await gw.store.list()).toHaveLength(1);
    gw.clock.advance(21 * 3600_000);
    const later = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: payload });
    expect(later.status).toBe(202);
    expect(later.json.runId).not.toBe(first.json.runId);
  });

  it('reads the configured label', async () => {
    const gw = testGateway({ alertmanagerLabel: 'xen_vm' });
    const payload = alertmanagerPayload(['web1']);
    payload.alerts[0]!.labels = { alertname: 'X', xen_vm: 'db1' } as never;
    const r = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: payload });
    expect(r.json.vms).toEqual(['db1']);
  });

  it.each([
    ['resolved alerts', alertmanagerPayload(['web1'], { status: 'resolved' })],
    ['alerts without the label', { ...alertmanagerPayload(['web1']), alerts: alertmanagerPayload(['web1']).alerts.map((a) => ({ ...a, labels: { alertname: 'X' } })) }],
  ])('%s: 200, nothing to do, nothing sent', async (_name, payload) => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/hooks/alertmanager', { body: payload });
    expect(r).toMatchObject({ status: 200, json: { runId: null, vms: [] } });
    expect(r.json.message).toContain('label "vm"');
    expect(gw.bus.sent()).toBe(0);
  });

  it.each([
    ['version 3', { ...alertmanagerPayload(['web1']), version: '3' }, /version/],
    ['no alerts field', { ...alertmanagerPayload(['web1']), alerts: undefined }, /alerts: /],
    ['malformed JSON', '{"version":"4",', /malformed JSON/],
  ])('%s → 400; nothing sent', async (_name, body, message) => {
    const gw = testGateway();
    const r = await call(gw, 'POST', '/v1/hooks/alertmanager', typeof body === 'string' ? { raw: body } : { body });
    expect(r.status).toBe(400);
    expect(r.json.message).toMatch(message);
    expect(gw.bus.sent()).toBe(0);
  });
});

describe('scope: every entry backs up pool DB and hosts per pool_backup / host_backup', () => {
  const entries: [string, (gw: Gw) => Promise<{ status: number }>][] = [
    ['POST /v1/runs', (gw) => call(gw, 'POST', '/v1/runs', { body: { vm_exports: ['web1'] } })],
    ['POST /v1/hooks/alertmanager', (gw) => call(gw, 'POST', '/v1/hooks/alertmanager', { body: alertmanagerPayload(['web1']) })],
    [
      'POST /v1/hooks/generic',
      (gw) => {
        const raw = JSON.stringify({ id: 'scope-1', timestamp: '2026-11-26T08:29:30Z', vm_exports: ['web1'] });
        return call(gw, 'POST', '/v1/hooks/generic', { raw, headers: { ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, raw) } });
      },
    ],
  ];
  it.each(entries.flatMap(([name, send]) => [true, false].flatMap((pool) => [true, false].map((hosts) => [name, send, pool, hosts] as const))))(
    '%s with pool_backup %s, host_backup %s',
    async (_name, send, pool, hosts) => {
      const gw = testGateway({ runDefaults: { ...defaultRunOptions(), poolBackup: pool, hostBackup: hosts } });
      expect((await send(gw)).status).toBe(202);
      expect(planOf(gw).options).toMatchObject({ poolBackup: pool, hostBackup: hosts });
    },
  );
});

describe('POST /v1/hooks/generic', () => {
  const delivery = (over: Record<string, unknown> = {}) => JSON.stringify({ id: 'delivery-1', timestamp: '2026-11-26T08:29:30Z', vm_exports: ['web1'], ...over });
  const signed = (raw: string, secret = SECRET) => ({ ...authJson(), 'X-Hub-Signature-256': signBody(secret, raw) });

  it('a signed, fresh delivery starts a run with its options', async () => {
    const gw = testGateway();
    const raw = delivery({ max_backups: 3 });
    const r = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) });
    expect(r.status).toBe(202);
    expect(planOf(gw).options).toEqual({ ...defaultRunOptions(), vmExports: ['web1'], vdiExports: [], maxBackups: 3, selection: requestedSelection({ maxBackups: 'request (max_backups)' }) });
    expect((await gw.store.header(r.json.runId))!.header.trigger).toBe('webhook');
  });

  it('a repeated delivery (same id), even re-signed with a new timestamp: one run', async () => {
    const gw = testGateway();
    const raw = delivery();
    const first = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) });
    const same = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) });
    gw.clock.advance(60_000);
    const raw2 = delivery({ timestamp: '2026-11-26T08:31:00Z' });
    const replayed = await call(gw, 'POST', '/v1/hooks/generic', { raw: raw2, headers: signed(raw2) });
    expect(first.status).toBe(202);
    expect(same).toMatchObject({ status: 200, json: { runId: first.json.runId, duplicate: true } });
    expect(replayed).toMatchObject({ status: 200, json: { runId: first.json.runId, duplicate: true } });
    expect(gw.bus.enqueued).toHaveLength(1);
  });

  it('a repeated delivery (same id) whose body changed: still the one trigger, its run stands, no 422', async () => {
    const gw = testGateway();
    const raw = delivery();
    const first = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) });
    const raw2 = delivery({ vm_exports: ['web1', 'db1'] });
    const changed = await call(gw, 'POST', '/v1/hooks/generic', { raw: raw2, headers: signed(raw2) });
    expect(first.status).toBe(202);
    expect(changed).toMatchObject({ status: 200, json: { runId: first.json.runId, duplicate: true } });
    expect(gw.bus.enqueued).toHaveLength(1);
  });

  it.each([
    ['no signature', (raw: string) => authJson(), 401, 'SIGNATURE_MISSING'],
    ['a signature by another secret', (raw: string) => signed(raw, 'another-secret-0123456789'), 401, 'SIGNATURE_INVALID'],
    ['a signature of other bytes', (raw: string) => signed(raw.replace(':', ': ')), 401, 'SIGNATURE_INVALID'],
    ['a malformed signature header', () => ({ ...authJson(), 'X-Hub-Signature-256': 'sha256=nothex' }), 401, 'SIGNATURE_INVALID'],
    ['a good signature but no bearer token', (raw: string) => ({ 'Content-Type': 'application/json', 'X-Hub-Signature-256': signBody(SECRET, raw) }), 401, 'UNAUTHORIZED'],
    ['a good signature but a wrong bearer token', (raw: string) => ({ ...signed(raw), Authorization: 'Bearer wrong-token-0123456789' }), 403, 'FORBIDDEN'],
  ])('%s → %i; nothing sent', async (_name, headers, status, code) => {
    const gw = testGateway();
    const raw = delivery();
    const r = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: headers(raw) });
    expect(r).toMatchObject({ status, json: { error: code } });
    expect(gw.bus.sent()).toBe(0);
  });

  it.each([
    ['stale (6 minutes old)', { timestamp: '2026-11-26T08:24:00Z' }, /stale delivery/],
    ['from the future (10 minutes ahead)', { timestamp: '2026-11-26T08:40:00Z' }, /in the future/],
    ['without an id', { id: undefined }, /id: /],
    ['with a wrong type', { pool_backup: 'yes' }, /pool_backup: /],
  ])('%s → 400; nothing sent', async (_name, over, message) => {
    const gw = testGateway();
    const raw = delivery(over);
    const r = await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) });
    expect(r.status).toBe(400);
    expect(r.json.message).toMatch(message);
    expect(gw.bus.sent()).toBe(0);
  });

  it('signed malformed JSON → 400 (the signature is checked on the raw bytes first)', async () => {
    const gw = testGateway();
    const raw = '{"id": "x", ';
    expect((await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) })).json.message).toMatch(/malformed JSON/);
    expect((await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: authJson() })).status).toBe(401);
    expect(gw.bus.sent()).toBe(0);
  });

  it('without a webhook secret the route is off (404)', async () => {
    const gw = testGateway({ webhookSecret: undefined });
    const raw = delivery();
    expect(await call(gw, 'POST', '/v1/hooks/generic', { raw, headers: signed(raw) })).toMatchObject({ status: 404, json: { error: 'NOT_CONFIGURED' } });
  });
});

describe('GET /v1/backups', () => {
  it('?vm=PRD-db1: a set that failed `vmbackup verify` is complete: false with the reason, each set with its verification', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-app-verify-'));
    const folder = path.join(dir, 'PRD-db1');
    await mkdir(folder);
    const set = async (stamp: string, verify?: { at: string; ok: boolean; error?: string }) => {
      await writeFile(path.join(folder, `backup_${stamp}.xva`), 'xva-data');
      await writeFile(path.join(folder, `backup_${stamp}.meta`), 'meta');
      const manifest = {
        kind: 'vmbackup-set', version: 1, runId: `${stamp}-abcd`, jobId: 'vm.4444', try: 1, vm: { uuid: '4444', name: 'PRD-db1' }, mode: 'vm', stamp,
        createdAt: '2026-11-26T08:31:00Z', bytes: 8,
        files: [{ name: `backup_${stamp}.xva`, format: 'xva', size: 8 }, { name: `backup_${stamp}.meta`, format: 'meta', size: 4 }],
        timings: {}, ...(verify !== undefined ? { verify } : {}),
      };
      await writeFile(path.join(folder, `backup_${stamp}.json`), JSON.stringify(manifest));
    };
    await set('20261125-083000', { at: '2026-11-26T12:10:00.000Z', ok: true });
    await set('20261126-083000', { at: '2026-11-26T12:11:53.000Z', ok: false, error: 'backup_20261126-083000.xva: 3 bytes differ from the XXH64 the manifest records' });
    const gw = testGateway({ backupDir: dir });
    const r = await call(gw, 'GET', '/v1/backups?vm=PRD-db1');
    expect(r.status).toBe(200);
    expect(r.json.vms).toHaveLength(1);
    const [failed, good] = r.json.vms[0].sets;
    expect(failed).toMatchObject({
      stamp: '20261126-083000',
      complete: false,
      incompleteReason: 'failed-verification',
      incompleteMessage: 'failed verification at 2026-11-26T12:11:53.000Z: backup_20261126-083000.xva: 3 bytes differ from the XXH64 the manifest records',
      verify: { at: '2026-11-26T12:11:53.000Z', ok: false, error: 'backup_20261126-083000.xva: 3 bytes differ from the XXH64 the manifest records' },
    });
    expect(good).toMatchObject({ stamp: '20261125-083000', complete: true, verify: { at: '2026-11-26T12:10:00.000Z', ok: true } });
    expect(good).not.toHaveProperty('incompleteReason');
  });

  it('lists a real folder, with a VM filter', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-app-'));
    await mkdir(path.join(dir, 'POOL_DB'));
    await writeFile(path.join(dir, 'POOL_DB', 'metadata_20261125-083000.db'), 'db');
    await mkdir(path.join(dir, 'web1'));
    await writeFile(path.join(dir, 'web1', 'backup_20261125-083000.xva.partial'), 'x');
    const gw = testGateway({ backupDir: dir });
    const all = await call(gw, 'GET', '/v1/backups');
    expect(all.status).toBe(200);
    expect(all.json.vms.map((v: { folder: string }) => v.folder)).toEqual(['web1']);
    expect(all.json.poolDb).toHaveLength(1);
    expect((await call(gw, 'GET', '/v1/backups?vm=db1')).json.vms).toEqual([]);
    expect((await call(gw, 'GET', '/v1/backups?vm=')).status).toBe(400);
    expect((await call(testGateway({ backupDir: path.join(dir, 'gone') }), 'GET', '/v1/backups')).status).toBe(503);
  });
});

describe('errors', () => {
  it('a bug is a 500 that leaks nothing; the runtime’s typed errors keep their meaning', async () => {
    const store = new MemoryRunStore();
    store.list = async () => {
      throw new Error('secret internal detail at /srv/x');
    };
    const r = await call(testGateway({ store }), 'GET', '/v1/runs');
    expect(r).toMatchObject({ status: 500, json: { error: 'INTERNAL' } });
    expect(r.text).not.toContain('secret internal detail');
    store.list = async () => {
      throw new RetryLaterError('NATS_BUSY', 'the run store is busy', 5_000);
    };
    const busy = await call(testGateway({ store }), 'GET', '/v1/runs');
    expect(busy).toMatchObject({ status: 503, json: { error: 'NATS_BUSY' } });
    expect(busy.headers.get('Retry-After')).toBe('5');
  });

  it('bad input of any shape on any route is never a 500', async () => {
    const gw = testGateway({ backupDir: await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-app-')) });
    const bodies = ['', 'null', '0', '"x"', '[]', '{}', '{"a":', '\u0000', '{"runId":{"$gt":""}}', '{"__proto__":{"x":1}}', '{"alerts":[null]}', '{"options":[]}', '{"try":-1}', `{"x":"${'\\u0000'.repeat(100)}"}`];
    const urls = ['/v1/runs', '/v1/runs/r1/retry', '/v1/hooks/alertmanager', '/v1/hooks/generic', ...['plan', 'snapshot', 'export', 'meta', 'prune', 'pool-db', 'host-backup'].map((f) => `/v1/functions/${f}`)];
    for (const url of urls) {
      for (const raw of bodies) {
        for (const type of ['application/json', 'text/plain', 'application/vnd.api+json']) {
          const r = await call(gw, 'POST', url, { raw, headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': type, 'X-Hub-Signature-256': signBody(SECRET, raw) } });
          expect(r.status, `${url} ${type} ${raw}`).toBeLessThan(500);
        }
      }
    }
    for (const url of ['/v1/runs?limit=-1', '/v1/runs?limit=1&limit=2', '/v1/runs/%00', '/v1/runs/..%2F..', '/v1/backups?vm=%FF', `/v1/runs/${'x'.repeat(5000)}`]) {
      expect((await call(gw, 'GET', url)).status, url).toBeLessThan(500);
    }
    // `{}` to /v1/runs is valid; the only things queued are those runs' plans.
    expect(gw.bus.enqueued.every((e) => e.subject === 'vmbackup.jobs.plan')).toBe(true);
  });
});

describe('NATS not reachable: 503 UNAVAILABLE with Retry-After, never a 500', () => {
  const timeout = () => NatsError.errorForCode(ErrorCode.Timeout);
  const fresh = (id: string) => JSON.stringify({ id, timestamp: '2026-11-26T08:29:30Z', vm_exports: ['web1'] });
  const signed = (raw: string, over: Record<string, string> = {}) => ({ ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, raw), ...over });
  /** A valid request to each route that needs NATS. */
  const natsRoutes: [string, string, { raw: string; headers: Record<string, string> } | undefined][] = [
    ['POST', '/v1/runs', { raw: '', headers: { Authorization: `Bearer ${TOKEN}`, 'Idempotency-Key': 'nightly-2026-11-26' } }],
    ['POST', '/v1/runs', undefined],
    ['GET', '/v1/runs', undefined],
    ['GET', '/v1/runs/20261126-083000-abcd', undefined],
    ['POST', '/v1/runs/20261126-083000-abcd/retry', undefined],
    ['POST', '/v1/functions/prune', { raw: JSON.stringify({ backupDir: '/backups', folder: 'web1', maxBackups: 2 }), headers: authJson() }],
    ['POST', '/v1/functions/prune', { raw: JSON.stringify({ backupDir: '/backups', folder: 'web1', maxBackups: 2 }), headers: { ...authJson(), 'Idempotency-Key': 'prune-1' } }],
    ['POST', '/v1/hooks/alertmanager', { raw: JSON.stringify(alertmanagerPayload(['web1'])), headers: authJson() }],
    ['POST', '/v1/hooks/generic', { raw: fresh('d-1'), headers: signed(fresh('d-1')) }],
  ];
  const send = (gw: Gw, method: string, url: string, req?: { raw: string; headers: Record<string, string> }) => call(gw, method, url, req ?? { headers: { Authorization: `Bearer ${TOKEN}` } });

  /** A store whose every call fails as nats.js fails while NATS is down; counts the calls. */
  function downStore(): MemoryRunStore & { calls: number } {
    const store = Object.assign(new MemoryRunStore(), { calls: 0 });
    for (const m of ['create', 'header', 'jobs', 'allJobs', 'commit', 'list'] as const) {
      (store as unknown as Record<string, () => Promise<never>>)[m] = async () => {
        store.calls++;
        throw timeout();
      };
    }
    return store;
  }
  /** A bus whose first `failures` enqueues time out. */
  function flakyBus(failures: number): RecordingBus {
    const bus = new RecordingBus();
    const enqueue = bus.enqueue.bind(bus);
    let left = failures;
    bus.enqueue = async (subject, data, opts) => {
      if (left-- > 0) throw timeout();
      return enqueue(subject, data, opts);
    };
    return bus;
  }
  function capturingLog(): { log: Logger; lines: { level: number; msg: string }[] } {
    const lines: { level: number; msg: string }[] = [];
    return { log: pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) }), lines };
  }

  it.each(natsRoutes.map(([m, u, r], i) => [`${m} ${u}${r?.headers['Idempotency-Key'] !== undefined ? ' (Idempotency-Key)' : ''} #${i}`, m, u, r] as const))(
    '%s: NATS times out → 503, Retry-After, the error body; a warning in the log, not a bug',
    async (_name, method, url, req) => {
      const { log, lines } = capturingLog();
      const triggers = new MemoryTriggerLog(new TestClock());
      triggers.claim = async () => {
        throw timeout();
      };
      const gw = testGateway({ store: downStore(), triggers, bus: flakyBus(Infinity), log });
      const r = await send(gw, method, url, req);
      expect(r.status).toBe(503);
      expect(r.headers.get('Retry-After')).toBe('30');
      expect(r.json).toEqual({ error: 'UNAVAILABLE', message: 'NATS is not reachable: no answer in time (TIMEOUT)' });
      expect(gw.bus.sent()).toBe(0);
      expect(lines.filter((l) => l.level >= 50)).toEqual([]);
      expect(lines.some((l) => l.level === 40 && l.msg.includes('NATS is not reachable'))).toBe(true);
    },
  );

  it('while the bus knows the connection is down: refused at once, nothing asked of NATS; bad input still 400; health and backups answer', async () => {
    const store = downStore();
    const triggers = new MemoryTriggerLog(new TestClock());
    let claims = 0;
    triggers.claim = async () => {
      claims++;
      throw timeout();
    };
    const bus = new RecordingBus();
    bus.connected = () => false;
    let probed = 0;
    const gw = testGateway({ store, triggers, bus, ready: async () => (probed++, true), backupDir: await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-app-')) });
    for (const [method, url, req] of natsRoutes) {
      const r = await send(gw, method, url, req);
      expect(r.status, `${method} ${url}`).toBe(503);
      expect(r.headers.get('Retry-After')).toBe('30');
      expect(r.json).toEqual({ error: 'UNAVAILABLE', message: 'NATS is not reachable: the connection is down (the gateway is reconnecting)' });
    }
    expect({ store: store.calls, claims, sent: bus.sent(), enqueueCalls: bus.enqueueCalls }).toEqual({ store: 0, claims: 0, sent: 0, enqueueCalls: 0 });
    // What another attempt cannot fix is still said first.
    expect((await call(gw, 'POST', '/v1/runs', { body: { max_backups: 'x' } })).status).toBe(400);
    expect((await call(gw, 'GET', '/v1/runs/..%2F..')).status).toBe(400);
    expect((await call(gw, 'POST', '/v1/runs/..%2F../retry')).status).toBe(400);
    expect((await call(gw, 'GET', '/v1/runs?limit=0')).status).toBe(400);
    expect((await call(gw, 'POST', '/v1/functions/nope', { body: {} })).status).toBe(404);
    const stale = JSON.stringify({ id: 'd-2', timestamp: '2026-11-26T07:00:00Z' });
    expect(await call(gw, 'POST', '/v1/hooks/generic', { raw: stale, headers: signed(stale) })).toMatchObject({ status: 400, json: { error: 'STALE_DELIVERY' } });
    expect((await call(gw, 'POST', '/v1/hooks/generic', { raw: fresh('d-3'), headers: authJson() })).status).toBe(401);
    expect((await call(gw, 'POST', '/v1/runs', { headers: {} })).status).toBe(401);
    // Liveness, readiness (without waiting for the probe), the backup folder.
    expect((await call(gw, 'GET', '/healthz', { headers: {} })).status).toBe(200);
    expect(await call(gw, 'GET', '/readyz', { headers: {} })).toMatchObject({ status: 503, json: { status: expect.stringContaining('not ready') } });
    expect(probed).toBe(0);
    expect((await call(gw, 'GET', '/v1/backups')).status).toBe(200);
    expect(store.calls + claims + bus.sent()).toBe(0);
  });

  it('POST /v1/functions/{name} with an Idempotency-Key: the claim taken before the failure is released; the retry queues the job, once', async () => {
    const gw = testGateway({ bus: flakyBus(1) });
    const req = () => ({ raw: JSON.stringify({ backupDir: '/backups', folder: 'web1', maxBackups: 2 }), headers: { ...authJson(), 'Idempotency-Key': 'prune-2' } });
    expect(await call(gw, 'POST', '/v1/functions/prune', req())).toMatchObject({ status: 503, json: { error: 'UNAVAILABLE' } });
    expect(gw.bus.enqueued).toEqual([]);
    const retry = await call(gw, 'POST', '/v1/functions/prune', req());
    expect(retry.status).toBe(202);
    expect(gw.bus.enqueued).toHaveLength(1);
    expect((await call(gw, 'POST', '/v1/functions/prune', req())).json).toMatchObject({ runId: retry.json.runId, duplicate: true });
    expect(gw.bus.enqueued).toHaveLength(1);
  });

  describe.each([
    ['POST /v1/hooks/alertmanager', '/v1/hooks/alertmanager', 'alertmanager', () => ({ raw: JSON.stringify(alertmanagerPayload(['web1'])), headers: authJson() })],
    ['POST /v1/hooks/generic', '/v1/hooks/generic', 'webhook', () => ({ raw: fresh('d-4'), headers: signed(fresh('d-4')) })],
  ])('%s: the repeat of a delivery that got a 503 starts the run, once', (_name, url, trigger, req) => {
    it('NATS lost before the run was recorded: the repeat starts the claimed run (202)', async () => {
      const store = new MemoryRunStore();
      const create = store.create.bind(store);
      let down = true;
      store.create = async (h) => {
        if (down) throw timeout();
        return create(h);
      };
      const gw = testGateway({ store });
      expect(await call(gw, 'POST', url, req())).toMatchObject({ status: 503, json: { error: 'UNAVAILABLE' } });
      expect(gw.bus.sent()).toBe(0);
      down = false;
      const started = await call(gw, 'POST', url, req());
      expect(started.status).toBe(202);
      expect(started.json.duplicate).toBeUndefined();
      expect(await store.list()).toEqual([expect.objectContaining({ runId: started.json.runId, trigger })]);
      expect(planOf(gw).runId).toBe(started.json.runId);
      expect((await call(gw, 'POST', url, req())).json).toMatchObject({ runId: started.json.runId, duplicate: true });
      expect(gw.bus.enqueued).toHaveLength(1);
    });

    it('NATS lost after the run was recorded, before its plan was queued: the repeat queues it (no second run)', async () => {
      const gw = testGateway({ bus: flakyBus(1) });
      expect(await call(gw, 'POST', url, req())).toMatchObject({ status: 503, json: { error: 'UNAVAILABLE' } });
      const [recorded] = await gw.store.list();
      expect(recorded).toMatchObject({ status: 'planning', trigger });
      expect(gw.bus.enqueued).toEqual([]);
      const again = await call(gw, 'POST', url, req());
      expect(again).toMatchObject({ status: 200, json: { runId: recorded!.runId, duplicate: true } });
      expect(planOf(gw).runId).toBe(recorded!.runId);
      expect(await gw.store.list()).toHaveLength(1);
      // Once the run is under way, a repeat touches nothing.
      await gw.store.commit(recorded!.runId, { ...recorded!, status: 'running' }, (await gw.store.header(recorded!.runId))!.revision, []);
      expect((await call(gw, 'POST', url, req())).json).toMatchObject({ runId: recorded!.runId, duplicate: true });
      expect(gw.bus.enqueueCalls).toBe(1);
    });
  });

  it('POST /v1/runs with an Idempotency-Key: after a 503, the same key starts the run', async () => {
    const store = new MemoryRunStore();
    const create = store.create.bind(store);
    let down = true;
    store.create = async (h) => {
      if (down) throw timeout();
      return create(h);
    };
    const gw = testGateway({ store });
    const headers = { Authorization: `Bearer ${TOKEN}`, 'Idempotency-Key': 'nightly-2026-11-26' }; // curl -X POST, no body
    expect(await call(gw, 'POST', '/v1/runs', { headers })).toMatchObject({ status: 503, json: { error: 'UNAVAILABLE' } });
    expect(gw.bus.sent()).toBe(0);
    down = false;
    const r = await call(gw, 'POST', '/v1/runs', { headers });
    expect(r.status).toBe(202);
    expect((await call(gw, 'POST', '/v1/runs', { headers })).json).toEqual({ runId: r.json.runId, duplicate: true });
    expect(gw.bus.enqueued).toHaveLength(1);
  });
});

it('createGateway needs no NATS: it is built from interfaces', () => {
  const app = createGateway({ ...testGateway().deps, log: silentLogger() });
  expect(gatewayRoutes(app).length).toBeGreaterThan(10);
});
