/**
 * The one errno/TLS classification shared by the data path and the health checks (src/net-errors.ts): each code
 * maps to the dial failure reason, the local-resources flag and the words the proxy and the checkers used before
 * they shared it (a table, so a change to one of them shows up here).
 */
import t from 'tap';
import { certificateFailure, describeTransportError, errnoReason, isLocalResourceError, isTlsErrorCode, TLS_ERROR_PREFIX } from '../src/net-errors.js';
import { DIAL_FAILURE_REASONS } from '../src/proxy/reasons.js';

const err = (code: string | undefined, message = `connect ${code ?? 'failed'} 10.0.0.1:6443`) => Object.assign(new Error(message), code ? { code } : {});

// [code, dial failure reason, local resources?, health check wording]
const CASES: [string | undefined, string | undefined, boolean, string][] = [
  ['ECONNREFUSED', 'refused', false, 'connection refused'],
  ['ETIMEDOUT', 'timeout', false, 'timeout (connect ETIMEDOUT 10.0.0.1:6443)'],
  ['ECONNRESET', 'reset', false, 'connection reset'],
  ['EPIPE', 'reset', false, 'connection reset (broken pipe)'],
  ['EHOSTUNREACH', 'unreachable', false, 'host unreachable'],
  ['ENETUNREACH', 'unreachable', false, 'host unreachable'],
  ['EADDRNOTAVAIL', 'unreachable', false, 'connect EADDRNOTAVAIL 10.0.0.1:6443 (EADDRNOTAVAIL)'],
  ['EMFILE', 'local_resources', true, 'connect EMFILE 10.0.0.1:6443 (EMFILE)'],
  ['ENFILE', 'local_resources', true, 'connect ENFILE 10.0.0.1:6443 (ENFILE)'],
  ['ENOBUFS', 'local_resources', true, 'connect ENOBUFS 10.0.0.1:6443 (ENOBUFS)'],
  ['ENOMEM', 'local_resources', true, 'connect ENOMEM 10.0.0.1:6443 (ENOMEM)'],
  ['EACCES', undefined, false, 'connect EACCES 10.0.0.1:6443 (EACCES)'],
  [undefined, undefined, false, 'connect failed 10.0.0.1:6443'],
];

t.test('errno codes map to one reason, flag and wording', async (tt) => {
  for (const [code, reason, local, words] of CASES) {
    tt.equal(errnoReason(code), reason, `${code} reason`);
    if (reason) tt.ok((DIAL_FAILURE_REASONS as readonly string[]).includes(reason), `${reason} is a connect_failures label`);
    tt.equal(isLocalResourceError(err(code)), local, `${code} local`);
    tt.equal(describeTransportError(err(code)), words, `${code} words`);
  }
});

t.test('a local shortage is seen through an error cause too', async (tt) => {
  tt.ok(isLocalResourceError(Object.assign(new Error('fetch failed'), { cause: { code: 'EMFILE' } })));
  tt.notOk(isLocalResourceError(Object.assign(new Error('fetch failed'), { cause: { code: 'ECONNREFUSED' } })));
  tt.notOk(isLocalResourceError(undefined));
});

t.test('TLS codes are described with the prefix the logger keys its hint off', async (tt) => {
  for (const code of ['CERT_HAS_EXPIRED', 'HOSTNAME_MISMATCH', 'ERR_TLS_CERT_ALTNAME_INVALID', 'ERR_SSL_ANYTHING_NEW']) {
    tt.ok(isTlsErrorCode(code), code);
    tt.equal(describeTransportError(err(code, 'bad cert')), `${TLS_ERROR_PREFIX}bad cert (${code})`);
  }
  tt.notOk(isTlsErrorCode('ECONNREFUSED'));
  tt.notOk(isTlsErrorCode(undefined));
  tt.equal(describeTransportError(err('ETIMEDOUT', 'timeout: no answer within 500 ms')), 'timeout: no answer within 500 ms');
  tt.equal(describeTransportError('plain'), 'plain');
});

// [code, what it says about the server certificate] (discovery's hints: set --tls-server-name / check the cluster CA)
const CERTIFICATE_CASES: [string | undefined, 'name' | 'chain' | undefined][] = [
  ['ERR_TLS_CERT_ALTNAME_INVALID', 'name'],
  ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'chain'],
  ['UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'chain'],
  ['DEPTH_ZERO_SELF_SIGNED_CERT', 'chain'],
  ['SELF_SIGNED_CERT_IN_CHAIN', 'chain'],
  ['CERT_HAS_EXPIRED', 'chain'],
  ['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'chain'],
  ['ERR_SSL_WRONG_VERSION_NUMBER', undefined],
  ['ECONNREFUSED', undefined],
  [undefined, undefined],
];

t.test('certificate failures: a name the certificate lacks, or a chain that does not verify', async (tt) => {
  for (const [code, failure] of CERTIFICATE_CASES) tt.equal(certificateFailure(code), failure, String(code));
});
