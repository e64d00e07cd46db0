import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import {
  XmlRpcDouble,
  XmlRpcInt,
  XmlRpcParseError,
  decodeMethodCall,
  decodeMethodResponse,
  decodeValue,
  encodeFault,
  encodeMethodCall,
  encodeMethodResponse,
  encodeValue,
  escapeXml,
  formatDateTime,
  parseDateTime,
  type XmlRpcValue,
} from './xmlrpc.js';

const PYTHON = '/usr/bin/python3';

function python(script: string, input: string): string {
  const r = spawnSync(PYTHON, ['-c', script], { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

describe('encodeValue', () => {
  const date = new Date(Date.UTC(2024, 0, 2, 3, 4, 5));
  it.each<[string, XmlRpcValue, string, Parameters<typeof encodeValue>[1]?]>([
    ['untyped string', 'abc', '<value>abc</value>'],
    ['typed string', 'abc', '<value><string>abc</string></value>', { strings: 'typed' }],
    ['empty string', '', '<value></value>'],
    ['escaping', 'a<b>&c\r\n"\'', '<value>a&lt;b&gt;&amp;c&#13;\n"\'</value>'],
    ['int', 42, '<value><int>42</int></value>'],
    ['negative int', -7, '<value><int>-7</int></value>'],
    ['int beyond 32 bits', 2 ** 40, '<value><i8>1099511627776</i8></value>'],
    ['int64 as string (XAPI)', 2 ** 40, '<value>1099511627776</value>', { int64: 'string' }],
    ['bigint', 2n ** 62n, '<value><i8>4611686018427387904</i8></value>'],
    ['double', 1.5, '<value><double>1.5</double></value>'],
    ['forced double', new XmlRpcDouble(1), '<value><double>1</double></value>'],
    ['forced int in XAPI mode', new XmlRpcInt(3), '<value><i4>3</i4></value>', { int64: 'string' }],
    ['boolean true', true, '<value><boolean>1</boolean></value>'],
    ['boolean false', false, '<value><boolean>0</boolean></value>'],
    ['nil', null, '<value><nil/></value>'],
    ['date', date, '<value><dateTime.iso8601>20240102T03:04:05Z</dateTime.iso8601></value>'],
    ['base64', Buffer.from('hi'), '<value><base64>aGk=</base64></value>'],
    ['array', ['a', 1], '<value><array><data><value>a</value><value><int>1</int></value></data></array></value>'],
    ['empty array', [], '<value><array><data></data></array></value>'],
    ['struct', { k: 'v', 'a&b': [] }, '<value><struct><member><name>k</name><value>v</value></member><member><name>a&amp;b</name><value><array><data></data></array></value></member></struct></value>'],
    ['empty struct', {}, '<value><struct></struct></value>'],
  ])('%s', (_label, value, xml, opts) => {
    expect(encodeValue(value, opts)).toBe(xml);
  });
});

describe('decodeValue', () => {
  it.each<[string, string, XmlRpcValue]>([
    ['untyped', '<value>abc</value>', 'abc'],
    ['untyped keeps spaces', '<value>  a b  </value>', '  a b  '],
    ['empty untyped', '<value></value>', ''],
    ['self-closing value', '<value/>', ''],
    ['typed string', '<value><string>x y</string></value>', 'x y'],
    ['empty typed string', '<value><string></string></value>', ''],
    ['self-closing string', '<value><string/></value>', ''],
    ['whitespace around typed', '<value>\n  <int>5</int>\n</value>', 5],
    ['i4', '<value><i4>-12</i4></value>', -12],
    ['i8 safe', '<value><i8>9007199254740991</i8></value>', 9007199254740991],
    ['i8 beyond 2^53', '<value><i8>9223372036854775807</i8></value>', 9223372036854775807n],
    ['ex:i8', '<value><ex:i8>5</ex:i8></value>', 5],
    ['double', '<value><double>-0.25</double></value>', -0.25],
    ['double with exponent', '<value><double>1e+21</double></value>', 1e21],
    ['boolean', '<value><boolean>1</boolean></value>', true],
    ['nil', '<value><nil/></value>', null],
    ['ex:nil', '<value><ex:nil/></value>', null],
    ['base64 with newlines', '<value><base64>aG\nk=</base64></value>', Buffer.from('hi')],
    ['entities', '<value>&lt;&amp;&gt;&quot;&apos;&#65;&#x42;</value>', '<&>"\'AB'],
    ['CDATA', '<value><string><![CDATA[<raw> & stuff]]></string></value>', '<raw> & stuff'],
    ['CRLF normalised', '<value>a\r\nb\rc</value>', 'a\nb\nc'],
    ['encoded CR kept', '<value>a&#13;b</value>', 'a\rb'],
    ['comment ignored', '<value><!-- x --><int>1</int></value>', 1],
    ['array with whitespace', '<value><array>\n<data>\n<value>a</value>\n<value><int>2</int></value>\n</data>\n</array></value>', ['a', 2]],
    [
      'struct',
      '<value><struct>\n<member>\n<name>a</name>\n<value><boolean>0</boolean></value>\n</member>\n<member><name>b</name><value>x</value></member></struct></value>',
      { a: false, b: 'x' },
    ],
  ])('%s', (_label, xml, value) => {
    expect(decodeValue(xml)).toEqual(value);
  });

  it('decodes dates in every form clients send', () => {
    const t = Date.UTC(2024, 0, 2, 3, 4, 5);
    expect((decodeValue('<value><dateTime.iso8601>20240102T03:04:05Z</dateTime.iso8601></value>') as Date).getTime()).toBe(t);
    expect((decodeValue('<value><dateTime.iso8601>20240102T03:04:05</dateTime.iso8601></value>') as Date).getTime()).toBe(t);
    expect(parseDateTime('2024-01-02T04:04:05+01:00').getTime()).toBe(t);
    expect(parseDateTime('2024-01-02T03:04:05.250Z').getTime()).toBe(t + 250);
    expect(formatDateTime(new Date(t))).toBe('20240102T03:04:05Z');
  });

  it('keeps a member named __proto__ as data', () => {
    const v = decodeValue('<value><struct><member><name>__proto__</name><value>x</value></member></struct></value>') as Record<string, unknown>;
    expect(Object.keys(v)).toEqual(['__proto__']);
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
  });

  it.each([
    ['unknown type', '<value><float>1</float></value>'],
    ['bad int', '<value><int>1.5</int></value>'],
    ['bad boolean', '<value><boolean>yes</boolean></value>'],
    ['bad double', '<value><double>abc</double></value>'],
    ['two types', '<value><int>1</int><int>2</int></value>'],
    ['mismatched tag', '<value><int>1</i4></value>'],
    ['unclosed', '<value><int>1</int>'],
    ['doctype', '<!DOCTYPE x [<!ENTITY e "x">]><value>&e;</value>'],
    ['unknown entity', '<value>&nbsp;</value>'],
    ['member without value', '<value><struct><member><name>a</name></member></struct></value>'],
    ['text in struct', '<value><struct>oops</struct></value>'],
    ['not a value', '<string>x</string>'],
  ])('rejects %s', (_label, xml) => {
    expect(() => decodeValue(xml)).toThrow(XmlRpcParseError);
  });
});

describe('envelopes', () => {
  it('round-trips a methodCall', () => {
    const xml = encodeMethodCall('VM.get_record', ['OpaqueRef:1', { a: [1, 2.5] }], { strings: 'typed' });
    expect(decodeMethodCall(xml)).toEqual({ methodName: 'VM.get_record', params: ['OpaqueRef:1', { a: [1, 2.5] }] });
  });

  it('round-trips a methodResponse and a fault', () => {
    expect(decodeMethodResponse(encodeMethodResponse({ Status: 'Success', Value: '' }))).toEqual({ value: { Status: 'Success', Value: '' } });
    expect(decodeMethodResponse(encodeFault(4, 'boom'))).toEqual({ fault: { faultCode: 4, faultString: 'boom' } });
  });

  it('decodes a methodCall without params', () => {
    expect(decodeMethodCall('<methodCall><methodName>system.listMethods</methodName></methodCall>')).toEqual({
      methodName: 'system.listMethods',
      params: [],
    });
  });

  it('escapes only what XML needs', () => {
    expect(escapeXml('plain')).toBe('plain');
    expect(escapeXml('<&>')).toBe('&lt;&amp;&gt;');
  });
});

// Values whose Python image is unambiguous, shared by both directions.
const SAMPLES: { js: XmlRpcValue; py: string }[] = [
  { js: 'hello wörld ✓', py: "'hello wörld ✓'" },
  { js: '<tag> & "quotes" \'x\'\ttab\nnewline\rcr', py: "'<tag> & \"quotes\" \\'x\\'\\ttab\\nnewline\\rcr'" },
  { js: '', py: "''" },
  { js: 0, py: '0' },
  { js: -2147483648, py: '-2147483648' },
  { js: 2147483647, py: '2147483647' },
  { js: 3.25, py: '3.25' },
  { js: -1e-7, py: '-1e-07' },
  { js: true, py: 'True' },
  { js: false, py: 'False' },
  { js: null, py: 'None' },
  { js: Buffer.from([0, 1, 2, 250, 255]), py: "xmlrpc.client.Binary(bytes([0, 1, 2, 250, 255]))" },
  { js: new Date(Date.UTC(2023, 11, 31, 23, 59, 58)), py: "xmlrpc.client.DateTime('20231231T23:59:58')" },
  { js: [1, 'two', [3.5, [false]], {}], py: "[1, 'two', [3.5, [False]], {}]" },
  { js: { 'key with space': { nested: ['x'] }, '<k>': 1 }, py: "{'key with space': {'nested': ['x']}, '<k>': 1}" },
];

// Python → a JSON image that keeps types apart (dates, bytes, floats vs ints).
const PY_IMAGE = `
import json, sys, xmlrpc.client, base64
def img(v):
    if isinstance(v, bool): return {'bool': v}
    if isinstance(v, int): return {'int': v}
    if isinstance(v, float): return {'float': v}
    if isinstance(v, str): return {'str': v}
    if v is None: return {'nil': True}
    if isinstance(v, xmlrpc.client.DateTime): return {'date': v.value}
    if isinstance(v, xmlrpc.client.Binary): return {'bytes': base64.b64encode(v.data).decode()}
    if isinstance(v, list): return {'list': [img(x) for x in v]}
    if isinstance(v, dict): return {'dict': {k: img(x) for k, x in v.items()}}
    raise TypeError(type(v))
`;

function jsImage(v: XmlRpcValue): unknown {
  if (typeof v === 'boolean') return { bool: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { int: v } : { float: v };
  if (typeof v === 'string') return { str: v };
  if (v === null) return { nil: true };
  if (v instanceof Date) return { date: formatDateTime(v) };
  if (Buffer.isBuffer(v)) return { bytes: v.toString('base64') };
  if (Array.isArray(v)) return { list: v.map(jsImage) };
  if (typeof v === 'object' && !(v instanceof XmlRpcDouble) && !(v instanceof XmlRpcInt)) {
    return { dict: Object.fromEntries(Object.entries(v).map(([k, x]) => [k, jsImage(x)])) };
  }
  throw new TypeError(String(v));
}

describe("interoperability with Python's xmlrpc.client", () => {
  it('Python loads what we encode (typed and untyped strings)', () => {
    for (const strings of ['typed', 'untyped'] as const) {
      const docs = SAMPLES.map((s) => encodeMethodResponse(s.js, { strings }));
      const out = python(
        `${PY_IMAGE}
docs = json.load(sys.stdin)
print(json.dumps([img(xmlrpc.client.loads(d)[0][0]) for d in docs]))`,
        JSON.stringify(docs),
      );
      expect(JSON.parse(out)).toEqual(SAMPLES.map((s) => jsImage(s.js)));
    }
  });

  it('we decode what Python dumps (call and response)', () => {
    const out = python(
      `import json, xmlrpc.client
vals = [${SAMPLES.map((s) => s.py).join(', ')}]
print(json.dumps({
  'call': xmlrpc.client.dumps(tuple(vals), methodname='VM.snapshot', allow_none=True),
  'responses': [xmlrpc.client.dumps((v,), methodresponse=True, allow_none=True) for v in vals],
  'fault': xmlrpc.client.dumps(xmlrpc.client.Fault(7, 'bad <thing>')),
}))`,
      '',
    );
    const docs = JSON.parse(out) as { call: string; responses: string[]; fault: string };
    // Python writes a raw \r, which every XML parser (expat included) reads back as \n.
    const expected = SAMPLES.map((s) => (typeof s.js === 'string' ? s.js.replace(/\r/g, '\n') : s.js));
    const call = decodeMethodCall(docs.call);
    expect(call.methodName).toBe('VM.snapshot');
    expect(call.params).toEqual(expected);
    expect(docs.responses.map((r) => decodeMethodResponse(r))).toEqual(expected.map((value) => ({ value })));
    expect(decodeMethodResponse(docs.fault)).toEqual({ fault: { faultCode: 7, faultString: 'bad <thing>' } });
  });

  it('Python reads XAPI-style int64 strings and forced doubles', () => {
    const doc = encodeMethodResponse({ size: 2 ** 40, progress: new XmlRpcDouble(1), count: new XmlRpcInt(3) }, { int64: 'string' });
    const out = python(`${PY_IMAGE}\nprint(json.dumps(img(xmlrpc.client.loads(sys.stdin.read())[0][0])))`, doc);
    expect(JSON.parse(out)).toEqual({ dict: { size: { str: '1099511627776' }, progress: { float: 1 }, count: { int: 3 } } });
  });
});
