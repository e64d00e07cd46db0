import { z } from 'zod';

/** HTTP handlers a fault can target. */
/** (`nbd` is the NBD server: `reset`/`stall` after `after_bytes` of read data, `error` answers reads with EIO.) */
export const HTTP_HANDLERS = ['export', 'export_raw_vdi', 'export_metadata', 'import', 'import_raw_vdi', 'xmldbdump', 'host_backup', 'nbd'] as const;
export type HttpHandlerName = (typeof HTTP_HANDLERS)[number];

/**
 * What a fault does when it fires.
 *
 * - `error`: the RPC fails with this XAPI error; an HTTP handler fails its task with it and
 *   answers 500, as XAPI does when a handler raises before streaming.
 * - `task-failure`: an `Async.` call returns its task, which then fails with the error (a sync
 *   call just fails). On an HTTP handler the task fails with the error after the stream ends,
 *   or, with `after_bytes`, the connection is cut after that many bytes of body.
 * - `reset`: the connection is destroyed: an RPC gets no answer at all; a transfer is cut after
 *   `after_bytes` bytes of body (0: before any byte).
 * - `http-500`: answer `500 Internal Error` (RPC or handler), before anything else.
 * - `stall`: an RPC answers only after `ms` (forever when absent); a transfer stops sending
 *   after `after_bytes` bytes, for `ms` or forever.
 * - `slow`: a transfer sends at most `bytes_per_second`.
 * - `corrupt`: a transfer flips every bit of the byte at `at_byte` and goes on normally, the
 *   task succeeding: silent corruption on the way (bad RAM, a NIC), which only a check of
 *   the data finds.
 * - `sr-full`: VM.snapshot / VDI.snapshot fail with `SR_FULL [requested, maximum]`.
 * - `invalidate-sessions`: every session is dropped before the call is handled (so the call
 *   itself fails with SESSION_INVALID, or 401 for a handler) — a toolstack restart mid-run.
 */
export const FaultAction = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('error'), code: z.string().min(1), params: z.array(z.string()).default([]) }),
  z.strictObject({ kind: z.literal('task-failure'), code: z.string().min(1), params: z.array(z.string()).default([]), after_bytes: z.number().int().min(0).optional() }),
  z.strictObject({ kind: z.literal('reset'), after_bytes: z.number().int().min(0).default(0) }),
  z.strictObject({ kind: z.literal('http-500') }),
  z.strictObject({ kind: z.literal('stall'), ms: z.number().int().min(0).optional(), after_bytes: z.number().int().min(0).default(0) }),
  z.strictObject({ kind: z.literal('slow'), bytes_per_second: z.number().positive() }),
  z.strictObject({ kind: z.literal('corrupt'), at_byte: z.number().int().min(0) }),
  z.strictObject({ kind: z.literal('sr-full') }),
  z.strictObject({ kind: z.literal('invalidate-sessions') }),
]);
export type FaultAction = z.infer<typeof FaultAction>;

/**
 * A fault to inject. Target either an RPC method (`rpc: 'VM.snapshot'`, which also catches
 * `VM_snapshot` and `Async.VM.snapshot`; `'*'` for any) or an HTTP handler (`http: 'export'`),
 * optionally only for calls about a VM or VDI given by name_label or uuid (a snapshot matches
 * the VM or VDI it is a snapshot of; a disk matches the VMs of its VBDs, a VDI snapshot those
 * of the disk it was taken from). It fires `times` times (default 1) or, with `always`,
 * until removed.
 *
 * @example
 *   sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'reset', after_bytes: 65536 } });
 *   sim.faults.add({ rpc: 'VM.snapshot', times: 2, action: { kind: 'error', code: 'SR_BACKEND_FAILURE_44', params: ['', 'no space', ''] } });
 */
export const FaultSpec = z
  .strictObject({
    rpc: z.string().min(1).optional(),
    http: z.enum(HTTP_HANDLERS).optional(),
    vm: z.string().min(1).optional(),
    vdi: z.string().min(1).optional(),
    times: z.number().int().positive().default(1),
    always: z.boolean().default(false),
    action: FaultAction,
  })
  .refine((f) => (f.rpc === undefined) !== (f.http === undefined), { message: 'give exactly one of rpc or http', path: ['rpc'] });
export type FaultSpec = z.infer<typeof FaultSpec>;
export type FaultSpecInput = z.input<typeof FaultSpec>;

export interface Fault {
  readonly id: string;
  readonly spec: FaultSpec;
  /** Firings left (Infinity with `always`). */
  remaining: number;
  fired: number;
}

/** What a call or transfer is about, for the `vm` / `vdi` filters. */
export interface FaultSubject {
  vms: string[];
  vdis: string[];
}

export type SubjectMatcher = (subject: FaultSubject, spec: FaultSpec) => boolean;

/** Normalises `Async.VM.snapshot` / `VM_snapshot` to `VM.snapshot` for matching. */
export type MethodNormaliser = (method: string) => string;

/** The registry of armed faults. */
export class Faults {
  private readonly faults: Fault[] = [];
  private counter = 0;

  constructor(
    private readonly matchSubject: SubjectMatcher,
    private readonly normalise: MethodNormaliser,
  ) {}

  /** Arms a fault; returns its id. Throws a ZodError naming the bad key. */
  add(input: FaultSpecInput): string {
    const spec = FaultSpec.parse(input);
    this.counter += 1;
    const id = `fault-${this.counter}`;
    this.faults.push({ id, spec, remaining: spec.always ? Infinity : spec.times, fired: 0 });
    return id;
  }

  remove(id: string): boolean {
    const i = this.faults.findIndex((f) => f.id === id);
    if (i === -1) return false;
    this.faults.splice(i, 1);
    return true;
  }

  clear(): void {
    this.faults.length = 0;
  }

  list(): Fault[] {
    return this.faults.map((f) => ({ ...f }));
  }

  /** Total firings of faults still armed or already spent. */
  firedCount = 0;

  private take(pred: (f: Fault) => boolean): FaultAction | undefined {
    const fault = this.faults.find(pred);
    if (fault === undefined) return undefined;
    fault.fired += 1;
    fault.remaining -= 1;
    this.firedCount += 1;
    if (fault.remaining <= 0) this.remove(fault.id);
    return fault.spec.action;
  }

  /** The action of the first fault armed for this RPC, consuming one firing. */
  forRpc(method: string, subject: () => FaultSubject): FaultAction | undefined {
    const name = this.normalise(method);
    let cached: FaultSubject | undefined;
    const subj = () => (cached ??= subject());
    return this.take((f) => f.spec.rpc !== undefined && (f.spec.rpc === '*' || this.normalise(f.spec.rpc) === name) && this.matchSubject(subj(), f.spec));
  }

  /** The action of the first fault armed for this HTTP handler, consuming one firing. */
  forHttp(handler: HttpHandlerName, subject: FaultSubject): FaultAction | undefined {
    return this.take((f) => f.spec.http === handler && this.matchSubject(subject, f.spec));
  }
}
