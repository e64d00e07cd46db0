import { spawn } from 'node:child_process';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import type { Logger } from 'pino';
import { formatBytes } from '../units.js';
import { hookSubject } from './event.js';
import type { HookEvent } from './event.js';
import type { KindResult } from './kind.js';

/** Exit code by which a command hook says "abort" (skip the VM, or the run). */
export const ABORT_EXIT_CODE = 3;

/** Bytes of a command's stdout and of its stderr written to the log, each. */
export const OUTPUT_LIMIT = 16 * 1024;

export interface CommandOptions {
  timeoutMs: number;
  /** The environment the command starts from (vmbackup's own `VMBACKUP_*` are removed). */
  env: Readonly<Record<string, string | undefined>>;
  log: Logger;
  /** Shutdown: the command's process group is killed. */
  signal?: AbortSignal;
  /** Between SIGTERM and SIGKILL of a command past its timeout. */
  killGraceMs?: number;
}

/**
 * Runs a command hook: `argv` (no shell) in its own process group, the event as JSON on stdin,
 * the event's fields in `VMBACKUP_*` variables (hookEnv), stdout and stderr line by line to the
 * log (at most OUTPUT_LIMIT bytes each). Exit 0 = continue; exit 3 = abort, the last line of
 * stdout being the reason; any other exit = failed. Past `timeoutMs` the whole process group
 * gets SIGTERM, then SIGKILL: `timeout`.
 *
 * @example
 *   await runCommand(['/usr/local/bin/quiesce', '--db', 'sales'], event, { timeoutMs: 60_000, env: process.env, log })
 *   // → { kind: 'command', outcome: 'abort', reason: 'replica is 300 s behind' }
 */
export function runCommand(argv: readonly string[], event: HookEvent, opts: CommandOptions): Promise<KindResult> {
  const [program, ...args] = argv;
  const name = path.basename(program ?? '');
  const who = hookSubject(event);
  const result = (outcome: KindResult['outcome'], reason: string): KindResult => ({ kind: 'command', outcome, reason });
  if (program === undefined) return Promise.resolve(result('failed', 'no command'));
  if (opts.signal?.aborted === true) return Promise.resolve(result('failed', 'interrupted by shutdown'));

  return new Promise((resolve) => {
    const child = spawn(program, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: hookEnv(event, opts.env) });
    const stdout = new OutputLines((line) => opts.log.info({ hook: 'command', point: event.point, stream: 'stdout' }, `${who}: ${event.point} hook ${name}: ${line}`));
    const stderr = new OutputLines((line) => opts.log.info({ hook: 'command', point: event.point, stream: 'stderr' }, `${who}: ${event.point} hook ${name} (stderr): ${line}`));
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    // A command that does not read its stdin closes it early: not an error.
    child.stdin.on('error', () => {});
    child.stdin.end(JSON.stringify(event) + '\n');

    let ended: 'timeout' | 'shutdown' | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (signal: NodeJS.Signals) => {
      try {
        // The negative pid is the process group: the command and whatever it started.
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch {
        // Already gone.
      }
    };
    const stop = (why: 'timeout' | 'shutdown') => {
      if (ended !== undefined) return;
      ended = why;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), opts.killGraceMs ?? 2_000);
    };
    const timer = setTimeout(() => stop('timeout'), opts.timeoutMs);
    const onAbort = () => stop('shutdown');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
    };

    child.on('error', (error: NodeJS.ErrnoException) => {
      cleanup();
      resolve(result('failed', `cannot run ${program}: ${error.code ?? error.message}`));
    });
    child.on('exit', (code, signal) => {
      cleanup();
      // A process the command left running may hold its stdout: read what is there, not more.
      const closed = new Promise<void>((r) => child.on('close', () => r()));
      void Promise.race([closed, new Promise((r) => setTimeout(r, 200))]).then(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        stdout.end();
        stderr.end();
        if (ended === 'timeout') return resolve(result('timeout', `${name} did not finish within ${opts.timeoutMs / 1000} s: killed`));
        if (ended === 'shutdown') return resolve(result('failed', 'interrupted by shutdown'));
        if (code === 0) return resolve(result('continue', ''));
        if (code === ABORT_EXIT_CODE) return resolve(result('abort', stdout.last || `${name} exited with ${ABORT_EXIT_CODE}`));
        const how = code !== null ? `exited with ${code}` : `was killed by ${signal ?? 'a signal'}`;
        resolve(result('failed', `${name} ${how}${stderr.last !== '' ? `: ${stderr.last}` : ''}`));
      });
    });
  });
}

/**
 * The environment of a command hook: the process's own, without vmbackup's `VMBACKUP_*`
 * settings (the password may be one), plus the event's fields:
 *
 *   every point  VMBACKUP_POINT (pre-vm …), VMBACKUP_PHASE (pre | post), VMBACKUP_RUN_ID
 *   pre/post-vm  VMBACKUP_VM_NAME, VMBACKUP_VM_UUID, VMBACKUP_JOB_ID, VMBACKUP_TRY,
 *                VMBACKUP_BACKUP_DIR, VMBACKUP_FOLDER, VMBACKUP_VM_DIR, VMBACKUP_MODE, VMBACKUP_STAMP
 *   post-vm      VMBACKUP_STATUS (success | failed | skipped), VMBACKUP_FILES (paths, space-separated),
 *                VMBACKUP_BYTES, VMBACKUP_WARNINGS (count), VMBACKUP_FAILED_PHASE, VMBACKUP_ERROR_CODE,
 *                VMBACKUP_ERROR, VMBACKUP_RETRYING (1 when the VM is backed up again), VMBACKUP_SKIP_REASON
 *   run-start    VMBACKUP_BACKUP_DIR, VMBACKUP_STARTED_AT
 *   run-end      VMBACKUP_STATUS (success | warning | error | fatal), VMBACKUP_EXIT_CODE, VMBACKUP_BACKUP_DIR,
 *                VMBACKUP_SUCCEEDED, VMBACKUP_FAILED, VMBACKUP_SKIPPED (jobs)
 */
export function hookEnv(event: HookEvent, base: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(base)) {
    if (value !== undefined && !key.startsWith('VMBACKUP_')) env[key] = value;
  }
  const set = (key: string, value: string | number | undefined) => {
    if (value !== undefined) env[`VMBACKUP_${key}`] = String(value);
  };
  set('POINT', event.point);
  set('PHASE', event.point === 'pre-vm' || event.point === 'run-start' ? 'pre' : 'post');
  set('RUN_ID', event.runId);
  switch (event.point) {
    case 'pre-vm':
    case 'post-vm':
      set('VM_NAME', event.vm.name);
      set('VM_UUID', event.vm.uuid);
      set('JOB_ID', event.jobId);
      set('TRY', event.try);
      set('BACKUP_DIR', event.backupDir);
      set('FOLDER', event.folder);
      set('VM_DIR', path.join(event.backupDir, event.folder));
      set('MODE', event.mode);
      set('STAMP', event.stamp);
      if (event.point === 'post-vm') {
        const o = event.outcome;
        set('STATUS', o.status);
        set('FILES', o.files.map((f) => f.path).join(' '));
        set('BYTES', o.bytes);
        set('WARNINGS', o.warnings.length);
        set('FAILED_PHASE', o.error?.phase);
        set('ERROR_CODE', o.error?.code);
        set('ERROR', o.error?.message);
        set('RETRYING', o.retrying === undefined ? undefined : o.retrying ? 1 : 0);
        set('SKIP_REASON', o.reason);
      }
      break;
    case 'run-start':
      set('BACKUP_DIR', event.backupDir);
      set('STARTED_AT', event.startedAt);
      break;
    case 'run-end': {
      const s = event.summary;
      set('STATUS', s.status);
      set('EXIT_CODE', s.exitCode);
      set('BACKUP_DIR', s.backupDir);
      set('SUCCEEDED', s.jobs.filter((j) => j.status === 'success' || j.status === 'warning').length);
      set('FAILED', s.jobs.filter((j) => j.status === 'error').length);
      set('SKIPPED', s.jobs.filter((j) => j.status === 'skipped').length);
      break;
    }
  }
  return env;
}

/** A stream cut into lines for the log, at most OUTPUT_LIMIT bytes; remembers the last line. */
class OutputLines {
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';
  private logged = 0;
  private truncated = false;
  /** The last non-blank line, trimmed, at most 500 characters. */
  last = '';

  constructor(private readonly emit: (line: string) => void) {}

  push(chunk: Buffer): void {
    const lines = (this.partial + this.decoder.write(chunk)).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.line(line);
    if (this.partial.length > OUTPUT_LIMIT) {
      this.line(this.partial);
      this.partial = '';
    }
  }

  end(): void {
    const rest = this.partial + this.decoder.end();
    this.partial = '';
    if (rest !== '') this.line(rest);
  }

  private line(raw: string): void {
    const line = raw.replace(/\r$/, '');
    if (line.trim() !== '') this.last = line.trim().slice(0, 500);
    if (this.truncated) return;
    if (this.logged + line.length > OUTPUT_LIMIT) {
      this.truncated = true;
      this.emit(`… (more output not logged: over ${formatBytes(OUTPUT_LIMIT)})`);
      return;
    }
    this.logged += line.length + 1;
    this.emit(line);
  }
}
