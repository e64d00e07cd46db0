import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { ConfigError, ConnectionError, LockedError, RequestConflictError, RetryLaterError, UsageError, VmbackupError } from '../errors.js';

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

/** Seconds a client is asked to wait (`Retry-After`) when NATS is not reachable. */
export const UNAVAILABLE_RETRY_AFTER_S = 30;

/**
 * The answer while NATS (the bus, the run store, the trigger log) cannot be reached: 503
 * `UNAVAILABLE` with `Retry-After`, so that Alertmanager, cron's curl and other senders
 * retry.
 *
 * @example natsUnavailable('the connection is down') // 503 {"error":"UNAVAILABLE","message":"NATS is not reachable: the connection is down"}
 */
export function natsUnavailable(reason: string): HttpError {
  return new HttpError(503, 'UNAVAILABLE', `NATS is not reachable: ${reason}`, undefined, { 'Retry-After': String(UNAVAILABLE_RETRY_AFTER_S) });
}

/**
 * The nats.js error codes (`NatsError.code`, nats 2.x) that say NATS could not be reached
 * or did not answer, as opposed to a refusal (a permission, a wrong sequence, a bad
 * request): what they mean, in words.
 */
const UNREACHABLE_CODES: Readonly<Record<string, string>> = {
  TIMEOUT: 'no answer in time (TIMEOUT)',
  CONNECTION_CLOSED: 'the connection is closed (CONNECTION_CLOSED)',
  CONNECTION_DRAINING: 'the connection is closing (CONNECTION_DRAINING)',
  CONNECTION_REFUSED: 'connection refused (CONNECTION_REFUSED)',
  CONNECTION_TIMEOUT: 'the connection timed out (CONNECTION_TIMEOUT)',
  DISCONNECT: 'disconnected (DISCONNECT)',
  // No responders, JetStream not enabled, and JetStream API errors with status 503
  // ("JetStream system temporarily unavailable": a cluster without a leader).
  '503': 'JetStream is not available (503)',
  '408': 'JetStream request timeout (408)',
};

/**
 * Why `error` says NATS is unavailable, or undefined when it says something else. Looks at
 * the error, then along its `cause` / `chainedError` chain, for an error of nats.js (name
 * `NatsError`) with one of UNREACHABLE_CODES.
 *
 * @example unavailableReason(NatsError.errorForCode(ErrorCode.Timeout)) // 'no answer in time (TIMEOUT)'
 * @example unavailableReason(new Error('TIMEOUT'))                    // undefined: not from nats.js
 */
export function unavailableReason(error: unknown): string | undefined {
  for (let e = error, depth = 0; e !== null && typeof e === 'object' && depth < 8; depth++) {
    const n = e as { name?: unknown; code?: unknown; message?: unknown; api_error?: { code?: unknown; description?: unknown }; cause?: unknown; chainedError?: unknown };
    if (n.name === 'NatsError' && typeof n.code === 'string' && Object.hasOwn(UNREACHABLE_CODES, n.code)) {
      const api = n.api_error?.code === 503 && typeof n.api_error.description === 'string' ? n.api_error.description : undefined;
      return api !== undefined ? `JetStream: ${api} (503)` : UNREACHABLE_CODES[n.code];
    }
    e = n.cause ?? n.chainedError;
  }
  return undefined;
}

/**
 * The one mapping from errors to answers. Bad input is never a 500: the gateway's own
 * checks throw HttpError; errors of the runtime map by type; NATS that cannot be reached
 * (a timeout, a closed or lost connection, JetStream unavailable) is a 503 with
 * `Retry-After` (natsUnavailable). Anything else is a bug: a 500 that says nothing of it
 * (the log has it).
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
  // The same Idempotency-Key (or trigger id) with another request body (IETF httpapi
  // idempotency-key draft: 422).
  if (error instanceof RequestConflictError) return { status: 422, body: { error: 'IDEMPOTENCY_KEY_REUSED', message: error.message }, headers: {}, bug: false };
  if (error instanceof UsageError || error instanceof ConfigError) {
    return { status: 400, body: { error: error.code, message: error.message }, headers: {}, bug: false };
  }
  if (error instanceof LockedError) return { status: 409, body: { error: error.code, message: error.message }, headers: {}, bug: false };
  if (error instanceof RetryLaterError) {
    return { status: 503, body: { error: error.code, message: error.message }, headers: { 'Retry-After': String(Math.max(1, Math.ceil(error.delayMs / 1000))) }, bug: false };
  }
  if (error instanceof ConnectionError) return { status: 503, body: { error: error.code, message: error.message }, headers: { 'Retry-After': '10' }, bug: false };
  const reason = unavailableReason(error);
  if (reason !== undefined) return errorResponse(natsUnavailable(reason));
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
