import { escapeXml, formatDateTime } from '../../runtime/formats/xmlrpc.js';
import { CLASS_NAMES, DATAMODEL } from './datamodel.js';
import type { SimState } from './state.js';

/**
 * The pool database as `/pool/xmldbdump` serves it, in the shape of XAPI's on-disk database
 * (`<database><manifest>…</manifest><table name="VM"><row ref=… uuid=… name__label=…/>…`): the
 * `name` namespace is written `name__` as on disk, sets and maps are written as S-expressions (`('a' 'b')`,
 * `(('k' 'v'))`), everything else as text. Deterministic: tables by name, rows by reference.
 * Tasks and sessions are left out (XAPI does not persist them either), and so is the
 * generation count, so that two dumps of the same pool are byte for byte equal.
 */

function sexpString(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

function text(value: unknown): string {
  if (value instanceof Date) return formatDateTime(value);
  if (Array.isArray(value)) return `(${value.map((v) => sexpString(String(v))).join(' ')})`;
  if (value !== null && typeof value === 'object') {
    return `(${Object.entries(value as Record<string, unknown>).map(([k, v]) => `(${sexpString(k)} ${sexpString(String(v))})`).join(' ')})`;
  }
  return String(value);
}

function attr(s: string): string {
  return escapeXml(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;').replace(/\t/g, '&#9;');
}

export function dumpDatabase(state: SimState): string {
  const parts: string[] = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<database><manifest>',
    '<pair key="schema_major_vsn" value="5"/>',
    '<pair key="schema_minor_vsn" value="786"/>',
    '</manifest>',
  ];
  const classes = CLASS_NAMES.filter((c) => c !== 'session' && c !== 'task').sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const cls of classes) {
    parts.push(`<table name="${cls}">`);
    const rows = state.db.all(cls).sort((a, b) => (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0));
    for (const row of rows) {
      const rec = state.db.record(cls, row.ref);
      const attrs = [`ref="${attr(row.ref)}"`];
      for (const name of Object.keys(DATAMODEL[cls].fields)) attrs.push(`${name.replace(/^name_/, 'name__')}="${attr(text(rec[name]))}"`);
      parts.push(`<row ${attrs.join(' ')}/>`);
    }
    parts.push('</table>');
  }
  parts.push('</database>');
  return parts.join('');
}
