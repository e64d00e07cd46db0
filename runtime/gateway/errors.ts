import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { ConfigError, ConnectionError, LockedError, RetryLaterError, UsageError, VmbackupError } from '../errors.js';

/**
 * The body of every error answer: a code for programs, a sentence for people, and for bad
 * input each problem as `path: message`.
 *
 * @example { "error": "BAD_REQUEST", "message": "max_backups: Invalid input: expected number, received string",
 *            "issues": [{ "path": "max_backups", "message": "Invalid input: expected number, received string" }] }
 */
export const ErrorBody = z
  .object({
    error: z.string(),
    message: z.string(),
    issues: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .meta({ description: 'An error answer.' });
export type ErrorBody = z.infer<typeof ErrorBody>;

/** An answer other than 2xx decided by the gateway itself (bad input, unknown id, conflict). */
export class HttpError extends VmbackupError {
  override name = 'HttpError';
  constructor(
    readonly status: ContentfulStatusCode,
    code: string,
    message: string,
    readonly issues?: { path: string; message: string }[],
    readonly headers?: Record<string, string>,
  ) {
    super(code, message);
  }
}

/**
 * The one mapping from errors to answers. Bad input is never a 500: the gateway's own
 * checks throw HttpError; errors of the runtime map by type. Anything else is a bug: a 500
 * that says nothing of it (the log has it).
 */
export function errorResponse(error: unknown): { status: ContentfulStatusCode; body: ErrorBody; headers: Record<string, string>; bug: boolean } {
  if (error instanceof HttpError) {
    return { status: error.status, body: { error: error.code, message: error.message, ...(error.issues !== undefined ? { issues: error.issues } : {}) }, headers: error.headers ?? {}, bug: false };
  }
  if (error instanceof HTTPException) {
    // Hono's own: malformed JSON from the validator (400), and the like.
    const status = error.status as ContentfulStatusCode;
    const code = status === 400 ? 'BAD_REQUEST' : status === 413 ? 'PAYLOAD_TOO_LARGE' : `HTTP_${status}`;
    return { status, body: { error: code, message: error.message || 'bad request' }, headers: {}, bug: status >= 500 };
  }
  if (error instanceof UsageError || error instanceof ConfigError) {
    return { status: 400, body: { error: error.code, message: error.message }, headers: {}, bug: false };
  }
  if (error instanceof LockedError) return { status: 409, body: { error: error.code, message: error.message }, headers: {}, bug: false };
  if (error instanceof RetryLaterError) {
    return { status: 503, body: { error: error.code, message: error.message }, headers: { 'Retry-After': String(Math.max(1, Math.ceil(error.delayMs / 1000))) }, bug: false };
  }
  if (error instanceof ConnectionError) return { status: 503, body: { error: error.code, message: error.message }, headers: { 'Retry-After': '10' }, bug: false };
  return { status: 500, body: { error: 'INTERNAL', message: 'internal error (see the gateway log)' }, headers: {}, bug: true };
}

/** Zod issues as `path: message` items; the root is `(body)`. */
export function zodIssues(issues: readonly z.core.$ZodIssue[], root = '(body)'): { path: string; message: string }[] {
  return issues.map((i) => ({ path: i.path.length > 0 ? i.path.map(String).join('.') : root, message: i.message }));
}

/** A 400 listing every problem of the input. */
export function badInput(issues: { path: string; message: string }[], what = 'invalid request body'): HttpError {
  const text = issues.map((i) => `${i.path}: ${i.message}`).join('; ');
  return new HttpError(400, 'BAD_REQUEST', `${what}: ${text}`, issues);
}
