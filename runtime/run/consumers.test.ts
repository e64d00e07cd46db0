import { describe, expect, it } from 'vitest';
import { pipelines } from '../../functions/index.js';
import { describeUnconsumed, runFunctions } from './consumers.js';

describe('runFunctions: the functions a run needs workers for', () => {
  it.each([
    ['any run', {}, ['plan', ...pipelines.vm, 'pool-db', 'host-backup']],
    ['VMs only', { vmExports: ['web1'], vdiExports: [], poolBackup: false, hostBackup: false }, ['plan', ...pipelines.vm]],
    ['disks only', { vmExports: [], vdiExports: ['db1:-1:xvdb'], poolBackup: false, hostBackup: false }, ['plan', ...pipelines.vm]],
    ['delta-exports only', { vmExports: [], vdiExports: [], deltaExports: ['db1'], poolBackup: false, hostBackup: false }, ['plan', 'pre-hook', 'snapshot', 'delta-export', 'prune', 'post-hook']],
    ['delta-exports beside vm-exports', { vmExports: ['web1'], vdiExports: [], deltaExports: ['db1'], poolBackup: false, hostBackup: false }, ['plan', ...pipelines.vm, 'delta-export']],
    ['the pool database only', { vmExports: [], vdiExports: [], poolBackup: true, hostBackup: false }, ['plan', 'pool-db']],
    ['hosts, any VM', { poolBackup: false, hostBackup: true }, ['plan', ...pipelines.vm, 'host-backup']],
  ])('%s', (_name, options, expected) => {
    expect(runFunctions(options)).toEqual(expected);
  });
});

describe('describeUnconsumed names what nobody consumes and what to start', () => {
  it.each([
    [[{ name: 'plan', kind: 'jobs' as const, queued: 1 }], 'no worker is consuming plan jobs (vmbackup.jobs.plan: 1 queued); start `vmbackup worker` (serving plan)'],
    [
      [
        { name: 'export', kind: 'jobs' as const, queued: 2 },
        { name: 'coordinator', kind: 'coordinator' as const, queued: 0 },
      ],
      'no worker is consuming export jobs (vmbackup.jobs.export: 2 queued); no worker runs the coordinator (every worker has --no-coordinator, or none is connected); start `vmbackup worker` (serving export, with the coordinator)',
    ],
    [[{ name: 'coordinator', kind: 'coordinator' as const, queued: 3 }], 'no worker runs the coordinator (every worker has --no-coordinator, or none is connected); start `vmbackup worker` (without --no-coordinator)'],
  ])('%#', (missing, text) => {
    expect(describeUnconsumed(missing)).toBe(text);
  });
});
