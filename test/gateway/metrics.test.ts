import { execFile } from 'node:child_process';
import { chmod, chown, cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/nats-server.js';
import { vmbackup } from '../helpers/cli.js';
import { startRig } from '../nats/rig.js';
import { pool, vm } from '../sim/fixtures.js';
import { startWorker } from '../nats/workers.js';
import type { Rig } from '../nats/rig.js';
import { waitFor } from '../sim/test-helpers.js';
import { startGatewayCommand } from './gateway-command.js';
import type { GatewayCommand } from './gateway-command.js';

/*
 * GET /metrics of `vmbackup gateway` and of `vmbackup worker --metrics-listen`, after a real
 * run on a real nats-server against the simulator (one VM's export fails), then with NATS
 * gone: the series from backup_dir stay, the run store says it is down.
 */

const run = promisify(execFile);
const gatewayToken = 'metrics-gw-token-0123456789';
const metricsToken = 'metrics-only-token-0123456789';

/** `name{labels} value` lines as a map (comments skipped). */
function series(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

describe('Prometheus metrics of the gateway and the workers', () => {
  let rig: Rig;
  let gw: GatewayCommand;
  let workerMetrics: string;
  let runStartedAt: number;
  let env: Record<string, string>;
  const cleanup: string[] = [];

  beforeAll(async () => {
    rig = await startRig(pool([vm('web1', 'Halted', 1), vm('db1', 'Halted', 1)]));
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-metrics-tokens-'));
    const tokens = path.join(dir, 'gateway-tokens');
    const mtokens = path.join(dir, 'metrics-tokens');
    await writeFile(tokens, `${gatewayToken}\n`);
    await writeFile(mtokens, `# Prometheus\n${metricsToken}\n`);
    await chmod(tokens, 0o600);
    await chmod(mtokens, 0o600);
    env = { VMBACKUP_GATEWAY_TOKENS_FILE: tokens, VMBACKUP_METRICS_TOKENS_FILE: mtokens };
    const port = await freePort();
    workerMetrics = `http://127.0.0.1:${port}/metrics`;
    const w = startWorker(rig.args('--metrics-listen', `127.0.0.1:${port}`), { env: { ...env, VMBACKUP_VM_RETRIES: '0' } });
    rig.workers.push(w);
    await w.ready;
    rig.sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    runStartedAt = Date.now() / 1000;
    const r = await vmbackup(['run', ...rig.args('-e', 'web1', '-e', 'db1')], { env: { VMBACKUP_VM_RETRIES: '0' } });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    rig.sim.faults.clear();
    gw = await startGatewayCommand(['--nats', rig.nats.url, '--listen', '127.0.0.1:0', '-b', rig.ws.base], env);
  }, 180_000);
  afterAll(async () => {
    gw?.child.kill('SIGTERM');
    await gw?.exited;
    await rig?.close();
    for (const dir of cleanup) await rm(dir, { recursive: true, force: true });
  });

  it('GET /metrics needs a token: none is 401 with a challenge, an unknown one 403; the gateway\'s and metrics_tokens_file\'s are accepted', async () => {
    const none = await fetch(`${gw.url}/metrics`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="vmbackup"');
    expect(((await none.json()) as { error: string }).error).toBe('UNAUTHORIZED');
    const wrong = await fetch(`${gw.url}/metrics`, { headers: { Authorization: 'Bearer not-a-known-token-0123' } });
    expect(wrong.status).toBe(403);
    for (const token of [gatewayToken, metricsToken]) {
      const ok = await fetch(`${gw.url}/metrics`, { headers: { Authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(ok.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      await ok.text();
    }
    // The metrics token opens nothing else.
    expect((await fetch(`${gw.url}/v1/runs`, { headers: { Authorization: `Bearer ${metricsToken}` } })).status).toBe(403);
  });

  it('per VM from backup_dir and the run store: the good backup, the failure, the verification; the run; vmbackup_up', async () => {
    const res = await fetch(`${gw.url}/metrics`, { headers: { Authorization: `Bearer ${metricsToken}` } });
    const text = await res.text();
    const s = series(text);
    expect(text).toContain('# TYPE vmbackup_last_success_timestamp_seconds gauge');
    expect(s.get('vmbackup_backup_points{vm="web1"}')).toBe(1);
    expect(s.get('vmbackup_last_success_timestamp_seconds{vm="web1"}')).toBeGreaterThanOrEqual(Math.floor(runStartedAt));
    expect(s.get('vmbackup_last_backup_bytes{vm="web1"}')).toBeGreaterThan(1 << 20);
    expect(s.get('vmbackup_last_backup_duration_seconds{vm="web1"}')).toBeGreaterThan(0);
    expect(s.get('vmbackup_last_verify_success{vm="web1"}')).toBe(1);
    expect(s.get('vmbackup_last_verify_timestamp_seconds{vm="web1"}')).toBeGreaterThanOrEqual(Math.floor(runStartedAt));
    expect(s.get('vmbackup_last_failure_timestamp_seconds{vm="web1"}')).toBe(0);
    expect(s.get('vmbackup_damaged_backups{vm="web1"}')).toBe(0);
    // db1 failed: known from the run store alone, never backed up.
    expect(s.get('vmbackup_backup_points{vm="db1"}')).toBe(0);
    expect(s.get('vmbackup_last_success_timestamp_seconds{vm="db1"}')).toBe(0);
    expect(s.get('vmbackup_last_failure_timestamp_seconds{vm="db1"}')).toBeGreaterThanOrEqual(Math.floor(runStartedAt));
    expect(s.get('vmbackup_last_run_exit_code')).toBe(1);
    expect(s.get('vmbackup_max_age_seconds')).toBe(26 * 3600);
    expect(s.get('vmbackup_up{component="backup_dir"}')).toBe(1);
    expect(s.get('vmbackup_up{component="run_store"}')).toBe(1);
  });

  it('a worker serves its jobs per function and outcome, their durations, and the runs its coordinator finished', async () => {
    expect((await fetch(workerMetrics)).status).toBe(401);
    const res = await fetch(workerMetrics, { headers: { Authorization: `Bearer ${metricsToken}` } });
    expect(res.status).toBe(200);
    const s = series(await res.text());
    expect(s.get('vmbackup_jobs_total{function="export",outcome="done"}')).toBe(1);
    expect(s.get('vmbackup_jobs_total{function="export",outcome="failed"}')).toBe(1);
    expect(s.get('vmbackup_jobs_total{function="plan",outcome="done"}')).toBe(1);
    expect(s.get('vmbackup_job_duration_seconds_count{function="export"}')).toBe(2);
    expect(s.get('vmbackup_job_duration_seconds_bucket{le="+Inf",function="export"}')).toBe(2);
    expect(s.get('vmbackup_runs_total{outcome="error"}')).toBe(1);
    expect(s.get('vmbackup_runs_total{outcome="success"}')).toBe(0);
  });

  it('a worker refuses to serve its metrics off loopback without a token, and says so before it connects', async () => {
    const r = await vmbackup(['worker', '--nats', 'nats://127.0.0.1:1', '--metrics-listen', '0.0.0.0:9464']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('metrics_listen = 0.0.0.0:9464 is not a loopback address: give metrics_tokens_file (or gateway_tokens_file) so that GET /metrics needs a token');
    const bad = await vmbackup(['worker', '--nats', 'nats://127.0.0.1:1', '--metrics-listen', 'nine']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('metrics_listen = nine: must be HOST:PORT');
  }, 60_000);

  it('a manifest the gateway\'s user cannot read: flagged on its VM, nothing else changes', async () => {
    // The gateway as a system service runs: an unprivileged user (nobody), over a copy of the
    // backups where web1's manifest belongs to root alone.
    const nobody = { uid: 65534, gid: 65534 };
    const base = await mkdtemp('/tmp/vmb-metrics-nobody-');
    cleanup.push(base);
    await cp(rig.ws.exports, path.join(base, 'exports'), { recursive: true });
    await run('chmod', ['-R', 'a+rX', base]);
    const web1 = path.join(base, 'exports', 'web1');
    const manifest = (await readdir(web1)).find((n) => n.endsWith('.json'))!;
    await chmod(path.join(web1, manifest), 0o600);
    const tokens = path.join(base, 'tokens');
    await writeFile(tokens, `${gatewayToken}\n`, { mode: 0o600 });
    await chown(tokens, nobody.uid, nobody.gid);
    const other = await startGatewayCommand(['--nats', rig.nats.url, '--listen', '127.0.0.1:0', '-b', base], { VMBACKUP_GATEWAY_TOKENS_FILE: tokens }, nobody);
    try {
      const res = await fetch(`${other.url}/metrics`, { headers: { Authorization: `Bearer ${gatewayToken}` } });
      expect(res.status, other.output()).toBe(200);
      const s = series(await res.text());
      expect(s.get('vmbackup_damaged_backups{vm="web1"}')).toBe(1);
      expect(s.get('vmbackup_backup_points{vm="web1"}')).toBe(0);
      expect(s.get('vmbackup_last_success_timestamp_seconds{vm="web1"}')).toBe(0);
      expect(s.get('vmbackup_up{component="backup_dir"}')).toBe(1);
      expect(s.get('vmbackup_last_failure_timestamp_seconds{vm="db1"}')).toBeGreaterThanOrEqual(Math.floor(runStartedAt));
      // GET /v1/backups (what vmbackup list prints) names the set and why.
      const list = await fetch(`${other.url}/v1/backups?vm=web1`, { headers: { Authorization: `Bearer ${gatewayToken}` } });
      expect(JSON.stringify(await list.json())).toContain('EACCES');
    } finally {
      other.child.kill('SIGTERM');
      await other.exited;
    }
  }, 60_000);

  it('NATS down: vmbackup_up 0 for the run store, the per-VM series from backup_dir still served', async () => {
    await rig.nats.stop();
    const text = await waitFor(
      async () => {
        const t = await (await fetch(`${gw.url}/metrics`, { headers: { Authorization: `Bearer ${gatewayToken}` } })).text();
        return series(t).get('vmbackup_up{component="run_store"}') === 0 ? t : undefined;
      },
      30_000,
      'vmbackup_up{component="run_store"} 0',
    );
    const s = series(text);
    expect(s.get('vmbackup_up{component="backup_dir"}')).toBe(1);
    expect(s.get('vmbackup_backup_points{vm="web1"}')).toBe(1);
    expect(s.get('vmbackup_last_success_timestamp_seconds{vm="web1"}')).toBeGreaterThanOrEqual(Math.floor(runStartedAt));
    expect(s.get('vmbackup_last_verify_success{vm="web1"}')).toBe(1);
    // What only the run store knew is gone until it is back.
    expect(s.has('vmbackup_last_run_exit_code')).toBe(false);
  }, 60_000);
});
