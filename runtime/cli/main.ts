import os from 'node:os';
import { backupCommand } from './backup.js';
import type { Io } from './io.js';
import { fail } from './io.js';

/**
 * `vmbackup [COMMAND] [flags]`. Without a command it is VmBackup's command line (backup or
 * `--preview`), so cron lines written for VmBackup keep working. Each command's `--help`
 * text, and the command list of `vmbackup --help`, come from runtime/config/commands.ts
 * (a test checks that it describes exactly these commands).
 */
export const COMMANDS: Record<string, (argv: readonly string[], io: Io) => Promise<number>> = {
  backup: backupCommand,
  verify: async (argv, io) => (await import('./verify.js')).verifyCommand(argv, io),
  list: async (argv, io) => (await import('./list.js')).listCommand(argv, io),
  restore: async (argv, io) => (await import('./restore.js')).restoreCommand(argv, io),
  gateway: async (argv, io) => (await import('./gateway.js')).gatewayCommand(argv, io),
  worker: async (argv, io) => (await import('./worker.js')).workerCommand(argv, io),
  run: async (argv, io) => (await import('./run.js')).runCommand(argv, io),
  status: async (argv, io) => (await import('./status.js')).statusCommand(argv, io),
  invoke: async (argv, io) => (await import('./invoke.js')).invokeCommand(argv, io),
};

export async function main(argv: readonly string[], io: Io): Promise<number> {
  const [first, ...rest] = argv;
  if (first !== undefined && !first.startsWith('-')) {
    const command = COMMANDS[first];
    if (command === undefined) {
      io.stderr.write(`vmbackup: unknown command "${first}" (commands: ${Object.keys(COMMANDS).join(', ')}; see vmbackup --help)\n`);
      return 2;
    }
    return command(rest, io);
  }
  return backupCommand(argv, io);
}

/** The process entry (bin/vmbackup.js): runs `main` and exits with its code. */
export async function runCli(): Promise<void> {
  const io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env, home: os.homedir(), cwd: process.cwd() };
  // The reader went away (`vmbackup status | head -3`): the rest of the output is not wanted,
  // but a backup under way carries on (the log file has everything).
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
  let code: number;
  try {
    code = await main(process.argv.slice(2), io);
  } catch (error) {
    try {
      code = fail(io, error);
    } catch {
      process.stderr.write(`vmbackup: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      code = 1;
    }
  }
  // xen-api and undici may keep sockets alive a moment; the work is done and logged.
  if (process.stdout.destroyed) process.exit(code);
  process.stdout.write('', () => process.exit(code));
}
