import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../log.js';
import type { Logger } from '../log.js';
import type { PhaseEvent } from '../events.js';
import { progress } from './run.js';

/** The command's own console logger (with the run and VM context), keeping `LEVEL message` lines. */
function recorder(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = (level: string) =>
    new Writable({
      write(chunk: Buffer, _e, done) {
        for (const l of chunk.toString().split('\n').filter((x) => x !== '')) lines.push(level === 'out' ? `info ${l}` : l.replace(/^WARNING: /, 'warn ').replace(/^ERROR: /, 'error '));
        done();
      },
    });
  return { log: createLogger({ consoleLevel: 'info', console: sink('out'), consoleErrors: sink('err'), consoleContext: true }), lines };
}

const base = { runId: 'r1', jobId: 'vm.u1', try: 1, attempt: 1, at: '2026-11-26T12:00:00Z' };

describe('vmbackup run: progress lines', () => {
  it('says a VM was skipped by its pre-vm hooks, not that its pre-hook is done', () => {
    const { log, lines } = recorder();
    const labels = new Map([['vm.u1', 'db1']]);
    progress({ ...base, fn: 'pre-hook', outcome: 'done', durationMs: 12, output: { skipped: { reason: 'pre-vm command hook: replica is 300 s behind' } } } as PhaseEvent, labels, log);
    expect(lines).toEqual(['warn db1: skipped by its pre-vm hooks: pre-vm command hook: replica is 300 s behind [run r1, vm u1]']);
  });

  it('tells a redelivered export from a first one', () => {
    const { log, lines } = recorder();
    const labels = new Map([['vm.u1', 'big']]);
    progress({ ...base, fn: 'export', outcome: 'done', durationMs: 400, output: { bytes: 64 << 20 } } as PhaseEvent, labels, log);
    progress({ ...base, attempt: 2, fn: 'export', outcome: 'done', durationMs: 400, output: { bytes: 64 << 20 } } as PhaseEvent, labels, log);
    expect(lines).toEqual(['info big: exported 64.0 MiB in 0.4 s [run r1, vm u1]', 'info big: exported 64.0 MiB in 0.4 s (delivery 2: an earlier worker did not finish it) [run r1, vm u1]']);
  });

  it('tells apart two VMs that share a name: each line names its VM by uuid', () => {
    const { log, lines } = recorder();
    const labels = new Map<string, string>();
    for (const jobId of ['vm.aaaa-1', 'vm.bbbb-2']) {
      progress({ ...base, jobId, fn: 'snapshot', outcome: 'started', label: 'twin' } as PhaseEvent, labels, log);
      progress({ ...base, jobId, fn: 'snapshot', outcome: 'done', durationMs: 100, output: {} } as PhaseEvent, labels, log);
    }
    expect(lines).toEqual(['info twin: snapshot done in 0.1 s [run r1, vm aaaa-1]', 'info twin: snapshot done in 0.1 s [run r1, vm bbbb-2]']);
  });
});
