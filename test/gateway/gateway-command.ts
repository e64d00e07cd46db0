import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import os from 'node:os';
import { ROOT, VMBACKUP } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';

/** `vmbackup gateway` running as a child process. */
export interface GatewayCommand {
  /** `http://127.0.0.1:<port>`, from its "listening on" line. */
  url: string;
  child: ChildProcess;
  /** What it printed so far, stdout and stderr. */
  output(): string;
  /** Its exit code, once it exits. */
  exited: Promise<number | null>;
}

/**
 * Starts `vmbackup gateway ARGS` with only PATH, HOME and `env` in its environment (as user
 * `as` when given, as a system service runs); resolves with its URL once it listens (kills it
 * and throws with its output if it does not).
 *
 * @example const gw = await startGatewayCommand(['--nats', url, '--listen', '127.0.0.1:0', '-b', dir], { VMBACKUP_GATEWAY_TOKENS_FILE: tokens });
 */
export async function startGatewayCommand(args: string[], env: Record<string, string>, as: { uid: number; gid: number } | undefined = undefined): Promise<GatewayCommand> {
  const child = spawn(process.execPath, [VMBACKUP, 'gateway', ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: os.tmpdir(), ...env }, stdio: ['ignore', 'pipe', 'pipe'], ...as });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = await waitFor(() => /listening on (http:\/\/\S+)/.exec(output)?.[1], 30_000, `the gateway to listen:\n${output}`).catch((error: Error) => {
    child.kill('SIGKILL');
    throw new Error(`${error.message}\n${output}`);
  });
  return { url, child, output: () => output, exited };
}
