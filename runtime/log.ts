import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { format } from 'node:util';
import { pino } from 'pino';
import type { Logger, Level } from 'pino';
import type { LogLevel } from './config/schema.js';

export type { Logger } from 'pino';

/**
 * Secrets are redacted by configuration, not by care: any of these paths in any log record
 * is replaced before it is written, to the file and the console alike.
 */
export const REDACT_PATHS = [
  'password',
  '*.password',
  '*.*.password',
  'settings.password',
  'auth.password',
  'session_id',
  '*.session_id',
  'sessionId',
  '*.sessionId',
  'token',
  '*.token',
  '*.*.token',
  'secret',
  '*.secret',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  'err.config.auth',
];

/** VmBackup's levels mapped to pino's (`critical` has no pino twin: `fatal`). */
export function pinoLevel(level: LogLevel): Level {
  return level === 'warning' ? 'warn' : level === 'critical' ? 'fatal' : level;
}

export interface LogOptions {
  /** Level of what reaches the console (cron mail). */
  consoleLevel: LogLevel;
  /** Directory of the JSON log file `vmbackup.log` (debug and up); none when undefined. */
  dir?: string;
  /** Where progress lines go (default: stdout). */
  console?: NodeJS.WritableStream;
  /** Where warnings and errors go (default: stderr). */
  consoleErrors?: NodeJS.WritableStream;
  /** Plain JSON lines on the console instead of readable text (for log shippers). */
  consoleJson?: boolean;
  /**
   * Readable lines end with the run and VM they are about (`[run <runId>, vm <uuid>]`) when
   * the record is bound to them: a worker serves many runs, and two VMs may share a name.
   */
  consoleContext?: boolean;
  /** When the log file is rotated (at start-up); default DEFAULT_ROTATION. */
  rotate?: { maxBytes: number; keep: number };
}

/** `vmbackup.log` past 10 MiB at start-up becomes `vmbackup.log.1`; five old files are kept. */
export const DEFAULT_ROTATION = { maxBytes: 10 * 2 ** 20, keep: 5 } as const;

/**
 * Rotates `file` when it is larger than `maxBytes`: `file.N` → `file.N+1` (the oldest, N =
 * keep, is dropped), `file` → `file.1`. Done when a process opens the log, as VmBackup's
 * RotatingFileHandler did between records; a failure leaves the log as it is.
 */
export function rotateLog(file: string, opts: { maxBytes: number; keep: number }): void {
  try {
    if (statSync(file).size <= opts.maxBytes) return;
    rmSync(`${file}.${opts.keep}`, { force: true });
    for (let n = opts.keep - 1; n >= 1; n--) if (existsSync(`${file}.${n}`)) renameSync(`${file}.${n}`, `${file}.${n + 1}`);
    renameSync(file, `${file}.1`);
  } catch {
    // No file yet, or another process rotated it first: log on.
  }
}

/**
 * The process logger: JSON records to `<dir>/vmbackup.log` (everything from debug up), and
 * readable lines on the console from `consoleLevel` up. Handlers get children of it bound to
 * `{fn, subject, runId, jobId, vm}`.
 */
export function createLogger(opts: LogOptions): Logger {
  const streams: pino.StreamEntry[] = [];
  const consoleOut = opts.console ?? process.stdout;
  const consoleErr = opts.consoleErrors ?? process.stderr;
  streams.push({ level: pinoLevel(opts.consoleLevel), stream: opts.consoleJson === true ? consoleOut : consoleFormatter(consoleOut, consoleErr, opts.consoleContext === true) });
  if (opts.dir !== undefined) {
    mkdirSync(opts.dir, { recursive: true });
    const file = path.join(opts.dir, 'vmbackup.log');
    rotateLog(file, opts.rotate ?? DEFAULT_ROTATION);
    streams.push({ level: 'debug', stream: pino.destination({ dest: file, sync: true, mkdir: true }) });
  }
  return pino(
    {
      level: 'debug',
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.multistream(streams),
  );
}

/** A logger that drops everything (tests of pure paths, library use). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * Libraries that print with console.* (xen-api reports event-loop trouble with console.warn)
 * would write into cron mail; route them to the log at debug level instead. Returns a
 * function that puts the console back.
 */
export function captureConsole(log: Logger): () => void {
  const saved = { log: console.log, warn: console.warn, error: console.error, info: console.info, debug: console.debug };
  const sink = (...args: unknown[]) => log.debug({ console: true }, format(...args));
  console.log = console.warn = console.error = console.info = console.debug = sink;
  return () => Object.assign(console, saved);
}

const LEVEL_PREFIX: Record<string, string> = { warn: 'WARNING: ', error: 'ERROR: ', fatal: 'CRITICAL: ' };

/**
 * Console lines for people and cron mail: progress on stdout, warnings and errors on stderr,
 * prefixed by their severity.
 */
function consoleFormatter(out: NodeJS.WritableStream, err: NodeJS.WritableStream, context: boolean): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      try {
        const record = JSON.parse(chunk.toString('utf8')) as { level?: string; msg?: string; err?: { message?: string }; runId?: unknown; vmUuid?: unknown };
        const prefix = LEVEL_PREFIX[record.level ?? ''];
        const text = `${record.msg ?? ''}${context ? contextSuffix(record) : ''}`;
        if (prefix === undefined) out.write(`${text}\n`);
        else err.write(`${prefix}${text}\n`);
      } catch {
        out.write(chunk);
      }
      callback();
    },
  });
}

/** ` [run R, vm U]` for a record bound to a run (and a VM); empty otherwise. */
function contextSuffix(record: { runId?: unknown; vmUuid?: unknown }): string {
  const parts = [
    ...(typeof record.runId === 'string' ? [`run ${record.runId}`] : []),
    ...(typeof record.vmUuid === 'string' ? [`vm ${record.vmUuid}`] : []),
  ];
  return parts.length > 0 ? ` [${parts.join(', ')}]` : '';
}
