import os from 'node:os';
import { firstPositional, helpText } from '../config/args.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { loadCommandSettings } from './settings.js';

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
  // The command may follow options (`vmbackup -b DIR verify`): the first word that is no
  // option's value names it. Options before it are the command's, as if written after it.
  const at = firstPositional(argv);
  if (at !== -1) {
    const word = argv[at]!;
    const command = COMMANDS[word];
    if (command !== undefined) return command([...argv.slice(0, at), ...argv.slice(at + 1)], io);
    if (at === 0) {
      io.stderr.write(`vmbackup: unknown command "${word}" (commands: ${Object.keys(COMMANDS).join(', ')}; see vmbackup --help)\n`);
      return 2;
    }
    // Which word was taken for what: a word after a switch is not that switch's value.
    const before = argv[at - 1]!;
    const taken = before.startsWith('-') && before !== '-' ? ` (${before} takes no value)` : '';
    io.stderr.write(
      `vmbackup: "${word}" is not a command (${Object.keys(COMMANDS).join(', ')})${taken}; without a command, vmbackup takes options only (quote a VM name with spaces: -e "DEV MYSQL"; see vmbackup --help)\n`,
    );
    return 2;
  }
  return backupCommand(argv, io);
}

/**
 * The backup command, loaded when it runs. `--help` and `--version` are answered from the
 * settings alone (as the backup command would answer them), without loading the XAPI client
 * and the functions: they answer at once.
 */
async function backupCommand(argv: readonly string[], io: Io): Promise<number> {
  if (argv.some((a) => /^-[^-]*[hv]|^--(help|version)$/.test(a))) {
    const loaded = loadCommandSettings(argv, io, { help: () => helpText({ prog: 'vmbackup', version: VERSION }) + '\n', warnings: false });
    if (typeof loaded === 'number') return loaded;
  }
  return (await import('./backup.js')).backupCommand(argv, io);
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
