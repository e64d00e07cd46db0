/**
 * An XAPI error: a code and string parameters, as carried in `ErrorDescription` (XML-RPC),
 * `error.message`/`error.data` (JSON-RPC) and `task.error_info`.
 *
 * @example
 *   throw new ApiError('VM_BAD_POWER_STATE', [vmRef, 'halted, suspended', 'running']);
 */
export class ApiError extends Error {
  override name = 'ApiError';
  readonly code: string;
  readonly params: string[];

  constructor(code: string, params: readonly unknown[] = []) {
    const strings = params.map((p) => String(p));
    super(`${code}(${strings.join(', ')})`);
    this.code = code;
    this.params = strings;
  }

  /** `[code, ...params]`, XAPI's ErrorDescription. */
  get description(): string[] {
    return [this.code, ...this.params];
  }
}

/** Any thrown value as an XAPI error: unexpected ones become INTERNAL_ERROR, as in XAPI. */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  return new ApiError('INTERNAL_ERROR', [error instanceof Error ? error.message : String(error)]);
}
