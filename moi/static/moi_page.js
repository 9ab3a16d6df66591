/**
 * moi_page.js: keeps a job page (/job/<id>) or group page (/group/<id>) live.
 *
 *   moi_page.init(element)   // the page's #moi-page: data-kind, data-id, data-group-id,
 *                            // data-read-only, data-server-now
 *
 * Needs moi.js loaded first and shares its one connection: it asks for the
 * page's node ({"get": [id]}) at every (re)connect and redraws on each frame
 * about it.  A job page shows the status, the call, every info field but the
 * internal ones, the duration (ticking while it runs) and the result; a
 * running job gets a Cancel button that asks for confirmation first.  A group
 * page keeps its children's rows and its counts live.  Everything from the
 * server goes into the page as text, never as HTML.
 */
(function (root) {
  "use strict";

  const TERMINAL = new Set(["Success", "Failed", "Cancelled"]);
  const COUNTED = ["Queued", "Running", "Success", "Failed", "Cancelled"];
  /** Info fields a job page leaves out (internal, or shown elsewhere on it). */
  const HIDDEN = new Set(["pubsub", "type", "result", "name", "status", "call"]);

  /** A Date from a server date string like "2026-11-22 20:53:46.526574", or null. */
  function parseDate(text) {
    if (typeof text !== "string") return null;
    const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?/.exec(text);
    if (!m) return null;
    const ms = m[7] ? Math.floor(Number(`0.${m[7]}`) * 1000) : 0;
    const date = new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], ms);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  /** "< 0.1 s", "4.2 s", "42 s", "3 min 07 s", "2 h 05 min" (as the server writes them). */
  function formatSeconds(seconds) {
    if (!(seconds >= 0.1)) return "< 0.1 s";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const whole = Math.floor(seconds);
    const pad = (n) => String(n).padStart(2, "0");
    if (whole < 60) return `${whole} s`;
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${pad(whole % 60)} s`;
    return `${Math.floor(whole / 3600)} h ${pad(Math.floor(whole / 60) % 60)} min`;
  }

  /** How long a job ran (to `now`, a server-clock Date, while it runs); "" when it never started. */
  function durationText(info, now) {
    if (!info || info.type === "group") return "";
    const start = parseDate(info.date_start);
    if (start === null) return "";
    const end = parseDate(info.date_end) || now;
    return formatSeconds((end.getTime() - start.getTime()) / 1000);
  }

  /** Whether a job with this status still runs or waits. */
  function isActive(status) {
    return typeof status === "string" && status !== "" && !TERMINAL.has(status);
  }

  /** An info field as text: strings as they are, nothing for null, JSON for the rest. */
  function fieldText(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  /** A job's result as its page shows it (a traceback joined; a failed command's traceback). */
  function resultText(info) {
    let result = info.result;
    if (info.status === "Failed" || info.status === "Cancelled") {
      if (result && typeof result === "object" && !Array.isArray(result)
          && "exit_code" in result && Array.isArray(result.traceback)) {
        result = result.traceback;
      }
      if (Array.isArray(result)) return result.map(String).join("");
    }
    if (typeof result === "string") return result;
    return JSON.stringify(result, null, 2);
  }

  /** "3 jobs: 2 Success, 1 Failed" (a job's own status text counts as Running), ", 1 group". */
  function countsText(children) {
    const jobs = children.filter((c) => c.type !== "group");
    const counts = new Map(COUNTED.map((s) => [s, 0]));
    for (const child of jobs) {
      const status = counts.has(child.status) ? child.status : "Running";
      counts.set(status, counts.get(status) + 1);
    }
    const parts = [...counts].filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`);
    let text = `${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
    if (parts.length) text += `: ${parts.join(", ")}`;
    const groups = children.length - jobs.length;
    if (groups) text += `, ${groups} group${groups === 1 ? "" : "s"}`;
    return text;
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function nodeUrl(info) {
    return `/${info.type === "group" ? "group" : "job"}/${encodeURIComponent(info.id)}`;
  }

  /** One live page. */
  class Page {
    constructor(el) {
      this.el = el;
      this.kind = el.dataset.kind;
      this.id = el.dataset.id;
      this.readOnly = el.dataset.readOnly === "true";
      const serverNow = parseDate(el.dataset.serverNow);
      this.skew = serverNow ? Date.now() - serverNow.getTime() : 0;  // browser minus server clock
      this.info = null;
      this.children = new Map();  // group pages: id -> info of the direct children
      this.timer = null;
      this.live = el.querySelector(".moi-page-live");
      this.errorLine = el.querySelector("#moi-page-error");
      if (this.kind === "job") this.wireCancel();
    }

    serverNow() {
      return new Date(Date.now() - this.skew);
    }

    connect() {
      moi.events.addEventListener("open", () => {
        this.setLive("open", "live");
        moi.send("get", [this.id]);
      });
      moi.events.addEventListener("close", () => this.setLive("closed", "reconnecting…"));
      for (const action of ["get", "add", "update"]) {
        moi.add_callback(action, (info) => this.receive(info));
      }
      moi.add_callback("remove", (info) => this.removed(info));
      moi.add_callback("error", (error) => this.failed(error));
      if (!moi.initialised) {
        moi.init(this.el.dataset.groupId, "", null, null, null, { initialGet: false, resync: false });
      } else if (moi.connected) {
        moi.send("get", [this.id]);
      }
    }

    setLive(state, text) {
      if (this.live) {
        this.live.dataset.state = state;
        this.live.textContent = text;
      }
    }

    showError(message) {
      if (!this.errorLine) return;
      this.errorLine.textContent = message;
      this.errorLine.hidden = !message;
    }

    receive(info) {
      if (!info || typeof info !== "object" || typeof info.id !== "string") return;
      if (info.id === this.id) {
        this.info = info;
        this.draw();
      } else if (this.kind === "group" && (info.parent === this.id || this.children.has(info.id))) {
        if (info.parent === this.id) this.children.set(info.id, info);
        else this.children.delete(info.id);
        this.drawChildren();
      }
    }

    removed(info) {
      if (!info || typeof info.id !== "string") return;
      if (info.id === this.id) {
        this.showError(`This ${this.kind} was removed.`);
        this.stopTicking();
      } else if (this.children.delete(info.id)) {
        this.drawChildren();
      }
    }

    failed(error) {
      if (!error || typeof error !== "object") return;
      const ids = Array.isArray(error.ids) ? error.ids : [];
      if (ids.length === 0 || ids.includes(this.id) || ids.some((i) => this.children.has(i))) {
        this.showError(String(error.message || "the server refused the request"));
        if (error.action === "cancel") this.resetCancel();
      }
    }

    // -- drawing -------------------------------------------------------------
    draw() {
      const info = this.info;
      const name = this.el.querySelector(".moi-page-name");
      if (name) name.textContent = fieldText(info.name);
      if (this.kind === "job") this.drawJob(info);
      this.tick();
    }

    drawJob(info) {
      const badge = this.el.querySelector(".moi-status");
      badge.dataset.status = fieldText(info.status);
      badge.textContent = fieldText(info.status);
      const call = this.el.querySelector(".moi-call");
      call.textContent = fieldText(info.call);
      call.hidden = !info.call;
      const body = this.el.querySelector(".moi-fields");
      body.replaceChildren();
      for (const key of Object.keys(info).filter((k) => !HIDDEN.has(k)).sort()) {
        const row = element("tr");
        row.dataset.field = key;
        const cell = element("td");
        if (key === "parent" && typeof info.parent === "string" && info.parent) {
          const link = element("a", null, info.parent);
          link.href = `/group/${encodeURIComponent(info.parent)}`;
          cell.append(link);
        } else {
          cell.textContent = fieldText(info[key]);
        }
        row.append(element("th", null, key), cell);
        body.append(row);
      }
      const done = TERMINAL.has(info.status);
      const failed = info.status === "Failed" || info.status === "Cancelled";
      this.el.querySelector(".moi-result-title").textContent = failed ? "Traceback" : "Result";
      this.el.querySelector(".moi-result").textContent = done ? resultText(info) : "(not finished)";
      const cancel = this.el.querySelector(".moi-cancel");
      if (cancel) {
        const active = isActive(info.status) && !this.readOnly;
        if (!active) this.el.querySelector(".moi-confirm").hidden = true;
        cancel.hidden = !active || !this.el.querySelector(".moi-confirm").hidden;
        cancel.disabled = !active || this.cancelSent === true;
      }
    }

    drawChildren() {
      const body = this.el.querySelector(".moi-rows");
      const rows = new Map([...body.querySelectorAll("tr[data-id]")].map((r) => [r.dataset.id, r]));
      const sorted = [...this.children.values()].sort(
        (a, b) => String(a.date_created || "").localeCompare(String(b.date_created || "")),
      );
      for (const child of sorted) {
        let row = rows.get(child.id);
        if (!row) row = this.newRow(child);
        rows.delete(child.id);
        const link = row.querySelector(".moi-name a");
        link.textContent = fieldText(child.name);
        link.href = nodeUrl(child);
        row.querySelector(".moi-type").textContent = fieldText(child.type);
        const badge = row.querySelector(".moi-status");
        badge.dataset.status = fieldText(child.status);
        badge.textContent = fieldText(child.status);
        row.querySelector(".moi-call").textContent = fieldText(child.call);
        row.querySelector(".moi-created").textContent = fieldText(child.date_created);
        body.append(row);  // in creation order
      }
      for (const gone of rows.values()) gone.remove();
      this.el.querySelector(".moi-page-counts").textContent = countsText([...this.children.values()]);
      this.tick();
    }

    newRow(child) {
      const row = element("tr");
      row.dataset.id = child.id;
      const name = element("td", "moi-name");
      name.append(element("a"));
      const status = element("td");
      status.append(element("span", "moi-status"));
      row.append(name, element("td", "moi-type"), status, element("td", "moi-duration"),
        element("td", "moi-call"), element("td", "moi-created"));
      return row;
    }

    // -- durations -------------------------------------------------------------
    tick() {
      const now = this.serverNow();
      let running = false;
      if (this.kind === "job" && this.info) {
        this.el.querySelector(".moi-duration").textContent = durationText(this.info, now);
        running = isActive(this.info.status);
      }
      if (this.kind === "group") {
        for (const row of this.el.querySelectorAll(".moi-rows tr[data-id]")) {
          const child = this.children.get(row.dataset.id);
          if (!child) continue;
          row.querySelector(".moi-duration").textContent = durationText(child, now);
          running = running || (child.type !== "group" && isActive(child.status));
        }
      }
      if (running && this.timer === null) {
        this.timer = setInterval(() => this.tick(), 1000);
      } else if (!running) {
        this.stopTicking();
      }
    }

    stopTicking() {
      if (this.timer !== null) {
        clearInterval(this.timer);
        this.timer = null;
      }
    }

    // -- cancel, after a confirmation --------------------------------------------
    wireCancel() {
      const cancel = this.el.querySelector(".moi-cancel");
      if (!cancel || this.readOnly) return;
      const confirm = this.el.querySelector(".moi-confirm");
      cancel.addEventListener("click", () => {
        cancel.hidden = true;
        confirm.hidden = false;
        confirm.querySelector(".moi-confirm-no").focus();
      });
      confirm.querySelector(".moi-confirm-no").addEventListener("click", () => this.resetCancel());
      confirm.querySelector(".moi-confirm-yes").addEventListener("click", () => {
        confirm.hidden = true;
        cancel.hidden = false;
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
        this.cancelSent = true;
        this.showError("");
        moi.send("cancel", [this.id]);
      });
    }

    resetCancel() {
      const cancel = this.el.querySelector(".moi-cancel");
      if (!cancel) return;
      this.cancelSent = false;
      this.el.querySelector(".moi-confirm").hidden = true;
      cancel.textContent = "Cancel job";
      const active = this.info === null || isActive(this.info.status);
      cancel.hidden = !active;
      cancel.disabled = !active;
    }
  }

  const moi_page = {
    /** Make the page in `el` (its #moi-page) live over moi's websocket. */
    init(el) {
      if (!(el instanceof Element)) throw new Error("moi_page.init: give the page's element");
      if (typeof root.moi !== "object") throw new Error("moi_page.init: load moi.js first");
      const page = new Page(el);
      page.connect();
      return page;
    },
    countsText,
    durationText,
    formatSeconds,
    resultText,
  };

  root.moi_page = moi_page;
})(typeof globalThis !== "undefined" ? globalThis : window);
