import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpsSim, vmbackup, vmbackupTty, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import { startRig } from '../nats/rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from '../nats/rig.js';
import type { Simulator } from '../sim/server.js';

/**
 * `vmbackup` and `vmbackup run` on a terminal (a pseudo-terminal from `script`) draw a live line
 * per VM while it exports; without a terminal (cron) nothing of it is printed; --progress
 * and --no-progress override. The simulator slows web1's export so that there is something
 * to watch.
 */
const ESC = '\x1b';
/** A bar line of web1 while it exports: `web1 [██░░…] export  1.2 MiB of ≤ 4.0 MiB · 512.0 KiB/s · ETA 6 s`. */
const WEB1_LINE = /web1\s+\[[\u2588\u2591]{20}\] export\s+[\d.]+ (B|KiB|MiB) of ≤ 4\.0 MiB · [\d.]+ (B|KiB|MiB)\/s · ETA \d+ s/;
/** A bar in any state. */
const ANY_BAR = /\[[\u2588\u2591]{20}\]/;

describe('live progress on a terminal', () => {
  let sim: Simulator;
  let ws: Workspace;
  beforeAll(async () => {
    sim = await httpsSim({
      credentials: { user: 'root', password: 'secret' },
      hosts: [{ name_label: 'xcp1' }],
      srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
      vms: [
        { name_label: 'web1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 4, fill: 'pattern' }], vifs: [] },
        { name_label: 'db1', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' }], vifs: [] },
      ],
    });
    ws = await workspace();
  });
  afterAll(async () => sim?.close());

  /** web1 exports at 1 MiB/s: four seconds in which the progress shows. */
  const slowly = () => sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'slow', bytes_per_second: 1 << 20 } });
  const args = () => [...ws.args(sim), '-e', 'web1', '-e', 'db1', '--max-backups', '9'];

  it('on a terminal: one line per VM under way, with phase, bytes, rate and ETA; cleared before the summary', async () => {
    slowly();
    const r = await vmbackupTty(args());
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(WEB1_LINE);
    // The bars are drawn with cursor movements (hidden cursor, shown again at the end).
    expect(r.stdout).toContain(`${ESC}[?25l`);
    expect(r.stdout).toContain(`${ESC}[?25h`);
    // The summary comes after the last bar, and the log lines are printed too.
    const summaryAt = r.stdout.indexOf('VmBackup vm-export Summary - S:2 W:0 E:0');
    expect(summaryAt).toBeGreaterThan(0);
    expect(r.stdout.slice(summaryAt)).not.toMatch(ANY_BAR);
    expect(r.stdout).toMatch(/web1: exported 4\.0 MiB/);
  }, 120_000);

  it('without a terminal (cron): not a byte of it, the same lines as --no-progress', async () => {
    slowly();
    const plain = await vmbackup(args());
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout + plain.stderr).not.toContain(ESC);
    expect(plain.stdout).not.toMatch(ANY_BAR);
    slowly();
    const off = await vmbackup([...args(), '--no-progress']);
    expect(off.code).toBe(0);
    // Both runs print the same lines but for the run id, the stamps, sizes of folders and times.
    const shape = (s: string) =>
      s
        .replace(/\d{8}-\d{6}(-[0-9a-f]{4})?/g, 'STAMP')
        .replace(/\d+(\.\d+)? (s|ms|B|KiB|MiB|GiB)\b/g, 'N $2')
        .split('\n')
        .sort();
    expect(shape(off.stdout)).toEqual(shape(plain.stdout));
  }, 120_000);

  it('--no-progress on a terminal draws nothing; --progress without one draws the lines anyway', async () => {
    slowly();
    const off = await vmbackupTty([...args(), '--no-progress']);
    expect(off.code, off.stdout).toBe(0);
    expect(off.stdout).not.toMatch(ANY_BAR);
    expect(off.stdout).not.toContain(`${ESC}[?25l`);
    expect(off.stdout).toContain('VmBackup vm-export Summary - S:2 W:0 E:0');
    slowly();
    const on = await vmbackup([...args(), '--progress']);
    expect(on.code, on.stderr).toBe(0);
    expect(on.stdout).toMatch(WEB1_LINE);
  }, 120_000);
});

describe('live progress of vmbackup run (NATS, a worker) on a terminal', () => {
  let rig: Rig;
  beforeAll(async () => {
    rig = await startRig(pool([vm('web1', 'Running', 4)]));
    await rig.worker();
  }, 60_000);
  afterAll(async () => rig?.close());

  it('shows the worker\'s export of web1 from its progress signals; nothing without a terminal', async () => {
    rig.sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'slow', bytes_per_second: 1 << 20 } });
    const r = await vmbackupTty(['run', ...rig.args('-e', 'web1')]);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(WEB1_LINE);
    const summaryAt = r.stdout.indexOf('VmBackup vm-export Summary - S:1 W:0 E:0');
    expect(summaryAt).toBeGreaterThan(0);
    expect(r.stdout.slice(summaryAt)).not.toMatch(ANY_BAR);
    const plain = await vmbackup(['run', ...rig.args('-e', 'web1')]);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout + plain.stderr).not.toContain(ESC);
    expect(plain.stdout).not.toMatch(ANY_BAR);
  }, 120_000);
});
