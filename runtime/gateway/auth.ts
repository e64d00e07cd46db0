import { createHash, timingSafeEqual } from 'node:crypto';
import { ConfigError } from '../errors.js';
import { HttpError } from './errors.js';

/** Shortest token accepted from a tokens file: a bearer token is a password. */
export const MIN_TOKEN_LENGTH = 16;

/**
 * Reads a tokens file: one token per line; blank lines and lines starting with `#` are
 * skipped, surrounding whitespace is trimmed. Throws a ConfigError naming the file and the
 * line (never the token) when a token is too short or has characters a bearer token cannot
 * carry.
 *
 * @example parseTokens('# ops\nq1w2e3r4t5y6u7i8o9p0\n', '/etc/vmbackup/tokens') // ['q1w2e3r4t5y6u7i8o9p0']
 */
export function parseTokens(text: string, file: string): string[] {
  const tokens: string[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    if (!TOKEN68.test(line)) {
      throw new ConfigError(`${file} line ${i + 1}: a token may only hold letters, digits and -._~+/= (no spaces)`, { key: 'gateway_tokens_file', file, line: i + 1 });
    }
    if (line.length < MIN_TOKEN_LENGTH) {
      throw new ConfigError(`${file} line ${i + 1}: token too short (${line.length} characters, at least ${MIN_TOKEN_LENGTH}; e.g. openssl rand -hex 32)`, { key: 'gateway_tokens_file', file, line: i + 1 });
    }
    if (!tokens.includes(line)) tokens.push(line);
  });
  return tokens;
}

/** RFC 6750 `b64token`. */
const TOKEN68 = /^[A-Za-z0-9\-._~+/]+=*$/;

export type BearerCheck = { ok: true } | { ok: false; status: 401 | 403; error: 'missing' | 'malformed' | 'invalid'; message: string };

/**
 * Checks an `Authorization` header against the accepted tokens. Every token is compared, in
 * constant time over fixed-length digests, so neither the answer's timing nor its content
 * says which token, or how much of one, was right.
 *
 *   no header           → 401 missing
 *   not `Bearer <token>` → 401 malformed
 *   unknown token        → 403 invalid
 *
 * @example checkBearer(c.req.header('Authorization'), tokens)
 */
export function checkBearer(header: string | undefined, tokens: readonly Buffer[]): BearerCheck {
  if (header === undefined || header.trim() === '') {
    return { ok: false, status: 401, error: 'missing', message: 'authentication required: send Authorization: Bearer <token>' };
  }
  const m = /^Bearer +(\S+) *$/i.exec(header);
  if (!m || !TOKEN68.test(m[1]!)) {
    return { ok: false, status: 401, error: 'malformed', message: 'malformed Authorization header: expected Bearer <token>' };
  }
  const given = digest(m[1]!);
  let match = false;
  for (const token of tokens) match = timingSafeEqual(given, token) || match;
  return match ? { ok: true } : { ok: false, status: 403, error: 'invalid', message: 'the bearer token is not accepted' };
}

/** The form tokens are kept in for {@link checkBearer}. */
export function tokenDigests(tokens: readonly string[]): Buffer[] {
  return tokens.map(digest);
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The answer to a refused request (the API, the metrics): 401 with a challenge, or 403. */
export function refusal(check: Exclude<BearerCheck, { ok: true }>): HttpError {
  const challenge = check.status === 401 ? (check.error === 'malformed' ? 'Bearer realm="vmbackup", error="invalid_request"' : 'Bearer realm="vmbackup"') : undefined;
  return new HttpError(check.status, check.status === 401 ? 'UNAUTHORIZED' : 'FORBIDDEN', check.message, undefined, challenge !== undefined ? { 'WWW-Authenticate': challenge } : undefined);
}
