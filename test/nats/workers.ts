import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import { ROOT, VMBACKUP } from '../helpers/cli.js';

/** A `vmbackup worker` child process, as an operator would start it. */
export interface WorkerProcess {
  child: ChildProcess;
  pid: number;
  /** Resolves once the worker logged that it serves its functions. */
  ready: Promise<void>;
  /** Resolves with the exit code (or the signal's name) once it is gone. */
  exited: Promise<number | string>;
  output(): string;
  /** Sends a signal; SIGKILL is a crash, SIGTERM a drain. */
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, then waits for the exit (SIGKILL after `ms`). */
  stop(ms?: number): Promise<number | string>;
}

/** Starts `node bin/vmbackup.js worker …args` with a clean environment. */
export function startWorker(args: readonly string[], opts: { env?: Record<string, string>; readyTimeoutMs?: number } = {}): WorkerProcess {
  const child = spawn(process.execPath, [VMBACKUP, 'worker', ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: os.tmpdir(), ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((resolve, reject) => {
    readyResolve = resolve;
    readyReject = reject;
  });
  const onData = (d: Buffer) => {
    out += d.toString();
    if (out.includes('worker ready:')) readyResolve();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => {
      readyReject(new Error(`worker exited (${code ?? signal}) before it was ready:\n${out}`));
      resolve(code ?? signal ?? -1);
    });
  });
  const timer = setTimeout(() => readyReject(new Error(`worker not ready in time:\n${out}`)), opts.readyTimeoutMs ?? 30_000);
  void ready.then(
    () => clearTimeout(timer),
    () => clearTimeout(timer),
  );
  return {
    child,
    pid: child.pid!,
    ready,
    exited,
    output: () => out,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    stop: async (ms = 30_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), ms);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

/**
 * The worker that has the partial file of `folder`'s XVA export open (Linux: /proc/<pid>/fd):
 * the one exporting that VM right now. Partials are `<folder>/<file>.xva.<writer tag>.partial`
 * (runtime/storage/writer.ts). The folder matters: another worker may be writing another VM's
 * XVA at the same moment, and killing it would not cut the export a test is after.
 */
export function xvaWriter(workers: readonly WorkerProcess[], folder: string): WorkerProcess | undefined {
  const partial = new RegExp(`/${folder.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/[^/]+\\.xva\\.(?:[^/]+\\.)?partial$`);
  return workers.find((w) => {
    try {
      return readdirSync(`/proc/${w.pid}/fd`).some((fd) => {
        try {
          return partial.test(readlinkSync(`/proc/${w.pid}/fd/${fd}`));
        } catch {
          return false;
        }
      });
    } catch {
      return false;
    }
  });
}
