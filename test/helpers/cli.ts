import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSimulator } from '../sim/server.js';
import type { Simulator, SimulatorOptions } from '../sim/server.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const VMBACKUP = path.join(ROOT, 'bin', 'vmbackup.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `vmbackup` command in a child process, as cron would. */
export function vmbackup(args: readonly string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return collect(process.execPath, [VMBACKUP, ...args], { cwd: opts.cwd ?? ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: opts.env?.HOME ?? os.tmpdir(), ...opts.env } }, opts.timeoutMs);
}

/** Runs a program to its end and gathers what it printed (killed after `timeoutMs`). */
function collect(command: string, args: readonly string[], spawnOpts: { cwd: string; env: Record<string, string> }, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...spawnOpts, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Runs the real `vmbackup` command on a pseudo-terminal, as a person at a terminal would:
 * util-linux's `script` gives it a pty for stdout and stderr (both end up in `stdout` here,
 * escape sequences included); the exit code is the command's.
 */
export function vmbackupTty(args: readonly string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CliResult> {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const line = [process.execPath, VMBACKUP, ...args].map(quote).join(' ');
  return collect('script', ['-qfec', line, '/dev/null'], { cwd: ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: opts.env?.HOME ?? os.tmpdir(), TERM: 'xterm', ...opts.env } }, opts.timeoutMs);
}

/** A backup base directory (`-b`) with exports/ and a 0600 password file. */
export interface Workspace {
  base: string;
  exports: string;
  passwordFile: string;
  /** The flags that point vmbackup at a simulator and this workspace. */
  args(sim: Simulator): string[];
}

export async function workspace(password = 'secret'): Promise<Workspace> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'vmb-e2e-'));
  const exports = path.join(base, 'exports');
  await mkdir(exports);
  const passwordFile = path.join(base, 'password');
  await writeFile(passwordFile, password + '\n');
  await chmod(passwordFile, 0o600);
  return {
    base,
    exports,
    passwordFile,
    args: (sim) => ['-b', base, '--xapi', sim.url, '--user', sim.credentials.user, '--password-file', passwordFile, ...(sim.caFile !== undefined ? ['--tls-ca-file', sim.caFile] : [])],
  };
}

/** A simulator over HTTPS (as a pool is), closed by the caller. */
export function httpsSim(pool: SimulatorOptions['pool'], extra: Partial<SimulatorOptions> = {}): Promise<Simulator> {
  return startSimulator({ pool, https: true, ...extra });
}
