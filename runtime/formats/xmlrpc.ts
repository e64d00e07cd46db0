/**
 * XML-RPC value codec: encodes JavaScript values to `<value>` trees and decodes them back,
 * plus `methodCall` / `methodResponse` envelopes. Written for XAPI's dialect and checked
 * against Python's `xmlrpc.client` both ways (see xmlrpc.test.ts).
 *
 * Decoding accepts every standard type, typed or untyped:
 *   untyped `<value>text</value>` and `<string>` → string; `<int>`, `<i4>`, `<i8>` → number
 *   (bigint beyond 2^53); `<double>` → number; `<boolean>` → boolean; `<dateTime.iso8601>` →
 *   Date (UTC when no zone is given); `<base64>` → Buffer; `<nil/>` → null; `<struct>` → plain
 *   object; `<array>` → array. Apache's `ex:` prefixes (`<ex:nil/>`, `<ex:i8>`) are accepted.
 *
 * Encoding: strings are written untyped (XAPI style) unless `strings: 'typed'`; integers as
 * `<int>`/`<i8>` by default, or as decimal strings with `int64: 'string'` (XAPI encodes its
 * 64-bit ints that way); non-integral numbers and `XmlRpcDouble` as `<double>`; `XmlRpcInt` is
 * always `<i4>`; Date as `<dateTime.iso8601>YYYYMMDDTHH:MM:SSZ</dateTime.iso8601>`.
 *
 * @example
 *   encodeValue({ a: [1, 'x'] })          // '<value><struct><member><name>a</name><value><array>…'
 *   decodeValue('<value><i4>7</i4></value>') // 7
 */

/** A number that must travel as `<double>` even when it is integral (e.g. task progress 1.0). */
export class XmlRpcDouble {
  constructor(readonly value: number) {}
  toJSON(): number {
    return this.value;
  }
}

/** A 32-bit number that travels as `<i4>` even when integers are written as strings (ocaml-rpc's Int32). */
export class XmlRpcInt {
  constructor(readonly value: number) {}
  toJSON(): number {
    return this.value;
  }
}

export type XmlRpcValue =
  | string
  | number
  | bigint
  | boolean
  | null
  | Date
  | Buffer
  | XmlRpcDouble
  | XmlRpcInt
  | XmlRpcValue[]
  | { [key: string]: XmlRpcValue };

export interface EncodeOptions {
  /** How plain integers are written: `<int>`/`<i8>` (default) or as untyped decimal strings (XAPI). */
  int64?: 'typed' | 'string';
  /** Strings as untyped `<value>s</value>` (default, XAPI) or `<value><string>s</string></value>`. */
  strings?: 'untyped' | 'typed';
}

/** Error thrown for malformed XML or XML-RPC. */
export class XmlRpcParseError extends Error {
  override name = 'XmlRpcParseError';
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

/** Escapes text for element content. `\r` becomes `&#13;` so it survives XML line-end normalisation. */
export function escapeXml(text: string): string {
  let out = '';
  let last = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    let rep: string | undefined;
    if (c === 38) rep = '&amp;';
    else if (c === 60) rep = '&lt;';
    else if (c === 62) rep = '&gt;';
    else if (c === 13) rep = '&#13;';
    if (rep !== undefined) {
      out += text.slice(last, i) + rep;
      last = i + 1;
    }
  }
  return last === 0 ? text : out + text.slice(last);
}

/** `20240102T03:04:05Z`, the form XAPI writes. */
export function formatDateTime(date: Date): string {
  const iso = date.toISOString(); // 2024-01-02T03:04:05.000Z
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}T${iso.slice(11, 19)}Z`;
}

/** Parses XML-RPC / ISO 8601 date-times: `20240102T03:04:05`, `…Z`, `2024-01-02T03:04:05.5+01:00`. */
export function parseDateTime(text: string): Date {
  const m = /^(\d{4})-?(\d{2})-?(\d{2})T(\d{2}):?(\d{2}):?(\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$/.exec(text.trim());
  if (m === null) throw new XmlRpcParseError(`invalid dateTime.iso8601: ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const ms = frac === undefined ? 0 : Math.round(Number(`0${frac}`) * 1000);
  let t = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
  if (zone !== undefined && zone !== 'Z') {
    const sign = zone.startsWith('-') ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    t -= sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4))) * 60_000;
  }
  return new Date(t);
}

function formatDouble(n: number): string {
  if (Number.isNaN(n)) return 'nan';
  if (n === Infinity) return 'inf';
  if (n === -Infinity) return '-inf';
  return String(n);
}

function encodeInner(value: XmlRpcValue, opts: EncodeOptions, out: string[]): void {
  if (typeof value === 'string') {
    out.push(opts.strings === 'typed' ? `<string>${escapeXml(value)}</string>` : escapeXml(value));
  } else if (typeof value === 'number') {
    if (Number.isInteger(value)) {
      if (opts.int64 === 'string') out.push(String(value));
      else if (value >= INT32_MIN && value <= INT32_MAX) out.push(`<int>${value}</int>`);
      else out.push(`<i8>${value}</i8>`);
    } else {
      out.push(`<double>${formatDouble(value)}</double>`);
    }
  } else if (typeof value === 'bigint') {
    out.push(opts.int64 === 'string' ? value.toString() : `<i8>${value.toString()}</i8>`);
  } else if (typeof value === 'boolean') {
    out.push(`<boolean>${value ? '1' : '0'}</boolean>`);
  } else if (value === null) {
    out.push('<nil/>');
  } else if (value instanceof XmlRpcDouble) {
    out.push(`<double>${formatDouble(value.value)}</double>`);
  } else if (value instanceof XmlRpcInt) {
    out.push(`<i4>${value.value}</i4>`);
  } else if (value instanceof Date) {
    out.push(`<dateTime.iso8601>${formatDateTime(value)}</dateTime.iso8601>`);
  } else if (Buffer.isBuffer(value)) {
    out.push(`<base64>${value.toString('base64')}</base64>`);
  } else if (Array.isArray(value)) {
    out.push('<array><data>');
    for (const item of value) {
      out.push('<value>');
      encodeInner(item, opts, out);
      out.push('</value>');
    }
    out.push('</data></array>');
  } else if (typeof value === 'object') {
    out.push('<struct>');
    for (const key of Object.keys(value)) {
      const member = value[key];
      if (member === undefined) continue;
      out.push(`<member><name>${escapeXml(key)}</name><value>`);
      encodeInner(member, opts, out);
      out.push('</value></member>');
    }
    out.push('</struct>');
  } else {
    throw new TypeError(`cannot encode ${typeof value} as XML-RPC`);
  }
}

/** Encodes one value as a `<value>…</value>` string. */
export function encodeValue(value: XmlRpcValue, opts: EncodeOptions = {}): string {
  const out: string[] = ['<value>'];
  encodeInner(value, opts, out);
  out.push('</value>');
  return out.join('');
}

/** `<?xml version="1.0"?><methodCall>…` */
export function encodeMethodCall(methodName: string, params: XmlRpcValue[], opts: EncodeOptions = {}): string {
  const out = [`<?xml version="1.0"?><methodCall><methodName>${escapeXml(methodName)}</methodName><params>`];
  for (const p of params) out.push(`<param>${encodeValue(p, opts)}</param>`);
  out.push('</params></methodCall>');
  return out.join('');
}

/** A successful `methodResponse` carrying one value. */
export function encodeMethodResponse(value: XmlRpcValue, opts: EncodeOptions = {}): string {
  return `<?xml version="1.0"?><methodResponse><params><param>${encodeValue(value, opts)}</param></params></methodResponse>`;
}

/** A `methodResponse` fault (`faultCode`, `faultString`). XAPI itself reports errors in-band. */
export function encodeFault(faultCode: number, faultString: string): string {
  return `<?xml version="1.0"?><methodResponse><fault>${encodeValue({ faultCode, faultString })}</fault></methodResponse>`;
}

// --- a small XML parser for the XML-RPC subset -------------------------------------------

interface XmlElement {
  name: string;
  children: (XmlElement | string)[];
}

const NAMED_ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decodeEntities(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-zA-Z]+);/g, (whole, body: string) => {
    if (body.startsWith('#x')) return String.fromCodePoint(parseInt(body.slice(2), 16));
    if (body.startsWith('#')) return String.fromCodePoint(parseInt(body.slice(1), 10));
    const named = NAMED_ENTITIES[body];
    if (named === undefined) throw new XmlRpcParseError(`unknown entity ${whole}`);
    return named;
  });
}

/** Parses an XML document into elements and text (attributes are ignored). */
function parseXml(xml: string): XmlElement {
  const root: XmlElement = { name: '#document', children: [] };
  const stack: XmlElement[] = [root];
  let i = 0;
  const n = xml.length;
  // XML normalises line ends to \n before anything else.
  const text = (s: string) => s.replace(/\r\n?/g, '\n');
  while (i < n) {
    const lt = xml.indexOf('<', i);
    if (lt === -1) {
      const rest = xml.slice(i);
      if (rest.trim() !== '') {
        if (stack.length === 1) throw new XmlRpcParseError('text outside the root element');
        stack[stack.length - 1]!.children.push(decodeEntities(text(rest)));
      }
      break;
    }
    if (lt > i) {
      const chunk = xml.slice(i, lt);
      if (stack.length > 1) stack[stack.length - 1]!.children.push(decodeEntities(text(chunk)));
      else if (chunk.trim() !== '') throw new XmlRpcParseError('text outside the root element');
    }
    if (xml.startsWith('<!--', lt)) {
      const end = xml.indexOf('-->', lt + 4);
      if (end === -1) throw new XmlRpcParseError('unterminated comment');
      i = end + 3;
    } else if (xml.startsWith('<![CDATA[', lt)) {
      const end = xml.indexOf(']]>', lt + 9);
      if (end === -1) throw new XmlRpcParseError('unterminated CDATA section');
      if (stack.length === 1) throw new XmlRpcParseError('CDATA outside the root element');
      stack[stack.length - 1]!.children.push(text(xml.slice(lt + 9, end)));
      i = end + 3;
    } else if (xml.startsWith('<?', lt)) {
      const end = xml.indexOf('?>', lt + 2);
      if (end === -1) throw new XmlRpcParseError('unterminated processing instruction');
      i = end + 2;
    } else if (xml.startsWith('<!', lt)) {
      throw new XmlRpcParseError('DOCTYPE and other declarations are not accepted');
    } else {
      const end = xml.indexOf('>', lt + 1);
      if (end === -1) throw new XmlRpcParseError('unterminated tag');
      let tag = xml.slice(lt + 1, end);
      if (tag.startsWith('/')) {
        const name = tag.slice(1).trim();
        const open = stack.pop();
        if (open === undefined || open === root || open.name !== name) {
          throw new XmlRpcParseError(`unexpected closing tag </${name}>`);
        }
        stack[stack.length - 1]!.children.push(open);
      } else {
        const selfClosing = tag.endsWith('/');
        if (selfClosing) tag = tag.slice(0, -1);
        const m = /^([A-Za-z_:][-A-Za-z0-9_.:]*)/.exec(tag);
        if (m === null) throw new XmlRpcParseError(`invalid tag <${tag}>`);
        const element: XmlElement = { name: m[1]!, children: [] };
        if (stack.length === 1 && root.children.length > 0) throw new XmlRpcParseError('more than one root element');
        if (selfClosing) stack[stack.length - 1]!.children.push(element);
        else stack.push(element);
      }
      i = end + 1;
    }
  }
  if (stack.length !== 1) throw new XmlRpcParseError(`unclosed element <${stack[stack.length - 1]!.name}>`);
  const top = root.children.find((c): c is XmlElement => typeof c !== 'string');
  if (top === undefined) throw new XmlRpcParseError('empty document');
  return top;
}

function localName(name: string): string {
  return name.startsWith('ex:') ? name.slice(3) : name;
}

function elements(node: XmlElement): XmlElement[] {
  const out: XmlElement[] = [];
  for (const c of node.children) {
    if (typeof c === 'string') {
      if (c.trim() !== '') throw new XmlRpcParseError(`unexpected text in <${node.name}>: ${JSON.stringify(c.slice(0, 40))}`);
    } else {
      out.push(c);
    }
  }
  return out;
}

function textOf(node: XmlElement): string {
  let s = '';
  for (const c of node.children) {
    if (typeof c !== 'string') throw new XmlRpcParseError(`unexpected <${c.name}> in <${node.name}>`);
    s += c;
  }
  return s;
}

function expect(node: XmlElement, name: string): XmlElement {
  if (node.name !== name) throw new XmlRpcParseError(`expected <${name}>, found <${node.name}>`);
  return node;
}

function decodeInteger(text: string, tag: string): number | bigint {
  const t = text.trim();
  if (!/^[+-]?\d+$/.test(t)) throw new XmlRpcParseError(`invalid <${tag}>: ${JSON.stringify(text)}`);
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : BigInt(t);
}

function decodeValueNode(node: XmlElement): XmlRpcValue {
  expect(node, 'value');
  const typed = node.children.filter((c): c is XmlElement => typeof c !== 'string');
  if (typed.length === 0) return textOf(node);
  const [inner] = elements(node);
  if (inner === undefined || typed.length !== 1) throw new XmlRpcParseError('a <value> holds exactly one typed element');
  const type = localName(inner.name);
  switch (type) {
    case 'string':
      return textOf(inner);
    case 'int':
    case 'i4':
    case 'i8':
      return decodeInteger(textOf(inner), type);
    case 'double': {
      const t = textOf(inner).trim().toLowerCase();
      if (t === 'nan') return NaN;
      if (t === 'inf' || t === '+inf' || t === 'infinity') return Infinity;
      if (t === '-inf' || t === '-infinity') return -Infinity;
      const d = Number(t);
      if (t === '' || Number.isNaN(d)) throw new XmlRpcParseError(`invalid <double>: ${JSON.stringify(t)}`);
      return d;
    }
    case 'boolean': {
      const t = textOf(inner).trim();
      if (t === '1' || t === 'true') return true;
      if (t === '0' || t === 'false') return false;
      throw new XmlRpcParseError(`invalid <boolean>: ${JSON.stringify(t)}`);
    }
    case 'dateTime.iso8601':
      return parseDateTime(textOf(inner));
    case 'base64':
      return Buffer.from(textOf(inner).replace(/\s+/g, ''), 'base64');
    case 'nil':
      return null;
    case 'array': {
      const [data, ...rest] = elements(inner);
      if (data === undefined || rest.length > 0) throw new XmlRpcParseError('<array> holds exactly one <data>');
      return elements(expect(data, 'data')).map(decodeValueNode);
    }
    case 'struct': {
      const out: { [key: string]: XmlRpcValue } = {};
      for (const member of elements(inner)) {
        expect(member, 'member');
        let name: string | undefined;
        let value: XmlRpcValue | undefined;
        for (const part of elements(member)) {
          if (part.name === 'name') name = textOf(part);
          else if (part.name === 'value') value = decodeValueNode(part);
          else throw new XmlRpcParseError(`unexpected <${part.name}> in <member>`);
        }
        if (name === undefined || value === undefined) throw new XmlRpcParseError('<member> needs a <name> and a <value>');
        // defineProperty: a member named "__proto__" must stay data, not change the prototype.
        Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    default:
      throw new XmlRpcParseError(`unknown XML-RPC type <${inner.name}>`);
  }
}

/** Decodes a document whose root is one `<value>` element. */
export function decodeValue(xml: string): XmlRpcValue {
  return decodeValueNode(parseXml(xml));
}

/** Decodes `<methodCall>` into its name and parameters. */
export function decodeMethodCall(xml: string): { methodName: string; params: XmlRpcValue[] } {
  const root = expect(parseXml(xml), 'methodCall');
  let methodName: string | undefined;
  let params: XmlRpcValue[] = [];
  for (const part of elements(root)) {
    if (part.name === 'methodName') methodName = textOf(part).trim();
    else if (part.name === 'params') {
      params = elements(part).map((p) => {
        const [v, ...rest] = elements(expect(p, 'param'));
        if (v === undefined || rest.length > 0) throw new XmlRpcParseError('<param> holds exactly one <value>');
        return decodeValueNode(v);
      });
    } else throw new XmlRpcParseError(`unexpected <${part.name}> in <methodCall>`);
  }
  if (methodName === undefined || methodName === '') throw new XmlRpcParseError('<methodCall> without <methodName>');
  return { methodName, params };
}

/** Decodes `<methodResponse>`: either the single returned value or the fault value. */
export function decodeMethodResponse(xml: string): { value: XmlRpcValue } | { fault: XmlRpcValue } {
  const root = expect(parseXml(xml), 'methodResponse');
  const [part, ...rest] = elements(root);
  if (part === undefined || rest.length > 0) throw new XmlRpcParseError('<methodResponse> holds <params> or <fault>');
  if (part.name === 'fault') {
    const [v] = elements(part);
    if (v === undefined) throw new XmlRpcParseError('<fault> without <value>');
    return { fault: decodeValueNode(v) };
  }
  const [param] = elements(expect(part, 'params'));
  if (param === undefined) throw new XmlRpcParseError('<params> without <param>');
  const [v] = elements(expect(param, 'param'));
  if (v === undefined) throw new XmlRpcParseError('<param> without <value>');
  return { value: decodeValueNode(v) };
}
