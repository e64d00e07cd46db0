import { XmlRpcInt, type XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { CLASS_NAMES, classByLowerName, type ClassName } from './datamodel.js';
import { ApiError } from './errors.js';
import type { SimState } from './state.js';
import { wireRecord } from './wire.js';

/**
 * event.from and event.inject, after ocaml/xapi/xapi_event.ml:
 * - a token is `"%020d,%020d"` (database generation, message generation); `""` means 0, so the
 *   first call returns every object as an `add`;
 * - subscriptions are `*`, a class (case-insensitive) or `class/ref`;
 * - objects created after the token come as `add`, changed ones as `mod`, deleted ones as
 *   `del` (no snapshot); an object created and deleted in between is not reported;
 * - the call blocks until something matching changes, the timeout passes, or the session dies
 *   (SESSION_INVALID);
 * - `valid_ref_counts` counts the live objects of every class (an `<int>` in XML-RPC).
 * Events are not kept forever in XAPI either, but this simulator never answers EVENTS_LOST.
 */

type Subscription = { kind: 'all' } | { kind: 'class'; cls: string } | { kind: 'object'; cls: string; ref: string };

function parseSubscription(s: string): Subscription {
  if (s === '*') return { kind: 'all' };
  const slash = s.indexOf('/');
  if (slash === -1) return { kind: 'class', cls: s.toLowerCase() };
  return { kind: 'object', cls: s.slice(0, slash).toLowerCase(), ref: s.slice(slash + 1) };
}

function matches(subs: Subscription[], cls: ClassName, ref: string): boolean {
  const lc = cls.toLowerCase();
  return subs.some((s) => s.kind === 'all' || (s.kind === 'class' && s.cls === lc) || (s.kind === 'object' && s.cls === lc && s.ref === ref));
}

export function formatToken(generation: number): string {
  return `${String(generation).padStart(20, '0')},${'0'.padStart(20, '0')}`;
}

export function parseToken(token: string): number {
  if (token === '') return 0;
  const m = /^\s*(-?\d+)\s*,\s*(-?\d+)\s*$/.exec(token);
  if (m === null) throw new ApiError('EVENT_FROM_TOKEN_PARSE_FAILURE', [token]);
  return Number(m[1]);
}

interface Event {
  id: string;
  timestamp: string;
  class: string;
  operation: 'add' | 'mod' | 'del';
  ref: string;
  snapshot?: XmlRpcValue;
}

function collect(state: SimState, subs: Subscription[], from: number): Event[] {
  const { db } = state;
  const ts = (Date.now() / 1000).toFixed(6);
  const adds: [number, Event][] = [];
  const mods: [number, Event][] = [];
  const dels: [number, Event][] = [];
  for (const cls of CLASS_NAMES) {
    for (const row of db.all(cls)) {
      if (row.modified <= from || !matches(subs, cls, row.ref)) continue;
      const created = row.created > from;
      const generation = created ? row.created : row.modified;
      const event: Event = {
        id: String(generation),
        timestamp: ts,
        class: cls.toLowerCase(),
        operation: created ? 'add' : 'mod',
        ref: row.ref,
        snapshot: wireRecord(cls, db.record(cls, row.ref)),
      };
      (created ? adds : mods).push([generation, event]);
    }
  }
  for (const t of db.tombstonesSince(from)) {
    if (t.created > from || !matches(subs, t.cls, t.ref)) continue;
    dels.push([t.deleted, { id: String(t.deleted), timestamp: ts, class: t.cls.toLowerCase(), operation: 'del', ref: t.ref }]);
  }
  const byGeneration = (a: [number, Event], b: [number, Event]) => a[0] - b[0];
  return [...adds.sort(byGeneration), ...mods.sort(byGeneration), ...dels.sort(byGeneration)].map(([, e]) => e);
}

function validRefCounts(state: SimState): Record<string, XmlRpcInt> {
  const out: Record<string, XmlRpcInt> = {};
  for (const cls of CLASS_NAMES) out[cls.toLowerCase()] = new XmlRpcInt(state.db.count(cls));
  return out;
}

/** Resolves when the database changes or after `ms`; `cancel` detaches it early. */
function waitForChange(state: SimState, ms: number, closed: Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const off = state.db.onChange(() => done());
    const done = () => {
      off();
      if (timer !== undefined) clearTimeout(timer);
      resolve();
    };
    timer = setTimeout(done, Math.max(0, ms));
    void closed.then(done);
  });
}

export async function eventFrom(
  state: SimState,
  session: string,
  classes: string[],
  token: string,
  timeoutSeconds: number,
  closed: Promise<void>,
): Promise<{ events: Event[]; valid_ref_counts: Record<string, XmlRpcInt>; token: string }> {
  let from = parseToken(token);
  const subs = classes.map(parseSubscription);
  const deadline = Date.now() + Math.max(0, timeoutSeconds) * 1000;
  let isClosed = false;
  void closed.then(() => (isClosed = true));
  for (;;) {
    if (!state.db.has('session', session)) throw new ApiError('SESSION_INVALID', [session]);
    const events = collect(state, subs, from);
    const generation = state.db.generation;
    if (events.length > 0 || Date.now() >= deadline || isClosed) {
      return { events, valid_ref_counts: validRefCounts(state), token: formatToken(generation) };
    }
    from = generation;
    await waitForChange(state, deadline - Date.now(), closed);
  }
}

/** event.inject: marks the object changed and returns a token just before that change. */
export function eventInject(state: SimState, cls: string, ref: string): string {
  const className = classByLowerName(cls);
  if (className === undefined || !state.db.has(className, ref)) throw new ApiError('HANDLE_INVALID', [cls, ref]);
  const generation = state.db.touch(className, ref);
  return formatToken(generation - 1);
}
