import os from 'node:os';
import type { z } from 'zod';
import type { Logger } from 'pino';
import { PermanentError } from './errors.js';
import type { XapiClient } from './xapi/client.js';
import { noHooks } from './hooks/runner.js';
import type { HookRunner } from './hooks/runner.js';

/**
 * A subject and the schema of the messages on it, as one value: the publisher and the
 * handler import the same `Subject`, so a subject string never drifts from its schema.
 *
 * @example
 *   export const PruneJob = subject('vmbackup.jobs.prune', PruneInput);
 *   await bus.enqueue(PruneJob, { folder: '/backups/web1', maxBackups: 4, ... });
 */
export interface Subject<S extends z.ZodType = z.ZodType> {
  readonly name: string;
  readonly schema: S;
}

export function subject<S extends z.ZodType>(name: string, schema: S): Subject<S> {
  return Object.freeze({ name, schema });
}

/** The clock, injectable so tests can pin time. */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

/** Where this process runs: recorded in snapshot tags and locks to tell live work from leftovers. */
export interface Origin {
  hostname: string;
  pid: number;
}

/** This process, as its snapshots and locks name it. */
export function localOrigin(): Origin {
  return { hostname: os.hostname(), pid: process.pid };
}

/**
 * What a handler gets besides its input. Everything with a side effect comes through here;
 * handlers import no singletons and never read `process.env`.
 */
export interface Ctx {
  /** pino child logger bound to {fn, subject, runId, vm}. */
  log: Logger;
  /** A connected XAPI session of the pool; the runtime owns its lifetime (login/logout). */
  xapi(): Promise<XapiClient>;
  clock: Clock;
  origin: Origin;
  /** Aborted when the runtime shuts down or gives the job up; long I/O must honour it. */
  signal: AbortSignal;
  /** Tells the runtime the job is alive (JetStream in-progress ack). Cheap: call it often. */
  heartbeat(): void;
  /**
   * How far the phase is: `bytes` moved so far, of `total` when it can tell. Cheap: call it
   * as often as data moves; the runtime sends at most one progress signal a second
   * (runtime/events.ts, PhaseProgress), for the status page and the terminal.
   */
  progress(bytes: number, total?: number): void;
  /** 1 for the first delivery of this message, 2 for the first redelivery, … */
  attempt: number;
  /** The operator's hooks (runtime/hooks/): `noHooks` when none is configured. */
  hooks: HookRunner;
}

/** What `localCtx` needs; everything but the logger has a default. */
export interface LocalCtxOptions {
  log: Logger;
  /** The pool's session, or how to get one. Default: a handler that asks for XAPI fails (NO_XAPI). */
  xapi?: XapiClient | Ctx['xapi'];
  /** Default: never aborted. */
  signal?: AbortSignal;
  /** Default: `systemClock`. */
  clock?: Clock;
  /** Default: `noHooks`. */
  hooks?: HookRunner;
  /** Default: does nothing (no bus to tell). */
  heartbeat?: () => void;
  /** Default: does nothing (nobody watches). */
  progress?: (bytes: number, total?: number) => void;
}

/**
 * A `Ctx` for running a handler in this process, without a bus (the restore and verify
 * commands, tests, benchmarks): this process as origin, first attempt, no hooks.
 *
 * @example
 *   const out = await verify.handle(input, localCtx({ log, signal: abort.signal }));
 *   const snap = await snapshot.handle(input, localCtx({ log: silentLogger(), xapi }));
 */
export function localCtx(opts: LocalCtxOptions): Ctx {
  const { xapi } = opts;
  return {
    log: opts.log,
    xapi:
      typeof xapi === 'function'
        ? xapi
        : xapi !== undefined
          ? async () => xapi
          : async () => {
              throw new PermanentError('NO_XAPI', 'no XAPI session: this handler runs without a pool');
            },
    clock: opts.clock ?? systemClock,
    origin: localOrigin(),
    signal: opts.signal ?? new AbortController().signal,
    heartbeat: opts.heartbeat ?? (() => {}),
    progress: opts.progress ?? (() => {}),
    attempt: 1,
    hooks: opts.hooks ?? noHooks,
  };
}

/** Retry policy of a function's jobs when the handler throws a non-permanent error. */
export interface RetryPolicy {
  /** Total deliveries, first included. */
  maxDeliver: number;
  /** Delay before each redelivery, in ms; the last value repeats. */
  backoffMs: readonly number[];
}

/**
 * A function: one phase of a backup, stateless, triggered by a message on its subject.
 * `handle` receives input already validated against `subject.schema`; what it returns is
 * validated against `output` and published as the phase's `done` event.
 */
export interface FunctionDef<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> {
  readonly name: string;
  readonly description: string;
  readonly subject: Subject<I>;
  readonly output: O;
  readonly retry: RetryPolicy;
  /**
   * Whether the HTTP gateway may invoke it on its own (`POST /v1/functions/{name}`). False for
   * functions that act on paths of the worker's disk or create things in the pool on demand
   * (restore): those stay on the command line and on NATS, where access is the operator's.
   */
  readonly remote: boolean;
  handle(input: z.output<I>, ctx: Ctx): Promise<z.input<O>>;
}

export const defaultRetry: RetryPolicy = { maxDeliver: 3, backoffMs: [1_000, 5_000] };

/** Builds a function definition; the only place a phase's contract is written down. */
export function defineFunction<I extends z.ZodType, O extends z.ZodType>(def: {
  name: string;
  description: string;
  subject: Subject<I>;
  output: O;
  retry?: RetryPolicy;
  remote?: boolean;
  handle(input: z.output<I>, ctx: Ctx): Promise<z.input<O>>;
}): FunctionDef<I, O> {
  return Object.freeze({ ...def, retry: def.retry ?? defaultRetry, remote: def.remote ?? true });
}

/** The input type of a function's message. */
export type InputOf<F> = F extends FunctionDef<infer I, z.ZodType> ? z.output<I> : never;
/** The output type of a function. */
export type OutputOf<F> = F extends FunctionDef<z.ZodType, infer O> ? z.output<O> : never;
