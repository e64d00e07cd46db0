import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from 'nats';
import type { NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JOBS_STREAM, RUNS_BUCKET_STREAM } from '../../infra/nats/jetstream.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import type { NatsRuntime } from '../../runtime/bus/nats-connect.js';
import { createGateway } from '../../runtime/gateway/app.js';
import { NatsTriggerLog } from '../../runtime/gateway/nats-trigger-log.js';
import { RecordingBus, TestClock, alertmanagerPayload, defaultRunOptions } from '../../runtime/gateway/test-helpers.js';
import { signBody } from '../../runtime/gateway/webhook.js';
import { silentLogger } from '../../runtime/log.js';
import { NATS_SERVER, freePort } from '../helpers/nats-server.js';
import { waitFor } from '../sim/test-helpers.js';
import { startGatewayCommand } from './gateway-command.js';
import type { GatewayCommand } from './gateway-command.js';

/**
 * A nats-server this test stops and starts itself, on one port with one store: down for as
 * long as the test needs (test/helpers/nats-server.ts's `restart` only knows a fixed pause).
 */
async function natsServer(): Promise<{ url: string; start(): Promise<void>; stop(): Promise<void>; pause(): Promise<void>; resume(): void; dispose(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-down-nats-'));
  const port = await freePort();
  const config = path.join(dir, 'nats-server.conf');
  await writeFile(config, [`listen: 127.0.0.1:${port}`, `server_name: down-${port}`, 'jetstream {', `  store_dir: ${JSON.stringify(path.join(dir, 'store'))}`, '}', ''].join('\n'));
  let child: ChildProcess | undefined;
  let output = '';
  const stop = async () => {
    const c = child;
    child = undefined;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((resolve) => c.once('exit', resolve));
    c.kill('SIGCONT');
    c.kill('SIGTERM');
    const timer = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };
  return {
    url: `nats://127.0.0.1:${port}`,
    async start() {
      const c = spawn(NATS_SERVER, ['-c', config], { stdio: ['ignore', 'pipe', 'pipe'] });
      child = c;
      await new Promise<void>((resolve, reject) => {
        const onData = (d: Buffer) => {
          output += d.toString();
          if (output.includes('Server is ready')) resolve();
        };
        c.stdout!.on('data', onData);
        c.stderr!.on('data', onData);
        c.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${output.slice(-2000)}`)));
      });
      output = '';
    },
    stop,
    /**
     * Freezes the server: the connection stays open, nothing answers. Resolves once every
     * thread of it is stopped: kill(2) only queues SIGSTOP, and the server's other threads go
     * on serving until the one that takes it has run (on a loaded machine, or out of a disk
     * wait, that is long enough to answer a whole request).
     */
    async pause() {
      const c = child;
      if (c?.pid === undefined) throw new Error('nats-server is not running');
      c.kill('SIGSTOP');
      await waitFor(() => allStopped(c.pid!), 10_000, `nats-server (pid ${c.pid}) to stop on SIGSTOP`);
    },
    resume: () => void child?.kill('SIGCONT'),
    async dispose() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Whether every thread of process `pid` is stopped (state T in /proc/PID/task/TID/stat). */
async function allStopped(pid: number): Promise<boolean> {
  const states = await Promise.all(
    (await readdir(`/proc/${pid}/task`)).map(async (tid) => {
      // A thread that exited meanwhile runs nothing.
      const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => undefined);
      return stat === undefined ? 'T' : stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    }),
  );
  return states.every((s) => s === 'T' || s === 't');
}

const token = 'nats-down-token-0123456789';
const secret = 'nats-down-secret-0123456789';
const auth = { Authorization: `Bearer ${token}` };
const json = { ...auth, 'Content-Type': 'application/json' };

describe('vmbackup gateway while NATS is down (a real nats-server, stopped and started again)', () => {
  let nats: Awaited<ReturnType<typeof natsServer>>;
  let gw: GatewayCommand;
  let base: string;
  let nc: NatsConnection | undefined;

  beforeAll(async () => {
    nats = await natsServer();
    await nats.start();
    base = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-down-'));
    await mkdir(path.join(base, 'exports'));
    await writeFile(path.join(base, 'tokens'), `${token}\n`);
    await writeFile(path.join(base, 'secret'), `${secret}\n`);
    await chmod(path.join(base, 'tokens'), 0o600);
    gw = await startGatewayCommand(['--nats', nats.url, '--listen', '127.0.0.1:0', '-b', base], {
      VMBACKUP_GATEWAY_TOKENS_FILE: path.join(base, 'tokens'),
      VMBACKUP_WEBHOOK_SECRET_FILE: path.join(base, 'secret'),
    });
  });
  afterAll(async () => {
    await nc?.close().catch(() => {});
    gw?.child.kill('SIGKILL');
    await nats?.dispose();
  });

  // The requests refused while NATS is down, sent again once it is back.
  const delivery = JSON.stringify({ id: 'down-delivery-1', timestamp: new Date().toISOString(), vm_exports: ['web1'] });
  const alerts = JSON.stringify(alertmanagerPayload(['web1'], { groupKey: 'nats-down' }));
  const prune = JSON.stringify({ backupDir: path.join(os.tmpdir(), 'nowhere'), folder: 'web1', maxBackups: 2 });
  const requests: { name: string; method: string; path: string; headers: Record<string, string>; body?: string }[] = [
    { name: 'POST /v1/runs (Idempotency-Key)', method: 'POST', path: '/v1/runs', headers: { ...auth, 'Idempotency-Key': 'nightly-2026-11-26' } },
    { name: 'POST /v1/hooks/alertmanager', method: 'POST', path: '/v1/hooks/alertmanager', headers: json, body: alerts },
    { name: 'POST /v1/hooks/generic', method: 'POST', path: '/v1/hooks/generic', headers: { ...json, 'X-Hub-Signature-256': signBody(secret, delivery) }, body: delivery },
    { name: 'GET /v1/runs', method: 'GET', path: '/v1/runs', headers: auth },
    { name: 'GET /v1/runs/{id}', method: 'GET', path: '/v1/runs/20261126-083000-abcd', headers: auth },
    { name: 'POST /v1/runs/{id}/retry', method: 'POST', path: '/v1/runs/20261126-083000-abcd/retry', headers: auth },
    { name: 'POST /v1/functions/prune', method: 'POST', path: '/v1/functions/prune', headers: json, body: prune },
    { name: 'POST /v1/functions/prune (Idempotency-Key)', method: 'POST', path: '/v1/functions/prune', headers: { ...json, 'Idempotency-Key': 'prune-web1' }, body: prune },
  ];
  const send = (r: (typeof requests)[number]) => fetch(`${gw.url}${r.path}`, { method: r.method, headers: r.headers, ...(r.body !== undefined ? { body: r.body } : {}) });

  /** What /readyz says. No worker runs in this test: with NATS up it names the work nobody consumes. */
  const readyz = async () => (await (await fetch(`${gw.url}/readyz`)).json()) as { status: string };
  const natsDown = 'not ready: the bus (NATS) is not reachable';

  it('NATS up: reachable (not ready only for want of workers)', async () => {
    expect((await readyz()).status).toMatch(/^not ready: no worker is consuming plan, /);
  });

  it('NATS stopped: every route that needs it answers 503 UNAVAILABLE + Retry-After at once; /healthz and /v1/backups still answer', async () => {
    await nats.stop();
    await waitFor(async () => (await readyz()).status === natsDown, 10_000, '/readyz to say NATS is not reachable');
    for (const r of requests) {
      const res = await send(r);
      expect(res.status, r.name).toBe(503);
      expect(res.headers.get('Retry-After'), r.name).toBe('30');
      // Known to be down: refused by the bus's connection state before anything is sent, not
      // after nats.js's request timeout (that reason is `no answer in time (TIMEOUT)`) nor
      // after the bus's publish retries; the reason says which path answered.
      expect(await res.json(), r.name).toEqual({ error: 'UNAVAILABLE', message: 'NATS is not reachable: the connection is down (the gateway is reconnecting)' });
    }
    expect((await fetch(`${gw.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${gw.url}/v1/backups`, { headers: auth })).status).toBe(200);
    // Still a 400 for bad input, a 401 without the token.
    expect((await fetch(`${gw.url}/v1/runs`, { method: 'POST', headers: json, body: '{"max_backups":"x"}' })).status).toBe(400);
    expect((await fetch(`${gw.url}/v1/runs`, { method: 'POST' })).status).toBe(401);
    expect(gw.output()).not.toMatch(/ERROR|internal error/);
    expect(gw.output()).toContain('NATS is not reachable');
  });

  it('NATS back (same port, same store): nothing of the refused requests was kept; the same requests now start their runs', async () => {
    await nats.start();
    await waitFor(async () => /^not ready: no worker/.test((await readyz()).status), 30_000, '/readyz to find NATS again');
    nc = await connect({ servers: nats.url });
    const jsm = await nc.jetstreamManager();
    const jobs = async () => (await jsm.streams.info(JOBS_STREAM)).state.messages;
    // Nothing was queued, no run recorded, no delivery claimed for the refused requests.
    expect(await jobs()).toBe(0);
    expect((await jsm.streams.info(RUNS_BUCKET_STREAM)).state.messages).toBe(0);
    expect(await (await fetch(`${gw.url}/v1/runs`, { headers: auth })).json()).toEqual({ runs: [] });

    const [run, am, generic] = requests;
    const started = await send(run!);
    expect(started.status).toBe(202);
    const { runId } = (await started.json()) as { runId: string };
    expect(started.headers.get('Location')).toBe(`/v1/runs/${runId}`);
    const shown = await fetch(`${gw.url}/v1/runs/${runId}`, { headers: auth });
    expect(shown.status).toBe(200);
    expect(await shown.json()).toMatchObject({ run: { runId, status: 'planning', trigger: 'gateway' } });
    expect(await (await send(run!)).json()).toEqual({ runId, duplicate: true });

    for (const hook of [am!, generic!]) {
      const res = await send(hook);
      expect(res.status, hook.name).toBe(202);
      expect(((await res.json()) as { duplicate?: boolean }).duplicate, hook.name).toBeUndefined();
    }
    const pruneAgain = requests.find((r) => r.name === 'POST /v1/functions/prune (Idempotency-Key)')!;
    expect((await send(pruneAgain)).status).toBe(202);
    expect(await jobs()).toBe(4); // three plans and the prune, each once
    expect(gw.output()).not.toMatch(/ERROR|internal error/);
  });

  it('NATS hung (the connection open, nothing answering): the request timeout is a 503 too, not a 500', async () => {
    try {
      await nats.pause();
      // NATS never answers while paused: the answer, with the timeout's reason, proves the request timeout ends it.
      const res = await fetch(`${gw.url}/v1/runs`, { headers: auth });
      expect(res.status).toBe(503);
      expect(res.headers.get('Retry-After')).toBe('30');
      expect(await res.json()).toEqual({ error: 'UNAVAILABLE', message: 'NATS is not reachable: no answer in time (TIMEOUT)' });
    } finally {
      nats.resume();
    }
    expect((await fetch(`${gw.url}/v1/runs`, { headers: auth })).status).toBe(200);
    expect(gw.output()).not.toMatch(/ERROR|internal error/);
  });
});

describe('a webhook that lost NATS between its claim and its run, on the real KV buckets', () => {
  let nats: Awaited<ReturnType<typeof natsServer>>;
  let rt: NatsRuntime;
  beforeAll(async () => {
    nats = await natsServer();
    await nats.start();
    rt = await openNats({ nats_url: nats.url, concurrency: 2 }, silentLogger(), { name: 'nats-down test' });
  });
  afterAll(async () => {
    await rt?.close();
    await nats?.dispose();
  });

  it('the repeat queues the plan of the run the first delivery recorded: one run, one plan', async () => {
    const clock = new TestClock(Date.now());
    const triggers = await NatsTriggerLog.open(rt.nc, { clock, maxTtlMs: 3600_000 });
    // The bus loses NATS for the first plan only (the run store and the trigger log answer).
    const bus = new RecordingBus(rt.bus);
    const enqueue = bus.enqueue.bind(bus);
    let fail = true;
    bus.enqueue = async (subject, data, opts) => {
      if (fail) {
        fail = false;
        const { NatsError, ErrorCode } = await import('nats');
        throw NatsError.errorForCode(ErrorCode.Timeout);
      }
      return enqueue(subject, data, opts);
    };
    const app = createGateway({ bus, store: rt.store, triggers, backupDir: os.tmpdir(), tokens: [token], bodyLimit: 1 << 20, alertmanagerLabel: 'vm', runDefaults: defaultRunOptions(), clock, log: silentLogger(), ready: async () => true });
    const body = JSON.stringify(alertmanagerPayload(['db1'], { groupKey: 'lost-between' }));
    const post = () => app.request('/v1/hooks/alertmanager', { method: 'POST', headers: json, body });
    const failed = await post();
    expect(failed.status).toBe(503);
    expect(failed.headers.get('Retry-After')).toBe('30');
    const [recorded] = await rt.store.list();
    expect(recorded).toMatchObject({ status: 'planning', trigger: 'alertmanager' });
    const again = await post();
    expect(again.status).toBe(200);
    expect(await again.json()).toMatchObject({ runId: recorded!.runId, duplicate: true });
    expect(bus.enqueued.map((e) => [e.subject, (e.data as { runId: string }).runId])).toEqual([['vmbackup.jobs.plan', recorded!.runId]]);
    expect(await rt.store.list()).toHaveLength(1);
    const jsm = await rt.nc.jetstreamManager();
    expect((await jsm.streams.info(JOBS_STREAM)).state.messages).toBe(1);
  });
});
