import { readFileSync } from 'node:fs';
import { isFatalToCommand } from '../errors.js';

/** What a command talks to: injectable so tests can run commands in-process. */
export interface Io {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: Readonly<Record<string, string | undefined>>;
  home: string;
  cwd: string;
}

/** The package's version: its package.json is two folders up from the sources, three from dist/. */
export const VERSION: string = packageVersion();

function packageVersion(): string {
  for (const up of ['../../package.json', '../../../package.json']) {
    try {
      return (JSON.parse(readFileSync(new URL(up, import.meta.url), 'utf8')) as { name: string; version: string }).version;
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOENT') throw error;
    }
  }
  throw new Error('vmbackup: package.json not found beside the sources');
}

/**
 * The JSON outcome of a command that could not do its work (exit 2), for callers that asked
 * for `--json` and read stdout: `{runId?, status: 'fatal', exitCode: 2, error: {code, message}}`.
 */
export function writeFatalJson(io: Io, error: { code: string; message: string }, runId?: string): void {
  io.stdout.write(JSON.stringify({ ...(runId !== undefined ? { runId } : {}), status: 'fatal', exitCode: 2, error: { code: error.code, message: error.message } }) + '\n');
}

/** Prints a command-ending error (exit 2) or rethrows a bug. */
export function fail(io: Io, error: unknown): number {
  if (isFatalToCommand(error)) {
    // A ConfigError of several values lists them in its message already (configError).
    io.stderr.write(`vmbackup: ${error.message}\n`);
    return 2;
  }
  throw error;
}
