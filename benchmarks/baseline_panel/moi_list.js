/**
 * moi_list.js: a live panel of a moi job tree, drawn inside a <div>.
 *
 *   moi_list.init(group_id, div[, {readOnly: false, host: "", detailsUrl: info => url}])
 *   moi_list.counts()   // {"Queued": 0, "Running": 1, "Success": 4, ...}
 *
 * Needs moi.js loaded first; opens moi's connection unless the page already
 * did.  Groups are collapsible nodes holding their jobs; each job shows its
 * name, a status badge, the elapsed time (ticking while it runs), a link to
 * its result once done, and Cancel / Remove buttons (none when readOnly).
 *
 * Everything that comes from the server goes into the page as text or as an
 * attribute value, never as HTML; links are only made from safe URLs.
 * Stable hooks for styles and tests: every node has data-id, the badge is
 * .moi-status[data-status], the buttons are .moi-cancel and .moi-remove, the
 * counts are .moi-counts [data-status].
 */
(function (root) {
  "use strict";

  const STATUSES = Object.freeze(["Queued", "Running", "Success", "Failed", "Cancelled"]);
  const TERMINAL = new Set(["Success", "Failed", "Cancelled"]);
  /** Quiet time after the last "get" frame before nodes missing from a fresh snapshot are dropped. */
  const SNAPSHOT_QUIET_MS = 400;
  /** Most error lines kept on screen. */
  const MAX_ERRORS = 5;
  const QUARTER_HOUR = 15 * 60 * 1000;

  // -- pure helpers ------------------------------------------------------------

  /** The CSS modifier of a status: "queued", ..., "cancelled", "custom" or "none". */
  function statusKind(status) {
    if (status === null || status === undefined || status === "") return "none";
    return STATUSES.includes(status) ? status.toLowerCase() : "custom";
  }

  /** Whether a job with `status` still runs or waits (so it can be cancelled). */
  function isActive(status) {
    return status !== null && status !== undefined && status !== "" && !TERMINAL.has(status);
  }

  /**
   * `url` when it is safe to link to, else null: a path on this site ("/x", not
   * "//host") or an absolute http(s) URL.  No control characters, spaces or
   * backslashes (browsers rewrite those into other URLs).
   */
  function safeUrl(url) {
    if (typeof url !== "string" || url === "" || /[\u0000-\u0020\u007f-\u009f\\]/.test(url)) {
      return null;
    }
    if (url.startsWith("/")) {
      return url.startsWith("//") ? null : url;
    }
    if (!/^https?:\/\//i.test(url)) return null;
    try {
      const parsed = new URL(url);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? url : null;
    } catch (err) {
      return null;
    }
  }

  /** A Date from a server date string like "2026-11-22 20:53:46.526574" (server local time), or null. */
  function parseDate(text) {
    if (typeof text !== "string") return null;
    const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?/.exec(text);
    if (!m) return null;
    const ms = m[7] ? Math.floor(Number(`0.${m[7]}`) * 1000) : 0;
    const date = new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], ms);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  /** "< 0.1 s", "0.4 s", "42 s", "3 min 07 s", "2 h 05 min"; whole seconds unless `precise`. */
  function formatElapsed(ms, precise = false) {
    if (!(ms >= 0)) ms = 0;
    if (precise && ms < 100) return "< 0.1 s";
    const seconds = ms / 1000;
    if (seconds < 10 && precise) return `${seconds.toFixed(1)} s`;
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    const total = Math.floor(seconds);
    const pad = (n) => String(n).padStart(2, "0");
    if (total < 3600) return `${Math.floor(total / 60)} min ${pad(total % 60)} s`;
    return `${Math.floor(total / 3600)} h ${pad(Math.floor(total / 60) % 60)} min`;
  }

  function defaultDetailsUrl(info) {
    const kind = info.type === "group" ? "group" : "job";
    return `/${kind}/${encodeURIComponent(info.id)}`;
  }

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function resolveDiv(div) {
    if (typeof div === "string") {
      const found = document.getElementById(div) || document.querySelector(div);
      if (!found) throw new Error(`moi_list.init: no element ${JSON.stringify(div)} in the page`);
      return found;
    }
    if (div && div.jquery && div[0] instanceof Element) return div[0];
    if (div instanceof Element) return div;
    throw new Error("moi_list.init: div must be an element (or its id)");
  }

  // -- the panel ---------------------------------------------------------------

  /** One live panel: the tree under `groupId`, drawn in `div`. */
  class Panel {
    constructor(groupId, div, options) {
      this.groupId = groupId;
      this.div = div;
      this.readOnly = Boolean(options.readOnly);
      this.detailsUrl = options.detailsUrl === undefined ? defaultDetailsUrl : options.detailsUrl;
      this.nodes = new Map();     // id -> {info, el, list (groups only)}
      this.pending = new Map();   // parent id -> Map(id -> info): nodes whose parent is unknown yet
      this.statusCounts = new Map(STATUSES.map((s) => [s, 0]));
      this.ticking = new Set();   // ids of jobs whose elapsed time ticks
      this.tickTimer = null;
      this.cancelling = new Set();
      this.skew = 0;              // browser clock minus server clock, in whole quarter hours
      this.snapshot = null;       // {seen, timer} while a full tree is arriving
      this.refreshQueued = false;
      this.build();
    }

    build() {
      const div = this.div;
      div.replaceChildren();
      div.classList.add("moi-panel");
      div.classList.toggle("moi-readonly", this.readOnly);
      const bar = element("div", "moi-bar");
      this.connection = element("span", "moi-connection", "connecting…");
      this.connection.dataset.state = "connecting";
      this.countsEl = element("div", "moi-counts");
      this.countsEl.setAttribute("aria-label", "jobs by status");
      bar.append(this.countsEl, this.connection);
      this.errors = element("div", "moi-errors");
      this.errors.setAttribute("aria-live", "polite");
      this.empty = element("p", "moi-empty", "No jobs yet.");
      this.list = element("ul", "moi-children moi-tree");
      div.append(bar, this.errors, this.empty, this.list);
      div.addEventListener("click", (event) => this.onClick(event));
      this.renderCounts();
    }

    // -- frames from the server ------------------------------------------------
    attach(moi) {
      const on = (action, func) => moi.add_callback(action, func.bind(this));
      on("get", (info) => this.onFrame("get", info));
      on("add", (info) => this.onFrame("add", info));
      on("update", (info) => this.onFrame("update", info));
      on("remove", (info) => this.onRemove(info));
      on("error", (error) => this.showError(error));
      moi.events.addEventListener("open", () => this.onOpen());
      moi.events.addEventListener("close", (event) => this.onClose(event.detail || {}));
    }

    onOpen() {
      this.setConnection("open", "live");
      this.startSnapshot();
      if (this.ownGet) this.ownGet();
    }

    onClose(detail) {
      this.endSnapshot(false);
      const wait = detail.retryIn;
      const text = wait === null || wait === undefined
        ? "disconnected"
        : `disconnected, retrying in ${Math.max(1, Math.round(wait / 1000))} s`;
      this.setConnection("closed", text);
    }

    setConnection(state, text) {
      this.connection.dataset.state = state;
      this.connection.textContent = text;
    }

    onFrame(action, info) {
      if (!info || typeof info !== "object" || typeof info.id !== "string") return;
      if (this.snapshot !== null) {
        this.snapshot.seen.add(info.id);
        if (action === "get") {
          this.snapshot.gets += 1;
          this.restartSnapshotTimer();
        }
      }
      if (action === "update") this.learnSkew(this.nodes.get(info.id), info);
      this.upsert(info);
    }

    onRemove(info) {
      const id = info && typeof info === "object" ? info.id : info;
      if (typeof id !== "string" || id === this.groupId) return;
      this.dropPending(id);
      this.removeNode(id);
    }

    // -- snapshots: after a (re)connect the server sends the whole tree as "get"
    // frames, in one burst; once they stop, nodes it did not mention are gone.
    startSnapshot() {
      this.endSnapshot(false);
      this.snapshot = { seen: new Set(), gets: 0, timer: null };
    }

    restartSnapshotTimer() {
      clearTimeout(this.snapshot.timer);
      this.snapshot.timer = setTimeout(() => this.endSnapshot(true), SNAPSHOT_QUIET_MS);
    }

    /** Stop collecting; with `sweep` (the tree arrived), drop nodes the fresh tree did not mention (removed while away). */
    endSnapshot(sweep) {
      const snap = this.snapshot;
      if (snap === null) return;
      clearTimeout(snap.timer);
      this.snapshot = null;
      if (!sweep || snap.gets === 0) return;
      for (const id of [...this.nodes.keys()]) {
        if (!snap.seen.has(id)) this.removeNode(id);
      }
      for (const [parent, children] of [...this.pending]) {
        for (const id of [...children.keys()]) {
          if (!snap.seen.has(id)) children.delete(id);
        }
        if (children.size === 0) this.pending.delete(parent);
      }
    }

    // -- the tree ---------------------------------------------------------------
    containerOf(parentId) {
      if (parentId === this.groupId) return this.list;
      const parent = this.nodes.get(parentId);
      return parent && parent.list ? parent.list : null;
    }

    upsert(info) {
      if (info.id === this.groupId) return;
      const container = this.containerOf(info.parent);
      let node = this.nodes.get(info.id);
      if (container === null) {
        if (node) this.removeNode(info.id);
        this.dropPending(info.id);
        if (!this.pending.has(info.parent)) this.pending.set(info.parent, new Map());
        this.pending.get(info.parent).set(info.id, info);
        return;
      }
      this.dropPending(info.id);
      const isGroup = info.type === "group";
      if (node && Boolean(node.list) !== isGroup) {
        this.removeNode(info.id);
        node = undefined;
      }
      if (!node) {
        node = isGroup ? this.makeGroup(info) : this.makeJob(info);
        this.nodes.set(info.id, node);
        this.insertSorted(container, node.el, info);
      } else if (node.el.parentNode !== container) {
        this.insertSorted(container, node.el, info);
      }
      const before = node.info;
      node.info = info;
      this.countChange(before, info, node);
      if (isGroup) this.renderGroup(node); else this.renderJob(node);
      if (isGroup) this.adoptPending(info.id);
      this.scheduleRefresh();
    }

    adoptPending(parentId) {
      const waiting = this.pending.get(parentId);
      if (!waiting) return;
      this.pending.delete(parentId);
      for (const child of waiting.values()) this.upsert(child);
    }

    dropPending(id) {
      for (const [parent, children] of this.pending) {
        if (children.delete(id) && children.size === 0) this.pending.delete(parent);
      }
    }

    removeNode(id) {
      const node = this.nodes.get(id);
      if (!node) return;
      const ids = [id, ...[...node.el.querySelectorAll("[data-id]")].map((el) => el.dataset.id)];
      for (const gone of ids) {
        const other = this.nodes.get(gone);
        if (!other) continue;
        this.countChange(other.info, null, other);
        this.nodes.delete(gone);
        this.ticking.delete(gone);
        this.cancelling.delete(gone);
        this.pending.delete(gone);
      }
      node.el.remove();
      this.scheduleRefresh();
    }

    /** Newest first (by date_created), then by id, so the order never jumps. */
    insertSorted(container, el, info) {
      const key = `${info.date_created || ""}\u0000${info.id}`;
      el.dataset.sortKey = key;
      for (const sibling of container.children) {
        if (sibling !== el && sibling.dataset.sortKey < key) {
          container.insertBefore(el, sibling);
          return;
        }
      }
      container.append(el);
    }

    // -- drawing ------------------------------------------------------------------
    makeJob(info) {
      const el = element("li", "moi-node moi-job");
      el.dataset.id = info.id;
      el.dataset.type = "job";
      const parts = {
        status: element("span", "moi-status"),
        name: element("span", "moi-name"),
        elapsed: element("span", "moi-elapsed"),
        result: element("a", "moi-result", "result"),
      };
      el.append(parts.status, parts.name, parts.elapsed, parts.result);
      if (!this.readOnly) {
        parts.cancel = element("button", "moi-cancel", "Cancel");
        parts.remove = element("button", "moi-remove", "Remove");
        parts.cancel.type = parts.remove.type = "button";
        el.append(element("span", "moi-actions"));
        el.lastChild.append(parts.cancel, parts.remove);
      }
      return { info: null, el, parts };
    }

    makeGroup(info) {
      const el = element("li", "moi-node moi-group");
      el.dataset.id = info.id;
      el.dataset.type = "group";
      const details = element("details", "moi-group-details");
      details.open = true;
      const summary = element("summary", "moi-group-summary");
      const parts = {
        name: element("span", "moi-name"),
        progress: element("span", "moi-progress"),
      };
      summary.append(parts.name, parts.progress);
      if (!this.readOnly) {
        parts.remove = element("button", "moi-remove", "Remove");
        parts.remove.type = "button";
        summary.append(element("span", "moi-actions"));
        summary.lastChild.append(parts.remove);
      }
      const list = element("ul", "moi-children");
      details.append(summary, list);
      el.append(details);
      return { info: null, el, parts, list };
    }

    renderName(node) {
      const info = node.info;
      const name = info.name === null || info.name === undefined ? "(unnamed)" : String(info.name);
      const href = this.detailsUrl ? safeUrl(this.detailsUrl(info)) : null;
      const target = node.parts.name;
      const link = target.firstElementChild;
      if (href) {
        const a = link || element("a");
        a.textContent = name;
        a.setAttribute("href", href);
        if (!link) target.replaceChildren(a);
      } else {
        target.textContent = name;
      }
      node.el.title = name;
    }

    renderJob(node) {
      const { info, el, parts } = node;
      const status = info.status === null || info.status === undefined ? "" : String(info.status);
      const kind = statusKind(status);
      el.dataset.status = status;
      parts.status.textContent = status || "unknown";
      parts.status.dataset.status = status;
      parts.status.className = `moi-status moi-status-${kind}`;
      parts.status.title = status;
      this.renderName(node);
      const done = TERMINAL.has(status);
      if (done) {
        const url = safeUrl(info.url) || (this.detailsUrl ? safeUrl(this.detailsUrl(info)) : null);
        parts.result.hidden = url === null;
        if (url !== null) parts.result.setAttribute("href", url);
        else parts.result.removeAttribute("href");
      } else {
        parts.result.hidden = true;
        parts.result.removeAttribute("href");
      }
      if (parts.cancel) {
        parts.cancel.hidden = !isActive(status);
        if (!isActive(status)) this.cancelling.delete(info.id);
        parts.cancel.disabled = this.cancelling.has(info.id);
        parts.cancel.textContent = this.cancelling.has(info.id) ? "Cancelling…" : "Cancel";
      }
      const start = parseDate(info.date_start);
      const end = parseDate(info.date_end);
      parts.elapsed.title = start ? `started ${info.date_start}${end ? `, ended ${info.date_end}` : ""}` : "";
      if (start && !end) {
        this.ticking.add(info.id);
        this.renderElapsed(node);
        this.startTicking();
      } else {
        this.ticking.delete(info.id);
        parts.elapsed.textContent = start && end ? formatElapsed(end - start, true) : "";
      }
    }

    renderElapsed(node) {
      const start = parseDate(node.info.date_start);
      if (start) node.parts.elapsed.textContent = formatElapsed(Date.now() - this.skew - start);
    }

    renderGroup(node) {
      this.renderName(node);
      node.el.dataset.status = "";
    }

    startTicking() {
      if (this.tickTimer !== null) return;
      this.tickTimer = setInterval(() => {
        for (const id of this.ticking) {
          const node = this.nodes.get(id);
          if (node) this.renderElapsed(node);
        }
        if (this.ticking.size === 0) {
          clearInterval(this.tickTimer);
          this.tickTimer = null;
        }
      }, 1000);
    }

    /**
     * Learn the server's time zone offset from a date the server just set
     * (a fresh date_start or date_end), rounded to quarter hours so network
     * delay never counts.
     */
    learnSkew(before, info) {
      if (!before || !before.info) return;
      const fresh = (field) => info[field] && before.info[field] !== info[field];
      const field = fresh("date_end") ? "date_end" : fresh("date_start") ? "date_start" : null;
      const date = field ? parseDate(info[field]) : null;
      if (date) this.skew = Math.round((Date.now() - date) / QUARTER_HOUR) * QUARTER_HOUR;
    }

    // -- counts ---------------------------------------------------------------------
    count(status, node, delta = 1) {
      if (!node || node.list || status === undefined) return;
      this.statusCounts.set(status, (this.statusCounts.get(status) || 0) + delta);
    }

    countChange(before, after, node) {
      if (node.list) return;
      const old = before ? String(before.status ?? "") : undefined;
      const now = after ? String(after.status ?? "") : undefined;
      if (old === now) return;
      this.count(old, node, -1);
      this.count(now, node, 1);
    }

    scheduleRefresh() {
      if (this.refreshQueued) return;
      this.refreshQueued = true;
      queueMicrotask(() => {
        this.refreshQueued = false;
        this.renderCounts();
        this.renderProgress();
        this.empty.hidden = this.list.children.length > 0;
      });
    }

    counts() {
      const out = {};
      for (const [status, n] of this.statusCounts) {
        if (n > 0 || STATUSES.includes(status)) out[status] = n;
      }
      return out;
    }

    renderCounts() {
      const spans = [];
      for (const [status, n] of Object.entries(this.counts())) {
        const span = element("span", `moi-count moi-status-${statusKind(status)}`);
        span.dataset.status = status;
        span.dataset.count = String(n);
        span.append(element("span", "moi-count-label", status || "unknown"), " ",
          element("span", "moi-count-n", String(n)));
        spans.push(span);
      }
      this.countsEl.replaceChildren(...spans);
    }

    /** "3/5 done" in each group's summary (its direct jobs). */
    renderProgress() {
      for (const node of this.nodes.values()) {
        if (!node.list) continue;
        let total = 0;
        let done = 0;
        for (const child of node.list.children) {
          if (child.dataset.type !== "job") continue;
          total += 1;
          if (TERMINAL.has(child.dataset.status)) done += 1;
        }
        node.parts.progress.textContent = total ? `${done}/${total} done` : "empty";
      }
    }

    // -- actions ----------------------------------------------------------------------
    onClick(event) {
      const button = event.target.closest("button");
      if (!button || !this.div.contains(button)) return;
      if (button.classList.contains("moi-dismiss")) {
        button.closest(".moi-error-line").remove();
        return;
      }
      const nodeEl = button.closest("[data-id]");
      if (!nodeEl) return;
      event.preventDefault();  // a button in a <summary> must not fold the group
      const id = nodeEl.dataset.id;
      if (button.classList.contains("moi-cancel")) {
        this.cancelling.add(id);
        button.disabled = true;
        button.textContent = "Cancelling…";
        root.moi.send("cancel", [id]);
      } else if (button.classList.contains("moi-remove")) {
        button.disabled = true;
        root.moi.send("remove", [id]);
      }
    }

    showError(error) {
      const message = error && typeof error === "object" ? error.message : error;
      const ids = error && Array.isArray(error.ids) ? error.ids : [];
      for (const id of ids) this.release(id);
      const line = element("div", "moi-error-line");
      line.setAttribute("role", "alert");
      const dismiss = element("button", "moi-dismiss", "×");
      dismiss.type = "button";
      dismiss.setAttribute("aria-label", "Dismiss");
      line.append(element("span", "moi-error-text", String(message ?? "unknown error")), dismiss);
      this.errors.append(line);
      while (this.errors.children.length > MAX_ERRORS) this.errors.firstElementChild.remove();
    }

    /** Enable the buttons of `id` again (the server refused what they asked). */
    release(id) {
      this.cancelling.delete(id);
      const node = this.nodes.get(id);
      if (!node) return;
      for (const button of node.el.querySelectorAll(":scope > .moi-actions button, :scope > details > summary .moi-actions button")) {
        button.disabled = false;
      }
      if (node.parts.cancel) node.parts.cancel.textContent = "Cancel";
    }
  }

  // -- the module ------------------------------------------------------------------
  const panels = [];

  const moi_list = {
    STATUSES,
    /** Every panel made by init, oldest first. */
    panels,

    /**
     * Draw the live job panel of `group_id` inside `div`.
     *
     * @param {string} group_id  Root group of the panel (the user's group).
     * @param {Element|string} div  Element to draw in (or its id).
     * @param {object} [options]  {readOnly: hide Cancel/Remove, host: "host:port" of the
     *     server (the page's by default), detailsUrl: info => link of a node's name,
     *     or null for plain names (default "/job/<id>" and "/group/<id>")}
     * @returns {Panel}
     */
    init(group_id, div, options = {}) {
      const moi = root.moi;
      if (!moi || typeof moi.init !== "function") {
        throw new Error("moi_list.init: load moi.js before moi_list.js");
      }
      if (typeof group_id !== "string" || group_id === "") {
        throw new Error("moi_list.init: group_id must be a non-empty string");
      }
      if (options === null || typeof options !== "object") {
        throw new Error("moi_list.init: options must be an object like {readOnly: true}");
      }
      const unknown = Object.keys(options).filter((k) => !["readOnly", "host", "detailsUrl"].includes(k));
      if (unknown.length) throw new Error(`moi_list.init: unknown option(s) ${unknown.join(", ")}`);
      if (options.detailsUrl !== undefined && options.detailsUrl !== null
          && typeof options.detailsUrl !== "function") {
        throw new Error("moi_list.init: detailsUrl must be a function or null");
      }
      const panel = new Panel(group_id, resolveDiv(div), options);
      panel.attach(moi);
      panels.push(panel);
      if (!moi.initialised) {
        moi.init(group_id, options.host);  // asks for the whole tree after every (re)connect
      } else {
        // the page's own connection: ask for the tree ourselves, now and after each reconnect
        panel.ownGet = () => moi.send("get", []);
        if (moi.connected) panel.onOpen();  // else its "open" event does it
      }
      return panel;
    },

    /** {status: number of jobs} of the latest panel (the five usual statuses always present). */
    counts() {
      if (panels.length === 0) throw new Error("moi_list.counts: call moi_list.init(...) first");
      return panels[panels.length - 1].counts();
    },

    safeUrl,
    parseDate,
    formatElapsed,
    statusKind,
  };

  root.moi_list = moi_list;
})(typeof globalThis !== "undefined" ? globalThis : window);
