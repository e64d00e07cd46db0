import type { RunOptions } from '../../functions/plan/plan.js';
import type { SnapshotInput } from '../../functions/snapshot/snapshot.js';
import { formatStamp } from '../../runtime/storage/naming.js';

/**
 * A run's options as a test gives them: `backupDir` and what the test is about; the rest is
 * the plainest run there is (every VM as an uncompressed vm-export, no pool DB or hosts, one
 * VM at a time, no retry, halted VMs exported without a snapshot).
 */
export function runOptions(given: Pick<RunOptions, 'backupDir'> & Partial<RunOptions>): RunOptions {
  return {
    vmExports: ['.*'],
    vdiExports: [],
    excludes: [],
    maxBackups: 2,
    compress: 'none',
    format: 'raw',
    poolBackup: false,
    hostBackup: false,
    spaceThreshold: 1,
    concurrency: 1,
    vmRetries: 0,
    haltedWithoutSnapshot: true,
    idleTimeoutS: 60,
    leftoverAgeHours: 24,
    ...given,
  };
}

/**
 * One VM's job as the plan queues it: a vm-export of `vm`, first try, into
 * `<backupDir>/<vm name>`, stamped now; anything else as given.
 */
export function vmJob(given: Pick<SnapshotInput, 'runId' | 'vm' | 'backupDir'> & Partial<SnapshotInput>): SnapshotInput {
  return {
    jobId: `vm.${given.vm.uuid}`,
    try: 1,
    mode: 'vm',
    disks: [],
    folder: given.vm.name,
    stamp: formatStamp(new Date()),
    maxBackups: 2,
    compress: 'none',
    format: 'raw',
    spaceThreshold: 1,
    haltedWithoutSnapshot: true,
    idleTimeoutS: 60,
    ...given,
  };
}
