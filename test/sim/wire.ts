import { XmlRpcDouble, encodeValue, formatDateTime, type XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { DATAMODEL, type ClassName, type FieldDef } from './datamodel.js';

/**
 * Conversions between stored values and what travels: XAPI floats must stay `<double>` even
 * when integral, ints are decimal strings in XML-RPC and numbers in JSON-RPC, date-times are
 * `<dateTime.iso8601>` in XML-RPC and `"20240101T12:00:00Z"` strings in JSON-RPC.
 */

/** A field value ready for either encoder. */
export function wireField(def: FieldDef | undefined, value: unknown): XmlRpcValue {
  if (def?.type === 'float' && typeof value === 'number') return new XmlRpcDouble(value);
  return value as XmlRpcValue;
}

/** A record with its float fields marked. */
export function wireRecord(cls: ClassName, record: Record<string, unknown>): { [key: string]: XmlRpcValue } {
  const fields = DATAMODEL[cls].fields;
  const out: { [key: string]: XmlRpcValue } = {};
  for (const [k, v] of Object.entries(record)) out[k] = wireField(fields[k], v);
  return out;
}

/** JSON text for a JSON-RPC reply: dates in XAPI's format. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key: string, v: unknown) {
    const original = key === '' ? value : this[key];
    if (original instanceof Date) return formatDateTime(original);
    if (typeof original === 'bigint') return Number(original);
    return v;
  });
}

/** XML-RPC `<value>` text the way XAPI writes it (ints as strings). */
export function toXmlValue(value: XmlRpcValue): string {
  return encodeValue(value, { int64: 'string' });
}
