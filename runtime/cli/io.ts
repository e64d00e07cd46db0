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

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Prints a command-ending error (exit 2) or rethrows a bug. */
export function fail(io: Io, error: unknown): number {
  if (isFatalToCommand(error)) {
    io.stderr.write(`vmbackup: ${error.message}\n`);
    const issues = (error.data as { issues?: { message: string }[] }).issues;
    if (Array.isArray(issues) && issues.length > 1) for (const i of issues) io.stderr.write(`  - ${i.message}\n`);
    return 2;
  }
  throw error;
}
