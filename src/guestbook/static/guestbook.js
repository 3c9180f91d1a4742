// Progressive enhancement of the guestbook page; the page works without it.
//
// - Posting goes through the JSON API without a reload; the poster's message shows at once.
//   The text box is a textarea: Enter posts, Shift+Enter starts a new line. A counter counts
//   what the server counts, and every refusal (empty, too long, too many posts, the store
//   unavailable, no answer at all) shows its reason. What was typed is never thrown away.
// - New messages from everyone arrive over Server-Sent Events (/api/messages/stream), resumed
//   after the last id seen, so a dropped connection misses nothing; ids are never shown twice.
//   The stream also says when the guestbook cannot reach its messages (`event: status`).
// - One banner tells what is wrong (posting paused, messages unavailable, unreachable, live
//   updates paused) and clears itself once it is not.
// - Times read "2 min ago", with the exact time on hover.
// Text is only ever set with textContent: a message can never become markup.
"use strict";

(function () {
  const main = document.querySelector("main.book");
  const form = document.querySelector("form.post");
  const input = document.getElementById("text");
  const list = document.getElementById("messages");
  const banner = document.getElementById("banner");
  const liveMark = document.getElementById("live");
  const counter = document.getElementById("count");
  if (!main || !form || !input || !list || !banner) return;
  const button = form.querySelector("button");
  const maxChars = Number(main.dataset.maxChars) || 500;

  const MAX_SHOWN = 200;
  const seen = new Set();
  for (const li of list.querySelectorAll("li[data-id]")) seen.add(li.dataset.id);

  // --- ids --------------------------------------------------------------------------------
  // "<ms>-<seq>": both parts fit a double exactly for any real clock and sequence.
  function compareIds(a, b) {
    const [am, as] = a.split("-").map(Number);
    const [bm, bs] = b.split("-").map(Number);
    return am - bm || as - bs;
  }

  // --- the banner ---------------------------------------------------------------------------
  // Several things can be wrong at once; the most important one is shown.
  const PRIORITY = ["error", "offline", "store", "readonly", "live"];
  const POSTING_PAUSED =
    "Posting is paused: the guestbook cannot save messages right now. Reading still works.";
  const STORE_DOWN =
    "The guestbook cannot load messages right now: new ones will not appear and posting is " +
    "paused. This page catches up by itself once it can again.";
  const notices = new Map();
  let errorTimer = 0;

  function notice(kind, text) {
    if (text) notices.set(kind, text);
    else notices.delete(kind);
    const shown = PRIORITY.find((k) => notices.has(k));
    banner.hidden = !shown;
    banner.textContent = shown ? notices.get(shown) : "";
    banner.className = shown ? `banner banner-${shown}` : "banner";
    banner.dataset.kind = shown || "";
  }

  function showError(text) {
    notice("error", text);
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => notice("error", null), 10000);
  }

  // A form error rendered by the server (the no-JavaScript path) stays until the next post.
  if (!banner.hidden && banner.textContent.trim()) notices.set("error", banner.textContent.trim());
  // A page rendered from the feed's last copy says so; the banner takes the notice over, and
  // the live stream says when the store is back (the page then catches up from the stream).
  const stale = document.getElementById("stale");
  let staleText = stale ? stale.textContent.trim() : null;
  let storeDown = Boolean(stale);
  if (stale) {
    notices.set("store", staleText);
    stale.remove();
  }
  notice("error", notices.get("error") || null);

  // --- the live badge ---------------------------------------------------------------------
  function badge(state) {
    if (!liveMark) return;
    liveMark.hidden = state === "off";
    liveMark.dataset.state = state;
    liveMark.textContent = state === "paused" ? "Paused" : "Live";
    liveMark.title =
      state === "paused"
        ? "New messages cannot be loaded right now"
        : "New messages appear as they are posted";
  }

  function storeStatus(down) {
    storeDown = down;
    if (!down) staleText = null;
    notice("store", down ? staleText || STORE_DOWN : null);
    badge(down ? "paused" : "live");
  }

  // --- times --------------------------------------------------------------------------------
  const exact = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
  const day = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

  function relative(date, now) {
    const seconds = Math.round((now - date) / 1000);
    if (seconds < 45) return "just now";
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.round(minutes / 60);
    if (hours < 24) return `${hours} h ago`;
    const days = Math.round(hours / 24);
    if (days === 1) return "yesterday";
    if (days < 7) return `${days} days ago`;
    return day.format(date);
  }

  function showTime(time, now) {
    const date = new Date(time.dateTime);
    if (Number.isNaN(date.getTime())) return;
    time.textContent = relative(date, now);
    time.title = exact.format(date);
  }

  function refreshTimes() {
    const now = Date.now();
    for (const time of list.querySelectorAll("time[datetime]")) showTime(time, now);
  }

  // --- the list -------------------------------------------------------------------------------
  function element(message) {
    const li = document.createElement("li");
    li.dataset.id = message.id;
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = message.text;
    const time = document.createElement("time");
    time.dateTime = message.created_at;
    showTime(time, Date.now());
    li.append(text, time);
    return li;
  }

  function add(message) {
    if (!message || typeof message.id !== "string" || seen.has(message.id)) return;
    seen.add(message.id);
    const empty = list.querySelector("li.empty");
    if (empty) empty.remove();
    const li = element(message);
    li.classList.add("new");
    // Newest first; a message may arrive out of order (one's own post races the stream).
    let before = null;
    for (const other of list.querySelectorAll("li[data-id]")) {
      if (compareIds(other.dataset.id, message.id) < 0) {
        before = other;
        break;
      }
    }
    list.insertBefore(li, before);
    trim();
  }

  function trim() {
    const items = list.querySelectorAll("li[data-id]");
    if (items.length <= MAX_SHOWN) return;
    for (let i = MAX_SHOWN; i < items.length; i++) {
      seen.delete(items[i].dataset.id);
      items[i].remove();
    }
    // What was cut off is one click away, like any older page.
    const last = items[MAX_SHOWN - 1].dataset.id;
    let older = document.getElementById("older");
    if (!older) {
      older = document.createElement("a");
      older.id = "older";
      older.rel = "next";
      older.textContent = "Older messages";
      const nav = document.querySelector("nav.paging") || main.appendChild(document.createElement("nav"));
      nav.classList.add("paging");
      nav.append(older);
    }
    older.href = `/?before=${encodeURIComponent(last)}`;
  }

  // --- health -----------------------------------------------------------------------------
  let readyTimer = 0;
  let leaderTimer = 0;

  async function checkReady() {
    clearTimeout(readyTimer);
    let ok = false;
    try {
      ok = (await fetch("/readyz", { cache: "no-store" })).ok;
    } catch (_) {
      ok = false;
    }
    notice("offline", ok ? null : "The guestbook cannot be reached right now. Retrying…");
    if (!ok) readyTimer = setTimeout(checkReady, 3000);
    return ok;
  }

  // Posts answer 503 while the store cannot take writes. Watch until it can again.
  async function checkLeader(text) {
    clearTimeout(leaderTimer);
    let writable = false;
    try {
      const response = await fetch("/api/status", { cache: "no-store" });
      if (response.ok) writable = Boolean((await response.json()).leader?.reachable);
    } catch (_) {
      writable = false;
    }
    if (writable) {
      notice("readonly", null);
      return;
    }
    notice("readonly", text || notices.get("readonly") || POSTING_PAUSED);
    leaderTimer = setTimeout(checkLeader, 2000);
  }

  // --- what the server counts ---------------------------------------------------------------
  // The server stores text.replace("\r\n", "\n").strip() and counts it with Python's len():
  // code points, and Python's idea of white space, which is not String.prototype.trim()'s
  // (that one strips U+FEFF and keeps U+001C–U+001F and U+0085).
  const SPACE = "[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
  const EDGES = new RegExp(`^${SPACE}+|${SPACE}+$`, "g");

  function cleaned(raw) {
    return raw.replace(/\r\n/g, "\n").replace(EDGES, "");
  }

  function charCount(text) {
    return [...text].length; // code points; .length would count UTF-16 units
  }

  function refusal(raw) {
    const text = cleaned(raw);
    if (!text) return "The message is empty.";
    const count = charCount(text);
    if (count > maxChars) return `The message is ${count} characters long; the limit is ${maxChars}.`;
    return null;
  }

  function showCount() {
    if (!counter) return;
    const count = charCount(cleaned(input.value));
    const over = count - maxChars;
    counter.textContent =
      over > 0 ? `${count} / ${maxChars} characters: ${over} too many` : `${count} / ${maxChars} characters`;
    counter.classList.toggle("over", over > 0);
    if (over > 0) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  // --- posting ----------------------------------------------------------------------------
  async function problemDetail(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (_) {
      // not JSON: fall through to a generic message
    }
    return `The message could not be posted (HTTP ${response.status}).`;
  }

  let sending = false;

  const honeypot = document.getElementById("website");
  let pendingText = null;
  let pendingKey = "";

  function newKey() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // A held post is shown to its poster alone, marked, until a moderator decides.
  function showHeld(message) {
    if (!message || typeof message.id !== "string") return;
    if (list.querySelector(`li[data-held="${CSS.escape(message.id)}"]`)) return;
    const empty = list.querySelector("li.empty");
    if (empty) empty.remove();
    const li = document.createElement("li");
    li.className = "held";
    li.dataset.held = message.id;
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = message.text;
    const awaiting = document.createElement("p");
    awaiting.className = "awaiting";
    awaiting.textContent = "Awaiting approval: only you can see this until a moderator approves it.";
    li.append(text, awaiting);
    list.insertBefore(li, list.firstChild);
  }

  async function send() {
    if (sending) return; // the first post is still on its way; what was typed stays put
    const sent = input.value;
    const refused = refusal(sent);
    if (refused) {
      showError(refused);
      input.focus();
      return;
    }
    sending = true;
    if (button) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    // One key per submission, kept across the retries of the same text: a post whose
    // answer was lost is then never stored twice.
    if (sent !== pendingText) {
      pendingText = sent;
      pendingKey = newKey();
    }
    try {
      const response = await fetch("/api/messages", {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "Idempotency-Key": pendingKey,
        },
        body: JSON.stringify({ text: sent, website: honeypot ? honeypot.value : "" }),
        credentials: "same-origin",
      });
      if (response.status === 201 || response.status === 202) {
        pendingText = null;
      }
      if (response.status === 202) {
        showHeld(await response.json());
        if (input.value === sent) input.value = "";
        showCount();
        notice("error", null);
      } else if (response.status === 201) {
        add(await response.json());
        // Only what was sent is done with: text typed while it was on its way stays.
        if (input.value === sent) input.value = "";
        showCount();
        clearTimeout(errorTimer);
        notice("error", null);
        notice("readonly", null);
        notice("offline", null);
      } else if (response.status === 503) {
        showError(await problemDetail(response));
        checkLeader();
      } else {
        showError(await problemDetail(response));
      }
    } catch (_) {
      showError("The message could not be sent: the guestbook did not answer. Please try again.");
      checkReady();
    } finally {
      sending = false;
      if (button) button.disabled = false;
      form.removeAttribute("aria-busy");
      input.focus();
    }
  }

  // The script checks the text itself, with reasons in words; the browser's own bubbles would
  // let a text of spaces through and say nothing of the length.
  form.noValidate = true;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });

  input.addEventListener("keydown", (event) => {
    // isComposing: Enter also confirms a word in an input method, which must not post.
    if (event.key !== "Enter" || event.shiftKey || event.altKey || event.isComposing) return;
    event.preventDefault();
    send();
  });

  input.addEventListener("input", () => {
    showCount();
    if (notices.has("error")) notice("error", null);
  });

  const keys = document.getElementById("keys");
  if (keys) keys.hidden = false;
  showCount();

  // --- live updates -----------------------------------------------------------------------
  let source = null;
  let lastId = main.dataset.newest || null;
  let delay = 0;
  let hint = 0;
  let lostTimer = 0;

  function connect() {
    const query = lastId ? `?after=${encodeURIComponent(lastId)}` : "";
    source = new EventSource(`/api/messages/stream${query}`);
    source.addEventListener("open", () => {
      delay = 0;
      clearTimeout(lostTimer);
      lostTimer = 0;
      notice("live", null);
      badge(storeDown ? "paused" : "live"); // until the stream's first status says
    });
    source.addEventListener("status", (event) => {
      try {
        storeStatus(JSON.parse(event.data).store === "unavailable");
      } catch (_) {
        // an unknown status changes nothing
      }
    });
    source.addEventListener("remove", (event) => {
      let removed = null;
      try {
        removed = JSON.parse(event.data).id;
      } catch (_) {
        return;
      }
      if (typeof removed !== "string") return;
      const li = list.querySelector(`li[data-id="${CSS.escape(removed)}"]`);
      if (li) li.remove();
      seen.delete(removed);
    });
    source.addEventListener("message", (event) => {
      let message = null;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (event.lastEventId) lastId = event.lastEventId;
      add(message);
    });
    // The server ends a stream on purpose (stopping, or we fell behind) with a retry hint.
    source.addEventListener("reconnect", (event) => {
      try {
        hint = Number(JSON.parse(event.data).retry) || 0;
      } catch (_) {
        hint = 0;
      }
    });
    source.addEventListener("error", () => {
      // The browser's own retry would forget our backoff and, after a failed request,
      // give up for good: reconnect by hand, resuming after the last id seen.
      source.close();
      source = null;
      badge("off");
      const wait = hint || Math.min(30000, Math.max(500, delay * 2));
      delay = hint ? 0 : wait;
      hint = 0;
      setTimeout(connect, wait + Math.random() * 250);
      if (!lostTimer) {
        lostTimer = setTimeout(() => {
          notice("live", "Live updates are paused: reconnecting…");
          checkReady();
        }, 1500);
      }
    });
  }

  async function start() {
    refreshTimes();
    setInterval(refreshTimes, 30000);
    if (main.dataset.view !== "newest") return; // an older page stays as it is
    if (!lastId) {
      // An empty page: ask whether the guestbook is really empty before following it, so
      // "everything after the start" means what it says and nothing is missed.
      try {
        const response = await fetch("/api/messages?limit=20", { cache: "no-store" });
        if (response.ok) {
          const page = await response.json();
          for (const message of page.messages.slice().reverse()) add(message);
          lastId = page.messages.length ? page.messages[0].id : "0-0";
        }
      } catch (_) {
        // the stream starts from now; the next message still arrives
      }
    }
    connect();
    fetch("/api/status", { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : null))
      .then((status) => {
        if (status && status.leader && !status.leader.reachable) checkLeader();
      })
      .catch(() => {});
  }

  start();
})();
