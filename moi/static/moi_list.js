/**
 * moi_list.js: a live panel of a moi job tree, drawn inside a <div>.
 *
 *   moi_list.init(group_id, div[, {readOnly: false, host: "", detailsUrl: info => url,
 *                                  pageSize: 50, collapseAbove: 20, xsrfToken}])
 *   moi_list.counts()   // {"Queued": 0, "Running": 1, "Success": 4, ...}
 *   panel.setFilter({status: "Failed", text: "epoch"})
 *
 * Needs moi.js loaded first; opens moi's connection unless the page already
 * did.  Groups are collapsible nodes holding their jobs (folded by default
 * when they hold more than `collapseAbove` nodes); each job shows its name,
 * the short description of its call, a status badge (a job's own status text,
 * like "epoch 13/200", counts as Running and shows beside it), the elapsed
 * time (ticking while it runs), a link to its result once done, and Cancel /
 * Remove (asking "Yes, ..." / "No" first), Retry (finished jobs) and Run
 * (Pending jobs) buttons, none of them when readOnly; Log when moi_log.js is
 * loaded.
 *
 * It stays fast at 100,000 jobs: the tree is kept in plain maps with exact
 * counts, and the DOM holds only what can be seen: pages of `pageSize` nodes
 * in the top list and in each open group, redrawn once per animation frame.
 * Filters (by status, by name substring) choose the jobs shown; the counts
 * stay those of every job.
 *
 * Everything that comes from the server goes into the page as text or as an
 * attribute value, never as HTML; links are only made from safe URLs.
 * Stable hooks for styles and tests: every node has data-id, the badge is
 * .moi-status[data-status], the buttons are .moi-cancel and .moi-remove, the
 * counts are .moi-counts [data-status], the filters .moi-filter-status and
 * .moi-filter-name, the pagers .moi-pager (.moi-prev, .moi-next).
 */
(function (root) {
  "use strict";

  const STATUSES = Object.freeze(["Queued", "Running", "Success", "Failed", "Cancelled"]);
  const TERMINAL = new Set(["Success", "Failed", "Cancelled"]);
  /** Statuses counted under their own name; any other non-empty text counts as Running. */
  const KNOWN = new Set([...STATUSES, "Pending"]);
  /** Nodes per page in the top list and in each group. */
  const PAGE_SIZE = 50;
  /** Groups holding more nodes than this start folded. */
  const COLLAPSE_ABOVE = 20;
  /** Longest wait for a redraw when the page gets no animation frames (hidden). */
  const FLUSH_FALLBACK_MS = 100;
  /** How long a "Yes, cancel" / "Yes, remove" question waits for an answer. */
  const CONFIRM_MS = 8000;
  /** Quiet time after the last "get" frame before nodes missing from a fresh snapshot are dropped. */
  const SNAPSHOT_QUIET_MS = 400;
  /** Most error lines kept on screen. */
  const MAX_ERRORS = 5;
  const QUARTER_HOUR = 15 * 60 * 1000;

  // -- pure helpers ------------------------------------------------------------

  /** The CSS modifier of a status: "queued", ..., "cancelled", "custom" or "none". */
  function statusKind(status) {
    if (status === null || status === undefined || status === "") return "none";
    return KNOWN.has(status) ? status.toLowerCase() : "custom";
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

  function button(className, text) {
    const el = element("button", className, text);
    el.type = "button";
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

  /** The key a job is counted under: a known status, "" (none), or "Running" for a job's own text. */
  function countKey(status) {
    if (status === null || status === undefined || status === "") return "";
    return KNOWN.has(status) ? status : "Running";
  }

  function byNewest(a, b) {
    return a.key < b.key ? 1 : a.key > b.key ? -1 : 0;
  }

  function sortKey(info) {
    return `${info.date_created || ""}\u0000${info.id}`;
  }

  /**
   * One live panel: the tree under `groupId`, drawn in `div`.
   *
   * State lives in plain maps (every node, counts by status, per-group counts);
   * the DOM holds rows only for what can be seen: the current page of the top
   * list and of every open group.  Changes mark rows and lists dirty; one
   * flush per animation frame redraws them.
   */
  class Panel {
    constructor(groupId, div, options) {
      this.groupId = groupId;
      this.div = div;
      this.readOnly = Boolean(options.readOnly);
      this.detailsUrl = options.detailsUrl === undefined ? defaultDetailsUrl : options.detailsUrl;
      this.pageSize = options.pageSize || PAGE_SIZE;
      this.collapseAbove = options.collapseAbove === undefined ? COLLAPSE_ABOVE : options.collapseAbove;
      this.xsrfToken = options.xsrfToken;
      this.root = { id: groupId, isGroup: true, kids: new Set(), sorted: null, tally: new Map(), mc: 0, parent: null };
      this.nodes = new Map();       // id -> {id, info, parent, isGroup, kids, sorted, key, tally, mc, m}
      this.pending = new Map();     // parent id -> Map(id -> info): nodes whose parent is unknown yet
      this.pendingOf = new Map();   // id -> the parent it waits for
      this.statusCounts = new Map(STATUSES.map((s) => [s, 0]));
      this.rows = new Map();        // id -> {el, parts, list, pager} of rows in the DOM
      this.open = new Map();        // group id -> open (set by the user)
      this.pages = new Map();       // container id -> page number
      this.dirtyRows = new Set();
      this.dirtyLists = new Set();
      this.flushQueued = false;
      this.ticking = new Set();
      this.tickTimer = null;
      this.cancelling = new Set();
      this.confirming = new Map();  // id -> {action, timer}
      this.skew = 0;
      this.snapshot = null;
      this.filter = { status: "", text: "" };
      this.listeners = [];          // functions called with (info, before) for every job change
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
      const filters = element("div", "moi-filters");
      this.statusSelect = element("select", "moi-filter-status");
      this.statusSelect.setAttribute("aria-label", "show jobs of status");
      this.statusSelect.append(new Option("all statuses", ""));
      for (const s of KNOWN) this.statusSelect.append(new Option(s, s));
      this.nameInput = element("input", "moi-filter-name");
      this.nameInput.type = "search";
      this.nameInput.placeholder = "filter by name";
      this.nameInput.setAttribute("aria-label", "show jobs whose name contains");
      this.shownEl = element("span", "moi-shown");
      filters.append(this.statusSelect, this.nameInput, this.shownEl);
      this.errors = element("div", "moi-errors");
      this.errors.setAttribute("aria-live", "polite");
      this.empty = element("p", "moi-empty", "No jobs yet.");
      this.list = element("ul", "moi-children moi-tree");
      this.pager = this.makePager();
      div.append(bar, filters, this.errors, this.empty, this.list, this.pager);
      div.addEventListener("click", (event) => this.onClick(event));
      div.addEventListener("toggle", (event) => this.onToggle(event), true);
      this.statusSelect.addEventListener("change", () => this.setFilter({ status: this.statusSelect.value }));
      this.nameInput.addEventListener("input", () => this.setFilter({ text: this.nameInput.value }));
      this.renderCounts();
    }

    makePager() {
      const pager = element("div", "moi-pager");
      const prev = element("button", "moi-prev", "‹ newer");
      const next = element("button", "moi-next", "older ›");
      prev.type = next.type = "button";
      pager.append(prev, element("span", "moi-page"), next);
      pager.hidden = true;
      return pager;
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
      this.snapshot = { seen: new Set(), gets: 0, timer: null, last: 0 };
    }

    restartSnapshotTimer() {
      // one timer per quiet period, not one per frame
      this.snapshot.last = Date.now();
      if (this.snapshot.timer !== null) return;
      const check = () => {
        const snap = this.snapshot;
        if (snap === null) return;
        const left = snap.last + SNAPSHOT_QUIET_MS - Date.now();
        if (left > 0) snap.timer = setTimeout(check, left);
        else this.endSnapshot(true);
      };
      this.snapshot.timer = setTimeout(check, SNAPSHOT_QUIET_MS);
    }

    /** Stop collecting; with `sweep` (the tree arrived), drop nodes the fresh tree did not mention. */
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
          if (!snap.seen.has(id)) this.dropPending(id);
        }
      }
    }

    // -- the tree (plain maps) ----------------------------------------------------
    group(id) {
      if (id === this.groupId) return this.root;
      const node = this.nodes.get(id);
      return node && node.isGroup ? node : null;
    }

    upsert(info) {
      if (info.id === this.groupId) return;
      const parent = this.group(info.parent);
      let node = this.nodes.get(info.id);
      if (parent === null) {
        if (node) this.removeNode(info.id);
        this.dropPending(info.id);
        if (!this.pending.has(info.parent)) this.pending.set(info.parent, new Map());
        this.pending.get(info.parent).set(info.id, info);
        this.pendingOf.set(info.id, info.parent);
        return;
      }
      this.dropPending(info.id);
      const isGroup = info.type === "group";
      if (node && node.isGroup !== isGroup) {
        this.removeNode(info.id);
        node = undefined;
      }
      if (node && node.parent !== parent) {
        this.removeNode(info.id);
        node = undefined;
      }
      const before = node ? node.info : null;
      if (!node) {
        node = { id: info.id, info, parent, isGroup, key: sortKey(info), m: false, mc: 0 };
        if (isGroup) Object.assign(node, { kids: new Set(), sorted: null, tally: new Map() });
        this.nodes.set(info.id, node);
        parent.kids.add(info.id);
        parent.sorted = null;
        this.markList(parent.id);
      } else {
        node.info = info;
        const key = sortKey(info);
        if (key !== node.key) {
          node.key = key;
          parent.sorted = null;
          this.markList(parent.id);
        }
      }
      if (!isGroup) {
        this.countChange(node, before, info);
        this.rematch(node);
        for (const listen of this.listeners) listen(info, before);
      }
      this.markRow(info.id);
      if (isGroup) this.adoptPending(info.id);
    }

    adoptPending(parentId) {
      const waiting = this.pending.get(parentId);
      if (!waiting) return;
      this.pending.delete(parentId);
      for (const child of waiting.values()) {
        this.pendingOf.delete(child.id);
        this.upsert(child);
      }
    }

    dropPending(id) {
      const parent = this.pendingOf.get(id);
      if (parent === undefined) return;
      this.pendingOf.delete(id);
      const children = this.pending.get(parent);
      if (children && children.delete(id) && children.size === 0) this.pending.delete(parent);
    }

    removeNode(id) {
      const node = this.nodes.get(id);
      if (!node) return;
      if (node.isGroup) {
        for (const kid of [...node.kids]) this.removeNode(kid);
        const waiting = this.pending.get(id);
        if (waiting) for (const child of [...waiting.keys()]) this.dropPending(child);
        this.open.delete(id);
        this.pages.delete(id);
      } else {
        this.countChange(node, node.info, null);
        if (this.filtering() && node.m) this.addMatch(node.parent, -1);
        for (const listen of this.listeners) listen(null, node.info);
      }
      this.nodes.delete(id);
      node.parent.kids.delete(id);
      node.parent.sorted = null;
      this.markList(node.parent.id);
      this.markRow(node.parent.id);
      this.cancelling.delete(id);
      this.unconfirm(id);
    }

    // -- counts ---------------------------------------------------------------------
    countChange(node, before, after) {
      const old = before ? countKey(before.status) : undefined;
      const now = after ? countKey(after.status) : undefined;
      if (old === now) return;
      const tally = node.parent.tally;
      if (old !== undefined) {
        this.statusCounts.set(old, this.statusCounts.get(old) - 1);
        tally.set(old, tally.get(old) - 1);
      }
      if (now !== undefined) {
        this.statusCounts.set(now, (this.statusCounts.get(now) || 0) + 1);
        tally.set(now, (tally.get(now) || 0) + 1);
      }
      this.countsDirty = true;
      this.markRow(node.parent.id);
    }

    counts() {
      const out = {};
      for (const [status, n] of this.statusCounts) {
        if (n > 0 || STATUSES.includes(status)) out[status] = n;
      }
      return out;
    }

    // -- filters ------------------------------------------------------------------------
    filtering() {
      return this.filter.status !== "" || this.filter.text !== "";
    }

    matches(info) {
      const f = this.filter;
      if (f.status !== "" && countKey(info.status) !== f.status) return false;
      if (f.text !== "") {
        const name = info.name === null || info.name === undefined ? "" : String(info.name);
        if (!name.toLowerCase().includes(f.text)) return false;
      }
      return true;
    }

    /** Whether a job matches changed: tell its groups (they show while they hold a match). */
    rematch(node) {
      if (!this.filtering()) return;
      const now = this.matches(node.info);
      if (now === node.m) return;
      node.m = now;
      this.addMatch(node.parent, now ? 1 : -1);
      this.markList(node.parent.id);
    }

    addMatch(group, delta) {
      for (let g = group; g; g = g.parent) {
        g.mc += delta;
        if (g.parent) {
          this.markList(g.parent.id);
          this.markRow(g.id);
        }
      }
      this.matchDirty = true;
    }

    /**
     * Show only jobs of `status` ("" for all) whose name contains `text`
     * (any case), and the groups holding them.  Counts stay those of all jobs.
     */
    setFilter(change) {
      const next = { ...this.filter, ...change };
      next.status = String(next.status || "");
      next.text = String(next.text || "").toLowerCase();
      if (next.status === this.filter.status && next.text === this.filter.text) return;
      this.filter = next;
      if (this.statusSelect.value !== next.status) this.statusSelect.value = next.status;
      if (this.nameInput.value.toLowerCase() !== next.text) this.nameInput.value = next.text;
      this.root.mc = 0;
      for (const node of this.nodes.values()) node.mc = 0;
      if (this.filtering()) {
        for (const node of this.nodes.values()) {
          if (node.isGroup) continue;
          node.m = this.matches(node.info);
          if (node.m) for (let g = node.parent; g; g = g.parent) g.mc += 1;
        }
      }
      this.pages.clear();
      this.markList(this.groupId);
      for (const id of this.rows.keys()) if (this.nodes.get(id)?.isGroup) this.markRow(id);
      this.matchDirty = true;
      this.schedule();
    }

    // -- what can be seen -----------------------------------------------------------
    /** Ids a container shows, newest first, filtered. */
    shownKids(group) {
      if (group.sorted === null) {
        const kids = [];
        for (const id of group.kids) kids.push(this.nodes.get(id));
        group.sorted = kids.sort(byNewest);
      }
      if (!this.filtering()) return group.sorted;
      return group.sorted.filter((n) => (n.isGroup ? n.mc > 0 : n.m));
    }

    isOpen(node) {
      const chosen = this.open.get(node.id);
      if (chosen !== undefined) return chosen;
      return node.kids.size <= this.collapseAbove || (this.filtering() && node.mc <= this.collapseAbove);
    }

    /** Redraw the row of `id` at the next frame (if it is drawn: a new row is drawn fresh). */
    markRow(id) {
      if (!this.rows.has(id)) return;
      this.dirtyRows.add(id);
      this.schedule();
    }

    markList(id) {
      this.dirtyLists.add(id);
      this.schedule();
    }

    schedule() {
      if (this.flushQueued) return;
      this.flushQueued = true;
      const run = () => this.flush();
      this.frame = requestAnimationFrame(run);
      this.fallback = setTimeout(run, FLUSH_FALLBACK_MS);  // hidden tabs get no frames
    }

    /** Redraw what changed: dirty lists (pages), dirty rows, the counts. */
    flush() {
      if (!this.flushQueued) return;
      this.flushQueued = false;
      cancelAnimationFrame(this.frame);
      clearTimeout(this.fallback);
      const lists = this.dirtyLists;
      const rows = this.dirtyRows;
      this.dirtyLists = new Set();
      this.dirtyRows = new Set();
      if (lists.has(this.groupId)) this.renderList(this.root, this.list, this.pager);
      for (const id of lists) {
        if (id === this.groupId) continue;
        const row = this.rows.get(id);
        const node = this.nodes.get(id);
        if (row && node && !row.fresh) {
          this.renderGroup(node, row);  // opens or folds it as need be, then its page
          rows.delete(id);
        }
      }
      for (const id of rows) {
        const row = this.rows.get(id);
        const node = this.nodes.get(id);
        if (row && node && !row.fresh) this.renderRow(node, row);
      }
      for (const row of this.rows.values()) row.fresh = false;
      if (this.countsDirty) {
        this.countsDirty = false;
        this.renderCounts();
      }
      if (this.matchDirty || lists.size) {
        this.matchDirty = false;
        const total = this.nodes.size === 0 ? 0 : this.totalJobs();
        this.shownEl.textContent = this.filtering() ? `${this.root.mc} of ${total} jobs match` : "";
        this.shownEl.dataset.matching = String(this.filtering() ? this.root.mc : total);
      }
      this.empty.hidden = this.root.kids.size > 0;
      this.empty.textContent = "No jobs yet.";
      if (this.root.kids.size > 0 && this.filtering() && this.root.mc === 0) {
        this.empty.hidden = false;
        this.empty.textContent = "No job matches the filter.";
      }
      if (this.onFlush) this.onFlush();
    }

    totalJobs() {
      let n = 0;
      for (const v of this.statusCounts.values()) n += v;
      return n;
    }

    /** Draw page `pages[node.id]` of a container's shown kids into `ul`, reusing rows. */
    renderList(node, ul, pager) {
      const shown = this.shownKids(node);
      const size = this.pageSize;
      const last = Math.max(0, Math.ceil(shown.length / size) - 1);
      const page = Math.min(this.pages.get(node.id) || 0, last);
      if (page) this.pages.set(node.id, page); else this.pages.delete(node.id);
      const slice = shown.slice(page * size, page * size + size);
      const wanted = new Set(slice.map((n) => n.id));
      for (const el of [...ul.children]) {
        if (!wanted.has(el.dataset.id)) this.dropRow(el.dataset.id, el);
      }
      let at = ul.firstElementChild;
      for (const kid of slice) {
        let row = this.rows.get(kid.id);
        if (!row) row = this.makeRow(kid);
        if (row.el !== at) ul.insertBefore(row.el, at);
        else at = at.nextElementSibling;
      }
      pager.hidden = shown.length <= size;
      pager.dataset.page = String(page);
      pager.querySelector(".moi-page").textContent = shown.length
        ? `${page * size + 1}–${page * size + slice.length} of ${shown.length}` : "";
      pager.querySelector(".moi-prev").disabled = page === 0;
      pager.querySelector(".moi-next").disabled = page >= last;
    }

    dropRow(id, el) {
      const row = this.rows.get(id);
      if (row && row.list) {
        for (const kid of [...row.list.children]) this.dropRow(kid.dataset.id, kid);
      }
      this.rows.delete(id);
      this.ticking.delete(id);
      (row ? row.el : el).remove();
    }

    makeRow(node) {
      const row = node.isGroup ? this.makeGroup(node.info) : this.makeJob(node.info);
      row.fresh = true;
      this.rows.set(node.id, row);
      this.renderRow(node, row);
      return row;
    }

    renderRow(node, row) {
      if (node.isGroup) this.renderGroup(node, row); else this.renderJob(node, row);
    }

    // -- drawing ------------------------------------------------------------------
    makeJob(info) {
      const el = element("li", "moi-node moi-job");
      el.dataset.id = info.id;
      el.dataset.type = "job";
      const parts = {
        status: element("span", "moi-status"),
        text: element("span", "moi-status-text"),
        name: element("span", "moi-name"),
        elapsed: element("span", "moi-elapsed"),
        result: element("a", "moi-result", "result"),
      };
      const label = element("span", "moi-label");
      parts.call = element("span", "moi-call");
      label.append(parts.name, parts.call);
      el.append(parts.status, parts.text, label, parts.elapsed, parts.result);
      const actions = element("span", "moi-actions");
      parts.log = button("moi-log", "Log");
      actions.append(parts.log);
      if (!this.readOnly) {
        parts.cancel = button("moi-cancel", "Cancel");
        parts.remove = button("moi-remove", "Remove");
        parts.retry = button("moi-retry", "Retry");
        parts.run = button("moi-run", "Run");
        parts.confirm = button("moi-confirm", "");
        parts.keep = button("moi-keep", "No");
        actions.append(parts.run, parts.retry, parts.cancel, parts.remove, parts.confirm, parts.keep);
      }
      el.append(actions);
      return { el, parts };
    }

    makeGroup(info) {
      const el = element("li", "moi-node moi-group");
      el.dataset.id = info.id;
      el.dataset.type = "group";
      const details = element("details", "moi-group-details");
      const summary = element("summary", "moi-group-summary");
      const parts = {
        name: element("span", "moi-name"),
        progress: element("span", "moi-progress"),
      };
      summary.append(parts.name, parts.progress);
      if (!this.readOnly) {
        parts.remove = button("moi-remove", "Remove");
        parts.confirm = button("moi-confirm", "");
        parts.keep = button("moi-keep", "No");
        summary.append(element("span", "moi-actions"));
        summary.lastChild.append(parts.remove, parts.confirm, parts.keep);
      }
      const list = element("ul", "moi-children");
      const pager = this.makePager();
      details.append(summary, list, pager);
      el.append(details);
      return { el, parts, list, pager, details };
    }

    renderName(info, parts, el) {
      const name = info.name === null || info.name === undefined ? "(unnamed)" : String(info.name);
      const href = this.detailsUrl ? safeUrl(this.detailsUrl(info)) : null;
      const target = parts.name;
      const link = target.firstElementChild;
      if (href) {
        const a = link || element("a");
        a.textContent = name;
        a.setAttribute("href", href);
        if (!link) target.replaceChildren(a);
      } else {
        target.textContent = name;
      }
      el.title = name;
    }

    renderConfirm(id, parts) {
      if (!parts.confirm) return false;
      const asked = this.confirming.get(id);
      parts.confirm.hidden = parts.keep.hidden = !asked;
      if (asked) parts.confirm.textContent = asked.action === "cancel" ? "Yes, cancel" : "Yes, remove";
      parts.confirm.dataset.action = asked ? asked.action : "";
      return Boolean(asked);
    }

    renderJob(node, row) {
      const info = node.info;
      const { el, parts } = row;
      const status = info.status === null || info.status === undefined ? "" : String(info.status);
      const key = countKey(status);
      const own = key === "Running" && status !== "Running";  // text set by the running job
      el.dataset.status = status;
      parts.status.textContent = key || "unknown";
      parts.status.dataset.status = status;
      parts.status.className = `moi-status moi-status-${statusKind(key)}`;
      parts.status.title = status;
      parts.text.textContent = own ? status : "";
      parts.text.hidden = !own;
      this.renderName(info, parts, el);
      const call = typeof info.call === "string" ? info.call : "";
      parts.call.textContent = call;
      parts.call.hidden = call === "";
      parts.call.title = call;
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
      parts.log.hidden = !(root.moi_log && typeof root.moi_log.open === "function");
      if (parts.cancel) {
        const asking = this.renderConfirm(info.id, parts);
        if (!isActive(status)) this.cancelling.delete(info.id);
        parts.cancel.hidden = asking || !isActive(status) || status === "Pending";
        parts.cancel.disabled = this.cancelling.has(info.id);
        parts.cancel.textContent = this.cancelling.has(info.id) ? "Cancelling…" : "Cancel";
        parts.remove.hidden = asking;
        parts.retry.hidden = asking || !done;
        parts.run.hidden = asking || status !== "Pending";
      }
      const start = parseDate(info.date_start);
      const end = parseDate(info.date_end);
      parts.elapsed.title = start ? `started ${info.date_start}${end ? `, ended ${info.date_end}` : ""}` : "";
      if (start && !end) {
        this.ticking.add(info.id);
        this.renderElapsed(node, row);
        this.startTicking();
      } else {
        this.ticking.delete(info.id);
        parts.elapsed.textContent = start && end ? formatElapsed(end - start, true) : "";
      }
    }

    renderElapsed(node, row) {
      const start = parseDate(node.info.date_start);
      if (start) row.parts.elapsed.textContent = formatElapsed(Date.now() - this.skew - start);
    }

    /** A group's row: its name, "n jobs: x succeeded, y failed, ..." and, when open, its page of kids. */
    renderGroup(node, row) {
      this.renderName(node.info, row.parts, row.el);
      row.el.dataset.status = "";
      const tally = node.tally;
      const get = (s) => tally.get(s) || 0;
      let total = 0;
      for (const n of tally.values()) total += n;
      const parts = [`${get("Success")} succeeded`, `${get("Failed")} failed`];
      for (const [s, word] of [["Running", "running"], ["Queued", "queued"], ["Cancelled", "cancelled"], ["Pending", "pending"]]) {
        if (get(s)) parts.push(`${get(s)} ${word}`);
      }
      const groups = node.kids.size - total;
      const text = total ? `${total} job${total === 1 ? "" : "s"}: ${parts.join(", ")}` : "no jobs";
      row.parts.progress.textContent = groups ? `${text}; ${groups} group${groups === 1 ? "" : "s"}` : text;
      Object.assign(row.parts.progress.dataset, {
        total: String(total), succeeded: String(get("Success")), failed: String(get("Failed")),
      });
      if (row.parts.remove) {
        const asking = this.renderConfirm(node.id, row.parts);
        row.parts.remove.hidden = asking;
      }
      const open = this.isOpen(node);
      row.drawnOpen = open;  // a toggle event to this state is ours, not the user's
      if (row.details.open !== open) row.details.open = open;
      if (open) this.renderList(node, row.list, row.pager);
      else if (row.list.firstChild) {
        for (const kid of [...row.list.children]) this.dropRow(kid.dataset.id, kid);
      }
    }

    onToggle(event) {
      const details = event.target;
      if (!(details instanceof Element) || !details.classList.contains("moi-group-details")) return;
      const el = details.parentElement;
      const row = el && this.rows.get(el.dataset.id);
      // Toggle events come later, and several programmatic changes may give one
      // event or several: only a state other than the one drawn is the user's.
      if (!row || row.details !== details || details.open === row.drawnOpen) return;
      row.drawnOpen = details.open;
      this.open.set(el.dataset.id, details.open);
      this.markRow(el.dataset.id);
    }

    startTicking() {
      if (this.tickTimer !== null) return;
      this.tickTimer = setInterval(() => {
        for (const id of this.ticking) {
          const node = this.nodes.get(id);
          const row = this.rows.get(id);
          if (node && row) this.renderElapsed(node, row);
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

    // -- actions ----------------------------------------------------------------------
    onClick(event) {
      const target = event.target.closest("button");
      if (!target || !this.div.contains(target)) return;
      if (target.classList.contains("moi-dismiss")) {
        target.closest(".moi-error-line").remove();
        return;
      }
      const pager = target.closest(".moi-pager");
      if (pager) {
        const holder = pager.closest("[data-id]");
        const id = holder ? holder.dataset.id : this.groupId;
        const step = target.classList.contains("moi-next") ? 1 : target.classList.contains("moi-prev") ? -1 : 0;
        this.pages.set(id, Math.max(0, (this.pages.get(id) || 0) + step));
        this.markList(id);
        return;
      }
      const nodeEl = target.closest("[data-id]");
      if (!nodeEl) return;
      event.preventDefault();  // a button in a <summary> must not fold the group
      const id = nodeEl.dataset.id;
      const kind = ["moi-cancel", "moi-remove", "moi-confirm", "moi-keep", "moi-retry", "moi-run", "moi-log"]
        .find((c) => target.classList.contains(c));
      if (kind === "moi-cancel" || kind === "moi-remove") {
        this.ask(id, kind === "moi-cancel" ? "cancel" : "remove");
      } else if (kind === "moi-keep") {
        this.unconfirm(id);
      } else if (kind === "moi-confirm") {
        const asked = this.confirming.get(id);
        this.unconfirm(id);
        if (!asked) return;
        if (asked.action === "cancel") {
          this.cancelling.add(id);
          root.moi.send("cancel", [id]);
        } else {
          const row = this.rows.get(id);
          if (row && row.parts.remove) row.parts.remove.disabled = true;
          root.moi.send("remove", [id]);
        }
      } else if (kind === "moi-retry" || kind === "moi-run") {
        this.post(id, kind === "moi-retry" ? "retry" : "run", target);
      } else if (kind === "moi-log" && root.moi_log && typeof root.moi_log.open === "function") {
        let slot = nodeEl.querySelector(":scope > .moi-log-slot");
        if (!slot) {
          slot = element("div", "moi-log-slot");
          nodeEl.append(slot);
        }
        root.moi_log.open(id, slot);
      }
    }

    /** Ask before cancelling or removing: the row shows "Yes, ..." / "No" for a while. */
    ask(id, action) {
      this.unconfirm(id);
      const timer = setTimeout(() => this.unconfirm(id), CONFIRM_MS);
      this.confirming.set(id, { action, timer });
      this.markRow(id);
      this.flush();
      const row = this.rows.get(id);
      if (row && row.parts.confirm) row.parts.confirm.focus();
    }

    unconfirm(id) {
      const asked = this.confirming.get(id);
      if (!asked) return;
      clearTimeout(asked.timer);
      this.confirming.delete(id);
      this.markRow(id);
    }

    /** POST /api/v1/jobs/{id}/{verb} with the dashboard's XSRF token; errors show in the panel. */
    async post(id, verb, target) {
      const token = this.xsrfToken !== undefined ? this.xsrfToken
        : (document.querySelector("input[name=_xsrf]") || {}).value || "";
      target.disabled = true;
      try {
        const reply = await fetch(`/api/v1/jobs/${encodeURIComponent(id)}/${verb}`, {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-XSRFToken": token, "Content-Type": "application/json" },
          body: "{}",
        });
        if (!reply.ok) {
          let message = `${verb} failed: ${reply.status} ${reply.statusText}`;
          try {
            const body = await reply.json();
            if (body && body.error) message = `${verb} failed: ${body.error.message || body.error}`;
          } catch (err) { /* not JSON */ }
          this.showError({ message, action: verb, ids: [id] });
        }
      } catch (err) {
        this.showError({ message: `${verb} failed: ${err.message}`, action: verb, ids: [id] });
      } finally {
        target.disabled = false;
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
      const row = this.rows.get(id);
      if (!row) return;
      for (const b of row.el.querySelectorAll(":scope > .moi-actions button, :scope > details > summary .moi-actions button")) {
        b.disabled = false;
      }
      if (row.parts.cancel) row.parts.cancel.textContent = "Cancel";
    }
  }

  // -- the module ------------------------------------------------------------------
  const panels = [];

  const moi_list = {
    STATUSES,
    KNOWN,
    /** Every panel made by init, oldest first. */
    panels,

    /**
     * Draw the live job panel of `group_id` inside `div`.
     *
     * @param {string} group_id  Root group of the panel (the user's group).
     * @param {Element|string} div  Element to draw in (or its id).
     * @param {object} [options]  {readOnly: hide Cancel/Remove, host: "host:port" of the
     *     server (the page's by default), detailsUrl: info => link of a node's name,
     *     or null for plain names (default "/job/<id>" and "/group/<id>"), pageSize:
     *     nodes per page (50), collapseAbove: groups larger than this start folded (20),
     *     xsrfToken: sent with Retry / Run (default: the page's input[name=_xsrf])}
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
      const unknown = Object.keys(options).filter((k) => !["readOnly", "host", "detailsUrl", "pageSize", "collapseAbove", "xsrfToken"].includes(k));
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
    countKey,
    parseDate,
    formatElapsed,
    statusKind,
  };

  root.moi_list = moi_list;
})(typeof globalThis !== "undefined" ? globalThis : window);
