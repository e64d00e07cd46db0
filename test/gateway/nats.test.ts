import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect } from 'nats';
import type { NatsConnection } from 'nats';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functions } from '../../functions/index.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import type { NatsRuntime } from '../../runtime/bus/nats-connect.js';
import { NatsTriggerLog } from '../../runtime/gateway/nats-trigger-log.js';
import { TestClock, alertmanagerPayload } from '../../runtime/gateway/test-helpers.js';
import { signBody } from '../../runtime/gateway/webhook.js';
import { silentLogger } from '../../runtime/log.js';
import { startCoordinator } from '../../runtime/run/coordinator.js';
import { serve } from '../../runtime/serve.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { ROOT, VMBACKUP } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';
import { startSimulator } from '../sim/server.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';
import { startGatewayCommand } from './gateway-command.js';
import type { GatewayCommand } from './gateway-command.js';

let nats: NatsServer;
beforeAll(async () => {
  nats = await startNatsServer();
});
afterAll(async () => {
  await nats?.stop();
});

describe('NatsTriggerLog on a real nats-server', () => {
  let a: NatsConnection;
  let b: NatsConnection;
  beforeAll(async () => {
    a = await connect({ servers: nats.url });
    b = await connect({ servers: nats.url });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
  });

  it('two gateways racing for one delivery agree on one run', async () => {
    const clock = new TestClock();
    const logA = await NatsTriggerLog.open(a, { clock, maxTtlMs: 3600_000, bucket: 'race' });
    const logB = await NatsTriggerLog.open(b, { clock, maxTtlMs: 3600_000, bucket: 'race' });
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? logA : logB).claim('am.k1', `run-${i}`, 60_000)));
    const fresh = results.flatMap((r, i) => (r === 'new' ? [`run-${i}`] : []));
    expect(fresh).toHaveLength(1);
    for (const r of results) if (r !== 'new') expect(r).toEqual({ runId: fresh[0] });
  });

  it('a claim expires after its window; another key is independent; release frees a key', async () => {
    const clock = new TestClock();
    const log = await NatsTriggerLog.open(a, { clock, maxTtlMs: 3600_000, bucket: 'windows' });
    expect(await log.claim('gh.1', 'r1', 60_000)).toBe('new');
    expect(await log.claim('gh.2', 'r2', 60_000)).toBe('new');
    clock.advance(59_000);
    expect(await log.claim('gh.1', 'r3', 60_000)).toEqual({ runId: 'r1' });
    clock.advance(2_000);
    expect(await log.claim('gh.1', 'r4', 60_000)).toBe('new');
    expect(await log.claim('gh.1', 'r5', 60_000)).toEqual({ runId: 'r4' });
    await log.release('gh.1', 'not-mine');
    expect(await log.claim('gh.1', 'r6', 60_000)).toEqual({ runId: 'r4' });
    await log.release('gh.1', 'r4');
    expect(await log.claim('gh.1', 'r7', 60_000)).toBe('new');
  });
});

describe('vmbackup gateway on NATS, with workers and the XAPI simulator', () => {
  const token = 'nats-gateway-token-0123456789';
  const secret = 'nats-webhook-secret-0123456789';
  let sim: Simulator;
  let xapi: XapiClient;
  let worker: NatsRuntime;
  let gw: GatewayCommand;
  let base: string;
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };

  beforeAll(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-nats-'));
    await mkdir(path.join(base, 'exports'));
    await writeFile(path.join(base, 'tokens'), `# the test\n${token}\n`);
    await writeFile(path.join(base, 'secret'), `${secret}\n`);
    await chmod(path.join(base, 'tokens'), 0o600);
    sim = await startSimulator({
      pool: {
        credentials: { user: 'root', password: 'secret' },
        hosts: [{ name_label: 'xcp1' }],
        srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
        vms: [
          { name_label: 'web1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern' }], vifs: [] },
          { name_label: 'db1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' }], vifs: [] },
        ],
      },
    });
    // A worker and the coordinator, in this process, on the same NATS.
    const log = silentLogger();
    xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', log });
    worker = await openNats({ nats_url: nats.url, concurrency: 2 }, log, { name: 'test worker' });
    await startCoordinator(worker.store, worker.bus, { now: () => new Date() }, log);
    await serve(functions, { bus: worker.bus, log, xapi: async () => xapi, clock: { now: () => new Date() }, origin: { hostname: os.hostname(), pid: process.pid } }, { concurrency: () => 2 });
    gw = await startGatewayCommand(['--nats', nats.url, '--listen', '127.0.0.1:0', '-b', base], {
      VMBACKUP_GATEWAY_TOKENS_FILE: path.join(base, 'tokens'),
      VMBACKUP_WEBHOOK_SECRET_FILE: path.join(base, 'secret'),
    });
  });

  afterAll(async () => {
    gw?.child.kill('SIGKILL');
    await worker?.close();
    await xapi?.close();
    await sim?.close();
  });

  it('readyz: NATS reachable; the token is required', async () => {
    expect((await fetch(`${gw.url}/readyz`)).status).toBe(200);
    expect((await fetch(`${gw.url}/v1/runs`)).status).toBe(401);
    expect(gw.output()).not.toContain(token);
  });

  it('POST /v1/runs: the run goes through NATS to the workers and ends in backup files', async () => {
    const res = await fetch(`${gw.url}/v1/runs`, { method: 'POST', headers, body: JSON.stringify({ vm_exports: ['web1'] }) });
    expect(res.status).toBe(202);
    const { runId } = (await res.json()) as { runId: string };
    const shown = await waitFor(async () => {
      const r = (await (await fetch(`${gw.url}/v1/runs/${runId}`, { headers })).json()) as { run?: { status: string }; summary?: { status: string } };
      return r.run?.status === 'finished' ? r : undefined;
    }, 60_000, 'the run to finish');
    expect(shown.summary?.status).toBe('success');
    expect((await readdir(path.join(base, 'exports', 'web1'))).filter((f) => f.endsWith('.xva'))).toHaveLength(1);
    const backups = (await (await fetch(`${gw.url}/v1/backups?vm=web1`, { headers })).json()) as { vms: { sets: { complete: boolean; runId: string }[] }[] };
    expect(backups.vms[0]!.sets[0]).toMatchObject({ complete: true, runId });
  });

  it('the same Alertmanager delivery twice: one run (the trigger log is in NATS KV)', async () => {
    const body = JSON.stringify(alertmanagerPayload(['db1'], { groupKey: 'nats-twice' }));
    const a = await fetch(`${gw.url}/v1/hooks/alertmanager`, { method: 'POST', headers, body });
    const b = await fetch(`${gw.url}/v1/hooks/alertmanager`, { method: 'POST', headers, body });
    expect([a.status, b.status]).toEqual([202, 200]);
    const runA = ((await a.json()) as { runId: string }).runId;
    expect(((await b.json()) as { runId: string }).runId).toBe(runA);
    const runs = (await (await fetch(`${gw.url}/v1/runs?limit=100`, { headers })).json()) as { runs: { runId: string; trigger?: string }[] };
    expect(runs.runs.filter((r) => r.trigger === 'alertmanager')).toHaveLength(1);
  });

  it('a signed webhook: bad signature 401, good one 202, replay 200 with the same run', async () => {
    const body = JSON.stringify({ id: 'nats-delivery-1', timestamp: new Date().toISOString(), vm_exports: ['web1'] });
    expect((await fetch(`${gw.url}/v1/hooks/generic`, { method: 'POST', headers: { ...headers, 'X-Hub-Signature-256': signBody('wrong-secret-0123456789', body) }, body })).status).toBe(401);
    const ok = await fetch(`${gw.url}/v1/hooks/generic`, { method: 'POST', headers: { ...headers, 'X-Hub-Signature-256': signBody(secret, body) }, body });
    expect(ok.status).toBe(202);
    const replay = await fetch(`${gw.url}/v1/hooks/generic`, { method: 'POST', headers: { ...headers, 'X-Hub-Signature-256': signBody(secret, body) }, body });
    expect(replay.status).toBe(200);
    expect(((await replay.json()) as { runId: string }).runId).toBe(((await ok.json()) as { runId: string }).runId);
  });

  it('SIGTERM: the gateway stops and exits 0', async () => {
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    expect(gw.output()).toContain('SIGTERM received');
  });
});

describe('vmbackup gateway refuses to start without what it needs (exit 2, clear message)', () => {
  const run = (args: string[], env: Record<string, string> = {}) =>
    new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(process.execPath, [VMBACKUP, 'gateway', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: os.tmpdir(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
    });

  it.each([
    ['no token file', (d: string) => [['--nats', 'nats://127.0.0.1:1', '-b', d], {}], /the gateway needs bearer tokens: set gateway_tokens_file/],
    ['a token file that does not exist', (d: string) => [['--nats', 'nats://127.0.0.1:1', '-b', d], { VMBACKUP_GATEWAY_TOKENS_FILE: path.join(d, 'nope') }], /gateway_tokens_file .*nope cannot be read \(does not exist\)/],
    ['a token file with a short token', (d: string) => [['--nats', 'nats://127.0.0.1:1', '-b', d], { VMBACKUP_GATEWAY_TOKENS_FILE: path.join(d, 'short') }], /short line 1: token too short/],
    ['--no-auth on a public address', (d: string) => [['--nats', 'nats://127.0.0.1:1', '-b', d, '--no-auth', '--listen', '0.0.0.0:0'], {}], /--no-auth is only allowed on a loopback address/],
    ['no NATS', (d: string) => [['-b', d], { VMBACKUP_GATEWAY_TOKENS_FILE: path.join(d, 'tokens') }], /the gateway needs NATS: give --nats URL/],
    ['a bad listen address', (d: string) => [['--nats', 'nats://127.0.0.1:1', '-b', d, '--listen', 'localhost'], { VMBACKUP_GATEWAY_TOKENS_FILE: path.join(d, 'tokens') }], /gateway_listen = localhost: must be HOST:PORT/],
  ])('%s', async (_name, make, message) => {
    const d = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-cli-'));
    await writeFile(path.join(d, 'short'), 'abc\n');
    await writeFile(path.join(d, 'tokens'), 'a-long-enough-token-0123456789\n');
    const [args, env] = make(d) as [string[], Record<string, string>];
    const r = await run(args, env);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(message);
    expect(r.out).not.toContain('a-long-enough-token');
  });
});
