import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';
import { xvaWriter } from './workers.js';

/** The fault rows of issue 3: each against a real nats-server, real workers, the simulator. */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

function noVmbackupSnapshots(r: Rig) {
  expect(r.sim.state.snapshots().filter((s) => String(s.name_label).includes('vmbackup'))).toEqual([]);
  expect(r.sim.state.vdis().filter((v) => v.is_a_snapshot === true)).toEqual([]);
}

describe('NATS faults', () => {
  it('two workers share a run; one is SIGKILLed mid-export: the job is redelivered, the run completes, nothing left over or duplicated', async () => {
    rig = await startRig(pool([vm('big', 'Running', 6), vm('a'), vm('b', 'Halted')]));
    rig.sim.faults.add({ http: 'export', vm: 'big', always: true, action: { kind: 'slow', bytes_per_second: 2 << 20 } });
    const workers = await Promise.all([rig.worker('--ack-wait', '2'), rig.worker('--ack-wait', '2')]);
    const run = vmbackup(['run', ...rig.args('--json')], { timeoutMs: 45_000 });
    // The worker writing big's export right now, once a good part of it is there.
    const victim = await waitFor(
      () => (rig!.sim.state.transfers('export').some((t) => t.vm?.startsWith('big') === true && t.bytes > 1 << 20) ? xvaWriter(workers, 'big') : undefined),
      30_000,
      'a worker exporting big',
    );
    victim.kill('SIGKILL');
    expect(await victim.exited).toBe('SIGKILL');
    const survivor = workers.find((w) => w !== victim)!;
    const r = await run;
    expect(r.code, `vmbackup run:\n${r.stderr}\nthe survivor:\n${survivor.output()}\nthe worker killed:\n${victim.output()}`).toBe(0);
    const summary = JSON.parse(r.stdout) as RunSummary;
    // A warning's text says which phase it came from: shown whole when there is one.
    expect({ counts: summary.categories['vm-export'], warnings: summary.jobs.filter((j) => j.category === 'vm-export').flatMap((j) => j.warnings.map((w) => `${j.name}: ${w}`)) }).toEqual({ counts: { S: 3, W: 0, E: 0 }, warnings: [] });
    // big's export: the first transfer cut by the kill, the second (the redelivery) whole.
    const bigExports = rig.sim.state.transfers('export').filter((t) => t.vm?.startsWith('big') === true);
    expect(bigExports.map((t) => t.status)).toEqual(['aborted', 'done']);
    expect(survivor.output(), `the survivor's output:\n${survivor.output()}`).toMatch(/^big: exported 6\.\d MiB/m);
    // One backup set per VM, no partial file, no snapshot left.
    const big = (await readdir(path.join(rig.ws.exports, 'big'))).sort();
    expect(big).toHaveLength(3);
    expect(big.filter((f) => f.endsWith('.partial'))).toEqual([]);
    const manifest = JSON.parse(await readFile(path.join(rig.ws.exports, 'big', big.find((f) => f.endsWith('.json'))!), 'utf8')) as { files: { name: string; size: number }[] };
    const xva = manifest.files.find((f) => f.name.endsWith('.xva'))!;
    expect(xva.size).toBe(bigExports[1]!.bytes);
    for (const name of ['a', 'b']) expect(await readdir(path.join(rig.ws.exports, name))).toHaveLength(3);
    noVmbackupSnapshots(rig);
  });

  it('the same trigger sent twice makes one run', async () => {
    rig = await startRig(pool([vm('t1'), vm('t2')]));
    rig.sim.faults.add({ http: 'export', always: true, action: { kind: 'slow', bytes_per_second: 4 << 20 } });
    await Promise.all([rig.worker(), rig.worker()]);
    const [first, second] = await Promise.all([
      vmbackup(['run', ...rig.args('--trigger-id', 'nightly-2026-11-26', '--json')]),
      vmbackup(['run', ...rig.args('--trigger-id', 'nightly-2026-11-26', '--json')]),
    ]);
    expect([first.code, second.code]).toEqual([0, 0]);
    const [a, b] = [JSON.parse(first.stdout) as RunSummary, JSON.parse(second.stdout) as RunSummary];
    expect(a.runId).toBe('t-nightly-2026-11-26');
    expect(b).toEqual(a);
    expect(first.stdout + first.stderr + second.stdout + second.stderr).toContain('exists already (trigger nightly-2026-11-26 was sent before): following it');
    expect(rig.sim.state.exportCount('export')).toBe(2);
    const list = await vmbackup(['status', ...rig.args('--json')]);
    expect((JSON.parse(list.stdout) as { runId: string }[]).map((h) => h.runId)).toEqual(['t-nightly-2026-11-26']);
    // Sent again later: still that one run (its summary again), nothing backed up again.
    const third = await vmbackup(['run', ...rig.args('--trigger-id', 'nightly-2026-11-26', '--json')]);
    expect(third.code).toBe(0);
    expect((JSON.parse(third.stdout) as RunSummary).runId).toBe('t-nightly-2026-11-26');
    expect(rig.sim.state.exportCount('export')).toBe(2);
  });
});
