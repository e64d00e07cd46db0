import { describe, expect, it } from 'vitest';
import { newRunHeader } from '../run/reduce.js';
import type { JobState } from '../run/state.js';
import { formatRun } from './status.js';

function job(label: string, status: JobState['status'], error?: string): JobState {
  return {
    jobId: `vm.${label}`,
    kind: 'vm',
    category: 'vm-export',
    label,
    pipeline: ['pre-hook', 'snapshot', 'export', 'meta', 'prune', 'post-hook'],
    phase: 'post-hook',
    status,
    try: 1,
    input: {},
    files: [],
    bytes: 0,
    warnings: [],
    phaseMs: {},
    ...(error !== undefined ? { error: { name: 'Error', code: status === 'skipped' ? 'HOOK_ABORTED' : 'EIO', message: error, permanent: true, retryable: false } } : {}),
  };
}

describe('formatRun', () => {
  it('labels a VM its pre-vm hook skipped SKIPPED, as the summary does, and a failed one ERROR', () => {
    const header = { ...newRunHeader('r1', new Date('2026-11-26T12:00:00Z'), { concurrency: 2, vmRetries: 1 }), status: 'finished' as const };
    const text = formatRun(header, [job('db1', 'skipped', 'pre-vm command hook: replica is 300 s behind'), job('web1', 'failed', 'disk error'), job('app', 'success')]);
    expect(text).toContain('SKIPPED: vm-export db1: pre-vm command hook: replica is 300 s behind\n');
    expect(text).not.toMatch(/ERROR: vm-export db1/);
    expect(text).toContain('ERROR: vm-export web1: disk error\n');
    expect(text).not.toMatch(/vm-export app/);
  });
});
