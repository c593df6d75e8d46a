/** One Server-Sent Event. `id` is the last id seen on the stream (as EventSource keeps it). */
export interface SseEvent {
  id: string | null;
  event: string;
  data: string;
}

/**
 * An incremental `text/event-stream` parser (the WHATWG rules): feed it decoded text in any
 * chunking, get whole events back. Comments and unknown fields are ignored.
 */
export class SseParser {
  private buf = "";
  private data: string[] = [];
  private event = "";
  private sawData = false;
  lastId: string | null = null;
  retry: number | null = null;

  push(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    this.buf += text;
    let start = 0;
    for (;;) {
      const m = /\r\n|\r|\n/g;
      m.lastIndex = start;
      const hit = m.exec(this.buf);
      // A trailing "\r" may be the first half of "\r\n": wait for more text.
      if (!hit || (hit[0] === "\r" && hit.index === this.buf.length - 1)) break;
      this.line(this.buf.slice(start, hit.index), out);
      start = hit.index + hit[0].length;
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  private line(line: string, out: SseEvent[]) {
    if (line === "") {
      if (this.sawData) {
        out.push({ id: this.lastId, event: this.event || "message", data: this.data.join("\n") });
      }
      this.data = [];
      this.event = "";
      this.sawData = false;
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") {
      this.data.push(value);
      this.sawData = true;
    } else if (field === "event") this.event = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastId = value;
    } else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}
