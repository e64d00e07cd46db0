import { setTimeout as delay } from 'node:timers/promises';
import { decodeMethodResponse, encodeMethodCall, type XmlRpcValue } from '../../runtime/formats/xmlrpc.js';

/** What a raw RPC call returned on the wire. */
export interface RawReply {
  status: number;
  contentType: string | null;
  body: string;
  /** Decoded value: the XML-RPC `<param>` value, or the parsed JSON. */
  value: unknown;
}

/** One XML-RPC call with Python-style typed strings, decoded with our codec. */
export async function xmlCall(baseUrl: string, method: string, params: XmlRpcValue[], path = '/RPC2'): Promise<RawReply> {
  const res = await fetch(`${baseUrl}${path}`, { method: 'POST', headers: { 'content-type': 'text/xml' }, body: encodeMethodCall(method, params, { strings: 'typed' }) });
  const body = await res.text();
  const decoded = res.status === 200 ? decodeMethodResponse(body) : undefined;
  return { status: res.status, contentType: res.headers.get('content-type'), body, value: decoded !== undefined && 'value' in decoded ? decoded.value : decoded };
}

/** One JSON-RPC 2.0 call (v1 when `version` is '1.0'). */
export async function jsonCall(baseUrl: string, method: string, params: unknown[], version: '2.0' | '1.0' = '2.0'): Promise<RawReply> {
  const request = version === '2.0' ? { jsonrpc: '2.0', method, params, id: 7 } : { method, params, id: 'x' };
  const res = await fetch(`${baseUrl}/jsonrpc`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request) });
  const body = await res.text();
  return { status: res.status, contentType: res.headers.get('content-type'), body, value: res.status === 200 ? JSON.parse(body) : undefined };
}

/** XAPI's XML-RPC envelope: the Value, or throws `code(params)` from ErrorDescription. */
export async function xapi(baseUrl: string, method: string, ...params: XmlRpcValue[]): Promise<unknown> {
  const reply = await xmlCall(baseUrl, method, params);
  const v = reply.value as { Status: string; Value?: unknown; ErrorDescription?: string[] };
  if (v.Status === 'Success') return v.Value;
  const [code, ...rest] = v.ErrorDescription ?? [];
  throw Object.assign(new Error(`${code}(${rest.join(', ')})`), { code, params: rest });
}

/** The ErrorDescription of a call that must fail. */
export async function xapiError(baseUrl: string, method: string, ...params: XmlRpcValue[]): Promise<string[]> {
  try {
    await xapi(baseUrl, method, ...params);
  } catch (error) {
    const e = error as { code: string; params: string[] };
    return [e.code, ...e.params];
  }
  throw new Error(`${method} succeeded`);
}

export async function login(baseUrl: string, user = 'root', password = 'secret'): Promise<string> {
  return (await xapi(baseUrl, 'session.login_with_password', user, password)) as string;
}

/** Polls until `pred` holds (or throws after `ms`). */
export async function waitFor<T>(pred: () => T | Promise<T>, ms = 5000, what = 'condition'): Promise<NonNullable<T>> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v as NonNullable<T>;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await delay(20);
  }
}
