import { CLASS_NAMES, DATAMODEL, defaultOf, type ClassName } from './datamodel.js';
import { ApiError } from './errors.js';
import { NULL_REF } from './ids.js';

export interface Row {
  readonly cls: ClassName;
  readonly ref: string;
  /** Stored fields (reverse relations are computed, not stored). */
  readonly fields: Record<string, unknown>;
  /** Database generation at creation and at the last change (XAPI's ctime/mtime). */
  created: number;
  modified: number;
}

export interface Tombstone {
  readonly cls: ClassName;
  readonly ref: string;
  readonly created: number;
  readonly deleted: number;
}

/** Fields computed at read time from the whole database (e.g. VM.allowed_operations). */
export type Computer = (db: Database, row: Row) => Record<string, unknown>;

function clone<T>(value: T): T {
  if (value instanceof Date) return new Date(value.getTime()) as T;
  if (Array.isArray(value)) return value.map(clone) as T;
  if (value !== null && typeof value === 'object' && !Buffer.isBuffer(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = clone(v);
    return out as T;
  }
  return value;
}

/**
 * The simulator's database: tables of rows keyed by opaque reference, with XAPI's generation
 * counter. Every write bumps the generation and stamps the rows it changes, which is what
 * `event.from` reads; writes to a reference field also stamp the rows on both ends, since the
 * reverse set (`VM.VBDs`, `SR.VDIs`…) changed there too.
 *
 * @example
 *   db.create('VM', ref, { uuid, name_label: 'web1' });
 *   db.update('VM', ref, { power_state: 'Running' });
 *   db.record('VM', ref).VBDs   // computed from the VBD table
 */
export class Database {
  generation = 0;
  /** Writes to the pool's objects: creates, updates, destroys of anything but sessions and tasks. */
  mutations = 0;
  private readonly tables = new Map<ClassName, Map<string, Row>>(CLASS_NAMES.map((c) => [c, new Map()]));
  private readonly tombstones: Tombstone[] = [];
  private readonly listeners = new Set<() => void>();
  private reverseIndex: { generation: number; index: Map<string, Map<string, string[]>> } | undefined;
  private computer: Computer | undefined;
  private notifyScheduled = false;

  setComputer(computer: Computer): void {
    this.computer = computer;
  }

  /** Called (asynchronously, coalesced) after any change. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private bump(): number {
    this.generation += 1;
    this.reverseIndex = undefined;
    if (!this.notifyScheduled) {
      this.notifyScheduled = true;
      queueMicrotask(() => {
        this.notifyScheduled = false;
        for (const l of [...this.listeners]) l();
      });
    }
    return this.generation;
  }

  private table(cls: ClassName): Map<string, Row> {
    return this.tables.get(cls)!;
  }

  get(cls: ClassName, ref: string): Row | undefined {
    return this.table(cls).get(ref);
  }

  /** The row, or XAPI's `HANDLE_INVALID [class, ref]`. */
  require(cls: ClassName, ref: string): Row {
    const row = typeof ref === 'string' ? this.table(cls).get(ref) : undefined;
    if (row === undefined) throw new ApiError('HANDLE_INVALID', [cls, ref]);
    return row;
  }

  has(cls: ClassName, ref: string): boolean {
    return this.table(cls).has(ref);
  }

  /** Which class a reference belongs to, if any. */
  classOf(ref: string): ClassName | undefined {
    return CLASS_NAMES.find((c) => this.table(c).has(ref));
  }

  all(cls: ClassName): Row[] {
    return [...this.table(cls).values()];
  }

  count(cls: ClassName): number {
    return this.table(cls).size;
  }

  byUuid(cls: ClassName, uuid: string): Row | undefined {
    for (const row of this.table(cls).values()) if (row.fields.uuid === uuid) return row;
    return undefined;
  }

  /** Value of a stored field (a copy). */
  field<T = unknown>(cls: ClassName, ref: string, field: string): T {
    return clone(this.require(cls, ref).fields[field]) as T;
  }

  private touchTargets(cls: ClassName, fields: Record<string, unknown>, generation: number): void {
    for (const [name, def] of Object.entries(DATAMODEL[cls].fields)) {
      if (def.type !== 'ref' || def.target === undefined) continue;
      const target = fields[name];
      if (typeof target !== 'string' || target === NULL_REF) continue;
      const row = this.table(def.target).get(target);
      if (row !== undefined) row.modified = generation;
    }
  }

  create(cls: ClassName, ref: string, fields: Record<string, unknown>): Row {
    if (this.table(cls).has(ref)) throw new Error(`duplicate ${cls} ${ref}`);
    const stored: Record<string, unknown> = {};
    for (const [name, def] of Object.entries(DATAMODEL[cls].fields)) {
      if (def.reverse !== undefined) continue;
      stored[name] = name in fields ? clone(fields[name]) : defaultOf(def);
    }
    for (const name of Object.keys(fields)) {
      if (!(name in DATAMODEL[cls].fields)) throw new Error(`${cls} has no field ${name}`);
    }
    const generation = this.bump();
    if (cls !== 'session' && cls !== 'task') this.mutations += 1;
    const row: Row = { cls, ref, fields: stored, created: generation, modified: generation };
    this.table(cls).set(ref, row);
    this.touchTargets(cls, stored, generation);
    return row;
  }

  update(cls: ClassName, ref: string, patch: Record<string, unknown>): Row {
    const row = this.require(cls, ref);
    const generation = this.bump();
    if (cls !== 'session' && cls !== 'task') this.mutations += 1;
    const defs = DATAMODEL[cls].fields;
    for (const [name, value] of Object.entries(patch)) {
      const def = defs[name];
      if (def === undefined || def.reverse !== undefined) throw new Error(`${cls}.${name} is not a stored field`);
      if (def.type === 'ref') this.touchTargets(cls, { [name]: row.fields[name] }, generation);
      row.fields[name] = clone(value);
      if (def.type === 'ref') this.touchTargets(cls, { [name]: value }, generation);
    }
    row.modified = generation;
    return row;
  }

  /** Marks a row changed without changing it (event.inject). */
  touch(cls: ClassName, ref: string): number {
    const row = this.require(cls, ref);
    const generation = this.bump();
    row.modified = generation;
    return generation;
  }

  destroy(cls: ClassName, ref: string): void {
    const row = this.require(cls, ref);
    const generation = this.bump();
    if (cls !== 'session' && cls !== 'task') this.mutations += 1;
    this.table(cls).delete(ref);
    this.tombstones.push({ cls, ref, created: row.created, deleted: generation });
    this.touchTargets(cls, row.fields, generation);
  }

  tombstonesSince(generation: number): Tombstone[] {
    const out: Tombstone[] = [];
    for (let i = this.tombstones.length - 1; i >= 0; i--) {
      const t = this.tombstones[i]!;
      if (t.deleted <= generation) break;
      out.push(t);
    }
    return out.reverse();
  }

  /** Refs of `cls` rows whose `field` is `target`, in creation order. */
  reverse(cls: ClassName, field: string, target: string): string[] {
    if (this.reverseIndex === undefined || this.reverseIndex.generation !== this.generation) {
      this.reverseIndex = { generation: this.generation, index: new Map() };
    }
    const key = `${cls}.${field}`;
    let index = this.reverseIndex.index.get(key);
    if (index === undefined) {
      index = new Map();
      for (const row of this.table(cls).values()) {
        const t = row.fields[field];
        if (typeof t !== 'string') continue;
        const list = index.get(t);
        if (list === undefined) index.set(t, [row.ref]);
        else list.push(row.ref);
      }
      this.reverseIndex.index.set(key, index);
    }
    return [...(index.get(target) ?? [])];
  }

  /** The full record, every field of the class present, in data-model order. */
  record(cls: ClassName, ref: string): Record<string, unknown> {
    const row = this.require(cls, ref);
    const computed = this.computer?.(this, row) ?? {};
    const out: Record<string, unknown> = {};
    for (const [name, def] of Object.entries(DATAMODEL[cls].fields)) {
      if (name in computed) out[name] = computed[name];
      else if (def.reverse !== undefined) out[name] = this.reverse(def.reverse.cls, def.reverse.field, ref);
      else out[name] = clone(row.fields[name]);
    }
    return out;
  }
}
