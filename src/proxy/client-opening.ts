/**
 * Knows when a client's opening message is complete, so the data path blames a backend only for what the
 * backend did. An API server answers a TLS ClientHello only once it has the whole handshake message; a client
 * that stops inside it (by accident or on purpose) must not make the backend look hung.
 *
 * Complete means:
 * - TLS (first byte 0x16, a handshake record): the whole first handshake message, across as many records as it
 *   spans (its length is in the 4-byte handshake header after the 5-byte record header);
 * - anything else: 5 bytes. A TLS server reads a 5-byte record header and answers anything that is not a
 *   handshake record at once (an alert, or Go's "HTTP request to an HTTPS server" 400), so after 5 bytes
 *   silence is the backend's.
 * A malformed header (a zero-length record, a record or message larger than TLS allows) is complete too: a TLS
 * server rejects it at once.
 *
 * Streaming: {@link ClientOpening.feed} takes chunks as they arrive and only ever looks at header bytes; record
 * bodies are skipped by arithmetic, so the cost is a few comparisons per chunk and nothing is copied.
 */

const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
const CONTENT_HANDSHAKE = 0x16;
/** TLS 1.2 allows 2^14 + 2048 bytes of (compressed) record payload; anything larger is rejected by the server. */
const MAX_RECORD = 16384 + 2048;
/** Go's crypto/tls limit on a handshake message (maxHandshake); larger ones are rejected at once. */
const MAX_HANDSHAKE = 65536;

/** Incremental recogniser of the client's opening message. */
export class ClientOpening {
  /** True once the opening message is complete (then {@link feed} is no longer needed). */
  complete = false;
  /** Bytes of the current record header or handshake header collected so far. */
  private readonly header = Buffer.alloc(RECORD_HEADER);
  private headerLen = 0;
  /** Payload bytes left in the current record; 0 = a record header comes next. */
  private recordLeft = 0;
  private readonly hs = Buffer.alloc(HANDSHAKE_HEADER);
  private hsLen = 0;
  /** Handshake message bytes still missing once its header is known; -1 = header not complete yet. */
  private messageLeft = -1;

  /** Takes the next chunk from the client; returns {@link complete}. */
  feed(chunk: Uint8Array): boolean {
    let i = 0;
    const n = chunk.length;
    while (!this.complete && i < n) {
      if (this.recordLeft === 0) {
        // Collecting a record header.
        while (this.headerLen < RECORD_HEADER && i < n) this.header[this.headerLen++] = chunk[i++]!;
        if (this.headerLen < RECORD_HEADER) break;
        this.headerLen = 0;
        const len = this.header.readUInt16BE(3);
        if (this.header[0] !== CONTENT_HANDSHAKE || len === 0 || len > MAX_RECORD) {
          this.complete = true;
          break;
        }
        this.recordLeft = len;
        continue;
      }
      // Inside a record body: first the handshake header, then the message body.
      if (this.messageLeft < 0) {
        while (this.hsLen < HANDSHAKE_HEADER && i < n && this.recordLeft > 0) {
          this.hs[this.hsLen++] = chunk[i++]!;
          this.recordLeft--;
        }
        if (this.hsLen < HANDSHAKE_HEADER) continue;
        const msgLen = this.hs.readUIntBE(1, 3);
        if (msgLen > MAX_HANDSHAKE) {
          this.complete = true;
          break;
        }
        this.messageLeft = msgLen;
      }
      const take = Math.min(this.messageLeft, this.recordLeft, n - i);
      i += take;
      this.messageLeft -= take;
      this.recordLeft -= take;
      if (this.messageLeft === 0) this.complete = true;
    }
    return this.complete;
  }
}
