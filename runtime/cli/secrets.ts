import { readFileSync } from 'node:fs';
import type { Settings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { parseTokens } from '../gateway/auth.js';

/**
 * Secret files as the gateway and the worker's metrics listener read them: bearer tokens
 * (one per line) and the webhook secret. Errors name the key and the file, never a secret.
 */

/** A secret file's text; a ConfigError naming the key and the file (never its content) when it cannot be read. */
export function readSecretFile(file: string, key: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as { code?: string }).code;
    const reason = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'permission denied' : (code ?? String(error));
    throw new ConfigError(`${key} ${file} cannot be read (${reason})`, { key, file });
  }
}

/** The bearer tokens of a tokens file (one per line). */
export function readTokensFile(file: string, key: string): string[] {
  return parseTokens(readSecretFile(file, key), file);
}

/** The tokens of metrics_tokens_file (none when unset); errors name the file, never a token. */
export function readMetricsTokens(settings: Settings): string[] {
  if (settings.metrics_tokens_file === undefined) return [];
  const tokens = readTokensFile(settings.metrics_tokens_file, 'metrics_tokens_file');
  if (tokens.length === 0) throw new ConfigError(`metrics_tokens_file ${settings.metrics_tokens_file} holds no token`, { key: 'metrics_tokens_file', file: settings.metrics_tokens_file });
  return tokens;
}
