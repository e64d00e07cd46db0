import { z } from 'zod';

/**
 * Typed errors. A handler throws; only the runtime decides what the error means for delivery:
 *
 *   PermanentError   → the job is terminated at once (JetStream `term`), reported as failed.
 *   RetryLaterError  → the job is retried after `delayMs` (JetStream `nak(delay)`).
 *   any other error  → the job is retried with the function's backoff, up to its limit.
 *
 * Errors that end the command itself (usage, config, connection) carry the exit code the
 * CLI uses: 2 for all of them, as the README documents.
 *
 * @example
 *   throw new PermanentError('VM_GONE', `VM ${uuid} no longer exists`, { vm: uuid });
 */
export class VmbackupError extends Error {
  override name = 'VmbackupError';
  readonly code: string;
  readonly data: Record<string, unknown>;

  constructor(code: string, message: string, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.data = data;
  }
}

/** A failure that another attempt cannot fix: bad input, a VM that is gone, a full disk. */
export class PermanentError extends VmbackupError {
  override name = 'PermanentError';
}

/**
 * The message is spent — e.g. the export's snapshot was destroyed after a broken transfer —
 * so redelivering it is pointless; but backing the VM up again from a new snapshot may work.
 * Terminated like a PermanentError; the run's coordinator may restart the VM's pipeline.
 */
export class RestartError extends PermanentError {
  override name = 'RestartError';
}

/** The code of a job stopped with its run (StoppedError). */
export const STOPPED = 'STOPPED';

/**
 * The run was stopped (SIGTERM or SIGINT to the embedded run): the phase was aborted, or not
 * started. Final: neither redelivered nor backed up again in this run.
 */
export class StoppedError extends PermanentError {
  override name = 'StoppedError';
  constructor(message: string, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(STOPPED, message, data, options);
  }
}

/** A failure that is expected to clear: the pool is busy, too many tasks, a lock is held. */
export class RetryLaterError extends VmbackupError {
  override name = 'RetryLaterError';
  readonly delayMs: number;

  constructor(code: string, message: string, delayMs: number, data: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(code, message, data, options);
    this.delayMs = delayMs;
  }
}

/** The command line was wrong. Exit code 2. */
export class UsageError extends VmbackupError {
  override name = 'UsageError';
  constructor(message: string, data: Record<string, unknown> = {}) {
    super('USAGE', message, data);
  }
}

/** A configuration value is invalid: names the key, the file and the reason. Exit code 2. */
export class ConfigError extends VmbackupError {
  override name = 'ConfigError';
  constructor(message: string, data: { key?: string; file?: string; reason?: string; detail?: string; [more: string]: unknown } = {}) {
    super('CONFIG', message, data);
  }
}

/** The pool could not be reached or refused us (credentials, TLS, DNS). Exit code 2. */
export class ConnectionError extends VmbackupError {
  override name = 'ConnectionError';
}

/** Another run holds the lock on the backup directory. Exit code 2. */
export class LockedError extends VmbackupError {
  override name = 'LockedError';
}

/**
 * A run id (an Idempotency-Key, a trigger id) already names a run asked for with other
 * options: repeating a request may not change it. The gateway answers 422; a command exits 2.
 */
export class RequestConflictError extends UsageError {
  override name = 'RequestConflictError';
}

/** Errors that stop the command before any backup is attempted (exit code 2). */
export function isFatalToCommand(error: unknown): error is VmbackupError {
  return error instanceof UsageError || error instanceof ConfigError || error instanceof ConnectionError || error instanceof LockedError;
}

/** A plain, serialisable description of an error, as carried in failure events. */
export const ErrorInfoSchema = z.object({
  name: z.string(),
  code: z.string(),
  message: z.string(),
  permanent: z.boolean(),
  retryable: z.boolean(),
  data: z.record(z.string(), z.unknown()).optional(),
});

export interface ErrorInfo {
  name: string;
  code: string;
  message: string;
  /** The message must not be redelivered. */
  permanent: boolean;
  /** Doing the job again from its start may succeed. */
  retryable: boolean;
  data?: Record<string, unknown>;
}

export function errorInfo(error: unknown): ErrorInfo {
  if (error instanceof VmbackupError) {
    return {
      name: error.name,
      code: error.code,
      message: error.message,
      permanent: error instanceof PermanentError,
      retryable: !(error instanceof PermanentError) || error instanceof RestartError,
      ...(Object.keys(error.data).length > 0 ? { data: error.data } : {}),
    };
  }
  if (error instanceof Error) {
    const raw = (error as { code?: unknown }).code;
    const code = typeof raw === 'string' ? raw : 'INTERNAL';
    return { name: error.name, code, message: error.message, permanent: false, retryable: true };
  }
  return { name: 'Error', code: 'INTERNAL', message: String(error), permanent: false, retryable: true };
}
