import type { FunctionDef } from '../runtime/function.js';
import { deltaExport } from './delta-export/delta-export.js';
import { exportFn } from './export/export.js';
import { hostBackup } from './host-backup/host-backup.js';
import { postHook } from './post-hook/post-hook.js';
import { preHook } from './pre-hook/pre-hook.js';
import { runEnd } from './run-end/run-end.js';
import { meta } from './meta/meta.js';
import { plan } from './plan/plan.js';
import { poolDb } from './pool-db/pool-db.js';
import { prune } from './prune/prune.js';
import { restore } from './restore/restore.js';
import { snapshot } from './snapshot/snapshot.js';
import { verify } from './verify/verify.js';

/**
 * Every function of vmbackup, by name. Each lives in `functions/<name>/<name>.ts`, where its
 * subject, input and output schemas and handler are written down together.
 */
export const functions = [plan, snapshot, exportFn, meta, deltaExport, prune, poolDb, hostBackup, verify, restore, preHook, postHook, runEnd] as const satisfies readonly FunctionDef[];

export type FunctionName = (typeof functions)[number]['name'];

export function functionByName(name: string): FunctionDef | undefined {
  return functions.find((f) => f.name === name);
}

/**
 * The phases a job goes through, in order; each phase's output is the next one's input.
 *
 *   vm:          pre-hook → snapshot → export → meta → verify → prune → post-hook
 *                (a pre-hook that aborts skips to post-hook; a failure after pre-hook too)
 *   delta:       pre-hook → snapshot → delta-export → prune → post-hook
 *                (a delta-export VM: its point is written, and checked, by delta-export;
 *                prune keeps its points and collects the chunk store's garbage)
 *   pool-db:     pool-db
 *   host-backup: host-backup
 */
export const pipelines = {
  vm: ['pre-hook', 'snapshot', 'export', 'meta', 'verify', 'prune', 'post-hook'],
  delta: ['pre-hook', 'snapshot', 'delta-export', 'prune', 'post-hook'],
  'pool-db': ['pool-db'],
  'host-backup': ['host-backup'],
} as const satisfies Record<string, readonly FunctionName[]>;

export type JobKind = keyof typeof pipelines;
