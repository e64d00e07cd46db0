import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../runtime/bus/memory.js';
import { PermanentError } from '../runtime/errors.js';
import { localCtx } from '../runtime/function.js';
import type { Ctx } from '../runtime/function.js';
import { HookEvent } from '../runtime/hooks/event.js';
import type { PostVmEvent } from '../runtime/hooks/event.js';
import { createHookRunner } from '../runtime/hooks/runner.js';
import { silentLogger } from '../runtime/log.js';
import type { RunSummary } from '../runtime/run/summary.js';
import { PruneOutput } from './prune/prune.js';
import { SnapshotJob } from './snapshot/snapshot.js';
import { PostHookInput, postHook, postVmEvent } from './post-hook/post-hook.js';
import { PreHookOutput, preHook } from './pre-hook/pre-hook.js';
import { runEnd } from './run-end/run-end.js';
import { runStartHooks } from './plan/run-start.js';
import { vmJob } from '../test/helpers/jobs.js';

const now = new Date('2026-11-26T08:30:05Z');
let bus: MemoryBus;
/** Events the NATS hooks were asked with, and what they answer next. */
let asked: HookEvent[];
let answer: { decision: string; reason?: string };

beforeEach(async () => {
  bus = new MemoryBus();
  asked = [];
  answer = { decision: 'continue' };
  for (const point of ['pre-vm', 'post-vm', 'run-start', 'run-end']) {
    await bus.reply(`vmbackup.hooks.${point}`, async (data) => {
      asked.push(HookEvent.parse(data));
      return answer;
    });
  }
});
afterEach(async () => bus.close());

function ctx(): Ctx {
  return localCtx({
    log: silentLogger(),
    xapi: async () => {
      throw new Error('hooks never talk to XAPI');
    },
    clock: { now: () => now },
    hooks: createHookRunner(
      { commands: {}, urls: {}, nats: true, natsReplies: 1, timeoutMs: 2_000, onTimeout: 'continue', onFailure: 'continue' },
      { log: silentLogger(), env: {}, bus },
    ),
  });
}

const job = vmJob({ runId: 'r1', vm: { uuid: 'u1', name: 'db1' }, backupDir: '/b', try: 2, mode: 'vdi', disks: ['xvda'], stamp: '20261126-083000', maxBackups: 4 });

describe('pre-hook', () => {
  it('asks the pre-vm hooks about the VM and passes the job on to the snapshot', async () => {
    const out = PreHookOutput.parse(await preHook.handle(job, ctx()));
    expect(asked).toEqual([
      { point: 'pre-vm', runId: 'r1', at: now.toISOString(), jobId: 'vm.u1', try: 2, vm: { uuid: 'u1', name: 'db1' }, backupDir: '/b', folder: 'db1', mode: 'vdi', stamp: '20261126-083000' },
    ]);
    expect(out.skipped).toBeUndefined();
    expect(SnapshotJob.schema.parse(out)).toEqual(job); // the snapshot's input, unchanged
  });

  it('an abort makes the output say skipped, with the reasons', async () => {
    answer = { decision: 'abort', reason: 'replica lagging' };
    const out = PreHookOutput.parse(await preHook.handle(job, ctx()));
    expect(out).toMatchObject({ ...job, skipped: { reason: 'pre-vm nats hook: replica lagging' }, warnings: [] });
  });
});

describe('post-hook', () => {
  const prune = PruneOutput.parse({ runId: 'r1', jobId: 'vm.u1', try: 1, vm: { uuid: 'u1', name: 'db1' }, backupDir: '/b', folder: 'db1', maxBackups: 4, protect: ['20261126-083000'], kept: ['20261126-083000'], deleted: [] });

  it('takes a plain prune output (vmbackup invoke post-hook) and tells the hooks it succeeded', async () => {
    const input = PostHookInput.parse(prune);
    expect(postVmEvent(input, now)).toEqual({
      point: 'post-vm',
      runId: 'r1',
      at: now.toISOString(),
      jobId: 'vm.u1',
      try: 1,
      vm: { uuid: 'u1', name: 'db1' },
      backupDir: '/b',
      folder: 'db1',
      stamp: '20261126-083000',
      outcome: { status: 'success', files: [], bytes: 0, warnings: [] },
    });
  });

  const outcomes: [string, Record<string, unknown>, PostVmEvent['outcome']][] = [
    [
      'success, with the set’s files as absolute paths',
      { mode: 'vm', files: [{ name: 'backup_20261126-083000.xva', format: 'xva', size: 10 }], bytes: 10 },
      { status: 'success', files: [{ path: '/b/db1/backup_20261126-083000.xva', size: 10, format: 'xva' }], bytes: 10, warnings: [] },
    ],
    [
      'failed, retrying',
      { failed: { fn: 'export', error: { name: 'E', code: 'ECONNRESET', message: 'reset', permanent: false, retryable: true }, retrying: true } },
      { status: 'failed', files: [], bytes: 0, warnings: [], error: { phase: 'export', code: 'ECONNRESET', message: 'reset' }, retrying: true },
    ],
    ['skipped', { skipped: { reason: 'pre-vm command hook: no' } }, { status: 'skipped', files: [], bytes: 0, warnings: [], reason: 'pre-vm command hook: no' }],
  ];
  it.each(outcomes)('%s', async (_name, extra, outcome) => {
    const out = await postHook.handle(PostHookInput.parse({ ...prune, ...extra }), ctx());
    expect((asked[0] as PostVmEvent).outcome).toEqual(outcome);
    expect(postHook.output.parse(out).hooks).toEqual({ decision: 'continue', reasons: [], warnings: [] });
  });

  it('an abort from a post-vm hook is only a warning, added to the job’s', async () => {
    answer = { decision: 'abort', reason: 'too late' };
    const out = postHook.output.parse(await postHook.handle(PostHookInput.parse({ ...prune, warnings: ['earlier'] }), ctx()));
    expect(out.hooks.decision).toBe('continue');
    expect(out.warnings).toEqual(['earlier', 'post-vm nats hook answered abort (too late): ignored, a post-vm hook cannot abort']);
  });
});

describe('run-start and run-end', () => {
  it('runStartHooks: continue returns the warnings; abort is the permanent error HOOK_ABORTED', async () => {
    expect(await runStartHooks({ runId: 'r1', startedAt: now.toISOString(), backupDir: '/b' }, ctx())).toEqual([]);
    expect(asked[0]).toEqual({ point: 'run-start', runId: 'r1', at: now.toISOString(), startedAt: now.toISOString(), backupDir: '/b' });
    answer = { decision: 'abort', reason: 'maintenance' };
    const error = await runStartHooks({ runId: 'r1', startedAt: now.toISOString(), backupDir: '/b' }, ctx()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PermanentError);
    expect(error).toMatchObject({ code: 'HOOK_ABORTED', message: 'the run was skipped: run-start nats hook: maintenance' });
  });

  it('run-end gives the hooks the summary', async () => {
    const summary: RunSummary = { runId: 'r1', status: 'success', exitCode: 0, startedAt: now.toISOString(), categories: {}, jobs: [], excludes: [], warnings: [], cleaned: [] };
    const out = runEnd.output.parse(await runEnd.handle({ runId: 'r1', jobId: 'run-end.1', try: 1, summary }, ctx()));
    expect(asked).toEqual([{ point: 'run-end', runId: 'r1', at: now.toISOString(), summary }]);
    expect(out).toEqual({ runId: 'r1', jobId: 'run-end.1', try: 1, hooks: { decision: 'continue', reasons: [], warnings: [] } });
  });
});
