/**
 * moi_log.js: the Log view, a job's output live (moi.logs on the server).
 *
 * It opens a websocket of its own to the dashboard's endpoint and asks for the
 * job's lines: {"log": jobId, "from": n}.  The server answers with the lines
 * it keeps, then live: {"log": {"id", "start", "lines", "next"}} frames, or
 * {"error": {"message", "action": "log"}} (not your job, bad request).  Lines
 * are numbered over the job's whole output: a frame starting past the last
 * line seen means lines were dropped (older than what the server keeps, or
 * written faster than they could be shipped); the view says how many.
 *
 *   const view = moi_log.open(jobId, containerElement[, options]);
 *   view.addEventListener("lines", (e) => e.detail.lines ...);   // as they arrive
 *   view.addEventListener("error", (e) => e.detail.message ...);
 *   view.close();
 *
 * The view keeps only the last `maxLines` lines in the page, draws at most
 * once per 16 ms (a frame at 60 Hz) whatever the rate of frames, renders every line as
 * text (never HTML), and reconnects after a lost connection from the line it
 * had reached.  On a page of its own, an element with `data-moi-log="<job id>"`
 * is opened by itself.
 */
(function (root) {
  "use strict";

  /** Defaults of open()'s options; times in milliseconds. */
  const DEFAULTS = Object.freeze({
    /** Websocket path on the server. */
    path: "/moi-ws/",
    /** Host (name:port) of the server; the page's own when empty. */
    host: "",
    /** Most lines kept in the page; the oldest go first. */
    maxLines: 5000,
    /** First line wanted (0: everything the server keeps). */
    from: 0,
    /** Wait before reconnecting, doubled after each failure up to maxDelay. */
    initialDelay: 500,
    maxDelay: 10000,
  });

  /** Shortest time between two drawings (one frame at 60 Hz). */
  const FRAME_MS = 16;

  function socketUrl(host, path) {
    const scheme = root.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${host || root.location.host}${path}`;
  }

  /** A job's output in an element, live. */
  class LogView extends EventTarget {
    constructor(jobId, container, options) {
      super();
      if (typeof jobId !== "string" || !jobId) throw new Error("moi_log: give a job id");
      if (!container || typeof container.appendChild !== "function") {
        throw new Error("moi_log: give the element to show the output in");
      }
      this.jobId = jobId;
      this.options = Object.freeze({ ...DEFAULTS, ...(options || {}) });
      /** Number of the next line expected from the server. */
      this.next = this.options.from;
      /** Lines shown now (at most maxLines). */
      this.lineCount = 0;
      /** Lines the server no longer had, or skipped, so far. */
      this.skipped = 0;
      this._chunks = [];   // [{node, lines}] in page order
      this._pending = [];  // lines received, not drawn yet
      this._drawing = false;
      this._drawnAt = -Infinity;
      this._closed = false;
      this._attempt = 0;
      this._timer = null;
      this._build(container);
      this._connect();
    }

    _build(container) {
      const doc = container.ownerDocument;
      this.element = doc.createElement("div");
      this.element.className = "moi-log";
      this.status = doc.createElement("div");
      this.status.className = "moi-log-status";
      this.status.style.cssText = "font-size:0.85em;color:#5f6670;margin:0.25em 0";
      this.pre = doc.createElement("pre");
      this.pre.className = "moi-log-lines";
      this.pre.style.cssText =
        "max-height:30em;overflow:auto;margin:0;padding:0.5em;background:#f5f6f8;" +
        "white-space:pre-wrap;word-break:break-all";
      this.element.append(this.status, this.pre);
      container.appendChild(this.element);
      this._say("connecting…");
    }

    _say(text) {
      this.status.textContent = text;
    }

    _connect() {
      this._timer = null;
      const ws = new WebSocket(socketUrl(this.options.host, this.options.path));
      this.socket = ws;
      ws.addEventListener("open", () => {
        this._attempt = 0;
        ws.send(JSON.stringify({ log: this.jobId, from: this.next }));
        this._say(this._summary());
      });
      ws.addEventListener("message", (event) => {
        if (this.socket === ws) this._receive(event.data);
      });
      ws.addEventListener("close", () => {
        if (this.socket !== ws || this._closed) return;
        const delay = Math.min(
          this.options.maxDelay, this.options.initialDelay * 2 ** this._attempt);
        this._attempt += 1;
        this._say(`connection lost; retrying in ${Math.round(delay / 100) / 10} s`);
        this._timer = setTimeout(() => this._connect(), delay);
      });
    }

    _receive(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (err) {
        return;
      }
      if (frame && frame.error && frame.error.action === "log") {
        this._say(`error: ${frame.error.message}`);
        this.dispatchEvent(new CustomEvent("error", { detail: frame.error }));
        return;
      }
      const got = frame && frame.log;
      if (!got || got.id !== this.jobId || !Array.isArray(got.lines)) return;
      if (got.start > this.next) this.skipped += got.start - this.next;
      const fresh = got.lines.slice(Math.max(0, this.next - got.start)).map(String);
      this.next = Math.max(this.next, got.next);
      if (!fresh.length) return;
      this._pending.push(...fresh.slice(-this.options.maxLines));
      if (this._pending.length > this.options.maxLines) {
        this._pending.splice(0, this._pending.length - this.options.maxLines);
      }
      this.dispatchEvent(new CustomEvent("lines", { detail: { start: got.start, lines: fresh } }));
      this._schedule();
    }

    /** Draw now if the last drawing is a frame ago, else once that frame has passed. */
    _schedule() {
      if (this._drawing) return;
      const wait = this._drawnAt + FRAME_MS - performance.now();
      if (wait <= 0) {
        this._draw();
        return;
      }
      this._drawing = true;
      setTimeout(() => {
        this._drawing = false;
        this._draw();
      }, wait);
    }

    _draw() {
      const lines = this._pending;
      if (!lines.length || this._closed) return;
      this._drawnAt = performance.now();
      this._pending = [];
      const pre = this.pre;
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 4;
      const node = pre.ownerDocument.createTextNode(lines.join("\n") + "\n");
      pre.appendChild(node);
      this._chunks.push({ node, lines });
      this.lineCount += lines.length;
      const max = this.options.maxLines;
      while (this.lineCount > max) {
        const first = this._chunks[0];
        const excess = this.lineCount - max;
        if (excess >= first.lines.length) {
          first.node.remove();
          this._chunks.shift();
          this.lineCount -= first.lines.length;
        } else {
          first.lines = first.lines.slice(excess);
          first.node.textContent = first.lines.join("\n") + "\n";
          this.lineCount -= excess;
        }
      }
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      this._say(this._summary());
    }

    _summary() {
      const kept = this.lineCount + this._pending.length;
      const dropped = this.next - Math.min(kept, this.next);
      const parts = [`${this.next} lines`];
      if (dropped > 0) parts.push(`showing the last ${Math.min(kept, this.next)}`);
      if (this.skipped > 0) parts.push(`${this.skipped} not kept by the server`);
      return parts.join(", ");
    }

    /** The lines shown now, oldest first. */
    lines() {
      return this._chunks.flatMap((chunk) => chunk.lines).concat(this._pending);
    }

    /** Stop following: close the connection and keep what is shown. */
    close() {
      this._closed = true;
      if (this._timer !== null) clearTimeout(this._timer);
      if (this.socket) this.socket.close(1000, "log view closed");
      this.socket = null;
    }
  }

  /** Show job `jobId`'s output live in `container`; returns the LogView. */
  function open(jobId, container, options) {
    return new LogView(jobId, container, options);
  }

  root.moi_log = Object.freeze({ open, LogView, DEFAULTS });

  // a page of its own: <div data-moi-log="JOB_ID"></div>
  if (root.document) {
    const start = () => {
      for (const el of root.document.querySelectorAll("[data-moi-log]")) {
        if (!el.moiLog) el.moiLog = open(el.getAttribute("data-moi-log"), el);
      }
    };
    if (root.document.readyState === "loading") {
      root.document.addEventListener("DOMContentLoaded", start);
    } else {
      start();
    }
  }
})(window);
