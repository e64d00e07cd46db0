import { z } from 'zod';
import type { Bus, Closer } from '../../runtime/bus/bus.js';
import type { Logger } from '../../runtime/log.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import { RunOptions, selectOptions, selectableVms } from './plan.js';
import { selectVms } from './select.js';

/**
 * The selection check: what the plan would decide about a run's selection, asked before the
 * run is submitted, so that the gateway can refuse (422) a request whose entries match no VM
 * instead of starting a run that fails. Core NATS request/reply (not JetStream): the gateway
 * asks, a worker serving `plan` answers with its XAPI session. The plan still checks the same
 * thing itself; the check only lets a caller learn it at once.
 *
 * Subject `vmbackup.selection.check`; request: RunOptions; reply: SelectionCheckReply.
 */
export const SELECTION_CHECK_SUBJECT = 'vmbackup.selection.check';

const Issue = z.object({ entry: z.string(), list: z.string(), code: z.string(), message: z.string() });

/**
 * The answer: the selection's errors (the run would not start) and warnings, or `failed`
 * when the pool could not be asked (the plan then decides).
 *
 * @example { "errors": [{ "entry": "nope", "list": "vm_exports", "code": "no-match", "message": "entry \"nope\" matches no VM of the pool" }], "warnings": [] }
 */
export const SelectionCheckReply = z.union([z.object({ errors: z.array(Issue), warnings: z.array(Issue) }), z.object({ failed: z.string() })]);
export type SelectionCheckReply = z.infer<typeof SelectionCheckReply>;

/** The selection of `options` against the pool, as the plan makes it (no side effect). */
export async function checkSelection(options: RunOptions, xapi: XapiClient): Promise<SelectionCheckReply> {
  const selection = selectVms(selectableVms(await xapi.getAllRecords('VM')), selectOptions(options));
  const plain = (w: (typeof selection.errors)[number]) => ({ entry: w.entry, list: w.list, code: w.code, message: w.message });
  return { errors: selection.errors.map(plain), warnings: selection.warnings.map(plain) };
}

/**
 * Answers selection checks on `bus` (a worker serving `plan`). A request that is not
 * RunOptions, or a pool that cannot be asked, gets `{failed}`: the asker goes on and the
 * plan decides.
 *
 * @example closers.push(await answerSelectionChecks(nats.bus, { xapi: xapi.get, log }));
 */
export function answerSelectionChecks(bus: Bus, deps: { xapi: () => Promise<XapiClient>; log: Logger }): Promise<Closer> {
  return bus.reply(SELECTION_CHECK_SUBJECT, async (data): Promise<SelectionCheckReply> => {
    const options = RunOptions.safeParse(data);
    if (!options.success) return { failed: `not run options: ${options.error.issues[0]?.message ?? 'invalid'}` };
    try {
      return await checkSelection(options.data, await deps.xapi());
    } catch (error) {
      deps.log.warn({ err: error }, `selection check: ${(error as Error).message}`);
      return { failed: (error as Error).message };
    }
  });
}
