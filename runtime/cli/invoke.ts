import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { functionByName, functions } from '../../functions/index.js';
import { JOBS_STREAM } from '../../infra/nats/jetstream.js';
import { openNats } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { commandHelp, takePositionals } from '../config/args.js';
import { UsageError } from '../errors.js';
import { PhaseEvent, eventSubject, jobSubject } from '../events.js';
import type { PhaseDone, PhaseFailed } from '../events.js';
import { systemClock } from '../function.js';
import { describeUnconsumed, unconsumedWork } from '../run/consumers.js';
import { formatStamp } from '../storage/naming.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { seconds, takeExtras } from './run.js';
import type { Extras } from './run.js';
import { commandLogger, loadCommandSettings } from './settings.js';

/**
 * `vmbackup invoke NAME --input JSON` — one phase on its own: validates the input against
 * the function's schema (errors listed, exit 2), queues the job on NATS, waits for the
 * phase's `done` or `failed` event and prints it as JSON (exit 0 done, 1 failed). NAME may
 * stand anywhere among the options.
 * `--input @FILE` reads the JSON from a file. Without `runId` / `jobId` in the input, an
 * ad-hoc run id (`adhoc-<stamp>-<hex>`) and the job id `invoke.<NAME>` are used.
 * `--no-wait` only queues the job; `--timeout S` stops waiting (exit 2). Exit 2 too when the
 * phase ran but its outcome event repeated one published within the events' duplicate
 * window (2 h) for the same runId, jobId and try: the event was dropped.
 *
 * @example vmbackup invoke prune --nats nats://127.0.0.1:4222 --input '{"backupDir":"/mnt/VmBackup/exports","folder":"web1","maxBackups":2}'
 */
export async function invokeCommand(argv: readonly string[], io: Io): Promise<number> {
  let extras: Extras;
  let args: { positionals: string[]; options: string[] };
  try {
    extras = takeExtras(argv, { '--input': 'value', '--no-wait': 'switch', '--timeout': 'value' });
    args = takePositionals(extras.rest, { command: 'vmbackup invoke', takes: 'one NAME', max: 1 });
  } catch (error) {
    return fail(io, error);
  }
  const name = args.positionals[0];
  const raw = extras.values['--input'] as string | undefined;
  const wait = extras.values['--no-wait'] !== true;
  let timeoutS: number | undefined;
  const loaded = loadCommandSettings(args.options, io, {
    command: 'invoke',
    help: () => commandHelp('invoke', { version: VERSION, notes: [`Functions: ${functions.map((f) => f.name).join(', ')}.`] }),
    check: () => {
      timeoutS = seconds(extras.values['--timeout'], '--timeout');
    },
    warnings: false,
  });
  if (typeof loaded === 'number') return loaded;
  const { settings } = loaded;
  const known = functions.map((f) => f.name).join(', ');
  const fn = name !== undefined ? functionByName(name) : undefined;
  if (fn === undefined) {
    return fail(io, new UsageError(name === undefined ? `which function? vmbackup invoke NAME --input JSON (functions: ${known})` : `unknown function "${name}" (functions: ${known})`));
  }
  if (raw === undefined) return fail(io, new UsageError(`--input JSON is required: the ${fn.name} job's message (its schema: functions/${fn.name}/${fn.name}.ts)`));

  let input: unknown;
  try {
    const text = raw.startsWith('@') ? readFileSync(raw.slice(1), 'utf8') : raw;
    input = JSON.parse(text);
  } catch (error) {
    const code = (error as { code?: string }).code;
    return fail(io, new UsageError(code !== undefined ? `--input ${raw}: cannot read the file (${code})` : `--input is not JSON: ${(error as Error).message}`));
  }
  if (typeof input === 'object' && input !== null && !Array.isArray(input)) {
    const o = input as Record<string, unknown>;
    o.runId ??= `adhoc-${formatStamp(systemClock.now())}-${randomBytes(2).toString('hex')}`;
    o.jobId ??= `invoke.${fn.name}`;
  }
  const parsed = fn.subject.schema.safeParse(input);
  if (!parsed.success) {
    io.stderr.write(`vmbackup: invalid input for ${fn.name}:\n`);
    for (const issue of parsed.error.issues) io.stderr.write(`  - ${issue.path.join('.') || '(root)'}: ${issue.message}\n`);
    return 2;
  }
  const job = parsed.data as { runId: string; jobId: string; try?: number };
  const tryN = job.try ?? 1;

  const log = commandLogger(settings, io, { json: true, file: false });
  let nats: NatsRuntime | undefined;
  try {
    nats = await openNats(settings, log, { name: `vmbackup invoke ${fn.name}` });
    let settle!: (e: PhaseDone | PhaseFailed) => void;
    const outcome = new Promise<PhaseDone | PhaseFailed>((r) => (settle = r));
    if (wait) {
      await nats.bus.subscribe(eventSubject(job.runId, fn.name, '*'), {}, async (_s, data) => {
        const event = PhaseEvent.safeParse(data);
        if (!event.success || event.data.jobId !== job.jobId || event.data.try !== tryN) return;
        if (event.data.outcome === 'started') log.info(`${fn.name} started (attempt ${event.data.attempt})`);
        else settle(event.data);
      });
    }
    // Each invocation runs: a human asked again (its id never collides with the run's own).
    // Published here rather than through the bus: its stream sequence tells when it is done.
    const ack = await nats.nc
      .jetstream()
      .publish(jobSubject(fn.name), JSON.stringify(parsed.data), { msgID: `invoke:${job.runId}:${job.jobId}:${tryN}:${fn.name}:${randomBytes(6).toString('hex')}` });
    log.info(`${fn.name} queued: run ${job.runId}, job ${job.jobId}`);
    if (!wait) {
      io.stdout.write(JSON.stringify({ queued: jobSubject(fn.name), runId: job.runId, jobId: job.jobId, try: tryN }) + '\n');
      return 0;
    }
    // Nobody serving the function would leave this wait silent: say so once, and keep waiting
    // (a worker that starts later takes the job), as `vmbackup run` does.
    const noWorker = setTimeout(() => {
      void unconsumedWork(nats!.bus, [fn.name])
        .then((missing) => {
          const jobs = missing?.filter((m) => m.kind === 'jobs') ?? [];
          if (jobs.length > 0) log.warn(`${describeUnconsumed(jobs)}: the ${fn.name} job waits for it${timeoutS !== undefined ? ` (--timeout ${timeoutS})` : ''}`);
        })
        .catch(() => {});
    }, NO_WORKER_NOTICE_MS);
    noWorker.unref();
    const result = await Promise.race([
      outcome,
      settledWithoutEvent(nats, ack.seq),
      ...(timeoutS !== undefined ? [new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), timeoutS! * 1000).unref())] : []),
    ]);
    clearTimeout(noWorker);
    if (result === 'timeout') {
      io.stderr.write(`vmbackup: no outcome of ${fn.name} within ${timeoutS} s (is a worker serving ${fn.name}? the job stays queued)\n`);
      return 2;
    }
    if (result === 'silent') {
      io.stderr.write(
        `vmbackup: ${fn.name} ran, but its outcome event was dropped as a repeat: run ${job.runId}, job ${job.jobId}, try ${tryN} reported the same outcome within the last 2 hours (the events' duplicate window); see the worker's log, or use another runId\n`,
      );
      return 2;
    }
    io.stdout.write(JSON.stringify(result, null, 2) + '\n');
    if (result.outcome === 'failed') io.stderr.write(`vmbackup: ${fn.name} failed (${result.error.code}): ${result.error.message}\n`);
    return result.outcome === 'done' ? 0 : 1;
  } catch (error) {
    return fail(io, error);
  } finally {
    await nats?.close().catch(() => {});
    log.flush();
  }
}

/** How long a queued job may wait before invoke looks whether any worker serves it. */
const NO_WORKER_NOTICE_MS = 2_000;

/**
 * Resolves 'silent' when the job left the work queue (acked or terminated) and no outcome
 * event followed within a few seconds: the event was a duplicate of one already published.
 */
async function settledWithoutEvent(nats: NatsRuntime, seq: number): Promise<'silent'> {
  const jsm = await nats.nc.jetstreamManager();
  for (;;) {
    await new Promise((r) => setTimeout(r, 1_000).unref());
    const queued = await jsm.streams.getMessage(JOBS_STREAM, { seq }).then(
      () => true,
      (error: unknown) => !/no message found/i.test((error as Error).message),
    );
    if (!queued) break;
  }
  await new Promise((r) => setTimeout(r, 3_000).unref());
  return 'silent';
}
