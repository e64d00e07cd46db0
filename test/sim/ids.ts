import { createHash, randomUUID } from 'node:crypto';

/** XAPI's null reference. */
export const NULL_REF = 'OpaqueRef:NULL';

function uuidFromDigest(digest: Buffer): string {
  const b = Buffer.from(digest.subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x50; // version 5 (name-based, SHA-1)
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Name-based identifiers, so a pool file gives the same uuids and refs on every run.
 *
 * @example
 *   const ids = new IdGenerator('vmbackup-sim');
 *   ids.uuid('VM', 'web1', '0')   // always the same uuid
 *   ids.next('task')              // deterministic sequence for objects made at run time
 */
export class IdGenerator {
  private counter = 0;

  constructor(private readonly seed: string) {}

  /** A uuid derived from the seed and the given name parts. */
  uuid(...parts: string[]): string {
    return uuidFromDigest(createHash('sha1').update([this.seed, ...parts].join('\u0000')).digest());
  }

  /** The opaque reference of the object with this uuid. */
  ref(uuid: string): string {
    return `OpaqueRef:${uuidFromDigest(createHash('sha1').update(`ref\u0000${this.seed}\u0000${uuid}`).digest())}`;
  }

  /** Next uuid of a deterministic sequence, for objects created while the simulator runs. */
  next(kind: string): string {
    this.counter += 1;
    return this.uuid('runtime', kind, String(this.counter));
  }
}

/** Session references must not repeat across simulator restarts: a stale session stays invalid. */
export function randomRef(): string {
  return `OpaqueRef:${randomUUID()}`;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(s: string): boolean {
  return UUID_RE.test(s);
}
