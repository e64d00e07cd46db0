import { describe, expect, it } from 'vitest';
import type { Logger } from '../log.js';
import type { PhaseEvent } from '../events.js';
import { progress } from './run.js';

/** A logger that keeps `LEVEL message` lines. */
function recorder(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (msg: string) => void lines.push(`${level} ${msg}`);
  return { log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } as unknown as Logger, lines };
}

const base = { runId: 'r1', jobId: 'vm.u1', try: 1, attempt: 1, at: '2026-11-26T12:00:00Z' };

describe('vmbackup run: progress lines', () => {
  it('says a VM was skipped by its pre-vm hooks, not that its pre-hook is done', () => {
    const { log, lines } = recorder();
    const labels = new Map([['vm.u1', 'db1']]);
    progress({ ...base, fn: 'pre-hook', outcome: 'done', durationMs: 12, output: { skipped: { reason: 'pre-vm command hook: replica is 300 s behind' } } } as PhaseEvent, labels, log);
    expect(lines).toEqual(['warn db1: skipped by its pre-vm hooks: pre-vm command hook: replica is 300 s behind']);
  });

  it('tells a redelivered export from a first one', () => {
    const { log, lines } = recorder();
    const labels = new Map([['vm.u1', 'big']]);
    progress({ ...base, fn: 'export', outcome: 'done', durationMs: 400, output: { bytes: 64 << 20 } } as PhaseEvent, labels, log);
    progress({ ...base, attempt: 2, fn: 'export', outcome: 'done', durationMs: 400, output: { bytes: 64 << 20 } } as PhaseEvent, labels, log);
    expect(lines).toEqual(['info big: exported 64.0 MiB in 0.4 s', 'info big: exported 64.0 MiB in 0.4 s (delivery 2: an earlier worker did not finish it)']);
  });
});
