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
  // The two headers are read field by field into small integers as their bytes arrive (no per-connection
  // buffers: this object lives once per open connection). A handshake header can span two records, so both are
  // tracked at once.
  /** Bytes of the current record header collected so far (0..5). */
  private headerLen = 0;
  /** The record's content type (header byte 0). */
  private recordType = 0;
  /** The record's payload length (header bytes 3 and 4, big-endian). */
  private recordLen = 0;
  /** Payload bytes left in the current record; 0 = a record header comes next. */
  private recordLeft = 0;
  /** Bytes of the handshake header collected so far (0..4). */
  private hsLen = 0;
  /** The handshake message's length (header bytes 1 to 3, big-endian; 24 bits, a small integer). */
  private msgLen = 0;
  /** Handshake message bytes still missing once its header is known; -1 = header not complete yet. */
  private messageLeft = -1;

  /** Takes the next chunk from the client; returns {@link complete}. */
  feed(chunk: Uint8Array): boolean {
    let i = 0;
    const n = chunk.length;
    while (!this.complete && i < n) {
      if (this.recordLeft === 0) {
        // Collecting a record header.
        while (this.headerLen < RECORD_HEADER && i < n) {
          const b = chunk[i++]!;
          if (this.headerLen === 0) this.recordType = b;
          else if (this.headerLen >= 3) this.recordLen = (this.recordLen << 8) | b;
          this.headerLen++;
        }
        if (this.headerLen < RECORD_HEADER) break;
        const len = this.recordLen;
        this.headerLen = 0;
        this.recordLen = 0;
        if (this.recordType !== CONTENT_HANDSHAKE || len === 0 || len > MAX_RECORD) {
          this.complete = true;
          break;
        }
        this.recordLeft = len;
        continue;
      }
      // Inside a record body: first the handshake header, then the message body.
      if (this.messageLeft < 0) {
        while (this.hsLen < HANDSHAKE_HEADER && i < n && this.recordLeft > 0) {
          const b = chunk[i++]!;
          if (this.hsLen > 0) this.msgLen = (this.msgLen << 8) | b; // byte 0 is the message type
          this.hsLen++;
          this.recordLeft--;
        }
        if (this.hsLen < HANDSHAKE_HEADER) continue;
        if (this.msgLen > MAX_HANDSHAKE) {
          this.complete = true;
          break;
        }
        this.messageLeft = this.msgLen;
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
