import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { functions, pipelines } from '../../functions/index.js';
import { vmbackup } from '../helpers/cli.js';
import { events, exportOverlap, startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

describe('vmbackup worker', () => {
  it('--functions splits the phases over workers: one serves snapshot and export, the other the rest', async () => {
    rig = await startRig(pool([vm('s1'), vm('s2', 'Halted')]));
    // Everything a VM run needs besides snapshot and export, given as two lists.
    const others = ['plan', ...pipelines.vm.filter((f) => f !== 'snapshot' && f !== 'export'), 'run-end'];
    const exporter = await rig.worker('--functions', 'snapshot,export');
    const rest = await rig.worker('--functions', others.slice(0, 2).join(', '), '--functions', others.slice(2).join(','));
    expect(exporter.output()).toMatch(/worker ready: serving snapshot, export and the coordinator/);
    expect(rest.output()).toContain(`worker ready: serving ${functions.filter((f) => others.includes(f.name)).map((f) => f.name).join(', ')} and the coordinator`);
    const r = await vmbackup(['run', ...rig.args()]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('VmBackup vm-export Summary - S:2 W:0 E:0');
    expect((exporter.output().match(/^s\d: exported /gm) ?? []).sort()).toEqual(['s1: exported ', 's2: exported ']);
    expect(rest.output()).not.toMatch(/exported|snapshot taken/);
    for (const name of ['s1', 's2']) expect((await readdir(path.join(rig.ws.exports, name))).map((f) => f.replace(/\d{8}-\d{6}/, 'S')).sort()).toEqual(['backup_S.json', 'backup_S.meta', 'backup_S.xva']);

    const bad = await vmbackup(['worker', ...rig.args('--functions', 'export,frobnicate')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown function frobnicate in --functions \/ worker_functions \(functions: plan, snapshot, export/);
  });

  it('a global limit on concurrent exports (concurrency), whatever the number of workers', async () => {
    rig = await startRig(pool(['a', 'b', 'c', 'd', 'e', 'f'].map((n) => vm(n, 'Running', 3))));
    rig.sim.faults.add({ http: 'export', always: true, action: { kind: 'slow', bytes_per_second: 4 << 20 } });
    // Each worker could export two at a time, and the run would start four VMs at once.
    await Promise.all([rig.worker('--concurrency', '2'), rig.worker('--concurrency', '2')]);
    const r = await vmbackup(['run', ...rig.args('--concurrency', '4')]);
    expect(r.code).toBe(0);
    expect(rig.sim.state.exportCount('export')).toBe(6);
    expect(exportOverlap(rig.sim)).toBe(2);
  });

  it('retries a transient failure with the backoff; a long export keeps its job with in-progress acks', async () => {
    rig = await startRig(pool([vm('slow', 'Running', 6)]));
    // The first VM.snapshot call loses its connection; the export then takes ~3 s, three
    // times the ack wait: without in-progress acks the other worker would take it over.
    rig.sim.faults.add({ rpc: 'VM.snapshot', times: 1, action: { kind: 'reset' } });
    rig.sim.faults.add({ http: 'export', always: true, action: { kind: 'slow', bytes_per_second: 2 << 20 } });
    await Promise.all([rig.worker('--ack-wait', '1'), rig.worker('--ack-wait', '1')]);
    const r = await vmbackup(['run', ...rig.args('--json')]);
    expect(r.code).toBe(0);
    const runId = (JSON.parse(r.stdout) as { runId: string }).runId;
    const snapshot = await events(rig, runId, 'snapshot');
    expect(snapshot.map((e) => [e.outcome, e.attempt])).toEqual([
      ['started', 1],
      ['started', 2],
      ['done', 2],
    ]);
    const started = snapshot.filter((e) => e.outcome === 'started').map((e) => Date.parse(e.at));
    expect(started[1]! - started[0]!).toBeGreaterThanOrEqual(5_000); // snapshot's backoff: 5 s, then 30 s
    expect(rig.workers.some((w) => /snapshot failed \(\w+\), retrying in 5 s/.test(w.output()))).toBe(true);
    expect(rig.sim.state.transfers('export').map((t) => t.status)).toEqual(['done']);
    expect((await events(rig, runId, 'export')).map((e) => [e.outcome, e.attempt])).toEqual([
      ['started', 1],
      ['done', 1],
    ]);
  });
});
