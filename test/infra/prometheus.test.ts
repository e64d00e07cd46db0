import { execFile } from 'node:child_process';
import { mkdtemp, open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import type { Simulator } from '../sim/server.js';
import { pool, vm } from '../sim/fixtures.js';

/*
 * The node_exporter textfile of a cron install, written by the real command against the
 * simulator, and the alert rules of infra/prometheus checked by Debian's promtool on exactly
 * those series: a VM whose export fails, a backup that fails verification, a failed run, and
 * (time moved on by promtool) VMs overdue after max_age_hours.
 */

const run = promisify(execFile);
const PROMTOOL = '/usr/bin/promtool';
const INFRA = path.join(ROOT, 'infra', 'prometheus');

describe('metrics_textfile and the Prometheus alert rules', () => {
  let sim: Simulator;
  let ws: Workspace;
  let textfile: string;
  let first: string;
  let last: string;

  beforeAll(async () => {
    sim = await httpsSim(pool([vm('web1', 'Halted'), vm('db1', 'Halted', 1)]));
    ws = await workspace();
    textfile = path.join(await mkdtemp(path.join(os.tmpdir(), 'vmb-node-exporter-')), 'vmbackup.prom');
    const env = { VMBACKUP_METRICS_TEXTFILE: textfile, VMBACKUP_VM_RETRIES: '0' };
    const r0 = await vmbackup([...ws.args(sim), '-e', 'web1'], { env });
    expect(r0.code, r0.stderr).toBe(0);
    first = await readFile(textfile, 'utf8');
    await new Promise((resolve) => setTimeout(resolve, 1100)); // a new stamp
    sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const r1 = await vmbackup([...ws.args(sim), '-e', 'web1', '-e', 'db1'], { env });
    sim.faults.clear();
    expect(r1.code, r1.stderr).toBe(1);
    // The older backup of web1 gets a flipped byte; vmbackup verify records its failure.
    const dir = path.join(ws.exports, 'web1');
    const oldest = (await readdir(dir)).filter((n) => n.endsWith('.xva')).sort()[0]!;
    const fh = await open(path.join(dir, oldest), 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, 4096 + 1024 * 3);
    await fh.close();
    const verify = await vmbackup(['verify', '-b', ws.base, path.join(dir, oldest.replace('.xva', '.json'))]);
    expect(verify.code).toBe(1);
    // A run of db1 alone, failing again: its textfile tells of all three.
    sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const r2 = await vmbackup([...ws.args(sim), '-e', 'db1'], { env });
    sim.faults.clear();
    expect(r2.code, r2.stderr).toBe(1);
    last = await readFile(textfile, 'utf8');
  }, 180_000);
  afterAll(async () => sim?.close());

  const value = (text: string, name: string): number | undefined => {
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.slice(name.length + 1));
  };

  it('is rewritten whole at the end of each run, carrying the runs counted and each VM\'s last failure', async () => {
    expect(value(first, 'vmbackup_backup_points{vm="web1"}')).toBe(1);
    expect(value(first, 'vmbackup_runs_total{outcome="success"}')).toBe(1);
    expect(value(first, 'vmbackup_last_run_exit_code')).toBe(0);
    expect(value(last, 'vmbackup_runs_total{outcome="success"}')).toBe(1);
    expect(value(last, 'vmbackup_runs_total{outcome="error"}')).toBe(2);
    expect(value(last, 'vmbackup_last_run_exit_code')).toBe(1);
    // web1 was not in the last run: what it had is read from backup_dir.
    expect(value(last, 'vmbackup_backup_points{vm="web1"}')).toBe(1);
    expect(value(last, 'vmbackup_last_verify_success{vm="web1"}')).toBe(0);
    expect(value(last, 'vmbackup_last_failure_timestamp_seconds{vm="web1"}')).toBe(0);
    expect(value(last, 'vmbackup_backup_points{vm="db1"}')).toBe(0);
    expect(value(last, 'vmbackup_last_failure_timestamp_seconds{vm="db1"}')).toBeGreaterThan(0);
    expect(value(last, 'vmbackup_max_age_seconds')).toBe(26 * 3600);
    // Nothing beside it but the file itself (no partial file left for node_exporter to read).
    expect(await readdir(path.dirname(textfile))).toEqual(['vmbackup.prom']);
    expect((await stat(textfile)).size).toBe(Buffer.byteLength(last));
  });

  it('a textfile that cannot be written is a warning; the run\'s exit code stays', async () => {
    const r = await vmbackup([...ws.args(sim), '-e', 'web1'], { env: { VMBACKUP_METRICS_TEXTFILE: path.join(textfile, 'not-a-dir', 'x.prom') } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr + r.stdout).toContain(`metrics_textfile ${path.join(textfile, 'not-a-dir', 'x.prom')} not updated:`);
  }, 60_000);

  it('promtool accepts the scrape config and the rules', async () => {
    const config = await run(PROMTOOL, ['check', 'config', '--syntax-only', path.join(INFRA, 'prometheus.yml')]);
    expect(config.stdout).toContain('SUCCESS');
    const rules = await run(PROMTOOL, ['check', 'rules', path.join(INFRA, 'alerts.yml')]);
    expect(rules.stdout).toContain('SUCCESS: 6 rules found');
  });

  it('promtool test rules on the series the textfile holds: failed verify, failed VM, failed run at once; overdue after max_age_hours', async () => {
    // promtool's clock starts at 0: the timestamps are moved so that the last run ends at 1 h.
    const lines = last.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
    const stamps = lines.filter((l) => /_timestamp_seconds[{ ]/.test(l)).map((l) => Number(l.slice(l.lastIndexOf(' ') + 1))).filter((v) => v > 0);
    const shift = Math.max(...stamps) - 3600;
    const series = lines.map((l) => {
      const at = l.lastIndexOf(' ');
      const name = l.slice(0, at);
      let v = Number(l.slice(at + 1));
      if (/_timestamp_seconds[{]?/.test(name) && v > 0) v -= shift;
      return { series: name, values: `${v}x40` };
    });
    const expectedAt = (alertname: string, severity: string, vm: string | undefined, summary: string, description: string) => ({
      exp_labels: { alertname, severity, ...(vm !== undefined ? { vm } : {}) },
      exp_annotations: { summary, description },
    });
    const rulesText = await readFile(path.join(INFRA, 'alerts.yml'), 'utf8');
    const annotations = (alert: string, vm?: string, extra: Record<string, string> = {}) => {
      const block = rulesText.slice(rulesText.indexOf(`alert: ${alert}\n`));
      const pick = (key: string) => /"(.*)"/.exec(block.slice(block.indexOf(`${key}: `)).split('\n')[0]!)![1]!;
      const fill = (s: string) => s.replace(/\{\{ \$labels\.vm \}\}/g, vm ?? '').replace(/\{\{ \$value \}\}/g, extra.value ?? '');
      return [fill(pick('summary')), fill(pick('description'))] as const;
    };
    const test = {
      rule_files: [path.join(INFRA, 'alerts.yml')],
      evaluation_interval: '1m',
      tests: [
        {
          interval: '1h',
          input_series: series,
          alert_rule_test: [
            { eval_time: '2h', alertname: 'VmBackupVerifyFailed', exp_alerts: [expectedAt('VmBackupVerifyFailed', 'critical', 'web1', ...annotations('VmBackupVerifyFailed', 'web1'))] },
            { eval_time: '2h', alertname: 'VmBackupFailed', exp_alerts: [expectedAt('VmBackupFailed', 'warning', 'db1', ...annotations('VmBackupFailed', 'db1'))] },
            { eval_time: '2h', alertname: 'VmBackupRunFailed', exp_alerts: [expectedAt('VmBackupRunFailed', 'warning', undefined, ...annotations('VmBackupRunFailed', undefined, { value: '1' }))] },
            { eval_time: '2h', alertname: 'VmBackupOverdue', exp_alerts: [] },
            { eval_time: '2h', alertname: 'VmBackupDamagedManifest', exp_alerts: [] },
            { eval_time: '2h', alertname: 'VmBackupSourceDown', exp_alerts: [] },
            // 26 h after web1's good backup: both overdue (db1 never had one).
            {
              eval_time: '30h',
              alertname: 'VmBackupOverdue',
              exp_alerts: [expectedAt('VmBackupOverdue', 'critical', 'db1', ...annotations('VmBackupOverdue', 'db1')), expectedAt('VmBackupOverdue', 'critical', 'web1', ...annotations('VmBackupOverdue', 'web1'))],
            },
          ],
        },
      ],
    };
    const file = path.join(await mkdtemp(path.join(os.tmpdir(), 'vmb-promtool-')), 'test.yml');
    await writeFile(file, JSON.stringify(test, null, 2)); // JSON is YAML
    const result = await run(PROMTOOL, ['test', 'rules', file]).catch((error: { stdout?: string; stderr?: string }) => {
      throw new Error(`promtool test rules failed:\n${error.stdout ?? ''}${error.stderr ?? ''}\n${last}`);
    });
    expect(result.stdout).toContain('SUCCESS');
  });
});
